"""Reviewer corrections and exclusions of a run, and re-quantification from them.

Reviewer data is never overwritten by the pipeline:

- corrected labels are written beside the automatic ones as
  ``labels/<image>_<kind>.corrected.tif`` (``kind`` is pellets, classes or nuclei);
  the automatic files are never touched;
- every save and every exclusion appends one JSON line to ``corrections.jsonl``
  (who, when, image, pellet, what changed); the file is only ever appended to;
- exclusions are the replay of that log (the last exclude/include per pellet wins).

``apply_review`` folds this state into a pellet table: rows of pellets with
corrected labels are re-quantified and marked ``corrected``, excluded pellets
get ``excluded`` and their reason. ``run`` and ``report`` both call it.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .bern import bern_scores
from .classify import pixel_maps, pixel_maps_depth_px
from .config import RunConfig
from .io import read_image, write_label_tiff
from .measure import CLASS_NAMES, measure_pellets
from .pellets import estimate_illumination
from .stains import get_preset, rgb_to_od

__all__ = [
    "LABEL_KINDS",
    "CORRECTIONS_LOG",
    "label_path",
    "load_labels",
    "save_corrections",
    "set_exclusion",
    "exclusions",
    "read_log",
    "requantify",
    "apply_review",
    "pellet_crop",
]

LABEL_KINDS = {"pellets": np.uint16, "classes": np.uint8, "nuclei": np.uint32}
CORRECTIONS_LOG = "corrections.jsonl"


def label_path(run_dir, image: str, kind: str, *, corrected: bool = False) -> Path:
    """Path of an automatic or corrected label image of a run."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"unknown label kind {kind!r}; one of {', '.join(LABEL_KINDS)}")
    suffix = ".corrected.tif" if corrected else ".tif"
    return Path(run_dir) / "labels" / f"{image}_{kind}{suffix}"


def load_labels(run_dir, image: str, kind: str) -> tuple[np.ndarray, bool]:
    """The reviewer's corrected labels if they exist, else the automatic ones; and whether corrected."""
    import tifffile

    corrected = label_path(run_dir, image, kind, corrected=True)
    if corrected.is_file():
        return tifffile.imread(corrected), True
    return tifffile.imread(label_path(run_dir, image, kind)), False


def _append_log(run_dir, record: dict) -> dict:
    path = Path(run_dir) / CORRECTIONS_LOG
    line = json.dumps(record, sort_keys=True, default=str)
    with open(path, "a", encoding="utf-8") as handle:  # append only: the audit trail is never rewritten
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return record


def _who(user):
    if user:
        return str(user)
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _now():
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def save_corrections(run_dir, image: str, pellet_id: int, edits: dict, *, origin=(0, 0), user: str | None = None) -> dict:
    """Write corrected labels beside the automatic ones and append an audit record.

    Parameters
    ----------
    run_dir : str or Path
    image : str
        Image stem.
    pellet_id : int
        The pellet being reviewed (recorded in the audit trail).
    edits : dict
        ``kind -> array``: edited crops of ``pellets``, ``classes`` and/or
        ``nuclei`` label images, placed at ``origin`` in the full image.
    origin : (int, int), keyword-only
        Row and column of the crops' top-left pixel in the full image.
    user : str, optional, keyword-only
        Reviewer name (default: the login name).

    Returns
    -------
    dict
        The audit record: who, when, image, pellet, and pixels changed per
        kind and, for classes, per class (pixels gained minus lost).
    """
    r0, c0 = (int(v) for v in origin)
    changed = {}
    per_class = {}
    for kind, crop in edits.items():
        full, _ = load_labels(run_dir, image, kind)
        crop = np.asarray(crop)
        region = (slice(r0, r0 + crop.shape[0]), slice(c0, c0 + crop.shape[1]))
        before = full[region]
        if before.shape != crop.shape:
            raise ValueError(f"{image}: {kind} edit of shape {crop.shape} at {origin} does not fit the image {full.shape}")
        diff = before != crop
        changed[kind] = int(diff.sum())
        if kind == "classes" and diff.any():
            for code in np.union1d(np.unique(before[diff]), np.unique(crop[diff])):
                gained = int((crop[diff] == code).sum())
                lost = int((before[diff] == code).sum())
                per_class[CLASS_NAMES.get(int(code), str(code))] = {"gained": gained, "lost": lost}
        if diff.any() or not label_path(run_dir, image, kind, corrected=True).is_file():
            full = full.copy()
            full[region] = crop.astype(full.dtype)
            write_label_tiff(label_path(run_dir, image, kind, corrected=True), full.astype(LABEL_KINDS[kind]))
    record = {
        "action": "correct",
        "who": _who(user),
        "when": _now(),
        "image": image,
        "pellet_id": int(pellet_id),
        "pixels_changed": changed,
        "classes_changed": per_class,
    }
    return _append_log(run_dir, record)


