"""The batch's iron granule threshold, calibrated on its unlabeled control pellets (``iron.calibrate: controls``).

The controls are classified at the configured threshold first
(:func:`~pellet_analysis.tasks.calibration_pass`, with each nucleus's iron
level); :func:`calibrate_iron` raises the threshold until at most
``iron.calibrate_max_positive_fraction`` of their cells stay iron-positive,
and every pellet of the batch is classified with it. Where the threshold
stays, the final pass reuses the controls' pellets as they are; otherwise
only their plan is reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .calibrate import is_control, threshold_for_fraction
from .config import RunConfig
from .io import sha256_file
from .metadata import parse_name
from .records import ClassifiedPellet, ImageSummary, PelletError, PelletResult
from .stains import configured_stains

__all__ = ["CALIBRATION_FILE", "ControlLevels", "fixed_threshold", "known_calibration", "control_levels", "calibrate_iron", "calibration_outcome"]

#: The batch's iron calibration, kept beside its results so that a run again skips finished images
#: without classifying the controls again (only while the config and the control files are the same).
CALIBRATION_FILE = "iron_calibration.json"


@dataclass(frozen=True)
class ControlLevels:
    """What one control image gives the calibration: its cells' iron levels and positive count at the configured threshold.

    ``pellet_levels``: the same levels pellet by pellet (the bound on each control pellet).
    ``error``: the image could not be classified (it is left out of the calibration).
    """

    image: str
    levels: np.ndarray
    n_pellets: int = 0
    n_cells: int = 0
    n_positive: int = 0
    error: str | None = None
    pellet_levels: tuple = ()


def fixed_threshold(config: RunConfig, reason: str) -> dict:
    """The calibration record of a batch classified with the configured iron threshold, and why."""
    return {"mode": config.iron.calibrate, "calibrated": False, "granule_min_od": float(config.iron.granule_min_od), "reason": reason}


def known_calibration(jobs, config: RunConfig, output_dir, chash: str) -> tuple[dict, set]:
    """The batch's iron calibration as far as it is known before any image is analysed, and its control images.

    Returns the record of a fixed threshold (calibration off, no iron in the
    stain set, no controls), the record calibrated earlier on the same
    control files with the same config (from :data:`CALIBRATION_FILE`), or a
    record without ``granule_min_od`` holding the ``key`` a new calibration
    is stored under.
    """
    controls = {}
    for job in jobs:
        meta = job.metadata if job.metadata is not None else (parse_name(job.stem, config.filename_pattern) or {})
        if is_control(meta.get("condition"), config.iron.control_conditions):
            controls[job.stem] = job.path
    if "iron" not in configured_stains(config.stains.params()).roles:
        return fixed_threshold(config, "the stain set has no iron"), set()
    if config.iron.calibrate == "off":  # the controls' iron-positive fraction is still recorded
        return fixed_threshold(config, "iron.calibrate is off"), set(controls)
    if not controls:
        names = ", ".join(config.iron.control_conditions)
        return fixed_threshold(config, f"no control pellets (condition {names}) in this batch: the configured threshold is used"), set()
    key = {"config_hash": chash, "controls": {stem: sha256_file(path) for stem, path in sorted(controls.items())}}
    try:
        stored = json.loads((Path(output_dir) / CALIBRATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    if stored.get("key") == key and "granule_min_od" in stored.get("record", {}):
        return {**stored["record"], "reused": True}, set(controls)
    return {"key": key}, set(controls)


def control_levels(image: str, pellets: dict) -> ControlLevels:
    """A control image's :class:`ControlLevels` from its :func:`~pellet_analysis.tasks.calibration_pass`."""
    levels, n_pellets, n_cells, n_positive = [], 0, 0, 0
    for classified, measured in pellets.values():
        error = next((r for r in (classified, measured) if isinstance(r, PelletError)), None)
        if error is not None:
            return ControlLevels(image, np.zeros(0, np.float64), error=error.reason)
        if isinstance(classified, ClassifiedPellet) and isinstance(measured, PelletResult):
            row = measured.row
            n_pellets += 1
            n_cells += int(row["nuclei_count"])
            n_positive += int(round(row["iron_positive_cell_fraction"] * row["nuclei_count"]))
            levels.append(classified.iron_levels)
    pellet_levels = tuple(np.asarray(v, np.float64) for v in levels)
    levels = np.concatenate(levels) if levels else np.zeros(0, np.float64)
    return ControlLevels(image, levels, n_pellets, n_cells, n_positive, pellet_levels=pellet_levels)


