"""The Bern-like score (docs/bern.md): its rules by hand at each grade boundary, the continuous grades, a real pellet and the generator."""

from dataclasses import replace

import numpy as np
import pytest

from pellet_analysis.bern import BERN_CATEGORIES, bern_scores, grade, ramp, zone_row
from pellet_analysis.config import BernConfig, RunConfig

from .conftest import REAL_IMAGES

P = BernConfig().params()

#: A pellet every category grades 3: most of it dark, even stain; cells 3 diameters apart; all rounded in lacunae.
GOOD = {
    "proteoglycan_area_fraction": 0.7, "proteoglycan_mean_od": 0.6, "stain_band_cv": 0.1, "stain_patch_cv": 0.1,
    "nuclei_count": 100, "nuclei_density_per_mm2": 1e6 / (3 * P.cell_diameter_um) ** 2,
    "rounded_cell_fraction": 0.9, "lacuna_cell_fraction": 0.8,
}


def _density(spacing_cells: float) -> float:
    """Nuclei per mm² whose mean spacing is ``spacing_cells`` cell diameters."""
    return 1e6 / (spacing_cells * P.cell_diameter_um) ** 2


def _stain(**changes) -> int:
    return bern_scores({**GOOD, **changes}, P)["bern_stain"]


def test_all_good_is_nine_and_the_sums_add_up():
    scores = bern_scores(GOOD, P)
    assert {k: scores[k] for k in ("bern_stain", "bern_matrix", "bern_morphology", "bern_score")} == {
        "bern_stain": 3, "bern_matrix": 3, "bern_morphology": 3, "bern_score": 9}
    assert scores["bern_score_continuous"] == pytest.approx(sum(scores[f"{c}_continuous"] for c in BERN_CATEGORIES))
    assert all(isinstance(scores[c], int) for c in ("bern_stain", "bern_matrix", "bern_morphology", "bern_score"))


def test_stain_amount_darkness_and_evenness_by_hand():
    # the amount of proteoglycan: 0 none, 1 from 10 %, 2 from 30 %, 3 from 55 % of the pellet
    assert [_stain(proteoglycan_area_fraction=f) for f in (0.0, 0.0999, 0.10, 0.2999, 0.30, 0.5499, 0.55)] == [0, 0, 1, 1, 2, 2, 3]
    # darkness: weak below OD 0.2 (at most 1), moderate from 0.2 (at most 2), dark from 0.4
    assert [_stain(proteoglycan_mean_od=od) for od in (0.05, 0.199, 0.2, 0.399, 0.4)] == [1, 1, 2, 2, 3]
    # evenness over bands and patches, the larger spread counts: even up to CV 0.25, moderately even up to 0.5
    assert [_stain(stain_band_cv=cv) for cv in (0.25, 0.26, 0.5, 0.51, 1.5)] == [3, 2, 2, 1, 1]
    assert _stain(stain_patch_cv=0.6) == 1 and _stain(stain_band_cv=np.nan, stain_patch_cv=0.3) == 2
    # no spread measured (a pellet too small for two bands or a patch): not graded on it
    assert _stain(stain_band_cv=np.nan, stain_patch_cv=np.nan) == 3
    # no stain stays 0 whatever its OD or spread
    assert _stain(proteoglycan_area_fraction=0.0, proteoglycan_mean_od=0.0, stain_band_cv=np.nan) == 0


def test_matrix_from_cell_spacing_in_cell_diameters_by_hand():
    grades = [bern_scores({**GOOD, "nuclei_density_per_mm2": _density(s)}, P)["bern_matrix"] for s in (1.0, 1.24, 1.25, 1.74, 1.75, 2.24, 2.25, 4)]
    assert grades == [0, 0, 1, 1, 2, 2, 3, 3]
    # 9.5 µm cells 11.2 µm apart (8000 per mm²) are under 1.25 diameters apart: high density, no matrix
    assert bern_scores({**GOOD, "nuclei_density_per_mm2": 8000.0}, P)["bern_matrix"] == 0
    assert bern_scores({**GOOD, "nuclei_count": 1}, P)["bern_matrix"] == 0


def test_morphology_from_rounded_and_lacuna_cells_by_hand():
    def morphology(rounded, in_lacuna, n=100):
        return bern_scores({**GOOD, "rounded_cell_fraction": rounded, "lacuna_cell_fraction": in_lacuna, "nuclei_count": n}, P)["bern_morphology"]

    # the chondrocyte-like share is the mean of the two: spindle below 0.3, mixed from 0.3, mostly rounded from 0.5
    assert [morphology(r, lac) for r, lac in ((0.0, 0.0), (0.58, 0.0), (0.6, 0.0), (0.6, 0.38), (0.6, 0.4), (1.0, 1.0))] == [1, 1, 2, 2, 3, 3]
    assert morphology(0.45, np.nan) == 2 and morphology(0.55, np.nan) == 3  # no lacunae measured: the rounded fraction alone
    assert morphology(0.9, 0.9, n=0) == 0  # no cells to grade


