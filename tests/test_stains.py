import numpy as np
import pytest
from skimage.color import rgb_from_hed, separate_stains

from pellet_analysis.stains import (
    PRESETS,
    complete_matrix,
    estimate_background,
    evaluate_background_field,
    fit_background_field,
    get_preset,
    od_to_rgb,
    rgb_to_od,
    unmix,
)


def test_required_presets_exist_with_unit_vectors_and_roles():
    for name in ("ab-vg", "safranin-o", "alcian-nfr", "he", "h-dab"):
        preset = get_preset(name)
        np.testing.assert_allclose(np.linalg.norm(preset.vectors, axis=1), 1.0, atol=1e-12)
        assert "nuclei" in preset.roles
    abvg = PRESETS["ab-vg"]
    assert set(abvg.roles) == {"proteoglycan", "collagen", "cytoplasm", "nuclei", "iron"}
    with pytest.raises(KeyError, match="unknown stain preset"):
        get_preset("masson")


@pytest.mark.parametrize("dtype, full", [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0)])
def test_od_round_trip_every_dtype(dtype, full):
    rng = np.random.default_rng(0)
    od = rng.uniform(0, 1.5, size=(20, 30, 3))
    background = np.array([0.95, 0.9, 0.85]) * full
    image = od_to_rgb(od, background, dtype=dtype)
    back = rgb_to_od(image, background)
    assert back.dtype == np.float32
    # integer quantisation limits precision at high OD; float is exact
    tolerance = 2e-5 if dtype == np.float32 else (0.05 if dtype == np.uint8 else 1e-3)
    np.testing.assert_allclose(back, od, atol=tolerance)


def test_od_is_finite_for_black_and_never_negative():
    image = np.array([[[0, 0, 0], [255, 255, 255], [250, 10, 128]]], np.uint8)
    od = rgb_to_od(image, [240, 240, 240])
    assert np.isfinite(od).all() and (od >= 0).all()
    assert od[0, 1].max() == 0  # brighter than the background clips to 0


def test_unmix_recovers_three_stain_concentrations_exactly():
    vectors = PRESETS["ab-vg"].subset(["alcian_blue", "acid_fuchsin", "picric_acid"]).vectors
    rng = np.random.default_rng(1)
    conc = rng.uniform(0, 1, size=(16, 16, 3)).astype(np.float32)
    od = conc @ vectors.astype(np.float32)
    np.testing.assert_allclose(unmix(od, vectors), conc, atol=1e-5)
    # channel_axis keyword
    np.testing.assert_allclose(unmix(np.moveaxis(od, -1, 0), vectors, channel_axis=0), np.moveaxis(conc, -1, 0), atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_unmix_into_its_own_input_gives_the_same_concentrations(monkeypatch, threads):
    """``out=od`` reuses the OD's memory for the concentrations: the same numbers as a new array, on uneven blocks."""
    import cv2

    import pellet_analysis.stains as stains_module

    monkeypatch.setattr(stains_module, "_BLOCK_PX", 37 * 7 + 3)  # blocks of 7 rows of 37, the last one shorter
    vectors = PRESETS["ab-vg"].subset(["alcian_blue", "acid_fuchsin", "picric_acid"]).vectors
    od = np.random.default_rng(2).uniform(0, 2, size=(53, 37, 3)).astype(np.float32)
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        expected = unmix(od, vectors)
        reused = od.copy()
        got = unmix(reused, vectors, out=reused)
    finally:
        cv2.setNumThreads(before)
    assert np.shares_memory(got, reused)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="out must be"):
        unmix(od, vectors[:2], out=od.copy())  # two stains do not fit three channels
    with pytest.raises(ValueError, match="channels last"):
        unmix(np.moveaxis(od, -1, 0), vectors, channel_axis=0, out=od.copy())


def test_unmix_matches_scikit_image_separate_stains():
    """Same deconvolution as skimage on the same pixels: skimage's units are ln-OD / ln(1e6)."""
    matrix = rgb_from_hed / np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
    rng = np.random.default_rng(2)
    rgb = rng.uniform(0.05, 1.0, size=(32, 32, 3))
    ours = unmix(rgb_to_od(rgb.astype(np.float32), 1.0), matrix)
    theirs = separate_stains(rgb, np.linalg.inv(matrix)) * np.log(1e6) / np.log(10)
    # scikit-image clips negative concentrations to zero
    np.testing.assert_allclose(np.maximum(ours, 0), theirs, atol=1e-3)


