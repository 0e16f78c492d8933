"""The study report of a run: summary tables, statistics, figures and a self-contained HTML page.

``make_report(run_dir)`` reads the run's contract files and writes
``summary.csv``, ``summary.parquet``, ``statistics.csv``, ``figures/`` (every
plot as SVG, 300-dpi PNG and the CSV of its numbers) and ``report.html``
(plots and thumbnails embedded as data URIs, so the page opens with no network).

The page is rendered by Jinja2 from ``templates/report.html.j2`` with
autoescaping on: image names, donors, reviewers' reasons and every other value
are escaped in text and attribute context alike, and element ids are made by
:func:`slug`. No HTML is assembled from strings here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .bern import BERN_GRADE_COLUMNS
from .figures import PROFILE_METRICS, plot_depth_profiles, plot_labeling_efficiency, plot_over_days, plot_pellet_sizes, save_figure
from .io import atomic_write, write_tables
from .measure import SHAPE_COLUMNS
from .overlay import render_overlay
from .review import apply_review, exclusions, read_log, requantify
from .stats import RM_ANOVA, SIGN_FLIP, comparison_table, conclusions
from .study import aggregate

__all__ = ["BERN_METRICS", "EFFICIENCY_METRICS", "GUESSED_PIXEL_SIZES", "REPORT_METRICS", "SIZE_METRICS", "labeling_efficiency", "make_report", "slug"]

#: Metric column -> (label, unit) shown in plots and tables, and tested.
REPORT_METRICS = {
    "proteoglycan_area_fraction": ("Proteoglycan area fraction", "fraction of pellet"),
    "iron_area_fraction": ("Iron area fraction", "fraction of pellet"),
    "nuclei_density_per_mm2": ("Nuclei density", "per mm²"),
    "bern_score_continuous": ("Bern-like score", "0-9, continuous"),
}
#: The Bern-like score's categories (continuous, as averaged), labeled against unlabeled per day (docs/bern.md).
BERN_METRICS = {
    "bern_stain_continuous": ("Bern stain: uniformity and darkness", "0-3, continuous"),
    "bern_matrix_continuous": ("Bern matrix: distance between cells", "0-3, continuous"),
    "bern_morphology_continuous": ("Bern morphology: rounded cells", "0-3, continuous"),
    "bern_score_continuous": ("Bern-like score", "0-9, continuous"),
}
#: Labeling efficiency: how much of the labeled pellets carries iron, against the unlabeled ones.
EFFICIENCY_METRICS = {
    "iron_positive_cell_fraction": ("Iron-positive cell fraction", "fraction of nuclei"),
    "iron_area_fraction": ("Iron area fraction", "fraction of pellet"),
}

def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


#: ``pixel_size_source`` values whose sizes rest on a guess: the report names those images at its top
#: and marks their pellets in the plots of measures in µm.
GUESSED_PIXEL_SIZES = ("estimated", "batch estimate", "default")

#: Metrics whose values depend on the pixel size (µm², per mm²).
SIZE_METRICS = {"area_um2": ("Pellet area", "µm²"), "nuclei_density_per_mm2": ("Nuclei density", "per mm²")}

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




def slug(text, prefix: str = "id") -> str:
    """An HTML id from any text: lowercase letters, digits and hyphens, unique per text.

    The readable part keeps at most 40 characters; a hash of the whole text
    keeps ids of different texts apart (``a b`` and ``a-b`` differ).
    """
    text = str(text)
    readable = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{prefix}-{readable}-{digest}" if readable else f"{prefix}-{digest}"


def _fmt(value, digits: int = 3) -> str:
    """A cell's text: numbers to ``digits`` significant digits, NaN and None empty."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "" if np.isnan(value) else str(value)
        if float(value).is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.{digits}g}" if abs(value) < 1e3 else f"{value:.0f}"
    return str(value)


def _table(frame: pd.DataFrame, *, id=None, text_columns=(), row_ids=None, row_classes=None, links=None) -> dict:
    """A table for the template: column names and rows of cells (text, optional link), nothing rendered here."""
    links = links or {}
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = [{"text": _fmt(v), "href": links[c][i] if c in links else None} for c, v in row.items()]
        rows.append({"id": row_ids[i] if row_ids is not None else None,
                     "css": row_classes[i] if row_classes is not None else "", "cells": cells})
    return {"id": id, "columns": [str(c) for c in frame.columns], "text_columns": [str(c) for c in text_columns], "rows": rows}