def test_continuous_grades_are_monotone_equal_the_integer_at_each_threshold_and_floor_to_it():
    t = P.stain_fraction_thresholds
    fractions = np.linspace(0, 1, 401)
    values = [bern_scores({**GOOD, "proteoglycan_area_fraction": f}, P)["bern_stain_continuous"] for f in fractions]
    assert np.all(np.diff(values) >= 0) and values[0] == 0 and values[-1] == 3
    for k, threshold in enumerate(t, start=1):
        assert bern_scores({**GOOD, "proteoglycan_area_fraction": threshold}, P)["bern_stain_continuous"] == k
    spacings = np.linspace(0.5, 4, 300)
    matrix = [bern_scores({**GOOD, "nuclei_density_per_mm2": _density(s)}, P)["bern_matrix_continuous"] for s in spacings]
    assert np.all(np.diff(matrix) >= -1e-12) and matrix[0] == 0 and matrix[-1] == 3
    for k, s in enumerate(P.matrix_spacing_cells_thresholds, start=1):
        assert bern_scores({**GOOD, "nuclei_density_per_mm2": _density(s)}, P)["bern_matrix_continuous"] == pytest.approx(k, abs=1e-9)
    shares = np.linspace(0, 1, 101)
    morphology = [bern_scores({**GOOD, "rounded_cell_fraction": c, "lacuna_cell_fraction": c}, P)["bern_morphology_continuous"] for c in shares]
    assert np.all(np.diff(morphology) >= 0) and morphology[0] == 1 and morphology[-1] == 3
    cvs = np.linspace(0, 2, 201)  # a larger spread never raises the stain grade
    stain = [bern_scores({**GOOD, "stain_band_cv": cv}, P)["bern_stain_continuous"] for cv in cvs]
    assert np.all(np.diff(stain) <= 0) and stain[0] == 3 and stain[-1] == 1
    # the integer grade is the floor of the continuous one, everywhere
    rng = np.random.default_rng(0)
    for _ in range(300):
        row = {**GOOD, "proteoglycan_area_fraction": rng.uniform(0, 0.8), "proteoglycan_mean_od": rng.uniform(0, 0.6),
               "stain_band_cv": rng.uniform(0, 1.5), "nuclei_density_per_mm2": _density(rng.uniform(0.8, 3)),
               "rounded_cell_fraction": rng.uniform(), "lacuna_cell_fraction": rng.uniform()}
        scores = bern_scores(row, P)
        for c in BERN_CATEGORIES:
            assert scores[c] == int(np.floor(scores[f"{c}_continuous"] + 1e-9))
        assert scores["bern_score"] == sum(scores[c] for c in BERN_CATEGORIES)
    assert ramp(np.nan, (0, 1), (0, 1)) != ramp(np.nan, (0, 1), (0, 1)) and grade(float("nan")) == 0


def test_zone_row_by_hand():
    bands = [
        {"depth_from_um": 0.0, "depth_to_um": 25.0, "area_um2": 3000.0, "proteoglycan_area_fraction": 0.0, "proteoglycan_mean_od": 0.0,
         "nuclei_count": 30, "rounded_cell_fraction": 0.2, "lacuna_cell_fraction": 0.0},
        {"depth_from_um": 25.0, "depth_to_um": 50.0, "area_um2": 2000.0, "proteoglycan_area_fraction": 0.5, "proteoglycan_mean_od": 0.3,
         "nuclei_count": 10, "rounded_cell_fraction": 0.8, "lacuna_cell_fraction": 0.5},
        {"depth_from_um": 50.0, "depth_to_um": 75.0, "area_um2": 1000.0, "proteoglycan_area_fraction": 0.7, "proteoglycan_mean_od": 0.5,
         "nuclei_count": 2, "rounded_cell_fraction": 1.0, "lacuna_cell_fraction": 1.0},
    ]
    inner = zone_row(bands, 25.0)
    assert inner["area_um2"] == 3000.0 and inner["nuclei_count"] == 12
    assert inner["proteoglycan_area_fraction"] == pytest.approx((0.5 * 2000 + 0.7 * 1000) / 3000)
    assert inner["proteoglycan_mean_od"] == pytest.approx((0.3 * 1000 + 0.5 * 700) / 1700)  # weighted by proteoglycan area
    assert inner["nuclei_density_per_mm2"] == pytest.approx(12 / 3000e-6)
    assert inner["rounded_cell_fraction"] == pytest.approx((8 + 2) / 12) and inner["lacuna_cell_fraction"] == pytest.approx((5 + 2) / 12)
    assert inner["stain_band_cv"] == pytest.approx(np.std([0.5, 0.7]) / 0.6)
    outer = zone_row(bands, 0.0, 25.0)
    assert outer["proteoglycan_area_fraction"] == 0.0 and np.isnan(outer["stain_band_cv"])
    assert zone_row(bands, 100.0)["nuclei_count"] == 0


