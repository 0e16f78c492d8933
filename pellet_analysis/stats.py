"""Statistics of the study comparison, on donor-level values.

Donors are the unit of replication: pellets are averaged per section and
sections per donor before any test (:func:`~pellet_analysis.study.aggregate`).

- labeled versus unlabeled per day, paired by donor: the mean paired
  difference with a t-based 95 % CI (n - 1 degrees of freedom) and an exact
  sign-flip permutation p value (all 2**n sign patterns); a Wilcoxon
  signed-rank test beside it when there are six or more donors (with fewer its
  exact p cannot fall below 0.05);
- change over days per condition, on donors with every day: a one-way
  repeated-measures ANOVA (Greenhouse-Geisser corrected), a Friedman test
  beside it with its smallest attainable p, and, with at least
  :data:`MIN_DONORS_MIXED` donors and a complete design, the slope per day of
  a random-intercept linear mixed model tested with its exact small-sample
  degrees of freedom (never a z-test);
- Holm correction within each metric over its primary tests (the paired
  sign-flip test of every day and the ANOVA of every condition); the
  secondary tests (Wilcoxon, Friedman, slope) are shown, not counted.

Everything is numpy/scipy: the table does not depend on optional installs.
Every row names its n (donors).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "MIN_DONORS_WILCOXON",
    "MIN_DONORS_MIXED",
    "STAT_COLUMNS",
    "holm",
    "paired_t_ci",
    "sign_flip_p",
    "smallest_sign_flip_p",
    "friedman_smallest_p",
    "rm_anova",
    "balanced_slope",
    "donors_for_power",
    "paired_by_day",
    "over_days",
    "comparison_table",
    "conclusions",
]

#: With fewer paired donors the exact two-sided Wilcoxon p value cannot fall below 0.05 (2 / 2**5 = 0.0625).
MIN_DONORS_WILCOXON = 6
#: Fewer donors than this give a random-effect variance from too few groups: no mixed model is fitted.
MIN_DONORS_MIXED = 5
#: Exact sign-flip enumeration up to this many donors (2**20 patterns); above it a seeded Monte Carlo sample.
MAX_EXACT_FLIPS = 20

PAIRED = "labeled - unlabeled"
SIGN_FLIP = "sign-flip permutation (exact)"
RM_ANOVA = "repeated-measures ANOVA (Greenhouse-Geisser)"
STAT_COLUMNS = [
    "metric", "comparison", "day", "condition", "test", "n_donors", "estimate", "ci_low", "ci_high",
    "df", "statistic", "p_value", "p_min_attainable", "holm_family", "p_holm", "donors_for_80pct_power", "note",
]
_TEXT_COLUMNS = ("metric", "comparison", "condition", "test", "holm_family", "note")


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p values (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.where(np.isfinite(p))[0]
    if idx.size == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    m = idx.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_t_ci(differences, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its t-based CI (n - 1 degrees of freedom).

    Returns
    -------
    mean, low, high : float
        NaN bounds with fewer than two differences.
    """
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(d.mean())
    if d.size < 2:
        return mean, float("nan"), float("nan")
    half = float(sps.t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return mean, mean - half, mean + half


def sign_flip_p(differences, *, n_resamples: int = 200_000, seed: int = 0) -> float:
    """Two-sided permutation p value of paired differences, by flipping their signs.

    Under the null hypothesis each donor's difference is as likely positive as
    negative; the statistic is ``|sum(d)|``. Up to :data:`MAX_EXACT_FLIPS`
    donors all ``2**n`` sign patterns are enumerated (exact p); with more, a
    seeded Monte Carlo sample of ``n_resamples`` patterns (plus the observed).

    Returns
    -------
    float
        NaN without differences.
    """
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return float("nan")
    observed = abs(d.sum())
    # a relative tolerance so that patterns equal to the observed one up to rounding count as extreme
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if d.size <= MAX_EXACT_FLIPS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        sums = np.abs(signs @ d)
        return float(np.mean(sums >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_resamples, d.size))
    hits = int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (hits + 1) / (n_resamples + 1)


def smallest_sign_flip_p(n: int) -> float:
    """The smallest two-sided sign-flip p value ``n`` donors can give: 2 / 2**n (1 without donors)."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def friedman_smallest_p(n: int, k: int) -> float:
    """The smallest p value of scipy's Friedman test with ``n`` donors and ``k`` days.

    It is reached when every donor ranks the days alike: chi-square = n (k - 1)
    on k - 1 degrees of freedom.
    """
    return float(sps.chi2.sf(n * (k - 1), k - 1))


def rm_anova(values) -> dict:
    """One-way repeated-measures ANOVA of a donors x days array (no missing values).

    Parameters
    ----------
    values : array_like, shape (n, k)
        One row per donor, one column per day.

    Returns
    -------
    dict
        ``F``, ``df1`` = k - 1, ``df2`` = (k - 1)(n - 1), ``p`` (uncorrected),
        ``epsilon`` (Greenhouse-Geisser, from the double-centred covariance
        of the days) and ``p_gg`` (with both df multiplied by epsilon).
    """
    y = np.asarray(values, dtype=float)
    n, k = y.shape
    grand = y.mean()
    ss_days = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_donors = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_error = np.sum((y - grand) ** 2) - ss_days - ss_donors
    df1, df2 = k - 1, (k - 1) * (n - 1)
    if ss_error <= 1e-15 * max(1.0, float(np.sum((y - grand) ** 2))):
        f = math.inf if ss_days > 0 else float("nan")
        p = 0.0 if ss_days > 0 else float("nan")
        return {"F": f, "df1": df1, "df2": df2, "p": p, "epsilon": 1.0, "p_gg": p}
    f = (ss_days / df1) / (ss_error / df2)
    cov = np.cov(y, rowvar=False)
    centre = np.eye(k) - 1.0 / k
    dc = centre @ cov @ centre
    epsilon = float(np.trace(dc) ** 2 / (df1 * np.sum(dc * dc))) if np.sum(dc * dc) > 0 else 1.0
    epsilon = min(1.0, max(1.0 / df1, epsilon))
    return {
        "F": float(f), "df1": df1, "df2": df2, "p": float(sps.f.sf(f, df1, df2)),
        "epsilon": epsilon, "p_gg": float(sps.f.sf(f, epsilon * df1, epsilon * df2)),
    }


def balanced_slope(days, values, *, confidence: float = 0.95) -> dict:
    """Slope per day of ``value ~ day + (1 | donor)`` on a complete donors x days table.

    With every donor measured on the same days, the REML estimate of the
    fixed slope of a random-intercept model equals the within-donor least
    squares slope, its standard error rests on the within-donor residual
    variance, and the Kenward-Roger (and Satterthwaite) degrees of freedom
    are exactly n (k - 1) - 1. The test is a t test on those df.

    Parameters
    ----------
    days : array_like, shape (k,)
    values : array_like, shape (n, k)

    Returns
    -------
    dict
        ``estimate``, ``se``, ``df``, ``t``, ``p``, ``ci_low``, ``ci_high``.
    """
    x = np.asarray(days, dtype=float)
    y = np.asarray(values, dtype=float)
    n, k = y.shape
    xc = x - x.mean()
    yc = y - y.mean(axis=1, keepdims=True)  # the donor intercepts removed
    sxx = n * np.sum(xc**2)
    slope = float(np.sum(yc * xc) / sxx)
    df = n * (k - 1) - 1
    residual = yc - slope * xc
    sigma2 = float(np.sum(residual**2) / df)
    se = math.sqrt(sigma2 / sxx)
    t = slope / se if se > 0 else math.copysign(math.inf, slope) if slope else float("nan")
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * sps.t.sf(abs(t), df)) if np.isfinite(t) else (0.0 if slope else float("nan"))
    return {"estimate": slope, "se": se, "df": df, "t": float(t), "p": p, "ci_low": slope - half, "ci_high": slope + half}


def donors_for_power(effect: float, sd: float, *, power: float = 0.8, alpha: float = 0.05, max_n: int = 10_000) -> int | None:
    """Smallest number of donors for a two-sided paired t test to reach ``power``.

    Power from the noncentral t distribution with noncentrality
    ``effect / sd * sqrt(n)`` on n - 1 degrees of freedom.

    Returns
    -------
    int or None
        None when ``effect`` or ``sd`` is zero or not finite, or when more
        than ``max_n`` donors would be needed.
    """
    if not (np.isfinite(effect) and np.isfinite(sd)) or effect == 0 or sd <= 0:
        return None  # no effect, or no spread to judge it by (identical differences)
    d = abs(effect) / sd
    # the normal approximation never asks for more donors than the t test needs: start the search there
    start = max(2, int(((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) / d) ** 2))
    for n in range(start, max_n + 1):
        df = n - 1
        crit = sps.t.ppf(1 - alpha / 2, df)
        nc = d * math.sqrt(n)
        achieved = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
        if achieved >= power:
            return n
    return None


def _row(**kw):
    return {c: kw.get(c, "" if c in _TEXT_COLUMNS else np.nan) for c in STAT_COLUMNS}


def _paired_differences(donors: pd.DataFrame, metric: str, day) -> pd.Series | None:
    wide = donors[donors.day == day].pivot_table(index="donor", columns="condition", values=metric, aggfunc="mean")
    if not {"labeled", "unlabeled"} <= set(wide.columns):
        return None
    return (wide["labeled"] - wide["unlabeled"]).dropna()


def paired_by_day(donors: pd.DataFrame, metric: str, *, seed: int = 0) -> list[dict]:
    """Labeled minus unlabeled, paired by donor, for each day.

    One primary row per day (mean difference, t CI, exact sign-flip p) and,
    with :data:`MIN_DONORS_WILCOXON` or more donors, a Wilcoxon row beside it.
    """
    rows = []
    for day in sorted(donors["day"].unique()):
        diff = _paired_differences(donors, metric, day)
        if diff is None:
            rows.append(_row(metric=metric, comparison=PAIRED, day=int(day), test="none", n_donors=0, note="one condition missing"))
            continue
        d = diff.to_numpy(float)
        n = int(d.size)
        mean, low, high = paired_t_ci(d)
        sd = float(d.std(ddof=1)) if n >= 2 else float("nan")
        needed = donors_for_power(mean, sd)
        rows.append(_row(
            metric=metric, comparison=PAIRED, day=int(day), test=SIGN_FLIP, n_donors=n, estimate=mean, ci_low=low, ci_high=high,
            df=n - 1 if n >= 2 else np.nan, p_value=sign_flip_p(d, seed=seed) if n else np.nan,
            p_min_attainable=smallest_sign_flip_p(n), holm_family=metric, donors_for_80pct_power=needed if needed else np.nan,
            note=f"CI: t, {n - 1} df; p: all 2^{n} = {2**n} sign patterns; paired SD {sd:.3g} (power: paired t)" if n >= 2 else f"{n} paired donors",
        ))
        if n >= MIN_DONORS_WILCOXON and np.any(d != 0):
            res = sps.wilcoxon(d, alternative="two-sided")
            rows.append(_row(metric=metric, comparison=PAIRED, day=int(day), test="Wilcoxon signed-rank", n_donors=n,
                             statistic=float(res.statistic), p_value=float(res.pvalue), p_min_attainable=2 / 2**n,
                             note="secondary (no Holm)"))
        elif n < MIN_DONORS_WILCOXON:
            rows[-1]["note"] += f"; Wilcoxon not run: {n} donors (needs {MIN_DONORS_WILCOXON})"
    return rows


def over_days(donors: pd.DataFrame, metric: str) -> list[dict]:
    """Change over days within each condition, on the donors with every day.

    A repeated-measures ANOVA (primary, Greenhouse-Geisser), a Friedman test
    with its smallest attainable p, and with at least :data:`MIN_DONORS_MIXED`
    donors the slope per day of a random-intercept mixed model.
    """
    rows = []
    for condition in sorted(donors["condition"].unique()):
        sub = donors[donors.condition == condition]
        wide = sub.pivot_table(index="donor", columns="day", values=metric, aggfunc="mean").dropna()
        n, k = wide.shape
        days = [int(d) for d in wide.columns]
        comparison = "over days " + ", ".join(str(d) for d in days)
        if k < 2 or n < 2:
            rows.append(_row(metric=metric, comparison="over days", condition=condition, test="none", n_donors=n,
                             note="needs at least 2 days and 2 donors with every day"))
            continue
        y = wide.to_numpy(float)
        res = rm_anova(y)
        rows.append(_row(
            metric=metric, comparison=comparison, condition=condition, test=RM_ANOVA, n_donors=n, statistic=res["F"],
            df=res["epsilon"] * res["df2"], p_value=res["p_gg"], holm_family=metric,
            note=f"F({res['df1']}, {res['df2']}) = {res['F']:.3g}, uncorrected p = {res['p']:.3g}; "
                 f"GG epsilon {res['epsilon']:.3g}: df ({res['epsilon'] * res['df1']:.3g}, {res['epsilon'] * res['df2']:.3g})",
        ))
        if k >= 3:
            fr = sps.friedmanchisquare(*[y[:, j] for j in range(k)])
            smallest = friedman_smallest_p(n, k)
            rows.append(_row(metric=metric, comparison=comparison, condition=condition, test="Friedman", n_donors=n,
                             statistic=float(fr.statistic), df=k - 1, p_value=float(fr.pvalue), p_min_attainable=smallest,
                             note=f"secondary (no Holm); chi-square, {k - 1} df; smallest possible p with {n} donors {smallest:.3g}"))
        if n >= MIN_DONORS_MIXED:
            s = balanced_slope(days, y)
            rows.append(_row(metric=metric, comparison="slope per day", condition=condition,
                             test="mixed model (value ~ day + (1 | donor))", n_donors=n, estimate=s["estimate"],
                             ci_low=s["ci_low"], ci_high=s["ci_high"], df=s["df"], statistic=s["t"], p_value=s["p"],
                             note=f"secondary (no Holm); complete design: t on Kenward-Roger df n(k-1)-1 = {s['df']}"))
        else:
            rows.append(_row(metric=metric, comparison="slope per day", condition=condition, test="none", n_donors=n,
                             note=f"no mixed model: {n} donors with every day (needs at least {MIN_DONORS_MIXED})"))
    return rows


def comparison_table(donors: pd.DataFrame, metrics, *, seed: int = 0) -> pd.DataFrame:
    """Every comparison for every metric, Holm-adjusted within each metric's primary tests.

    Parameters
    ----------
    donors : DataFrame
        Donor-level values: ``donor``, ``condition``, ``day`` and the metrics.
    metrics : list of str
    seed : int, keyword-only
        Seed of the Monte Carlo sign flips (used only above :data:`MAX_EXACT_FLIPS` donors).

    Returns
    -------
    DataFrame
        Columns :data:`STAT_COLUMNS`; ``p_holm`` is set on the rows whose
        ``holm_family`` names their metric.
    """
    rows = []
    for metric in metrics:
        rows += paired_by_day(donors, metric, seed=seed)
        rows += over_days(donors, metric)
    table = pd.DataFrame(rows, columns=STAT_COLUMNS)
    for family, index in table[table.holm_family != ""].groupby("holm_family").groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p_value"].to_numpy(float))
    return table


def _p(p: float) -> str:
    return "not tested" if not np.isfinite(p) else f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def conclusions(statistics: pd.DataFrame, labels=None, *, alpha: float = 0.05) -> list[dict]:
    """One sentence per question, generated from a :func:`comparison_table`.

    Questions: for each metric, does labeling change it (per day, paired by
    donor), and does it change over days (per condition)?

    Parameters
    ----------
    statistics : DataFrame
    labels : dict, optional
        Metric -> readable name.
    alpha : float, keyword-only

    Returns
    -------
    list of dict
        ``metric``, ``question`` and ``answer`` (plain text).
    """
    labels = labels or {}
    out = []
    if statistics is None or not len(statistics):
        return out
    for metric, rows in statistics.groupby("metric", sort=False):
        name = labels.get(metric, metric).lower()
        paired = rows[(rows.test == SIGN_FLIP) & (rows.n_donors >= 2)]
        if len(paired):
            out.append({"metric": metric, "question": f"Does iron labeling change {name}?", "answer": _paired_answer(paired, alpha)})
        anova = rows[rows.test == RM_ANOVA]
        if len(anova):
            out.append({"metric": metric, "question": f"Does {name} change over days?",
                        "answer": _over_days_answer(anova, rows[rows.test == "Friedman"], alpha)})
    return out


def _same_or_each(values, fmt) -> str:
    """'x on every day' when all equal, else 'a / b / c'."""
    texts = [fmt(v) for v in values]
    return f"{texts[0]} on every day" if len(set(texts)) == 1 and len(texts) > 1 else " / ".join(texts)


def _paired_answer(paired: pd.DataFrame, alpha: float) -> str:
    days = [int(d) for d in paired.day]
    significant = [int(d) for d in paired[paired.p_holm < alpha].day]
    verdict = (f"Yes on {_days(significant)} (Holm p < {alpha})." if significant
               else f"Not shown (no day at Holm p < {alpha}).")
    effects = "; ".join(f"day {int(r.day)} {r.estimate:+.3g} (95 % CI {r.ci_low:.3g} to {r.ci_high:.3g})" for r in paired.itertuples())
    n = sorted({int(v) for v in paired.n_donors})
    text = (f"{verdict} Labeled − unlabeled: {effects}; sign-flip p = {_same_or_each(paired.p_value, _p)}, "
            f"Holm p = {_same_or_each(paired.p_holm, _p)}; n = {' / '.join(map(str, n))} donors.")
    smallest = smallest_sign_flip_p(n[0])
    if smallest >= alpha:
        text += (f" With {n[0]} donors no sign-flip test can reach p < {alpha} (smallest possible p = {smallest:.3g}): "
                 "this design cannot show a difference whatever its size.")
    clear = [int(r.day) for r in paired.itertuples() if (r.ci_low > 0 or r.ci_high < 0) and int(r.day) not in significant]
    if clear:
        text += (f" The t CI excludes 0 on {_days(clear)}, but it assumes normally distributed donor "
                 f"differences, which {n[0]} donors cannot check.")
    needed = [(int(r.day), int(r.donors_for_80pct_power)) for r in paired.itertuples() if np.isfinite(r.donors_for_80pct_power)]
    if needed:
        text += (" 80 % power at the observed effect and paired SD needs about "
                 + ", ".join(f"{k} donors (day {d})" for d, k in needed)
                 + f" for a paired t test, and at least {MIN_DONORS_WILCOXON} for an exact sign-flip or Wilcoxon test.")
    return text


def _over_days_answer(anova: pd.DataFrame, friedman: pd.DataFrame, alpha: float) -> str:
    changed = list(anova[anova.p_holm < alpha].condition)
    verdict = (f"Yes in {' and '.join(changed)} pellets (Holm p < {alpha})." if changed
               else f"Not shown (no condition at Holm p < {alpha}).")
    tests = "; ".join(f"{r.condition} F = {r.statistic:.3g}, Greenhouse-Geisser p = {_p(r.p_value)}, Holm p = {_p(r.p_holm)}, n = {int(r.n_donors)}"
                      for r in anova.itertuples())
    text = f"{verdict} Repeated-measures ANOVA on donor means: {tests}."
    if len(friedman):
        r = friedman.iloc[0]
        text += f" A rank test (Friedman) cannot go below p = {r.p_min_attainable:.3g} with {int(r.n_donors)} donors."
    return text


def _days(days) -> str:
    return ("day " if len(days) == 1 else "days ") + ", ".join(map(str, days))
