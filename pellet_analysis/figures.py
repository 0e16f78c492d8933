"""The report's plots, each also written for papers: SVG, 300-dpi PNG and a tidy CSV of its numbers.

Every plot function returns a matplotlib figure and the tidy table of exactly
the numbers drawn (one row per plotted point); :func:`save_figure` writes
``figures/<name>.svg``, ``figures/<name>.png`` and ``figures/<name>.csv`` and
returns a small PNG data URI for the HTML page. Labeled and unlabeled have the
same colour and line style in every figure (:data:`CONDITION_STYLE`), and every
legend sits inside a panel.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_write

__all__ = [
    "CONDITION_STYLE", "FIGURE_DPI", "PROFILE_METRICS", "plot_over_days", "plot_labeling_efficiency", "plot_pellet_sizes", "plot_depth_profiles",
    "save_figure",
]

#: The depth-profile measures the report plots against depth: column -> (label, unit).
PROFILE_METRICS = {
    "proteoglycan_area_fraction": ("Proteoglycan area fraction", "fraction"),
    "proteoglycan_mean_od": ("Proteoglycan mean OD", "OD"),
    "nuclei_density_per_mm2": ("Cell density", "nuclei / mm²"),
    "rounded_cell_fraction": ("Rounded (chondrocyte-like) cells", "fraction of cells"),
    "lacuna_cell_fraction": ("Cells in lacunae", "fraction of cells"),
}

#: Colour (colour-blind safe orange/blue pair) and line style per condition, the same in every figure.
CONDITION_STYLE = {
    "labeled": {"color": "#b35806", "linestyle": "-", "marker": "o"},
    "unlabeled": {"color": "#2166ac", "linestyle": "--", "marker": "s"},
}
_OTHER = {"color": "gray", "linestyle": ":", "marker": "^"}
#: Resolution of the PNG files in figures/ (the page embeds a 100-dpi copy).
FIGURE_DPI = 300
_GUESSED_MARKER = dict(marker="X", s=90, facecolor="none", edgecolor="black", linewidths=1.2)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _style(condition) -> dict:
    return CONDITION_STYLE.get(str(condition), _OTHER)


def _condition_handles(conditions, *, guessed: bool = False):
    plt = _pyplot()
    handles = [plt.Line2D([], [], label=c, **_style(c)) for c in CONDITION_STYLE if c in set(conditions)]
    if guessed:
        handles.append(plt.Line2D([], [], linestyle="", marker="X", markerfacecolor="none", markeredgecolor="black",
                                  markersize=9, label="pixel size estimated"))
    return handles


def _legend_in_headroom(ax, handles, *, fraction: float = 0.22) -> None:
    """One-row legend at the top of the panel, in headroom added above the data so it covers no point."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + fraction * (high - low))
    ax.legend(handles=handles, fontsize=8, loc="upper left", ncol=len(handles), frameon=False,
              handletextpad=0.3, columnspacing=0.8, borderaxespad=0.2)


