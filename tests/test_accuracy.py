"""The pipeline against the synthetic generator's exact ground truth.

Sections have stain hues drifted by up to 5 degrees, JPEG quality 80, tinted
uneven illumination and pixel sizes 0.5-1 µm (see conftest.CASES).
"""

import numpy as np
import pytest
from scipy import ndimage as ndi

from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.synthetic import truth_table

from .conftest import dice


def _pairs(sections, analyses):
    for s, a in zip(sections, analyses):
        yield s, a, truth_table(s)


def test_every_pellet_found_and_none_invented(sections, analyses):
    for s, a, truth in _pairs(sections, analyses):
        assert len(a.rows) == len(truth) == s.params.n_pellets


def test_pellet_dice(sections, analyses):
    scores = [dice(a.pellets > 0, s.pellets > 0) for s, a in zip(sections, analyses)]
    assert min(scores) >= 0.97, scores
    # each found pellet overlaps its own true pellet (ids are numbered left to right in both)
    for s, a in zip(sections, analyses):
        for pid in range(1, s.params.n_pellets + 1):
            assert dice(a.pellets == pid, s.pellets == pid) >= 0.95


def test_proteoglycan_area_fraction_error(sections, analyses):
    errors = [
        r["proteoglycan_area_fraction"] - g["proteoglycan_area_fraction"]
        for _, a, truth in _pairs(sections, analyses)
        for r, g in zip(a.rows, truth)
    ]
    errors_pp = 100 * np.abs(errors)
    assert errors_pp.mean() <= 2.5, errors_pp
    assert errors_pp.max() <= 4.0, errors_pp


def test_proteoglycan_pixels_agree(sections, analyses):
    for s, a in zip(sections, analyses):
        code = CLASS_CODES["proteoglycan"]
        assert dice(a.classes == code, s.classes == code) >= 0.85


def test_nuclei_count_error(sections, analyses):
    rel = [
        (r["nuclei_count"] - g["nuclei_count"]) / g["nuclei_count"]
        for _, a, truth in _pairs(sections, analyses)
        for r, g in zip(a.rows, truth)
    ]
    rel = np.abs(rel)
    # measured 0.034 mean, 0.070 max (0.050 / 0.096 before touching nuclei were cut at their notches);
    # issue 19's target, count error <= 10 %, is for the varied model (validate, docs/accuracy.md)
    assert rel.mean() <= 0.05, rel
    assert rel.max() <= 0.10, rel


def test_iron_is_found_in_labeled_and_scarce_in_unlabeled(sections, analyses):
    for s, a, truth in _pairs(sections, analyses):
        found = np.array([r["iron_area_fraction"] for r in a.rows])
        true = np.array([g["iron_area_fraction"] for g in truth])
        if s.params.labeled:
            assert (found > 0.6 * true).all() and (found < 1.6 * true).all(), (found, true)
        else:
            assert (found < 0.008).all(), found


def test_measurements_are_finite_fractions(analyses):
    for a in analyses:
        for row in a.rows:
            for key, value in row.items():
                if key == "depth_profile":  # a list of bands (profiles.csv), each with finite fractions
                    assert value and all(0.0 <= b["proteoglycan_area_fraction"] <= 1.0 for b in value)
                    continue
                if key in ("stain_band_cv", "stain_patch_cv") and np.isnan(value):
                    continue  # fewer than two bands or patches: not measurable, said as NaN
                assert np.isfinite(value), key
                if key.endswith("_fraction"):
                    assert 0.0 <= value <= 1.0
            assert 0 < row["circularity"] <= 1


def test_core_and_rim_proteoglycan(sections, analyses):
    for _, a, truth in _pairs(sections, analyses):
        for r, g in zip(a.rows, truth):
            assert g["proteoglycan_core_fraction"] > g["proteoglycan_rim_fraction"]  # the generator's biology
            assert abs(r["proteoglycan_core_fraction"] - g["proteoglycan_core_fraction"]) < 0.05
            assert abs(r["proteoglycan_rim_fraction"] - g["proteoglycan_rim_fraction"]) < 0.05


