"""Statistics and aggregation against values computed by hand on small tables."""

import math

import numpy as np
import pandas as pd
import pytest

from pellet_analysis.bern import bern_scores
from pellet_analysis.config import BernConfig
from pellet_analysis.stats import bootstrap_mean_ci, comparison_table, holm, over_days, paired_by_day
from pellet_analysis.study import aggregate


def _donors(n_donors, diffs=None):
    """Donor-level table: unlabeled = 0.1*day + donor offset; labeled = unlabeled + diff[donor]."""
    rows = []
    for i in range(n_donors):
        for day in (7, 14, 28):
            base = 0.01 * day + 0.02 * i
            d = diffs[i] if diffs is not None else -0.05
            rows.append({"donor": f"D{i}", "condition": "unlabeled", "day": day, "m": base})
            rows.append({"donor": f"D{i}", "condition": "labeled", "day": day, "m": base + d})
    return pd.DataFrame(rows)


def test_paired_difference_and_wilcoxon_by_hand():
    diffs = [-0.01, -0.02, -0.03, -0.04, -0.05, -0.06]
    rows = paired_by_day(_donors(6, diffs), "m")
    assert [r["day"] for r in rows] == [7, 14, 28]
    for r in rows:
        assert r["n_donors"] == 6
        assert r["estimate"] == pytest.approx(np.mean(diffs))  # -0.035
        assert r["test"] == "Wilcoxon signed-rank"
        # all six differences negative: W = 0, exact two-sided p = 2 / 2**6
        assert r["statistic"] == 0
        assert r["p_value"] == pytest.approx(2 / 64)
        assert r["ci_low"] <= -0.035 <= r["ci_high"]
        assert -0.06 <= r["ci_low"] and r["ci_high"] <= -0.01


def test_too_few_donors_are_said_not_tested():
    rows = paired_by_day(_donors(3), "m")
    assert all(r["test"] == "none" and "Wilcoxon needs at least 6" in r["note"] and r["n_donors"] == 3 for r in rows)
    assert all(math.isnan(r["p_value"]) for r in rows)


def test_friedman_by_hand():
    # every donor ranks the days 7 < 14 < 28: rank sums (n, 2n, 3n); chi2 = 12/(n k (k+1)) * sum R^2 - 3 n (k+1)
    n, k = 6, 3
    expected = 12 / (n * k * (k + 1)) * sum((n * j) ** 2 for j in (1, 2, 3)) - 3 * n * (k + 1)
    assert expected == 12
    rows = [r for r in over_days(_donors(n), "m") if r["test"] == "Friedman"]
    assert len(rows) == 2
    for r in rows:
        assert r["statistic"] == pytest.approx(12.0)
        assert r["p_value"] == pytest.approx(math.exp(-12 / 2))  # chi-square, 2 degrees of freedom
        assert r["n_donors"] == 6


def test_mixed_model_slope_when_statsmodels_is_there():
    pytest.importorskip("statsmodels")
    rows = [r for r in over_days(_donors(6), "m") if r["comparison"] == "slope per day"]
    assert len(rows) == 2
    assert rows[0]["estimate"] == pytest.approx(0.01, abs=1e-6)  # value = 0.01 * day + donor offset


def test_holm_by_hand():
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])
    assert holm([0.5, 0.9]).max() == pytest.approx(1.0)


def test_comparison_table_adjusts_over_the_whole_table():
    table = comparison_table(_donors(6, [-0.01, -0.02, -0.03, -0.04, -0.05, -0.06]), ["m"])
    tested = table[table.p_value.notna()]
    assert (tested.p_holm >= tested.p_value).all()
    assert table.n_donors.notna().all()


def test_bootstrap_ci_of_constant_is_the_constant():
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([1.0]))


def test_aggregate_pellet_section_donor_with_exclusions():
    table = pd.DataFrame(
        [
            # donor A, labeled day 7: section s1 has pellets 0.2 and 0.4 (mean 0.3), section s2 one pellet 0.6
            ("A_l_7_s1", 1, "A", "labeled", 7, 0.2, False),
            ("A_l_7_s1", 2, "A", "labeled", 7, 0.4, False),
            ("A_l_7_s2", 1, "A", "labeled", 7, 0.6, False),
            ("A_l_7_s2", 2, "A", "labeled", 7, 0.99, True),  # excluded by a reviewer
            ("x_unknown", 1, None, None, None, 0.5, False),  # no metadata
        ],
        columns=["image", "pellet_id", "donor", "condition", "day", "m", "excluded"],
    )
    agg = aggregate(table, ["m"])
    assert agg["n_excluded"] == 1 and agg["n_unassigned"] == 1
    donor = agg["donors"].iloc[0]
    assert donor.m == pytest.approx((0.3 + 0.6) / 2)  # mean of section means, not of pellets
    assert donor.n_sections == 2 and donor.n_pellets == 3


def test_bern_categories_by_hand():
    cfg = BernConfig()
    good = {"proteoglycan_area_fraction": 0.6, "proteoglycan_mean_od": 0.6, "proteoglycan_od_sd": 0.1,
            "nuclei_nn_distance_um": 18.0, "nuclei_roundness": 0.8, "nuclei_count": 100}
    assert bern_scores(good, cfg) == {"bern_stain": 3, "bern_matrix": 3, "bern_morphology": 3, "bern_score": 9}
    weak = {**good, "proteoglycan_mean_od": 0.1, "proteoglycan_od_sd": 0.02}
    assert bern_scores(weak, cfg)["bern_stain"] == 1
    uneven = {**good, "proteoglycan_od_sd": 0.5}  # CV 0.83 > 0.6
    assert bern_scores(uneven, cfg)["bern_stain"] == 2
    dense = {**good, "nuclei_nn_distance_um": 9.0, "nuclei_roundness": 0.6, "proteoglycan_area_fraction": 0.2}
    assert bern_scores(dense, cfg) == {"bern_stain": 1, "bern_matrix": 0, "bern_morphology": 1, "bern_score": 2}
    empty = {**good, "nuclei_count": 0, "proteoglycan_area_fraction": 0.0}
    assert bern_scores(empty, cfg)["bern_score"] == 0