def set_exclusion(run_dir, image: str, pellet_id: int, reason: str = "", *, excluded: bool = True, user: str | None = None) -> dict:
    """Exclude a pellet (with a reason) or include it again; appends an audit record."""
    if excluded and not reason.strip():
        raise ValueError("an exclusion needs a reason (fold, tear, out of focus, wrong stain ...)")
    record = {
        "action": "exclude" if excluded else "include",
        "who": _who(user),
        "when": _now(),
        "image": image,
        "pellet_id": int(pellet_id),
        "reason": " ".join(reason.split()),
    }
    return _append_log(run_dir, record)


def read_log(run_dir) -> list[dict]:
    """Every audit record of a run, oldest first (a torn last line is skipped)."""
    path = Path(run_dir) / CORRECTIONS_LOG
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def exclusions(run_dir) -> dict:
    """``(image, pellet_id) -> reason`` of the pellets currently excluded."""
    state = {}
    for record in read_log(run_dir):
        key = (record.get("image"), int(record.get("pellet_id", 0)))
        if record.get("action") == "exclude":
            state[key] = record.get("reason", "")
        elif record.get("action") == "include":
            state.pop(key, None)
    return state


def _run_record(run_dir) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))


def requantify(run_dir, image: str, pellet_ids=None, *, config: RunConfig | None = None, rgb=None) -> list[dict]:
    """Measure pellets again from the current (corrected where they exist) labels.

    Only the pellets' bounding box is read back into optical density, so a
    2,000 x 2,000 pixel pellet takes well under a second.

    Parameters
    ----------
    run_dir : str or Path
    image : str
    pellet_ids : iterable of int, optional
        Default: every pellet of the image.
    config : RunConfig, optional
        Default: the run's own resolved config.
    rgb : ndarray, optional
        The input image, if already in memory.

    Returns
    -------
    list of dict
        Rows with the measurement columns, Bern scores and ``corrected``.
    """
    run = _run_record(run_dir)
    config = config or RunConfig.model_validate(run["config"])
    meta = run["images"][image]
    labels = {kind: load_labels(run_dir, image, kind) for kind in LABEL_KINDS}
    pellets = labels["pellets"][0]
    corrected = any(flag for _, flag in labels.values())
    ids = sorted(set(np.unique(pellets).tolist()) - {0}) if pellet_ids is None else [int(p) for p in pellet_ids]
    ids = [p for p in ids if (pellets == p).any()]
    if not ids:
        return []
    if rgb is None:
        rgb, _ = read_image(meta["path"])
    px = float(meta["pixel_size_um"])
    rows_, cols_ = np.nonzero(np.isin(pellets, ids))
    box = (slice(rows_.min(), rows_.max() + 1), slice(cols_.min(), cols_.max() + 1))
    # the stain concentration is computed on the box grown by the filters' reach, so its values
    # inside the box are those of the whole-image pipeline
    margin = pixel_maps_depth_px(pixel_size_um=px, classify=config.classify, nuclei=config.nuclei)
    wide = tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, pellets.shape))
    inner = tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(box, wide))
    stains = get_preset(config.stains.preset)
    illumination = estimate_illumination(rgb, pixel_size_um=px, stains=config.stains, pellets=config.pellets)
    field = illumination.field(rgb.shape[:2])
    od = rgb_to_od(rgb[wide], field[wide] if field.ndim == 3 else field)
    pg_od = None
    if "proteoglycan" in stains.roles:
        pg_od = pixel_maps(od, stains, pixel_size_um=px, classify=config.classify, nuclei=config.nuclei, iron=config.iron)[inner][..., 1]
    crop_pellets = np.where(np.isin(pellets[box], ids), pellets[box], 0)
    rows = measure_pellets(
        crop_pellets,
        labels["classes"][0][box],
        labels["nuclei"][0][box],
        pixel_size_um=px,
        proteoglycan_od=pg_od,
        iron_cell_distance_um=config.iron.cell_distance_um,
        rim_width_um=config.pellets.rim_width_um,
    )
    out = []
    for row in rows:
        row["centroid_row_px"] += box[0].start
        row["centroid_col_px"] += box[1].start
        out.append({**row, **bern_scores(row, config.bern), "corrected": corrected})
    return out


