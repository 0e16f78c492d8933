import numpy as np
import pandas as pd
import pytest

from pellet_analysis.metrics import dice, instance_f1, pixel_f1
from pellet_analysis.validate import summarize, validate_section, validation_params, validation_plan


def test_instance_f1_by_hand():
    true = np.zeros((10, 10), int)
    true[0:4, 0:4] = 1  # found exactly
    true[6:10, 6:10] = 2  # found as a half-size object: IoU 0.5, not above the threshold
    true[0:2, 7:9] = 3  # missed
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:4] = 7
    pred[6:10, 6:8] = 8
    pred[5, 0] = 9  # invented
    result = instance_f1(pred, true)
    assert (result["tp"], result["n_true"], result["n_predicted"]) == (1, 3, 3)
    assert result["f1"] == pytest.approx(2 * 1 / 6)
    assert dice(pred > 0, true > 0) == pytest.approx(2 * 24 / (36 + 25))
    assert np.isnan(pixel_f1(np.zeros(3, bool), np.zeros(3, bool)))


def test_validate_section_and_summary():
    rng = np.random.default_rng(5)
    params = {**validation_params(rng), "pixel_size_um": 1.0, "pellet_diameter_um": (250.0, 300.0), "labeled": True, "n_pellets": 2}
    # the simple nuclei model: this checks the mechanics; the varied model's figures are in docs/accuracy.md
    image, pellets = validate_section(params, nuclei_model="simple")
    assert image["pellets_found"] == 2 and image["pellet_dice"] > 0.97
    assert 0.7 < image["nuclei_instance_f1"] <= 1 and 0 < image["iron_pixel_f1"] <= 1
    assert 0 <= image["iron_as_nuclei_fraction"] < 0.2
    assert len(pellets) == 2 and all(abs(p["proteoglycan_error_pp"]) < 4 for p in pellets)
    summary = summarize(pd.DataFrame([image]), pd.DataFrame(pellets))
    assert summary["images_with_every_pellet_found_and_none_invented"] == 1
    assert summary["pellets"] == 2
    assert np.isnan(summary["unlabeled_iron_positive_cell_fraction_max"])  # both pellets are labeled
    assert all(0 < p["iron_positive_cell_fraction_found"] <= 1 for p in pellets)
    # the found outline sits within a pixel of the truth's: the profile's band errors are the classification's,
    # measured again with the found classes in the truth's own bands
    for p in pellets:
        assert abs(p["profile_band_error_pp_mean_abs"] - p["profile_band_error_pp_mean_abs_classes_only"]) < 0.5, p
    # the share of the bands within 3 pp, over the bands of all (here: labeled) pellets
    n_bands = sum(p["profile_bands"] for p in pellets)
    assert n_bands > 0 and all(0 <= p["profile_bands_over_3pp"] <= p["profile_bands"] for p in pellets)
    within = 1 - sum(p["profile_bands_over_3pp"] for p in pellets) / n_bands
    assert summary["profile_bands_within_3pp_labeled"] == pytest.approx(within)
    assert summary["profile_bands_within_3pp"] == pytest.approx(within)
    assert np.isnan(summary["profile_bands_within_3pp_unlabeled"])


def test_nucleus_rim_brings_labeled_depth_bands_nearer_the_truth():
    # section 5 of `validate --n 24 --seed 1`: a labeled day-14 section at 0.5 µm per pixel, whose bands read high
    # where the nuclei's blurred edges and the cytoplasm around them were classed proteoglycan
    from pellet_analysis.config import ClassifyConfig, RunConfig

    params = validation_plan(6, 1)[5]
    assert params["labeled"] and params["pixel_size_um"] == 0.5
    _, with_rim = validate_section(params)
    _, without = validate_section(params, RunConfig(classify=ClassifyConfig(nucleus_rim_um=0.0)))
    assert len(with_rim) == len(without) == 2
    for new, old in zip(with_rim, without):
        assert new["profile_band_error_pp_mean"] < old["profile_band_error_pp_mean"] - 0.5, (new, old)
        assert abs(new["proteoglycan_error_pp"]) < abs(old["proteoglycan_error_pp"]) - 0.3, (new, old)
    assert sum(p["profile_bands_over_3pp"] for p in with_rim) < sum(p["profile_bands_over_3pp"] for p in without)
    assert max(p["profile_band_error_pp_max_abs"] for p in with_rim) < 12.0


def test_validation_plan_is_validates_draw_order():
    # benchmarks re-render validate's section k from validation_plan(k + 1, seed)[k]: a longer plan must start with
    # the shorter one, and each section's parameters differ (the generator is drawn from, not reset)
    import numpy as np

    long, short = validation_plan(8, 3), validation_plan(5, 3)
    assert long[:5] == short
    rng = np.random.default_rng(3)
    assert [validation_params(rng) for _ in range(8)] == long
    assert len({repr(sorted(p.items())) for p in long}) == 8