def _calibration_text(run: dict) -> str:
    """The batch's iron granule threshold and how it was found (run.json's ``iron_calibration``), as plain text."""
    cal = run.get("iron_calibration")
    if not cal:
        return "Not recorded (a run from before iron calibration)."
    threshold = f"granule threshold (iron.granule_min_od) {cal.get('granule_min_od', float('nan')):.3g}"
    if cal.get("calibrated"):
        text = (
            f"Calibrated on {cal['n_control_cells']} cells of {cal['n_control_pellets']} control pellets "
            f"(condition {', '.join(cal.get('control_conditions', []))}; images {', '.join(cal.get('control_images', []))}): "
            f"{threshold}, configured {cal['configured_granule_min_od']:.3g}. Iron-positive control cells: "
            f"{cal.get('positive_fraction_before', float('nan')):.2%} at the configured threshold, "
            f"{cal.get('positive_fraction_after', cal.get('positive_fraction_predicted', float('nan'))):.2%} at the calibrated one "
            f"(target at most {cal.get('max_positive_fraction', 0.01):.0%}"
            + (
                f"; in any one control pellet at most {cal['max_pellet_positive_fraction']:.0%} or one cell, "
                + (
                    f"measured at most {cal['pellet_positive_fraction_after_max']:.2%}"
                    if "pellet_positive_fraction_after_max" in cal
                    else f"predicted at most {cal.get('pellet_positive_fraction_predicted_max', float('nan')):.2%}"
                )
                if cal.get("max_pellet_positive_fraction") is not None
                else ""
            )
            + "). Every pellet of the run was classified with it."
        )
    else:
        after = cal.get("positive_fraction_after")
        text = f"Not calibrated: {cal.get('reason', '')}; {threshold}." + (f" Iron-positive control cells: {after:.2%}." if after is not None else "")
    failed = cal.get("failed_control_images") or {}
    if failed:
        text += " Control images that could not be read: " + ", ".join(failed) + "."
    return text


def labeling_efficiency(donors: pd.DataFrame, metrics=tuple(EFFICIENCY_METRICS)) -> pd.DataFrame:
    """Labeled and unlabeled donor means side by side, one row per donor and day with both conditions.

    Returns
    -------
    DataFrame
        ``donor``, ``day`` and for each metric ``<metric>_labeled``,
        ``<metric>_unlabeled`` and ``<metric>_difference`` (labeled - unlabeled).
    """
    metrics = [m for m in metrics if m in donors.columns]
    wide = donors.pivot_table(index=["donor", "day"], columns="condition", values=metrics, aggfunc="mean")
    out = pd.DataFrame(index=wide.index)
    for m in metrics:
        for c in ("labeled", "unlabeled"):
            out[f"{m}_{c}"] = wide[(m, c)] if (m, c) in wide.columns else np.nan
        out[f"{m}_difference"] = out[f"{m}_labeled"] - out[f"{m}_unlabeled"]
    out = out.dropna(subset=[f"{m}_{c}" for m in metrics for c in ("labeled", "unlabeled")], how="any")
    return out.reset_index().sort_values(["day", "donor"], kind="stable").reset_index(drop=True)


def _pairs_by_day(pairs: pd.DataFrame, metrics: dict) -> pd.DataFrame:
    """Per day every donor's labeled/unlabeled pair (:func:`labeling_efficiency`) and their mean, columns named by ``metrics``' labels."""
    rows = []
    for day, sub in pairs.groupby("day", sort=True):
        for r in sub.to_dict("records"):
            rows.append({"day": int(day), "donor": r["donor"], **{k: v for k, v in r.items() if k not in ("donor", "day")}})
        rows.append({"day": int(day), "donor": f"mean of {len(sub)} donors", **sub.drop(columns=["donor", "day"]).mean().to_dict()})
    names = {f"{m}_{c}": f"{label} {c}" for m, (label, _) in metrics.items() for c in ("labeled", "unlabeled", "difference")}
    return pd.DataFrame(rows).rename(columns={**names, "difference": "labeled - unlabeled"})