def plot_over_days(donors: pd.DataFrame, metrics: dict, guessed_keys=frozenset(), size_metrics=()):
    """One panel per metric: one line per donor and condition over days.

    Parameters
    ----------
    donors : DataFrame
        Donor-level values with ``donor``, ``condition``, ``day``.
    metrics : dict
        Column -> (label, unit).
    guessed_keys : set of (donor, condition, day)
        Donor means that rest on a guessed pixel size; marked X on ``size_metrics``.

    Returns
    -------
    fig, DataFrame
        The tidy table: donor, condition, day, metric, value, pixel_size_guessed.
    """
    plt = _pyplot()
    n = len(metrics)
    cols = 2 if n > 1 else 1
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    tidy = []
    days = sorted(int(d) for d in donors["day"].unique())
    for ax, (metric, (label, unit)) in zip(axes.ravel(), metrics.items()):
        for (donor, condition), sub in donors.groupby(["donor", "condition"]):
            sub = sub.sort_values("day")
            style = _style(condition)
            ax.plot(sub["day"], sub[metric], alpha=0.8, **style)
            guessed = np.array([(donor, condition, int(d)) in guessed_keys for d in sub["day"]], bool)
            if metric in size_metrics and guessed.any():
                ax.scatter(sub["day"][guessed], sub[metric][guessed], zorder=3, **_GUESSED_MARKER)
            tidy += [{"donor": donor, "condition": condition, "day": int(d), "metric": metric, "value": float(v),
                      "pixel_size_guessed": bool(g and metric in size_metrics)} for d, v, g in zip(sub["day"], sub[metric], guessed)]
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("day")
        ax.set_ylabel(unit)
        if days:
            ax.set_xticks(days)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    _legend_in_headroom(axes.ravel()[0], _condition_handles(donors["condition"], guessed=bool(guessed_keys)))
    fig.suptitle("One line per donor and condition (donor means of section means)", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig, pd.DataFrame(tidy, columns=["donor", "condition", "day", "metric", "value", "pixel_size_guessed"])


def plot_depth_profiles(profiles: pd.DataFrame, metrics: dict):
    """Each measure against depth from the pellet surface: one row of panels per measure, one column per day, a line per condition.

    Parameters
    ----------
    profiles : DataFrame
        profiles.csv rows (``condition``, ``day``, ``depth_from_um``,
        ``depth_to_um``, ``area_um2`` and the metric columns), pellets
        excluded by review already left out.
    metrics : dict
        Column -> (label, unit).

    Returns
    -------
    fig, DataFrame
        The tidy table: day, condition, metric, depth_um (band middle), value
        (mean over the pellets' bands weighted by what the measure is a
        fraction of: band area, proteoglycan area or cells), n_pellets.
    """
    plt = _pyplot()
    data = profiles.dropna(subset=["day", "condition"])
    days = sorted(int(d) for d in data["day"].unique()) or [None]
    fig, axes = plt.subplots(len(metrics), len(days), figsize=(3.6 * len(days), 2.6 * len(metrics)), squeeze=False, sharex=True)
    tidy = []
    for col, day in enumerate(days):
        at_day = data[data["day"] == day] if day is not None else data
        for row, (metric, (label, unit)) in enumerate(metrics.items()):
            ax = axes[row, col]
            for condition, sub in at_day.groupby("condition"):
                sub = sub[sub["area_um2"] > 0]
                # each mean over what it is a fraction of: pixels, proteoglycan pixels, or cells (a band without cells has no value)
                weights = {
                    "proteoglycan_mean_od": sub["area_um2"] * sub["proteoglycan_area_fraction"],
                    "rounded_cell_fraction": sub["nuclei_count"],
                    "lacuna_cell_fraction": sub["nuclei_count"],
                }.get(metric, sub["area_um2"])
                grouped = (sub.assign(_w=weights, _wv=weights * sub[metric]).groupby("depth_from_um")
                           .agg(w=("_w", "sum"), wv=("_wv", "sum"), n=("pellet_id", "size"), to=("depth_to_um", "first")))
                grouped = grouped[grouped["w"] > 0]
                depth = (grouped.index.to_numpy(float) + grouped["to"].to_numpy(float)) / 2
                value = (grouped["wv"] / grouped["w"]).to_numpy(float)
                ax.plot(depth, value, **_style(condition))
                tidy += [{"day": day, "condition": condition, "metric": metric, "depth_um": float(d), "value": float(v), "n_pellets": int(n)}
                         for d, v, n in zip(depth, value, grouped["n"])]
            if row == 0:
                ax.set_title(f"day {day}" if day is not None else "", fontsize=10)
            if col == 0:
                ax.set_ylabel(f"{label}\n({unit})", fontsize=8)
            if row == len(metrics) - 1:
                ax.set_xlabel("depth from the surface (µm)")
            ax.grid(alpha=0.3)
    _legend_in_headroom(axes[0, 0], _condition_handles(data["condition"]))
    fig.suptitle("Depth profiles: band means over pellets (weighted by area, proteoglycan area or cells), surface at 0", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig, pd.DataFrame(tidy, columns=["day", "condition", "metric", "depth_um", "value", "n_pellets"])


def plot_labeling_efficiency(
    efficiency: pd.DataFrame, metrics: dict, *, title: str = "Labeling efficiency: labeled and unlabeled pellets of each donor, per day", limits=None
):
    """Labeled against unlabeled per day, paired by donor: one panel per metric.

    Parameters
    ----------
    efficiency : DataFrame
        One row per donor and day with ``<metric>_labeled`` and ``<metric>_unlabeled``
        (:func:`pellet_analysis.report.labeling_efficiency`).
    metrics : dict
        Column -> (label, unit).
    title : str, keyword-only
        The figure's title.
    limits : dict, keyword-only, optional
        Column -> (lowest, highest) of its axis (a grade's whole range); others scale to the data.

    Returns
    -------
    fig, DataFrame
        The tidy table: donor, day, metric, condition, x (position on the axis), value.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    days = sorted(int(d) for d in efficiency["day"].unique())
    offset = {"unlabeled": -0.18, "labeled": 0.18}
    tidy = []
    for ax, (metric, (label, unit)) in zip(axes.ravel(), metrics.items()):
        for r in efficiency.itertuples():
            i = days.index(int(r.day))
            values = {c: getattr(r, f"{metric}_{c}") for c in offset}
            ax.plot([i + offset["unlabeled"], i + offset["labeled"]], [values["unlabeled"], values["labeled"]], color="0.6", lw=0.8, zorder=1)
            for condition, value in values.items():
                style = _style(condition)
                ax.scatter(i + offset[condition], value, color=style["color"], marker=style["marker"], s=30, zorder=2)
                tidy.append({"donor": r.donor, "day": int(r.day), "metric": metric, "condition": condition,
                             "x": i + offset[condition], "value": float(value)})
        ax.set_xticks(range(len(days)))
        ax.set_xticklabels([f"day {d}" for d in days])
        ax.set_title(label, fontsize=11)
        ax.set_ylabel(unit)
        if limits and metric in limits:
            ax.set_ylim(*limits[metric])
        ax.grid(alpha=0.3)
    plt_handles = [plt.Line2D([], [], linestyle="", color=_style(c)["color"], marker=_style(c)["marker"], label=c) for c in ("labeled", "unlabeled")]
    plt_handles.append(plt.Line2D([], [], color="0.6", lw=0.8, label="same donor"))
    _legend_in_headroom(axes.ravel()[0], plt_handles)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig, pd.DataFrame(tidy, columns=["donor", "day", "metric", "condition", "x", "value"])


def plot_pellet_sizes(table: pd.DataFrame, guessed, metrics: dict):
    """One point per pellet by condition and day; pellets at a guessed pixel size marked X.

    Returns
    -------
    fig, DataFrame
        The tidy table: image, pellet_id, condition, day, group, metric, x, value, pixel_size_guessed.
    """
    plt = _pyplot()
    conditions = table["condition"] if "condition" in table else pd.Series([None] * len(table), index=table.index)
    days = table["day"] if "day" in table else pd.Series([None] * len(table), index=table.index)
    keys = [(str(c), int(d)) if pd.notna(c) and pd.notna(d) else ("~", 0) for c, d in zip(conditions, days)]
    groups = [f"{c} d{d}" if c != "~" else "no condition/day" for c, d in keys]
    order = [g for _, g in sorted(set(zip(keys, groups)))]  # by condition, then day as a number
    x = np.array([order.index(g) for g in groups], float) + np.random.default_rng(0).uniform(-0.15, 0.15, len(groups))
    guessed = np.asarray(guessed, bool)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    tidy = []
    for ax, (metric, (label, unit)) in zip(axes.ravel(), metrics.items()):
        values = table[metric].to_numpy(float)
        for condition in sorted(set(map(str, conditions))):
            mine = np.asarray([str(c) == condition for c in conditions])
            style = _style(condition)
            ax.scatter(x[mine & ~guessed], values[mine & ~guessed], color=style["color"], marker=style["marker"], s=30, alpha=0.8)
            ax.scatter(x[mine & guessed], values[mine & guessed], **_GUESSED_MARKER)
            ax.scatter(x[mine & guessed], values[mine & guessed], color=style["color"], marker=style["marker"], s=12)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=11)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        tidy += [{"image": str(r.image), "pellet_id": int(r.pellet_id), "condition": None if pd.isna(c) else str(c),
                  "day": None if pd.isna(d) else int(d), "group": g, "metric": metric, "x": float(xi), "value": float(v), "pixel_size_guessed": bool(gu)}
                 for r, c, d, g, xi, v, gu in zip(table.itertuples(), conditions, days, groups, x, values, guessed)]
    handles = [plt.Line2D([], [], linestyle="", color=_style(c)["color"], marker=_style(c)["marker"], label=c)
               for c in CONDITION_STYLE if c in set(map(str, conditions))]
    if guessed.any():
        handles.append(plt.Line2D([], [], linestyle="", marker="X", markerfacecolor="none", markeredgecolor="black", markersize=9,
                                  label="pixel size estimated (or default)"))
    _legend_in_headroom(axes.ravel()[0], handles, fraction=0.3)
    fig.suptitle("One point per pellet", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig, pd.DataFrame(tidy, columns=["image", "pellet_id", "condition", "day", "group", "metric", "x", "value", "pixel_size_guessed"])


def save_figure(fig, data: pd.DataFrame, name: str, figures_dir) -> str:
    """Write ``<name>.svg``, ``<name>.png`` (300 dpi) and ``<name>.csv``; close the figure.

    Returns
    -------
    str
        A 100-dpi PNG of the figure as a data URI, for the HTML page.
    """
    plt = _pyplot()
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    # a fixed SVG hash salt and no date keep the SVG the same from run to run
    with plt.rc_context({"svg.hashsalt": "pellet-analysis", "svg.fonttype": "none"}):
        for ext, kw in (("svg", {"metadata": {"Date": None}}), ("png", {"dpi": FIGURE_DPI})):
            with atomic_write(figures_dir / f"{name}.{ext}", "wb") as handle:
                fig.savefig(handle, format=ext, **kw)
    with atomic_write(figures_dir / f"{name}.csv", "w") as handle:
        data.to_csv(handle, index=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
