"""The study report of a run: summary tables, statistics and a self-contained HTML page.

``make_report(run_dir)`` reads the run's contract files and writes
``summary.csv``, ``summary.parquet``, ``statistics.csv`` and ``report.html``
(plots and thumbnails embedded as data URIs, so the page opens with no network).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .io import atomic_write, write_tables
from .measure import SHAPE_COLUMNS
from .overlay import render_overlay
from .review import apply_review
from .stats import comparison_table
from .study import aggregate

__all__ = ["GUESSED_PIXEL_SIZES", "REPORT_METRICS", "SIZE_METRICS", "make_report"]

#: Metric column -> (label, unit) shown in plots and tables.
REPORT_METRICS = {
    "proteoglycan_area_fraction": ("Proteoglycan area fraction", "fraction of pellet"),
    "iron_area_fraction": ("Iron area fraction", "fraction of pellet"),
    "nuclei_density_per_mm2": ("Nuclei density", "per mm²"),
    "bern_score": ("Bern-like score", "0-9"),
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{margin-bottom:0} .sub{color:#666;margin-top:4px} table{border-collapse:collapse;font-size:13px;margin:8px 0 24px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right} th{background:#f3f3f3} td.t,th.t{text-align:left}
.thumbs{display:flex;flex-wrap:wrap;gap:10px} figure{margin:0;width:200px;font-size:12px} figure img{max-width:200px;border:1px solid #ccc}
#plots{max-width:100%} .note{color:#8a5a00} .excluded{color:#999;text-decoration:line-through}
"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


#: ``pixel_size_source`` values whose sizes rest on a guess: the report names those images at its top
#: and marks their pellets in the plots of measures in µm.
GUESSED_PIXEL_SIZES = ("estimated", "batch estimate", "default")

#: Metrics whose values depend on the pixel size (µm², per mm²).
SIZE_METRICS = {"area_um2": ("Pellet area", "µm²"), "nuclei_density_per_mm2": ("Nuclei density", "per mm²")}

_GUESSED_MARKER = dict(marker="X", s=90, facecolor="none", edgecolor="black", linewidths=1.2)


def _pixel_size_sources(table: pd.DataFrame, run: dict) -> pd.Series:
    """Each pellet's ``pixel_size_source``: its column, or for runs from before it, the image's in run.json ('' unknown)."""
    if "pixel_size_source" in table.columns:
        return table["pixel_size_source"].astype("string").fillna("")
    images = run.get("images", {})
    return table["image"].map(lambda im: images.get(str(im), {}).get("pixel_size_source", "")).astype("string")


def _guessed_images(table: pd.DataFrame, sources: pd.Series) -> pd.DataFrame:
    """Image, pixel size and its source of the images measured at an estimated or default pixel size."""
    guessed = table.assign(pixel_size_source=sources)[sources.isin(GUESSED_PIXEL_SIZES)]
    return guessed.groupby("image", sort=True).agg(pixel_size_um=("pixel_size_um", "first"), pixel_size_source=("pixel_size_source", "first")).reset_index()


def _plot_sizes(table: pd.DataFrame, guessed: pd.Series) -> str:
    """Pellet area and nuclei density, one point per pellet by condition and day; pellets at a guessed pixel size marked X."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    groups = [
        f"{c} d{int(d)}" if pd.notna(c) and pd.notna(d) else "no condition/day"
        for c, d in zip(table.get("condition", pd.Series([None] * len(table))), table.get("day", pd.Series([None] * len(table))))
    ]
    order = sorted(set(groups))
    x = np.array([order.index(g) for g in groups], float) + np.random.default_rng(0).uniform(-0.15, 0.15, len(groups))
    colours = np.array(["#b35806" if str(c) == "labeled" else "#2166ac" if str(c) == "unlabeled" else "gray" for c in table.get("condition", [None] * len(table))])
    guessed = np.asarray(guessed, bool)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for ax, (metric, (label, unit)) in zip(axes, SIZE_METRICS.items()):
        values = table[metric].to_numpy(float)
        ax.scatter(x[~guessed], values[~guessed], c=colours[~guessed], s=30, alpha=0.8)
        ax.scatter(x[guessed], values[guessed], **_GUESSED_MARKER)
        ax.scatter(x[guessed], values[guessed], c=colours[guessed], s=12)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=11)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], linestyle="", marker="o", color="gray", label="pixel size from the file or config"),
        _guessed_handle("pixel size estimated (or default)"),
    ]
    return _finished_figure(fig, handles, "One point per pellet", legend_size=8, rect=(0, 0, 1, 0.88))