def test_small_window_background_is_never_filled_as_a_hole(config):
    """At 0.25 µm a pellet's window holds less background than `fill_holes_max_um2`: it must stay background."""
    from pellet_analysis.pellets import fill_enclosed_holes
    from pellet_analysis.pipeline import analyze_image
    from pellet_analysis.synthetic import make_section

    section = make_section(day=7, labeled=False, n_pellets=1, pixel_size_um=0.25, pellet_diameter_um=(220.0, 240.0), seed=672265157)
    found = analyze_image(section.image, pixel_size_um=0.25, config=config)
    assert len(found.rows) == 1 and dice(found.pellets > 0, section.pellets > 0) >= 0.97
    ring = np.ones((9, 9), bool)
    ring[3:6, 3:6] = False  # an enclosed hole
    edge = ring.copy()
    edge[0, 4] = False  # background reaching the edge
    assert fill_enclosed_holes(ring, max_area_px=9).all() and not fill_enclosed_holes(ring, max_area_px=8).all()
    assert fill_enclosed_holes(edge, max_area_px=100)[0, 4] == False  # noqa: E712


def test_circularity_is_imagej_s_on_the_outline_polygon_and_cut_pellets_say_so(sections, analyses, config):
    """4 pi area / perimeter² of the exported polygon: a disk reads ~1, a 2:1 ellipse ~0.84 (exact 0.8411)."""
    from pellet_analysis.measure import outline_polygon, polygon_circularity
    from pellet_analysis.pipeline import analyze_image

    rows, cols = np.mgrid[:600, :600]
    disk = (rows - 300) ** 2 + (cols - 300) ** 2 <= 250**2
    ellipse = ((rows - 300) / 250.0) ** 2 + ((cols - 300) / 125.0) ** 2 <= 1
    assert 0.98 < polygon_circularity(outline_polygon(disk)) <= 1.0
    assert abs(polygon_circularity(outline_polygon(ellipse)) - 0.8411) < 0.02
    # the synthetic pellets lie whole on glass; cut through one, it touches the border
    for s, a in zip(sections, analyses):
        assert not any(r["touches_border"] for r in a.rows)
        assert all(abs(r["circularity"] - g["circularity"]) < 0.05 for r, g in zip(a.rows, truth_table(s)))
    s, a = sections[0], analyses[0]
    row = int(a.rows[0]["centroid_row_px"])
    cut = analyze_image(s.image[row:], pixel_size_um=s.pixel_size_um, config=config)
    assert [r["touches_border"] for r in cut.rows] == [True]



@pytest.mark.parametrize("alcian_od", [0.8, 1.2, 1.6])
def test_matrix_between_clear_lacunae_is_not_read_as_nuclei(alcian_od):
    # Day-28 cartilage: each nucleus (2.5 µm in radius) in a clear lacuna 6.5 µm in radius, cells 15 µm apart, so dense
    # Alcian blue under picric yellow is left in 2-4 µm walls between the lacunae. That matrix is darker than the
    # lacunae in the least-absorbed channel, as a nucleus is: without the colour test (nuclei.dark_matrix_excess) it
    # read as nuclei (99-100 % of the walls, 180-231 nuclei for 60 cells), and at 1.2 OD and more the walls enclose the
    # lacunae, so a test on hole-filled objects would drop the nuclei with them.
    from pellet_analysis.classify import classify_pellet
    from pellet_analysis.config import RunConfig
    from pellet_analysis.stains import get_preset

    px, shape, spacing = 0.5, (260, 260), 30
    stains = get_preset("ab-vg")
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    lattice_row = np.round(rows / spacing)
    shift = (lattice_row % 2) * spacing / 2  # every other row of cells shifted by half a spacing
    offset = np.hypot(rows - lattice_row * spacing, cols - (np.round((cols - shift) / spacing) * spacing + shift))
    lacuna, nucleus = offset < 13, offset < 5
    weigert = stains.vector("weigert_hematoxylin") / stains.vector("weigert_hematoxylin").min()  # 0.9 OD of darkness
    od = (
        np.where(lacuna, 0.0, alcian_od)[..., None] * stains.vector("alcian_blue")
        + np.where(lacuna, 0.0, 0.2)[..., None] * stains.vector("picric_acid")
        + 0.9 * nucleus[..., None] * weigert
    )
    od = ndi.gaussian_filter(od.astype(np.float32), (1.0, 1.0, 0)).astype(np.float32)  # 0.5 µm optical blur
    config = RunConfig()
    kw = dict(pixel_size_um=px, classify=config.classify.params(), nuclei=config.nuclei.params(), iron=config.iron.params())
    result = classify_pellet(od, np.ones(shape, bool), stains, **kw)
    away = np.zeros(shape, bool)
    away[20:-20, 20:-20] = True
    walls = away & ~ndi.binary_dilation(lacuna, iterations=2)
    _, n_cells = ndi.label(nucleus & away)
    assert (result.classes[walls] == CLASS_CODES["proteoglycan"]).mean() >= 0.95
    assert (result.classes[walls] == CLASS_CODES["nuclei"]).mean() <= 0.01
    assert np.unique(result.nuclei[away & (result.nuclei > 0)]).size == n_cells == 60
    assert (result.classes[ndi.binary_erosion(nucleus, iterations=2) & away] == CLASS_CODES["nuclei"]).mean() >= 0.95