def apply_review(table: pd.DataFrame, run_dir, *, config: RunConfig | None = None) -> pd.DataFrame:
    """Fold reviewer corrections and exclusions into a pellet table.

    Pellets of images with corrected labels are re-quantified from them
    (``corrected`` True); pellets excluded in ``corrections.jsonl`` get
    ``excluded`` True and their reason. Other rows are returned unchanged.
    """
    run_dir = Path(run_dir)
    table = table.copy()
    if not (run_dir / "labels").is_dir():
        return table
    corrected_images = sorted({p.name.rsplit("_", 1)[0] for p in (run_dir / "labels").glob("*.corrected.tif")})
    for image in corrected_images:
        if image not in set(table["image"].astype(str)):
            continue
        for row in requantify(run_dir, image, config=config):
            mask = (table["image"] == image) & (table["pellet_id"] == row["pellet_id"])
            if not mask.any():
                continue
            for key, value in row.items():
                if key in table.columns and key != "pellet_id":
                    table.loc[mask, key] = value
    for (image, pellet_id), reason in exclusions(run_dir).items():
        mask = (table["image"] == image) & (table["pellet_id"] == pellet_id)
        table.loc[mask, "excluded"] = True
        table.loc[mask, "exclusion_reason"] = reason
    return table


def pellet_crop(run_dir, image: str, pellet_id: int, *, margin_px: int = 20) -> dict:
    """Everything a reviewer sees of one pellet, cropped to its bounding box plus a margin.

    Returns
    -------
    dict
        ``rgb``, ``pellets``, ``classes``, ``nuclei`` crops (corrected labels
        where they exist), ``origin`` (row, col of the crop in the image),
        ``pixel_size_um``, ``corrected`` (any corrected label file exists).
    """
    run = _run_record(run_dir)
    meta = run["images"][image]
    labels = {kind: load_labels(run_dir, image, kind) for kind in LABEL_KINDS}
    pellets = labels["pellets"][0]
    rows, cols = np.nonzero(pellets == int(pellet_id))
    if rows.size == 0:
        raise ValueError(f"{image}: no pellet {pellet_id} in its labels")
    r0, c0 = max(0, rows.min() - margin_px), max(0, cols.min() - margin_px)
    r1, c1 = min(pellets.shape[0], rows.max() + 1 + margin_px), min(pellets.shape[1], cols.max() + 1 + margin_px)
    box = (slice(r0, r1), slice(c0, c1))
    rgb, _ = read_image(meta["path"])
    return {
        "rgb": rgb[box],
        **{kind: arr[box].copy() for kind, (arr, _) in labels.items()},
        "origin": (int(r0), int(c0)),
        "pixel_size_um": float(meta["pixel_size_um"]),
        "corrected": any(flag for _, flag in labels.values()),
    }