def _efficiency_section(efficiency: pd.DataFrame) -> dict:
    """The labeling-efficiency table: per day every donor's pair and their mean."""
    return {
        "text": "Iron-positive cells (nuclei with an iron pixel within iron.cell_distance_um) and iron area in the labeled "
                "and unlabeled pellets of each donor, per day (donor means of section means); 'difference' is labeled - unlabeled. "
                "Read the labeled fraction as a lower bound: granules blurred into a nucleus or fainter than the granule threshold "
                "are missed (on validate's synthetic labeled pellets it reads well below the truth: docs/iron.md, 'Known limits'); "
                "the unlabeled pellets give the false-positive floor.",
        "table": _table(_pairs_by_day(efficiency, EFFICIENCY_METRICS), id="labeling-efficiency-table", text_columns=("donor",)),
    }


def _bern_section(bern: pd.DataFrame) -> dict:
    """The Bern-like categories of each donor's labeled and unlabeled pellets per day, and their mean over donors."""
    short = {m: (label.split(":")[0], unit) for m, (label, unit) in BERN_METRICS.items()}
    return {
        "text": "The Bern-like score's categories (docs/bern.md), continuous 0-3 each and their sum 0-9, in the labeled and unlabeled "
                "pellets of each donor, per day (donor means of section means); 'difference' is labeled - unlabeled. "
                "The pellet table below gives each pellet's integer grades.",
        "table": _table(_pairs_by_day(bern, short), id="bern-table", text_columns=("donor",)),
    }


def _automatic_table(run_dir: Path, table: pd.DataFrame) -> pd.DataFrame:
    """The pellet table as the pipeline measured it: no corrected labels, no exclusions.

    Images with corrected labels are measured again from their automatic label
    files (:func:`~pellet_analysis.review.requantify` with ``automatic=True``).
    """
    automatic = table.copy()
    automatic["excluded"] = False
    automatic["exclusion_reason"] = ""
    labels = run_dir / "labels"
    corrected = sorted({p.name.rsplit("_", 1)[0] for p in labels.glob("*.corrected.tif")}) if labels.is_dir() else []
    corrected = [im for im in corrected if im in set(table["image"].astype(str))]
    if not corrected:
        return automatic
    for image in corrected:
        try:
            rows = requantify(run_dir, image, automatic=True)
        except Exception:  # a moved input leaves the automatic values as the table has them
            continue
        for row in rows:
            mask = (automatic["image"] == image) & (automatic["pellet_id"] == row["pellet_id"])
            for key, value in row.items():
                if key in automatic.columns and key not in ("pellet_id", "corrected"):
                    automatic.loc[mask, key] = value
            automatic.loc[mask, "corrected"] = False
    return automatic


