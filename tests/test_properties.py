"""Property-based tests: random configs, shapes, dtypes and stain values give a clear error or a valid result."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pellet_analysis.config import ConfigError, RunConfig, build_config
from pellet_analysis.measure import MEASUREMENT_COLUMNS, measure_pellets
from pellet_analysis.stains import StainSet, rgb_to_od, unmix

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.floats(-5, 5), max_size=4),
)
keys = st.sampled_from([
    "pixel_size_um", "scheduler", "n_workers", "filename_pattern", "extensions", "require_metadata", "bogus",
    "stains", "pellets", "nuclei", "iron", "bern", "classify",
])
sub_keys = st.sampled_from(["preset", "background_rgb", "min_pellet_area_um2", "tissue_min_od", "min_diameter_um",
                            "max_diameter_um", "cell_distance_um", "stain_fraction_thresholds", "nonsense"])
configs = st.dictionaries(keys, st.one_of(scalars, st.dictionaries(sub_keys, scalars, max_size=3)), max_size=5)


@SETTINGS
@given(configs)
def test_config_parser_gives_a_config_or_one_line_error(data):
    try:
        cfg = build_config(data, source="fuzz.yaml")
    except ConfigError as error:
        message = str(error)
        assert message.startswith("fuzz.yaml: ") and "\n" not in message
    else:
        assert isinstance(cfg, RunConfig) and cfg.pixel_size_um > 0


dtypes = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64])


@SETTINGS
@given(dtypes.flatmap(lambda dt: arrays(dt, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3)),
                                        elements=st.floats(0, 1) if np.dtype(dt).kind == "f" else None)))
def test_optical_density_is_finite_and_non_negative(image):
    od = rgb_to_od(image)
    assert od.shape == image.shape and od.dtype == np.float32
    assert np.isfinite(od).all() and (od >= 0).all()


unit_vectors = arrays(np.float64, (3,), elements=st.floats(0.01, 1.0))


@SETTINGS
@given(st.lists(unit_vectors, min_size=1, max_size=3), arrays(np.float32, (5, 4, 3), elements=st.floats(0, 3, width=32)))
def test_unmix_gives_finite_values_or_a_clear_error(vectors, od):
    try:
        stains = StainSet("fuzz", tuple(f"s{i}" for i in range(len(vectors))), np.stack(vectors))
        conc = unmix(od, stains.vectors)
    except ValueError as error:
        assert "parallel" in str(error) or "singular" in str(error).lower()
        return
    except np.linalg.LinAlgError:
        pytest.fail("a singular stain matrix must raise ValueError, not LinAlgError")
    assert conc.shape == od.shape[:2] + (len(vectors),)
    if np.linalg.cond(np.atleast_2d(stains.vectors) @ np.atleast_2d(stains.vectors).T) < 1e6:
        assert np.isfinite(conc).all()


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(4, 40), st.integers(4, 40), st.floats(0.1, 5.0))
def test_measurements_are_valid_on_random_labels(seed, rows, cols, px):
    rng = np.random.default_rng(seed)
    pellets = rng.integers(0, 3, size=(rows, cols)).astype(np.uint16)
    classes = np.where(pellets > 0, rng.integers(1, 6, size=(rows, cols)), 0).astype(np.uint8)
    nuclei = np.where(classes == 4, rng.integers(1, 5, size=(rows, cols)), 0).astype(np.uint32)
    od = rng.uniform(0, 2, size=(rows, cols)).astype(np.float32)
    from pellet_analysis.config import CartilageConfig

    lacunae = np.where(classes == 1, rng.integers(0, 3, size=(rows, cols)), 0).astype(np.uint32)
    rows_found = measure_pellets(
        pellets, classes, nuclei, pixel_size_um=px, proteoglycan_od=od, lacunae=lacunae, territories=nuclei, cartilage=CartilageConfig().params()
    )
    for row in rows_found:
        assert set(MEASUREMENT_COLUMNS) | {"depth_profile"} == set(row)
        for band in row.pop("depth_profile"):
            assert all(0 <= band[k] <= 1 for k in band if k.endswith("fraction")), band
        for key, value in row.items():
            if key in ("stain_band_cv", "stain_patch_cv") and np.isnan(value):
                continue  # fewer than two bands or patches
            assert np.isfinite(value), key
            if key.endswith("fraction"):
                assert 0 <= value <= 1, key


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1), dtypes, st.integers(16, 96), st.integers(16, 96))
def test_pipeline_on_random_images_returns_valid_rows_or_value_error(seed, dtype, rows, cols):
    from pellet_analysis.pipeline import analyze_image

    rng = np.random.default_rng(seed)
    full = 1.0 if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
    image = (rng.uniform(0, 1, size=(rows, cols, 3)) * full).astype(dtype)
    config = RunConfig(pellets={"min_pellet_area_um2": 10.0})
    try:
        result = analyze_image(image, pixel_size_um=1.0, config=config)
    except ValueError as error:
        assert str(error)
        return
    assert result.pellets.shape == result.classes.shape == result.nuclei.shape == (rows, cols)
    for row in result.rows:
        assert all(np.isfinite(v) for k, v in row.items() if isinstance(v, float))
        assert all(0 <= row[k] <= 1 for k in row if k.endswith("fraction"))