def test_config_checks_its_knots_and_reads_an_old_runs_bern_section():
    with pytest.raises(ValueError):
        BernConfig(stain_weak_od=0.5, stain_dark_od=0.4)
    with pytest.raises(ValueError):
        BernConfig(stain_even_cv=0.6)
    with pytest.raises(ValueError):
        BernConfig(matrix_spacing_cells_thresholds=(0.9, 1.5, 2.0))
    with pytest.raises(ValueError):
        BernConfig(morphology_chondrocyte_fraction_thresholds=(0.5, 0.3))
    # a run.json from before: its retired keys are dropped, the rest is read
    with pytest.warns(UserWarning, match="retired"):
        old = BernConfig.model_validate({"stain_fraction_thresholds": [0.1, 0.3, 0.6], "stain_weak_od": 0.2, "stain_max_cv": 0.6,
                                         "matrix_nn_distance_um_thresholds": [10, 13, 17], "morphology_roundness_thresholds": [0.55, 0.65, 0.75]})
    assert old.stain_fraction_thresholds == (0.1, 0.3, 0.6) and old.stain_uneven_cv == BernConfig().stain_uneven_cv
    with pytest.raises(ValueError):  # a first threshold of 0 would grade a pellet without stain 1
        BernConfig(stain_fraction_thresholds=(0.0, 0.3, 0.55))
    with pytest.raises(ValueError):  # equal knots: the grade would jump over one
        BernConfig(stain_fraction_thresholds=(0.1, 0.3, 0.3))
    assert bern_scores(GOOD, replace(P, cell_diameter_um=20.0))["bern_matrix"] == 1  # 28.5 µm apart is 1.4 diameters of 20 µm


# ---- a real Safranin-O pellet: proteoglycan-rich core, fibrous rim ----

@pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="../shared/real-images is not here")
def test_real_pellet_core_grades_as_cartilage_and_the_fibrous_rim_does_not():
    from pellet_analysis.io import read_image
    from pellet_analysis.pipeline import analyze_image

    rgb, _ = read_image(REAL_IMAGES / "mbs_pellet_whole_section.tif")
    (row,) = analyze_image(rgb[..., :3], pixel_size_um=0.6, config=RunConfig(stains={"preset": "safranin-o"})).rows
    rim = bern_scores(zone_row(row["depth_profile"], 0.0, 50.0), P)
    core = bern_scores(zone_row(row["depth_profile"], 150.0), P)
    # rim: no Safranin O, spindle/fibrous cells packed with little matrix (morphology 1 by eye, 1.97 measured at df492b9; the
    # in-lacuna fraction it reads is the lacuna detector's, so the test holds it below the core's, not at 1)
    assert (rim["bern_stain"], rim["bern_matrix"]) == (0, 1) and rim["bern_morphology"] <= 2, rim
    # core: moderately even, not dark, stain; cells under a cell apart; mostly rounded, in lacunae
    assert (core["bern_stain"], core["bern_matrix"], core["bern_morphology"]) == (2, 1, 3), core
    assert rim["bern_morphology_continuous"] < core["bern_morphology_continuous"] - 0.5
    assert core["bern_score_continuous"] > rim["bern_score_continuous"] + 2.5
    # the whole section: only the core stained (uneven: 1), spindle and rounded cells mixed (2)
    assert (row["bern_stain"], row["bern_morphology"]) == (1, 2), row


# ---- the generator: a consistency check, not a tuning target ----

def test_generator_day_28_grades_higher_than_day_7():
    from pellet_analysis.pipeline import analyze_image
    from pellet_analysis.synthetic import make_section, truth_table

    scores = {}
    for day in (7, 28):
        s = make_section(day=day, seed=60 + day, pixel_size_um=0.75, pellet_diameter_um=(320, 400))
        (row,) = analyze_image(s.image, pixel_size_um=0.75, config=RunConfig()).rows
        scores[day] = row
        # the rules read off the found measurements against the same rules on the section's truth
        truth = bern_scores(truth_table(s)[0], P)
        assert abs(row["bern_score_continuous"] - truth["bern_score_continuous"]) < 0.4, (row, truth)
    assert scores[28]["bern_score_continuous"] > scores[7]["bern_score_continuous"] + 1.5, scores
    assert scores[28]["bern_stain_continuous"] > scores[7]["bern_stain_continuous"]
    assert scores[28]["bern_morphology_continuous"] > scores[7]["bern_morphology_continuous"]