def _review_section(run_dir: Path, table: pd.DataFrame, statistics: pd.DataFrame, metrics: list, shapes: list, anchors: dict) -> dict:
    """Reviewed pellets, pixels changed per class, exclusions, automatic against corrected values and their effect."""
    log = read_log(run_dir)
    corrections = [r for r in log if r.get("action") == "correct"]
    excluded = table[table["excluded"].fillna(False).astype(bool)]
    out = {"corrections": None, "exclusions": None, "measured": None, "effect": None, "effect_text": ""}
    reviewed = {(str(r.get("image")), int(r.get("pellet_id", 0))) for r in log}
    out["text"] = (f"{len(reviewed)} pellet{'s' if len(reviewed) != 1 else ''} reviewed ({len(corrections)} label correction"
                   f"{'s' if len(corrections) != 1 else ''} saved, {len(excluded)} pellet{'s' if len(excluded) != 1 else ''} excluded) "
                   "according to corrections.jsonl and the pellet table." if log or len(excluded) else
                   "No pellet was reviewed: no corrections.jsonl, no exclusions.")
    if corrections:
        classes = sorted({c for r in corrections for c in (r.get("classes_changed") or {})})
        rows = []
        for r in corrections:
            row = {"image": r.get("image"), "pellet": r.get("pellet_id"), "reviewer": r.get("who"), "when": r.get("when")}
            for kind in ("pellets", "classes", "nuclei"):
                row[f"{kind} pixels changed"] = (r.get("pixels_changed") or {}).get(kind, 0)
            for c in classes:
                change = (r.get("classes_changed") or {}).get(c, {})
                row[f"{c} +gained / -lost"] = f"+{change.get('gained', 0)} / -{change.get('lost', 0)}" if change else ""
            rows.append(row)
        out["corrections"] = _table(pd.DataFrame(rows), id="review-corrections", text_columns=("image", "reviewer", "when", *[f"{c} +gained / -lost" for c in classes]))
    if len(excluded):
        logged = exclusions(run_dir)
        who = {(str(r.get("image")), int(r.get("pellet_id", 0))): (r.get("who"), r.get("when")) for r in log if r.get("action") == "exclude"}
        frame = pd.DataFrame([{"image": str(r.image), "pellet": int(r.pellet_id), "reason": r.exclusion_reason,
                               "reviewer": who.get((str(r.image), int(r.pellet_id)), ("", ""))[0],
                               "when": who.get((str(r.image), int(r.pellet_id)), ("", ""))[1],
                               "recorded in": "corrections.jsonl" if (str(r.image), int(r.pellet_id)) in logged else "pellet table"}
                              for r in excluded.itertuples()])
        out["exclusions"] = _table(frame, id="review-exclusions", text_columns=("image", "reason", "reviewer", "when", "recorded in"),
                                   links={"image": ["#" + anchors[(r.image, r.pellet)] for r in frame.itertuples()]})
    automatic = _automatic_table(run_dir, table)
    columns = [c for c in (*metrics, "area_um2", "nuclei_count", "iron_positive_cell_fraction") if c in table.columns]
    corrected_keys = {(str(r.get("image")), int(r.get("pellet_id", 0))) for r in corrections}
    # the pellets a reviewer corrected, and any other whose values moved with its image's corrected labels
    moved = ~np.isclose(table[columns].to_numpy(float), automatic[columns].to_numpy(float), equal_nan=True).all(axis=1)
    changed = pd.Series(moved, index=table.index) | pd.Series([k in corrected_keys for k in zip(table["image"].astype(str), table["pellet_id"].astype(int))], index=table.index)
    if changed.any():
        rows = []
        for i in table.index[changed]:
            row = {"image": str(table.at[i, "image"]), "pellet": int(table.at[i, "pellet_id"])}
            for c in columns:
                row[f"{c} automatic"] = automatic.at[i, c]
                row[f"{c} corrected"] = table.at[i, c]
            rows.append(row)
        out["measured"] = _table(pd.DataFrame(rows), id="review-values", text_columns=("image",))
    if (changed.any() or len(excluded)) and len(statistics):
        agg = aggregate(automatic, metrics + shapes)
        before = comparison_table(agg["donors"].drop(columns=shapes), metrics) if len(agg["donors"]) else pd.DataFrame(columns=statistics.columns)
        keys = ["metric", "comparison", "day", "condition", "test"]
        primary = statistics[statistics.test.isin([SIGN_FLIP, RM_ANOVA])][keys + ["n_donors", "estimate", "p_value", "p_holm"]]
        merged = primary.merge(before[keys + ["n_donors", "estimate", "p_value", "p_holm"]], on=keys, how="left", suffixes=(" reviewed", " automatic"))
        merged["metric"] = merged["metric"].map(lambda m: REPORT_METRICS.get(m, (m,))[0])
        order = keys + [f"{c} {w}" for c in ("n_donors", "estimate", "p_value", "p_holm") for w in ("automatic", "reviewed")]
        out["effect"] = _table(merged[order], id="review-effect", text_columns=("metric", "comparison", "condition", "test"))
        out["effect_text"] = ("The primary comparisons computed from the automatic measurements with every pellet included, "
                              "and from the reviewed ones (corrected labels, exclusions left out).")
    return out