def calibrate_iron(controls, config: RunConfig) -> dict:
    """The batch's iron calibration record from its controls' :class:`ControlLevels`.

    The threshold is the lowest, never below ``iron.granule_min_od``, under
    which at most ``iron.calibrate_max_positive_fraction`` of the control
    cells stay iron-positive (:func:`~pellet_analysis.calibrate.threshold_for_fraction`)
    and, unless ``iron.calibrate_max_pellet_positive_fraction`` is None, at
    most that fraction of any one control pellet's cells (and never fewer
    than one cell of it): false iron gathers in a few controls (the small
    dark nuclei of one section's rim), which a pooled bound alone leaves well
    above it.

    Returns
    -------
    dict
        ``granule_min_od`` (the threshold every pellet of the batch is
        classified with), ``calibrated``, and the controls' images, pellet and
        cell counts, their iron-positive fraction at the configured threshold
        (``positive_fraction_before``) and the one the levels predict at the
        calibrated threshold; or ``reason`` when none was done.
    """
    fixed = float(config.iron.granule_min_od)
    ok = [c for c in controls if c.error is None]
    levels = np.concatenate([c.levels for c in ok]) if ok else np.zeros(0, np.float64)
    record = {
        "mode": "controls",
        "control_conditions": list(config.iron.control_conditions),
        "configured_granule_min_od": fixed,
        "max_positive_fraction": config.iron.calibrate_max_positive_fraction,
        "max_pellet_positive_fraction": config.iron.calibrate_max_pellet_positive_fraction,
        "control_images": sorted(c.image for c in ok),
        "failed_control_images": {c.image: c.error for c in controls if c.error is not None},
        "n_control_pellets": sum(c.n_pellets for c in ok),
        "n_control_cells": int(levels.size),
    }
    if levels.size == 0:
        return {**record, "calibrated": False, "granule_min_od": fixed, "reason": "the control pellets hold no nuclei: the configured threshold is used"}
    threshold = threshold_for_fraction(levels, max_fraction=config.iron.calibrate_max_positive_fraction, floor=fixed)
    pellets = [v for c in ok for v in c.pellet_levels if v.size]
    each = config.iron.calibrate_max_pellet_positive_fraction
    if each is not None:
        # a pellet may always keep one positive cell: under 1 / each cells the bound would allow none, and one
        # small control's brightest cell would set the whole batch's threshold
        threshold = max([threshold] + [threshold_for_fraction(v, max_fraction=max(each, 1.0 / v.size), floor=fixed) for v in pellets])
    n_cells = sum(c.n_cells for c in ok)
    return {
        **record,
        "calibrated": True,
        "granule_min_od": threshold,
        "positive_fraction_before": sum(c.n_positive for c in ok) / n_cells if n_cells else 0.0,
        "positive_fraction_predicted": float(np.mean(levels > threshold)),
        "pellet_positive_fraction_predicted_max": max((float(np.mean(v > threshold)) for v in pellets), default=0.0),
    }


def calibration_outcome(record: dict, results, control_images) -> dict:
    """``record`` with the controls' iron-positive cell fraction as measured at the threshold used (``positive_fraction_after``)."""
    rows = [row for r in results if isinstance(r, ImageSummary) and r.image in control_images for row in r.rows]
    cells = sum(int(row["nuclei_count"]) for row in rows)
    if not rows:
        return record
    positive = sum(row["iron_positive_cell_fraction"] * row["nuclei_count"] for row in rows)
    return {
        **record,
        "positive_fraction_after": positive / cells if cells else 0.0,
        "pellet_positive_fraction_after_max": float(np.nanmax([float(row["iron_positive_cell_fraction"]) for row in rows] + [0.0])),
        "n_control_pellets_measured": len(rows),
    }