def _guessed_handle(label: str):
    import matplotlib.pyplot as plt

    return plt.Line2D([], [], linestyle="", marker="X", markerfacecolor="none", markeredgecolor="black", markersize=9, label=label)


def _finished_figure(fig, handles, title: str, *, legend_size: int, rect) -> str:
    """Legend, title and layout of a report figure, closed and returned as a PNG data URI."""
    import matplotlib.pyplot as plt

    fig.legend(handles=handles, loc="upper right", fontsize=legend_size)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=rect)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return _data_uri(buf.getvalue(), "image/png")


def _calibration_html(run: dict) -> str:
    """The batch's iron granule threshold and how it was found (run.json's ``iron_calibration``)."""
    cal = run.get("iron_calibration")
    if not cal:
        return "<p>Not recorded (a run from before iron calibration).</p>"
    threshold = f"granule threshold (iron.granule_min_od) {cal.get('granule_min_od', float('nan')):.3g}"
    if cal.get("calibrated"):
        text = (
            f"Calibrated on {cal['n_control_cells']} cells of {cal['n_control_pellets']} control pellets "
            f"(condition {html.escape(', '.join(cal.get('control_conditions', [])))}; images {html.escape(', '.join(cal.get('control_images', [])))}): "
            f"{threshold}, configured {cal['configured_granule_min_od']:.3g}. Iron-positive control cells: "
            f"{cal.get('positive_fraction_before', float('nan')):.2%} at the configured threshold, "
            f"{cal.get('positive_fraction_after', cal.get('positive_fraction_predicted', float('nan'))):.2%} at the calibrated one "
            f"(target at most {cal.get('max_positive_fraction', 0.01):.0%}). Every pellet of the run was classified with it."
        )
    else:
        after = cal.get("positive_fraction_after")
        text = f"Not calibrated: {html.escape(str(cal.get('reason', '')))}; {threshold}." + (
            f" Iron-positive control cells: {after:.2%}." if after is not None else ""
        )
    failed = cal.get("failed_control_images") or {}
    if failed:
        text += " Control images that could not be read: " + html.escape(", ".join(failed)) + "."
    return f"<p>{text}</p>"