def test_matrix_between_pale_cells_keeps_its_alcian_blue_and_a_nucleus_edge_does_not_gain_any():
    # Alcian blue under picric yellow absorbs in every channel, so matrix between pale (picric-only) cells is a
    # dark spot of the least-absorbed channel: its Alcian blue must not be taken out as a nucleus's grey. The
    # left of the field holds cells 14 µm apart (4 µm bridges of matrix, narrower than the darkness top-hat),
    # each with a black nucleus; the right is matrix alone, as wide as the top-hat, which sets the threshold.
    from pellet_analysis.classify import classify_pellet
    from pellet_analysis.config import RunConfig
    from pellet_analysis.stains import get_preset

    px, shape, spacing = 0.5, (240, 240), 28
    stains = get_preset("ab-vg")
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    offset = np.hypot((rows % spacing) - spacing / 2, (cols % spacing) - spacing / 2)
    cell = (offset < 10) & (cols < 140)  # cytoplasm 5 µm in radius
    nucleus = (offset < 4) & cell  # 2 µm in radius
    alcian = np.where(cell, 0.0, 0.5).astype(np.float32)
    od = alcian[..., None] * stains.vector("alcian_blue") + 0.3 * stains.vector("picric_acid") + 0.9 * nucleus[..., None]
    od = ndi.gaussian_filter(od.astype(np.float32), (1.0, 1.0, 0)).astype(np.float32)  # 0.5 µm optical blur
    config = RunConfig()
    kw = dict(pixel_size_um=px, classify=config.classify.params(), nuclei=config.nuclei.params(), iron=config.iron.params())
    result = classify_pellet(od, np.ones(shape, bool), stains, **kw)
    pg = result.classes == CLASS_CODES["proteoglycan"]
    away = np.zeros(shape, bool)
    away[10:-10, 10:-10] = True  # from the field's border
    bridges = away & ~ndi.binary_dilation(cell, iterations=2) & (cols < 120)
    wide = away & (cols > 160)
    cytoplasm = away & cell & ~ndi.binary_dilation(nucleus, iterations=3) & ~ndi.binary_dilation(~cell, iterations=2)
    assert bridges.sum() > 3000 and cytoplasm.sum() > 1000
    assert pg[wide].mean() >= 0.99
    assert pg[bridges].mean() >= 0.95, pg[bridges].mean()
    assert pg[cytoplasm].mean() <= 0.02, pg[cytoplasm].mean()
    # and the OD measured there (proteoglycan_mean_od) is the bridges' own 0.5 OD of Alcian blue, not half of it
    assert np.median(result.proteoglycan_od[bridges]) == pytest.approx(0.5, abs=0.03)
    assert np.median(result.proteoglycan_od[wide]) == pytest.approx(0.5, abs=0.03)
    assert (result.classes[ndi.binary_erosion(nucleus, iterations=2) & away] == CLASS_CODES["nuclei"]).mean() >= 0.95
