"""Statistics and aggregation against values computed by hand on small tables."""

import math

import numpy as np
import pandas as pd
import pytest

from scipy import stats as sps

from pellet_analysis.stats import (
    RM_ANOVA,
    SIGN_FLIP,
    balanced_slope,
    comparison_table,
    conclusions,
    donors_for_power,
    friedman_smallest_p,
    holm,
    over_days,
    paired_by_day,
    paired_t_ci,
    rm_anova,
    sign_flip_p,
    smallest_sign_flip_p,
)
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


def test_paired_rows_by_hand():
    diffs = [-0.01, -0.02, -0.03, -0.04, -0.05, -0.06]
    rows = paired_by_day(_donors(6, diffs), "m")
    flips = [r for r in rows if r["test"] == SIGN_FLIP]
    wilcoxon = [r for r in rows if r["test"] == "Wilcoxon signed-rank"]
    assert [r["day"] for r in flips] == [7, 14, 28] and len(wilcoxon) == 3
    sd = np.std(diffs, ddof=1)
    half = 2.570582 * sd / math.sqrt(6)  # t(0.975, 5 df) from a printed table
    for r in flips:
        assert r["n_donors"] == 6 and r["df"] == 5
        assert r["estimate"] == pytest.approx(-0.035)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((-0.035 - half, -0.035 + half), rel=1e-6)
        # all six differences negative: only all-minus and all-plus are as extreme, p = 2 / 2**6
        assert r["p_value"] == pytest.approx(2 / 64) and r["p_min_attainable"] == pytest.approx(2 / 64)
        assert r["holm_family"] == "m"
    for r in wilcoxon:
        assert r["statistic"] == 0 and r["p_value"] == pytest.approx(2 / 64)  # W = 0, exact two-sided
        assert r["holm_family"] == ""  # a second test of the same question is not counted twice


def test_too_few_donors_get_the_permutation_test_and_no_wilcoxon():
    rows = paired_by_day(_donors(3), "m")
    assert [r["test"] for r in rows] == [SIGN_FLIP] * 3
    assert all("Wilcoxon not run: 3 donors" in r["note"] and r["n_donors"] == 3 for r in rows)
    assert all(r["p_value"] == pytest.approx(0.25) for r in rows)  # 2 / 2**3: the floor of three donors


def test_sign_flip_by_hand_and_against_scipy():
    # d = (1, -1, 2): the eight sums are 4, 0, 2, -2, 2, -2, 0, -4; six have |sum| >= 2
    assert sign_flip_p([1.0, -1.0, 2.0]) == pytest.approx(6 / 8)
    assert sign_flip_p([0.0, 0.0]) == 1.0
    rng = np.random.default_rng(3)
    for n in (4, 7, 10):
        d = rng.normal(0.3, 1.0, n)
        ref = sps.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                   n_resamples=np.inf, alternative="two-sided")
        assert sign_flip_p(d) == pytest.approx(ref.pvalue)
    assert smallest_sign_flip_p(3) == 0.25 and smallest_sign_flip_p(6) == pytest.approx(1 / 32)


def test_sign_flip_beyond_exact_enumeration_is_close_to_the_exact_p():
    # 21 whole-number differences: the exact null distribution of their signed sum by convolution
    d = np.array([3, -1, 4, 1, 5, 9, 2, 6, -5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6])
    counts = {0: 1}
    for v in d:
        nxt = {}
        for total, c in counts.items():
            for s in (abs(v), -abs(v)):
                nxt[total + s] = nxt.get(total + s, 0) + c
        counts = nxt
    exact = sum(c for total, c in counts.items() if abs(total) >= abs(d.sum())) / 2 ** d.size
    assert sign_flip_p(d) == pytest.approx(exact, abs=0.003)  # 200,000 Monte Carlo patterns: SE about 0.001


def test_paired_t_ci_against_scipy():
    d = np.array([0.3, -0.1, 0.5, 0.2])
    mean, low, high = paired_t_ci(d)
    ref = sps.ttest_1samp(d, 0).confidence_interval(0.95)
    assert mean == pytest.approx(0.225) and (low, high) == pytest.approx((ref.low, ref.high))
    assert all(math.isnan(v) for v in paired_t_ci([1.0])[1:])


def _helmert(k):
    """Orthonormal contrasts of k levels (rows), written out independently of rm_anova's centring matrix."""
    rows = []
    for j in range(1, k):
        row = np.zeros(k)
        row[:j] = 1.0
        row[j] = -j
        rows.append(row / np.linalg.norm(row))
    return np.array(rows)


def test_rm_anova_by_hand():
    # 4 donors x 3 days
    y = np.array([[1.0, 2.0, 4.0], [2.0, 2.5, 5.0], [1.5, 3.5, 4.0], [0.5, 2.0, 3.5]])
    n, k = y.shape
    grand = y.mean()
    ss_days = n * ((y.mean(0) - grand) ** 2).sum()
    ss_error = ((y - y.mean(1, keepdims=True) - y.mean(0) + grand) ** 2).sum()  # the interaction residual
    f = (ss_days / 2) / (ss_error / 6)
    res = rm_anova(y)
    assert (res["df1"], res["df2"]) == (2, 6)
    assert res["F"] == pytest.approx(f) and res["p"] == pytest.approx(sps.f.sf(f, 2, 6))
    c = _helmert(k)
    s = c @ np.cov(y, rowvar=False) @ c.T
    epsilon = np.trace(s) ** 2 / ((k - 1) * np.trace(s @ s))
    assert res["epsilon"] == pytest.approx(epsilon)
    assert res["p_gg"] == pytest.approx(sps.f.sf(f, 2 * epsilon, 6 * epsilon))
    assert rm_anova(y[:, :2])["epsilon"] == pytest.approx(1.0)  # two days: sphericity holds trivially