def _plot_metrics(donors: pd.DataFrame, guessed_keys=frozenset()) -> str:
    """One panel per report metric, one line per donor and condition; ``guessed_keys`` (donor, condition, day) marked X on size metrics."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.2), dpi=100)
    colours = {"labeled": "#b35806", "unlabeled": "#2166ac"}
    for ax, (metric, (label, unit)) in zip(np.ravel(axes), REPORT_METRICS.items()):
        for (donor, condition), sub in donors.groupby(["donor", "condition"]):
            sub = sub.sort_values("day")
            ax.plot(sub["day"], sub[metric], marker="o", color=colours.get(condition, "gray"),
                    linestyle="-" if condition == "labeled" else "--", alpha=0.8, label=f"{donor} {condition}")
            marked = [(donor, condition, int(d)) in guessed_keys for d in sub["day"]]
            if metric in SIZE_METRICS and any(marked):
                ax.scatter(sub["day"][marked], sub[metric][marked], zorder=3, **_GUESSED_MARKER)
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("day")
        ax.set_ylabel(unit)
        days = sorted(donors["day"].unique())
        if days:
            ax.set_xticks(days)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, linestyle="-" if k == "labeled" else "--", marker="o", label=k) for k, c in colours.items()]
    if guessed_keys:
        handles.append(_guessed_handle("pixel size estimated"))
    return _finished_figure(fig, handles, "One line per donor and condition (donor means of section means)", legend_size=9, rect=(0, 0, 0.86, 0.95))


def _thumbnail(run_dir: Path, stem: str, pellet_id: int, size_px: int = 200) -> str | None:
    """The pellet's overlay (reviewed labels where they exist) as a JPEG data URI; only its window is read."""
    import cv2

    from .review import pellet_crop

    try:
        crop = pellet_crop(run_dir, stem, pellet_id, margin_px=0)
    except Exception:  # a moved input or label file leaves its thumbnail out, not the report
        return None
    overlay = render_overlay(crop["rgb"], crop["classes"], pellets=(crop["pellets"] == pellet_id).astype(np.uint8))
    scale = size_px / max(overlay.shape[:2])
    if scale < 1:
        overlay = cv2.resize(overlay, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", overlay[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    return _data_uri(buf.tobytes(), "image/jpeg") if ok else None


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return html.escape(str(value))


def _html_table(frame: pd.DataFrame, *, text_columns=(), row_ids=None, row_classes=None) -> str:
    head = "".join(f"<th class='{'t' if c in text_columns else ''}'>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, (_, row) in enumerate(frame.iterrows()):
        rid = f" id='{row_ids[i]}'" if row_ids is not None else ""
        rcls = f" class='{row_classes[i]}'" if row_classes is not None and row_classes[i] else ""
        cells = "".join(
            f"<td class='{'t' if c in text_columns else ''}'>{v if isinstance(v, str) and v.startswith('<a ') else _fmt(v)}</td>"
            for c, v in row.items()
        )
        body.append(f"<tr{rid}{rcls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def make_report(run_dir, *, seed: int = 0, thumbnails: bool = True) -> dict:
    """Write summary.csv/.parquet, statistics.csv and report.html for a run folder.

    Parameters
    ----------
    run_dir : str or Path
        A folder written by ``pellet-analysis run``.
    seed : int, keyword-only
        Seed of the bootstrap.
    thumbnails : bool, keyword-only
        Embed an overlay thumbnail per pellet.

    Returns
    -------
    dict
        Paths written and the ``summary`` and ``statistics`` DataFrames.
    """
    run_dir = Path(run_dir)
    table_path = run_dir / "pellets.parquet"
    if not table_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no pellets.parquet (not a pellet-analysis run folder)")
    table = apply_review(pd.read_parquet(table_path), run_dir)
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    failures = pd.read_csv(run_dir / "failures.csv") if (run_dir / "failures.csv").is_file() else pd.DataFrame(columns=["image", "reason"])
    metrics = list(REPORT_METRICS)
    # the shape measures are summarised too (without the pellets cut by the image border), not tested
    shapes = [c for c in SHAPE_COLUMNS if c in table.columns]
    agg = aggregate(table, metrics + shapes)
    donors = agg["donors"]
    summary = donors.sort_values(["condition", "day", "donor"]).reset_index(drop=True)
    statistics = comparison_table(donors.drop(columns=shapes), metrics, seed=seed) if len(donors) else pd.DataFrame()

    write_tables(run_dir, {"summary": summary, "statistics": statistics}, parquet=("summary",))

    parts = []
    n_images = run.get("n_images", table["image"].nunique())
    parts.append(f"<h1>Pellet study report</h1><p class='sub'>pellet-analysis {html.escape(str(run.get('version', '?')))} "
                 f"(report {__version__}) &middot; run {html.escape(str(run.get('created', '')))} &middot; {html.escape(str(run_dir))}</p>")
    parts.append(
        f"<p id='counts'>{n_images} images, {len(table)} pellets, {agg['n_excluded']} excluded by review and left out, "
        f"{agg['n_unassigned']} without donor/condition/day left out, {len(failures)} failed inputs; "
        f"{agg['n_shape_excluded']} cut by the image border: their area and circularity are left out of the means, their other measures kept; "
        f"{summary['donor'].nunique() if len(summary) else 0} donors.</p>"
    )
    sources = _pixel_size_sources(table, run)
    guessed = _guessed_images(table, sources)
    if len(guessed):
        listed = "".join(
            f"<li>{html.escape(str(r.image))}: {r.pixel_size_um:.3g} µm ({html.escape(str(r.pixel_size_source))})</li>" for r in guessed.itertuples()
        )
        parts.append(
            f"<div id='pixel-size' class='note'><p><b>Pixel size not given for {len(guessed)} image{'s' if len(guessed) != 1 else ''}:</b> "
            "estimated from the nuclei (or the default); their areas, densities and distances rest on that guess and are "
            "marked &times; in the plots. Give --pixel-size-um (or pixel_size_um) to set it.</p><ul>" + listed + "</ul></div>"
        )
    kept = table[~table["excluded"].fillna(False).astype(bool)]
    is_guessed = sources.isin(GUESSED_PIXEL_SIZES)
    guessed_keys = {
        (r.donor, r.condition, int(r.day))
        for r in table[is_guessed & ~table["excluded"].fillna(False).astype(bool)].itertuples()
        if pd.notna(r.donor) and pd.notna(r.condition) and pd.notna(r.day)
    }
    if len(donors):
        parts.append(f"<h2>Measurements over time</h2><img id='plots' alt='measurements against day' src='{_plot_metrics(donors, guessed_keys)}'>")
    if len(kept):
        parts.append(f"<h2>Pellet sizes</h2><img id='size-plots' alt='pellet area and nuclei density' src='{_plot_sizes(kept, is_guessed[kept.index])}'>")
    parts.append(f"<h2>Iron threshold</h2><div id='iron-calibration'>{_calibration_html(run)}</div>")
    if len(statistics):
        shown = statistics.copy()
        shown["metric"] = shown["metric"].map(lambda m: REPORT_METRICS.get(m, (m,))[0])
        parts.append("<h2>Statistics</h2><p>Donor-level values (pellets averaged per section, sections per donor). "
                     "Estimates for labeled &minus; unlabeled are mean paired differences with bootstrap 95% CIs; "
                     "p values are Holm-adjusted over the whole table (p_holm). n_donors is the n of each row.</p>")
        parts.append("<div id='statistics'>" + _html_table(shown, text_columns=("metric", "comparison", "condition", "test", "note")) + "</div>")
    if len(summary):
        parts.append("<h2>Donor summary</h2><div id='summary'>" + _html_table(summary, text_columns=("donor", "condition")) + "</div>")

    pellet_cols = ["image", "pellet_id", "donor", "condition", "day", *metrics, *shapes, "shape_exclusion_reason", "excluded", "exclusion_reason"]
    pellets = table[[c for c in pellet_cols if c in table.columns]].copy()
    anchors = [f"pellet-{r.image}-{r.pellet_id}" for r in pellets.itertuples()]
    pellets.insert(0, "thumbnail", [f"<a href='#thumb-{a}'>view</a>" for a in anchors])
    parts.append("<h2>Pellets</h2><div id='pellets'>" + _html_table(
        pellets, text_columns=("thumbnail", "image", "donor", "condition", "shape_exclusion_reason", "exclusion_reason"), row_ids=anchors,
        row_classes=["excluded" if bool(x) else "" for x in table["excluded"]]) + "</div>")

    if thumbnails:
        figures = []
        for row, anchor in zip(table.itertuples(), anchors):
            uri = _thumbnail(run_dir, row.image, int(row.pellet_id))
            img = f"<img src='{uri}' alt='{html.escape(anchor)}'>" if uri else "<p class='note'>image not found</p>"
            figures.append(f"<figure id='thumb-{anchor}'><a href='#{anchor}'>{img}</a>"
                           f"<figcaption>{html.escape(row.image)} #{row.pellet_id}</figcaption></figure>")
        parts.append("<h2>Segmentation thumbnails</h2><p>Blue proteoglycan, red collagen, yellow other tissue, black nuclei, brown iron; green outline: the pellet. Click a thumbnail for its row.</p>"
                     "<div class='thumbs' id='thumbnails'>" + "".join(figures) + "</div>")

    if len(failures):
        parts.append("<h2>Failed inputs</h2>" + _html_table(failures, text_columns=("image", "reason")))
    stain_sets = {json.dumps(m.get("stains"), sort_keys=True) for m in run.get("images", {}).values() if m.get("stains")}
    stain_rows = "".join(f"<pre>{html.escape(json.dumps(json.loads(s), indent=1))}</pre>" for s in sorted(stain_sets))
    parts.append(f"<h2>Stains and software</h2><div id='stains'>{stain_rows}</div>"
                 f"<p>pellet-analysis {html.escape(str(run.get('version')))}, Python {html.escape(str(run.get('python')))}.</p>")

    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Pellet study report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    with atomic_write(run_dir / "report.html", "w") as handle:
        handle.write(page)
    return {"report": run_dir / "report.html", "summary": summary, "statistics": statistics}
