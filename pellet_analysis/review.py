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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .bern import bern_scores
from .classify import pixel_maps_depth_px, stain_maps
from .config import RunConfig
from .labels import CLASS_NAMES, LABEL_DTYPES
from .io import read_image, read_label_window, read_window, write_label_pyramid, write_label_tiff, zarr_levels
from .measure import measure_pellets, touches_border
from .pellets import Illumination, estimate_illumination
from .records import ImageSummary, decode_image, pellet_boxes
from .stains import StainSet, configured_stains
from .workers import opencv_threads

__all__ = [
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

CORRECTIONS_LOG = "corrections.jsonl"


def label_path(run_dir, image: str, kind: str, *, corrected: bool = False) -> Path:
    """Path of an automatic or corrected label image of a run."""
    if kind not in LABEL_DTYPES:
        raise ValueError(f"unknown label kind {kind!r}; one of {', '.join(LABEL_DTYPES)}")
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
    meta = _image(run_dir, image)
    changed = {}
    per_class = {}
    for kind, crop in edits.items():
        crop = np.asarray(crop)
        region = (slice(r0, r0 + crop.shape[0]), slice(c0, c0 + crop.shape[1]))
        if meta is not None and meta.whole_slide:
            changed[kind] = _save_slide_correction(run_dir, image, kind, crop, region, meta, per_class)
            continue
        full, _ = load_labels(run_dir, image, kind)
        before = full[region]
        if before.shape != crop.shape:
            raise ValueError(f"{image}: {kind} edit of shape {crop.shape} at {origin} does not fit the image {full.shape}")
        diff = before != crop
        changed[kind] = int(diff.sum())
        if kind == "classes":
            per_class.update(_class_changes(before, crop))
        if diff.any() or not label_path(run_dir, image, kind, corrected=True).is_file():
            full = full.copy()
            full[region] = crop.astype(full.dtype)
            write_label_tiff(label_path(run_dir, image, kind, corrected=True), full.astype(LABEL_DTYPES[kind]))
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


def _class_changes(before, after) -> dict:
    """Class name -> pixels gained and lost where ``before`` and ``after`` differ."""
    diff = before != after
    out = {}
    for code in np.union1d(np.unique(before[diff]), np.unique(after[diff])):
        out[CLASS_NAMES.get(int(code), str(code))] = {"gained": int((after[diff] == code).sum()), "lost": int((before[diff] == code).sum())}
    return out


class _Everywhere:
    """A boolean array-like that is True at every index (a label image piece that owns all its pixels)."""

    def __getitem__(self, index):
        return np.ones(tuple(len(range(*s.indices(1 << 62))) for s in index), bool)


def _save_slide_correction(run_dir, image: str, kind: str, crop, region, meta: ImageSummary, per_class: dict) -> int:
    """Write a whole-slide scan's corrected label pyramid: its current labels with ``crop`` pasted, tile by tile."""
    shape = tuple(meta.shape[:2])
    if region[0].stop > shape[0] or region[1].stop > shape[1] or crop.shape != (region[0].stop - region[0].start, region[1].stop - region[1].start):
        raise ValueError(f"{image}: {kind} edit of shape {crop.shape} at {(region[0].start, region[1].start)} does not fit the image {shape}")
    before = load_label_window(run_dir, image, kind, region)
    diff = before != crop
    if kind == "classes":
        per_class.update(_class_changes(before, crop))
    target = label_path(run_dir, image, kind, corrected=True)
    if not diff.any() and target.is_file():
        return 0
    source = target if target.is_file() else label_path(run_dir, image, kind)
    base = zarr_levels(source)[0]  # read tile by tile while the new pyramid is written beside it
    full = (slice(0, shape[0]), slice(0, shape[1]))
    pieces = [(full, base, _Everywhere(), 0), (region, crop.astype(LABEL_DTYPES[kind]), np.ones(crop.shape, bool), 0)]
    write_label_pyramid(target, shape, pieces, dtype=LABEL_DTYPES[kind], pixel_size_um=float(meta.pixel_size_um))
    return int(diff.sum())


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


def _image(run_dir, image: str, run: dict | None = None) -> ImageSummary | None:
    """The run's record of a finished ``image``; None for an image it does not hold or that failed."""
    data = (run or _run_record(run_dir))["images"].get(image)
    record = decode_image(data, image) if data is not None else None
    return record if isinstance(record, ImageSummary) else None


def _finished_image(run_dir, image: str, run: dict | None = None) -> ImageSummary:
    meta = _image(run_dir, image, run)
    if meta is None:
        raise KeyError(f"{image}: not a finished image of the run in {run_dir}")
    return meta


def requantify(run_dir, image: str, pellet_ids=None, *, config: RunConfig | None = None, rgb=None, automatic: bool = False) -> list[dict]:
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
    automatic : bool, optional
        Measure the pipeline's own labels, ignoring the reviewer's corrections
        (the report sets the two side by side).

    Returns
    -------
    list of dict
        Rows with the measurement columns, Bern scores and ``corrected``.
    """
    run = _run_record(run_dir)
    config = config or RunConfig.model_validate(run["config"])
    meta = _finished_image(run_dir, image, run)
    shape = tuple(meta.shape[:2])
    px = float(meta.pixel_size_um)
    boxes = _pellet_boxes(run_dir, image, meta, automatic=automatic)
    ids = sorted(int(k) for k in boxes) if pellet_ids is None else [int(p) for p in pellet_ids if str(int(p)) in boxes]
    corrected = not automatic and any(label_path(run_dir, image, kind, corrected=True).is_file() for kind in LABEL_DTYPES)
    # the white point and vectors the image was analysed with (recorded in run.json)
    stains = StainSet.from_dict(meta.stains) if meta.stains else configured_stains(config.stains.params())
    background = meta.background
    if "coefficients" in background or (background and background.get("source") != "flat-field"):
        illumination = Illumination.from_dict(background)
    else:  # a run from before the surface was recorded
        rgb = read_image(meta.path)[0] if rgb is None else rgb
        illumination = estimate_illumination(rgb, pixel_size_um=px, stains=config.stains.params(), pellets=config.pellets.params())
    # the stain concentration is computed on the box grown by the filters' reach, so its values
    # inside the box are those of the pipeline
    margin = pixel_maps_depth_px(pixel_size_um=px, classify=config.classify.params(), nuclei=config.nuclei.params(), iron=config.iron.params())
    if rgb is None and not meta.whole_slide and len(ids) > 1:
        rgb = read_image(meta.path)[0]  # read once for all its pellets; a whole slide is read window by window
    bern = config.bern.params()
    out = []
    # the proteoglycan OD (from the image) and the label windows with what is measured from them alone are
    # independent: the OD is computed in a thread of its own while this one reads and measures the labels
    # (OpenCV and NumPy release the GIL), and measure_pellets waits for it only where it needs it. The two
    # threads are the parallelism: OpenCV's own pool would spin on cores they already use
    with opencv_threads(1), ThreadPoolExecutor(max_workers=1, thread_name_prefix="requantify-od") as pool:
        for pid in ids:
            r0, r1, c0, c1 = boxes[str(pid)]
            box = (slice(r0, r1), slice(c0, c1))
            pellet_stains = _pellet_stains(stains, meta, pid)
            pg_od = None
            if "proteoglycan" in pellet_stains.roles:
                pg_od = pool.submit(_proteoglycan_od, meta, rgb, illumination, pellet_stains, box, margin, config)
            pellets = load_label_window(run_dir, image, "pellets", box, automatic=automatic)
            (row,) = measure_pellets(
                pellets * (pellets == pid),  # this pellet alone, in the label image's own dtype
                load_label_window(run_dir, image, "classes", box, automatic=automatic),
                load_label_window(run_dir, image, "nuclei", box, automatic=automatic),
                pixel_size_um=px,
                proteoglycan_od=pg_od,
                iron_cell_distance_um=config.iron.cell_distance_um,
                rim_width_um=config.pellets.rim_width_um,
                # the open pixels are not kept: re-quantified territories are the nuclei themselves
                lacunae=_label_window_or_zeros(run_dir, image, "lacunae", box, automatic=automatic),
                cartilage=config.cartilage.params(),
            )
            row["centroid_row_px"] += box[0].start
            row["centroid_col_px"] += box[1].start
            row["touches_border"] = touches_border(box, shape)
            out.append({**row, **bern_scores(row, bern), "corrected": corrected})
    return out


def _proteoglycan_od(meta: ImageSummary, rgb, illumination: Illumination, stains: StainSet, box, margin: int, config: RunConfig) -> np.ndarray:
    """The proteoglycan concentration (OD, float32) of the pipeline under ``box``, from the image's pixels.

    Computed on the box grown by ``margin`` (the filters' reach,
    :func:`~pellet_analysis.classify.pixel_maps_depth_px`), so that its
    values inside the box are those of the pipeline; ``rgb`` is the whole
    image if in memory, else only the grown window is read.
    """
    shape = tuple(meta.shape[:2])
    px = float(meta.pixel_size_um)
    wide = _grown(box, margin, shape)
    inner = tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(box, wide))
    od = illumination.od(rgb[wide] if rgb is not None else _rgb_window(meta, wide), shape, wide)
    return stain_maps(od, stains, pixel_size_um=px, classify=config.classify.params(), nuclei=config.nuclei.params())["proteoglycan"][inner]


def _grown(box, margin: int, shape) -> tuple:
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, shape))


def _pellet_stains(stains: StainSet, meta: ImageSummary, pellet_id: int) -> StainSet:
    """The vectors pellet ``pellet_id`` was classified with (estimated per pellet when recorded so)."""
    infos = meta.stains_source
    if 0 < pellet_id <= len(infos) and "vectors" in infos[pellet_id - 1]:
        return stains.with_overrides(infos[pellet_id - 1]["vectors"])
    return stains


def _pellet_boxes(run_dir, image: str, meta: ImageSummary, *, automatic: bool = False) -> dict:
    """Pellet id (str) -> [r0, r1, c0, c1]: from run.json, or from the reviewer's corrected pellet labels."""
    corrected = not automatic and label_path(run_dir, image, "pellets", corrected=True).is_file()
    if meta.pellet_boxes and not corrected:
        return meta.pellet_boxes
    if automatic:
        import tifffile

        return pellet_boxes(tifffile.imread(label_path(run_dir, image, "pellets")))
    return pellet_boxes(load_labels(run_dir, image, "pellets")[0])


def _rgb_window(meta: ImageSummary, window) -> np.ndarray:
    """The input image's pixels under ``window``: decoded tile by tile for whole-slide scans."""
    if meta.whole_slide:
        return read_window(meta.path, window)
    return read_image(meta.path)[0][window]


def _label_window_or_zeros(run_dir, image: str, kind: str, window, *, automatic: bool = False) -> np.ndarray:
    """:func:`load_label_window`, or zeros for a kind the run did not write (lacunae, before issue 24)."""
    if kind == "lacunae" and not label_path(run_dir, image, kind).is_file() and not label_path(run_dir, image, kind, corrected=True).is_file():
        return np.zeros(tuple(s.stop - s.start for s in window), LABEL_DTYPES[kind])
    return load_label_window(run_dir, image, kind, window, automatic=automatic)


def load_label_window(run_dir, image: str, kind: str, window, *, automatic: bool = False) -> np.ndarray:
    """The part of the current (corrected, else automatic; ``automatic``: the automatic) label image under ``window``."""
    corrected = label_path(run_dir, image, kind, corrected=True)
    use_corrected = not automatic and corrected.is_file()
    return read_label_window(corrected if use_corrected else label_path(run_dir, image, kind), window)


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
    meta = _finished_image(run_dir, image)
    box = _pellet_boxes(run_dir, image, meta).get(str(int(pellet_id)))
    if box is None:
        raise ValueError(f"{image}: no pellet {pellet_id} in its labels")
    window = _grown((slice(box[0], box[1]), slice(box[2], box[3])), margin_px, tuple(meta.shape[:2]))
    return {
        "rgb": _rgb_window(meta, window),
        **{kind: _label_window_or_zeros(run_dir, image, kind, window) for kind in LABEL_DTYPES},
        "origin": (int(window[0].start), int(window[1].start)),
        "pixel_size_um": float(meta.pixel_size_um),
        "corrected": any(label_path(run_dir, image, kind, corrected=True).is_file() for kind in LABEL_DTYPES),
    }