def test_rm_anova_against_statsmodels():
    anova_rm = pytest.importorskip("statsmodels.stats.anova").AnovaRM
    y = np.array([[1.0, 2.0, 4.0], [2.0, 2.5, 5.0], [1.5, 3.5, 4.0], [0.5, 2.0, 3.5], [1.2, 1.9, 2.2]])
    long = pd.DataFrame([{"donor": i, "day": d, "v": y[i, j]} for i in range(5) for j, d in enumerate((7, 14, 28))])
    ref = anova_rm(long, "v", "donor", within=["day"]).fit().anova_table.iloc[0]
    res = rm_anova(y)
    assert res["F"] == pytest.approx(ref["F Value"]) and res["p"] == pytest.approx(ref["Pr > F"])


def test_friedman_floor_by_hand():
    # every donor ranks the days alike: chi2 = n (k - 1); with 3 donors and 3 days p = exp(-3)
    assert friedman_smallest_p(3, 3) == pytest.approx(math.exp(-3))
    rows = [r for r in over_days(_donors(3), "m") if r["test"] == "Friedman"]
    assert all(r["p_value"] == pytest.approx(r["p_min_attainable"]) for r in rows)


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


def _noisy_donors(n, seed=1):
    rng = np.random.default_rng(seed)
    days = np.array([7, 14, 28])
    return days, 0.01 * days + rng.normal(0, 0.05, (n, 1)) + rng.normal(0, 0.02, (n, 3))


def test_mixed_model_only_from_five_donors_and_never_a_z_test():
    for n in (3, 4):
        rows = [r for r in over_days(_donors(n), "m") if r["comparison"] == "slope per day"]
        assert all(r["test"] == "none" and math.isnan(r["p_value"]) and "needs at least 5" in r["note"] for r in rows)
    days, y = _noisy_donors(5)
    s = balanced_slope(days, y)
    assert s["df"] == 5 * 2 - 1
    assert s["p"] == pytest.approx(2 * sps.t.sf(abs(s["t"]), 9))  # t on 9 df, not a normal tail


def test_mixed_model_slope_against_statsmodels():
    smf = pytest.importorskip("statsmodels.formula.api")
    days, y = _noisy_donors(6)
    long = pd.DataFrame([{"donor": i, "day": d, "v": y[i, j]} for i in range(6) for j, d in enumerate(days)])
    fit = smf.mixedlm("v ~ day", long, groups=long["donor"]).fit(reml=True)
    s = balanced_slope(days, y)
    assert s["estimate"] == pytest.approx(fit.params["day"], rel=1e-6)
    assert s["se"] == pytest.approx(fit.bse["day"], rel=1e-3)


def test_donors_for_power_against_references():
    # Cohen's table: d = 0.5, two-sided alpha 0.05, power 0.8 -> 34 pairs; d = 1 -> 10
    assert donors_for_power(0.5, 1.0) == 34 and donors_for_power(-0.1, 0.1) == 10
    assert donors_for_power(0.0, 1.0) is None and donors_for_power(1.0, 0.0) is None


def test_donors_for_power_against_statsmodels():
    power = pytest.importorskip("statsmodels.stats.power").TTestPower()
    for d in (0.3, 0.8, 1.7):
        assert donors_for_power(d, 1.0) == math.ceil(power.solve_power(effect_size=d, power=0.8, alpha=0.05))


def test_holm_by_hand():
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])
    assert holm([0.5, 0.9]).max() == pytest.approx(1.0)


def test_holm_within_each_metric_over_its_primary_tests():
    donors = _donors(6, [-0.01, -0.02, -0.03, -0.04, -0.05, -0.06]).assign(m2=lambda t: t.m * 2)
    table = comparison_table(donors, ["m", "m2"])
    for metric in ("m", "m2"):
        family = table[table.holm_family == metric]
        assert list(family.test) == [SIGN_FLIP] * 3 + [RM_ANOVA] * 2
        np.testing.assert_allclose(family.p_holm, holm(family.p_value))
    assert table[table.holm_family == ""].p_holm.isna().all()
    assert table.n_donors.notna().all()


def test_conclusions_say_what_three_donors_can_support():
    donors = _donors(3, [-0.04, -0.05, -0.07])
    donors["m"] += np.random.default_rng(0).normal(0, 0.01, len(donors)) * (donors.condition == "unlabeled")
    table = comparison_table(donors, ["m"])
    (paired, over) = conclusions(table, {"m": "Matrix"})
    assert paired["question"] == "Does iron labeling change matrix?"
    assert paired["answer"].startswith("Not shown")
    assert "n = 3 donors" in paired["answer"] and "sign-flip p = 0.25 on every day" in paired["answer"]
    assert "smallest possible p = 0.25" in paired["answer"]
    d7 = table[(table.test == SIGN_FLIP) & (table.day == 7)].iloc[0]
    assert f"about {int(d7.donors_for_80pct_power)} donors (day 7)" in paired["answer"]
    assert f"day 7 {d7.estimate:+.3g} (95 % CI {d7.ci_low:.3g} to {d7.ci_high:.3g})" in paired["answer"]
    assert "change over days" in over["question"] and "Repeated-measures ANOVA" in over["answer"]
    assert f"Friedman) cannot go below p = {math.exp(-3):.3g} with 3 donors" in over["answer"]


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