def test_two_stains_are_completed_with_an_orthogonal_residual():
    he = PRESETS["he"].vectors
    m = complete_matrix(he)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m[2] @ m[0], 0, atol=1e-12)
    np.testing.assert_allclose(m[2] @ m[1], 0, atol=1e-12)


def test_background_estimate_and_flat_field_recover_uneven_tinted_illumination():
    rows, cols = np.mgrid[0:200, 0:300]
    truth = np.stack([235 - 0.05 * rows, 240 - 0.03 * cols, 228 + 0 * rows], axis=-1).astype(np.float64)
    image = truth.copy()
    tissue = (rows - 100) ** 2 + (cols - 150) ** 2 < 60**2
    image[tissue] *= 0.5
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    coef = fit_background_field(image, tissue)
    field = evaluate_background_field(coef, image.shape[:2])
    assert np.abs(field - truth).max() < 1.5
    flat = estimate_background(image, tissue)
    np.testing.assert_allclose(flat, np.median(truth[~tissue], axis=0), atol=2)


@pytest.mark.parametrize("block_px", [1, 997, 2**16])
def test_od_against_a_field_block_by_block_equals_the_rendered_field(monkeypatch, block_px):
    import pellet_analysis.stains as stains_module
    from pellet_analysis.stains import rgb_to_od_field

    monkeypatch.setattr(stains_module, "_OD_BLOCK_PX", block_px)  # one row per block, uneven blocks, one block
    rng = np.random.default_rng(3)
    shape = (301, 257)
    coef = np.array([[238.0, 241.0, 229.0], [-9.0, 3.0, 1.0], [4.0, -7.0, 2.0], [-5.0, 2.0, 6.0], [3.0, -4.0, 1.0], [2.0, 5.0, -3.0]])
    window = (slice(37, 266), slice(11, 250))
    rgb = rng.integers(0, 256, (229, 239, 3)).astype(np.uint8)
    rgb[:3] = 255  # brighter than the field: OD clipped at 0
    expected = rgb_to_od(rgb, evaluate_background_field(coef, shape, window=window))
    got = rgb_to_od_field(rgb, coef, shape, window=window)
    assert got.dtype == np.float32 and got.shape == rgb.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got[:3].min() == 0 and got.max() > 2.0
    # other dtypes and the whole image go through the rendered field
    as_float = rgb.astype(np.float32) / 255
    np.testing.assert_allclose(rgb_to_od_field(as_float, coef / 255, (229, 239)), rgb_to_od(as_float, evaluate_background_field(coef / 255, (229, 239))), atol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        rgb_to_od_field(rgb[:-1], coef, shape, window=window)


@pytest.mark.parametrize("block_px", [2**20, 257 * 40 + 5])
def test_fused_separation_equals_unmixing_and_skimage(monkeypatch, block_px):
    import cv2
    from skimage.color import separate_stains as skimage_separate

    import pellet_analysis.stains as stains_module
    from pellet_analysis.stains import get_preset, rgb_to_od, separate_stains, unmix

    monkeypatch.setattr(stains_module, "_BLOCK_PX", block_px)  # one block; or two spans of 150 and 151 rows on two threads, each in blocks of 40 rows and a shorter last one
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        rgb = np.random.default_rng(5).integers(1, 256, (301, 257, 3), dtype=np.uint8)  # rows not a multiple of the block
        st = get_preset("ab-vg")
        vectors = np.stack([st.vector(n) for n in ("alcian_blue", "acid_fuchsin", "picric_acid")])
        ours = separate_stains(rgb, vectors, (250.0, 245.0, 240.0))
        np.testing.assert_allclose(ours, unmix(rgb_to_od(rgb, (250.0, 245.0, 240.0)), vectors), atol=1e-5)
        # skimage: natural log scaled by log(1e-6), background 255, negative concentrations clipped
        unit = np.stack([v / np.linalg.norm(v) for v in vectors])
        reference = skimage_separate(rgb, np.linalg.inv(unit)) * (-np.log(1e-6) / np.log(10))
        np.testing.assert_allclose(np.maximum(separate_stains(rgb, unit), 0), reference, atol=1e-3)
        two = separate_stains(rgb, vectors[:2])
        assert two.shape == (301, 257, 2)
        np.testing.assert_allclose(two, unmix(rgb_to_od(rgb), vectors[:2]), atol=1e-5)
    finally:
        cv2.setNumThreads(threads)
