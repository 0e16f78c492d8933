"""Statistics of the study comparison, on donor-level values.

- labeled versus unlabeled per day, paired by donor: mean paired difference
  with a percentile bootstrap 95 % CI, and a Wilcoxon signed-rank test when
  there are enough donors for it to reach p < 0.05 (six or more), saying so
  otherwise;
- change over days per condition: Friedman test over donors with every day,
  and a linear mixed model (value ~ day, random intercept per donor) when
  statsmodels is installed;
- Holm correction over every p value of the table.

Every row names its n (donors).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["MIN_DONORS_WILCOXON", "bootstrap_mean_ci", "holm", "paired_by_day", "over_days", "comparison_table"]

#: With fewer paired donors the exact two-sided Wilcoxon p value cannot fall below 0.05 (2 / 2**5 = 0.0625).
MIN_DONORS_WILCOXON = 6
STAT_COLUMNS = [
    "metric", "comparison", "day", "condition", "test", "n_donors", "estimate", "ci_low", "ci_high",
    "statistic", "p_value", "p_holm", "note",
]


def bootstrap_mean_ci(values, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0):
    """Percentile bootstrap CI of the mean; (nan, nan) with fewer than two values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p values (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.where(np.isfinite(p))[0]
    if idx.size == 0:
        return out
    order = idx[np.argsort(p[idx])]
    m = idx.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _row(**kw):
    return {c: kw.get(c, np.nan if c not in ("note", "test", "comparison", "metric", "condition") else "") for c in STAT_COLUMNS}


def paired_by_day(donors: pd.DataFrame, metric: str, *, seed: int = 0) -> list[dict]:
    """Labeled minus unlabeled, paired by donor, for each day."""
    rows = []
    for day in sorted(donors["day"].unique()):
        wide = donors[donors.day == day].pivot_table(index="donor", columns="condition", values=metric, aggfunc="mean")
        if not {"labeled", "unlabeled"} <= set(wide.columns):
            rows.append(_row(metric=metric, comparison="labeled - unlabeled", day=day, test="none", n_donors=0, note="one condition missing"))
            continue
        diff = (wide["labeled"] - wide["unlabeled"]).dropna()
        n = int(diff.size)
        low, high = bootstrap_mean_ci(diff.to_numpy(), seed=seed)
        base = dict(metric=metric, comparison="labeled - unlabeled", day=int(day), n_donors=n,
                    estimate=float(diff.mean()) if n else np.nan, ci_low=low, ci_high=high)
        if n >= MIN_DONORS_WILCOXON and np.any(diff.to_numpy() != 0):
            res = sps.wilcoxon(diff.to_numpy(), alternative="two-sided")
            rows.append(_row(**base, test="Wilcoxon signed-rank", statistic=float(res.statistic), p_value=float(res.pvalue)))
        else:
            rows.append(_row(**base, test="none", note=f"{n} paired donors: Wilcoxon needs at least {MIN_DONORS_WILCOXON}"))
    return rows


def over_days(donors: pd.DataFrame, metric: str) -> list[dict]:
    """Change over days within each condition (Friedman; mixed model if statsmodels is there)."""
    rows = []
    for condition in sorted(donors["condition"].unique()):
        sub = donors[donors.condition == condition]
        wide = sub.pivot_table(index="donor", columns="day", values=metric, aggfunc="mean").dropna()
        n, k = wide.shape
        days = ", ".join(str(d) for d in wide.columns)
        if k >= 3 and n >= 2:
            res = sps.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns])
            rows.append(_row(metric=metric, comparison=f"over days {days}", condition=condition, test="Friedman",
                             n_donors=n, statistic=float(res.statistic), p_value=float(res.pvalue)))
        else:
            rows.append(_row(metric=metric, comparison="over days", condition=condition, test="none", n_donors=n,
                             note="Friedman needs at least 3 days and 2 donors with every day"))
        mixed = _mixed_model(sub, metric)
        if mixed is not None:
            rows.append(_row(metric=metric, comparison="slope per day", condition=condition, **mixed))
    return rows


def _mixed_model(sub: pd.DataFrame, metric: str) -> dict | None:
    try:
        import statsmodels.formula.api as smf
    except ImportError:
        return None
    data = sub[["donor", "day", metric]].dropna().rename(columns={metric: "value"})
    n = data.donor.nunique()
    if n < 3 or data.day.nunique() < 2 or data.value.std() == 0:
        return {"test": "mixed model", "n_donors": n, "note": "too few donors or days for a mixed model"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = smf.mixedlm("value ~ day", data, groups=data["donor"]).fit(reml=True)
        except Exception as error:  # singular fits and the like: report, do not fail the report
            return {"test": "mixed model", "n_donors": n, "note": f"did not converge ({type(error).__name__})"}
    low, high = fit.conf_int().loc["day"]
    return {"test": "mixed model (value ~ day, donor random intercept)", "n_donors": n, "estimate": float(fit.params["day"]),
            "ci_low": float(low), "ci_high": float(high), "statistic": float(fit.tvalues["day"]), "p_value": float(fit.pvalues["day"])}


def comparison_table(donors: pd.DataFrame, metrics, *, seed: int = 0) -> pd.DataFrame:
    """Every comparison for every metric, with Holm-adjusted p values over the whole table."""
    rows = []
    for metric in metrics:
        rows += paired_by_day(donors, metric, seed=seed)
        rows += over_days(donors, metric)
    table = pd.DataFrame(rows, columns=STAT_COLUMNS)
    table["p_holm"] = holm(table["p_value"].to_numpy())
    return table