def _stain_tables(run: dict) -> list[dict]:
    """One table per distinct stain set of the run's images: stain, role and optical density vector."""
    sets = {}
    for meta in run.get("images", {}).values():
        stains = meta.get("stains")
        if stains:
            sets.setdefault(json.dumps(stains, sort_keys=True), []).append(meta)
    out = []
    for key, metas in sorted(sets.items()):
        stains = json.loads(key)
        roles = {v: k for k, v in (stains.get("roles") or {}).items()}
        frame = pd.DataFrame([{"stain": name, "role": roles.get(name, ""), "OD red": v[0], "OD green": v[1], "OD blue": v[2]}
                              for name, v in (stains.get("stains") or {}).items()])
        out.append({"name": stains.get("name", "stains"), "n_images": len(metas),
                    "table": _table(frame, id=slug(key, "stains"), text_columns=("stain", "role"))})
    return out


def _provenance(run: dict, run_dir: Path) -> dict:
    config = run.get("config", {})
    rows = [
        ("software", f"{run.get('software', 'pellet-analysis')} {run.get('version', '?')}"),
        ("report written by", f"pellet-analysis {__version__}"),
        ("Python", run.get("python")),
        ("run created (UTC)", run.get("created")),
        ("config hash", run.get("config_hash")),
        ("input folder", config.get("input_dir")),
        ("sample sheet", config.get("sample_sheet") or "none (metadata from file names)"),
        ("stain preset", (config.get("stains") or {}).get("preset")),
        ("run folder", str(run_dir)),
        ("images", run.get("n_images")),
        ("pellets", run.get("n_pellets")),
        ("failed inputs", run.get("n_failures")),
        ("cores", run.get("host_cores")),
        ("seconds", run.get("seconds")),
    ]
    images = pd.DataFrame(
        [{"image": name, "file": meta.get("file", ""), "sha256": meta.get("sha256", ""), "pixel_size_um": meta.get("pixel_size_um"),
          "pixel_size_source": meta.get("pixel_size_source", ""), "stains": _stains_source(meta.get("stains_source"))}
         for name, meta in sorted(run.get("images", {}).items())],
        columns=["image", "file", "sha256", "pixel_size_um", "pixel_size_source", "stains"],
    )
    return {
        "run": _table(pd.DataFrame(rows, columns=["item", "value"]), id="provenance-table", text_columns=("item", "value")),
        "images": _table(images, id="provenance-images", text_columns=("image", "file", "sha256", "pixel_size_source", "stains")),
    }


def _stains_source(infos) -> str:
    """Where an image's stain vectors came from (per pellet when estimated per pellet), in words."""
    if isinstance(infos, dict):
        infos = [infos]
    if not isinstance(infos, list) or not infos:
        return ""
    kinds = sorted({f"{i.get('source', '?')}" + (f" ({i['reason']})" if i.get("reason") else "") for i in infos if isinstance(i, dict)})
    return "; ".join(kinds)


def _render(context: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every {{ }} is escaped, in text and attribute values alike
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
    )
    env.globals["zip"] = zip
    return env.get_template("report.html.j2").render(**context)


def _kept_profiles(run_dir: Path, table: pd.DataFrame) -> pd.DataFrame:
    """profiles.csv without the pellets review excluded; empty for a run without it (made before issue 24)."""
    path = run_dir / "profiles.csv"
    if not path.is_file():
        return pd.DataFrame()
    profiles = pd.read_csv(path)
    excluded = {(str(r.image), int(r.pellet_id)) for r in table.itertuples() if bool(r.excluded)}
    keep = [(str(i), int(p)) not in excluded for i, p in zip(profiles["image"], profiles["pellet_id"])]
    return profiles[keep]


def make_report(run_dir, *, seed: int = 0, thumbnails: bool = True) -> dict:
    """Write summary.csv/.parquet, statistics.csv, figures/ and report.html for a run folder.

    Parameters
    ----------
    run_dir : str or Path
        A folder written by ``pellet-analysis run``.
    seed : int, keyword-only
        Seed of the Monte Carlo sign flips (used only with more than 20 donors).
    thumbnails : bool, keyword-only
        Embed an overlay thumbnail per pellet.

    Returns
    -------
    dict
        Paths written and the ``summary``, ``statistics`` and ``efficiency`` DataFrames.
    """
    run_dir = Path(run_dir)
    table_path = run_dir / "pellets.parquet"
    if not table_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no pellets.parquet (not a pellet-analysis run folder)")
    table = apply_review(pd.read_parquet(table_path), run_dir).reset_index(drop=True)
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    failures = pd.read_csv(run_dir / "failures.csv") if (run_dir / "failures.csv").is_file() else pd.DataFrame(columns=["image", "reason"])
    # a run folder written before a metric existed (bern_score_continuous) is reported without it
    report_metrics = {m: v for m, v in REPORT_METRICS.items() if m in table.columns}
    metrics = list(report_metrics)
    extra = [m for m in (*EFFICIENCY_METRICS, *BERN_METRICS) if m not in metrics and m in table.columns]
    # the shape measures are summarised too (without the pellets cut by the image border), not tested
    shapes = [c for c in SHAPE_COLUMNS if c in table.columns]
    agg = aggregate(table, metrics + extra + shapes)
    donors = agg["donors"]
    summary = donors.sort_values(["condition", "day", "donor"]).reset_index(drop=True)
    statistics = comparison_table(donors.drop(columns=shapes + extra), metrics, seed=seed) if len(donors) else pd.DataFrame()
    efficiency = labeling_efficiency(donors) if len(donors) else pd.DataFrame()
    bern_metrics = {m: v for m, v in BERN_METRICS.items() if m in donors.columns}
    bern = labeling_efficiency(donors, tuple(bern_metrics)) if len(donors) and bern_metrics else pd.DataFrame()

    write_tables(run_dir, {"summary": summary, "statistics": statistics}, parquet=("summary",))
    figures_dir = run_dir / "figures"
    if figures_dir.is_dir():
        shutil.rmtree(figures_dir)  # figures of an earlier report must not outlive their data

    sources = _pixel_size_sources(table, run)
    guessed = _guessed_images(table, sources)
    is_excluded = table["excluded"].fillna(False).astype(bool)
    kept = table[~is_excluded]
    is_guessed = sources.isin(GUESSED_PIXEL_SIZES)
    guessed_keys = {
        (r.donor, r.condition, int(r.day))
        for r in table[is_guessed & ~is_excluded].itertuples()
        if pd.notna(r.donor) and pd.notna(r.condition) and pd.notna(r.day)
    }
    plots = []

    def add_plot(fig_data, name, title, alt, id_):
        uri = save_figure(*fig_data, name, figures_dir)
        plots.append({"id": id_, "title": title, "alt": alt, "uri": uri, "files": [f"{name}.{e}" for e in ("svg", "png", "csv")]})

    if len(donors):
        add_plot(plot_over_days(donors, report_metrics, guessed_keys, SIZE_METRICS), "measurements_over_days",
                 "Measurements over time", "measurements against day", "plots")
    if len(efficiency):
        add_plot(plot_labeling_efficiency(efficiency, {m: v for m, v in EFFICIENCY_METRICS.items() if f"{m}_labeled" in efficiency}),
                 "labeling_efficiency", "Labeling efficiency", "iron-positive cells and iron area, labeled against unlabeled", "labeling-efficiency-plot")
    if len(bern):
        limits = {m: (-0.1, 9.3 if m == "bern_score_continuous" else 3.1) for m in bern_metrics}  # the grades' whole range
        add_plot(plot_labeling_efficiency(bern, bern_metrics, title="Bern-like score: labeled and unlabeled pellets of each donor, per day", limits=limits),
                 "bern_categories", "Bern-like score", "Bern-like score categories, labeled against unlabeled", "bern-plot")
    if len(kept):
        add_plot(plot_pellet_sizes(kept, is_guessed[kept.index], SIZE_METRICS), "pellet_sizes", "Pellet sizes",
                 "pellet area and nuclei density", "size-plots")
    profiles = _kept_profiles(run_dir, table)
    if len(profiles):
        add_plot(plot_depth_profiles(profiles, PROFILE_METRICS), "depth_profiles", "Depth profiles",
                 "proteoglycan, cell density, rounded cells and cells in lacunae against depth from the pellet surface", "depth-profiles")

    n_images = run.get("n_images", table["image"].nunique())
    counts = (
        f"{n_images} images, {len(table)} pellets, {agg['n_excluded']} excluded by review and left out, "
        f"{agg['n_unassigned']} without donor/condition/day left out, {len(failures)} failed inputs; "
        f"{agg['n_shape_excluded']} cut by the image border: their area and circularity are left out of the means, their other measures kept; "
        f"{summary['donor'].nunique() if len(summary) else 0} donors."
    )
    pellet_cols = ["image", "pellet_id", "donor", "condition", "day", *metrics, *BERN_GRADE_COLUMNS, *shapes, "shape_exclusion_reason", "excluded", "exclusion_reason", "corrected"]
    pellets = table[[c for c in pellet_cols if c in table.columns]].copy()
    keys = [(str(r.image), int(r.pellet_id)) for r in pellets.itertuples()]
    anchors = {k: slug(f"{k[0]}#{k[1]}", "pellet") for k in keys}
    pellets.insert(0, "thumbnail", "view")
    statistics_section = None
    if len(statistics):
        shown = statistics.copy()
        shown["metric"] = shown["metric"].map(lambda m: REPORT_METRICS.get(m, (m,))[0])
        shown["holm_family"] = shown["holm_family"].map(lambda m: REPORT_METRICS.get(m, (m,))[0] if m else "")
        n_family = int((statistics.holm_family != "").sum() / max(1, statistics.holm_family[statistics.holm_family != ""].nunique()))
        statistics_section = {
            "text": "Donor-level values (pellets averaged per section, sections per donor); n_donors is the n of each row. "
                    "Labeled - unlabeled: mean paired difference with a t-based 95% CI on n - 1 df and an exact sign-flip "
                    "permutation p (all 2^n sign patterns); Wilcoxon beside it from 6 donors. Over days: repeated-measures ANOVA "
                    "with the Greenhouse-Geisser correction (df: its corrected error df); Friedman beside it with the smallest p its "
                    "donors can give (p_min_attainable); a random-intercept mixed model only from 5 donors, on small-sample df. "
                    f"Holm family: within each metric, its {n_family} primary tests (each day's sign-flip test and each condition's ANOVA; "
                    "column holm_family); the other rows are not adjusted and not counted.",
            "table": _table(shown, id="statistics-table", text_columns=("metric", "comparison", "condition", "test", "holm_family", "note")),
        }
    thumbs = []
    if thumbnails:
        for (image, pid) in keys:
            thumbs.append({"id": "thumb-" + anchors[(image, pid)], "row_id": anchors[(image, pid)],
                           "uri": _thumbnail(run_dir, image, pid), "caption": f"{image} #{pid}"})
    context = {
        "version": __version__,
        "run_version": str(run.get("version", "?")),
        "created": str(run.get("created", "")),
        "run_dir": str(run_dir),
        "counts": counts,
        "guessed": [{"image": str(r.image), "pixel_size": f"{r.pixel_size_um:.3g}", "source": str(r.pixel_size_source)} for r in guessed.itertuples()],
        "conclusions": conclusions(statistics, {m: v[0] for m, v in REPORT_METRICS.items()}) if len(statistics) else [],
        "plots": plots,
        "efficiency": _efficiency_section(efficiency) if len(efficiency) else None,
        "bern": _bern_section(bern) if len(bern) else None,
        "calibration": _calibration_text(run),
        "statistics": statistics_section,
        "summary": _table(summary, id="summary-table", text_columns=("donor", "condition")) if len(summary) else None,
        "review": _review_section(run_dir, table, statistics, metrics, shapes, anchors),
        "pellets": _table(pellets, id="pellets-table", text_columns=("thumbnail", "image", "donor", "condition", "shape_exclusion_reason", "exclusion_reason"),
                          row_ids=[anchors[k] for k in keys], row_classes=["excluded" if x else "" for x in is_excluded],
                          links={"thumbnail": ["#thumb-" + anchors[k] for k in keys]} if thumbnails else None),
        "thumbnails": thumbs,
        "failures": _table(failures, id="failures-table", text_columns=("image", "reason")) if len(failures) else None,
        "stains": _stain_tables(run),
        "provenance": _provenance(run, run_dir),
    }
    with atomic_write(run_dir / "report.html", "w") as handle:
        handle.write(_render(context))
    return {"report": run_dir / "report.html", "summary": summary, "statistics": statistics, "efficiency": efficiency, "figures": figures_dir}
