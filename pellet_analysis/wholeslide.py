"""Whole-slide scans: planned at low resolution, analysed pellet by pellet, written tile by tile.

A scan too large to hold in memory (or any pyramidal TIFF) is never read
whole. :func:`plan_whole_slide` reads a pyramid level (or block means of the
full resolution, tile by tile) to find the pellets and the white point; each
pellet is then one task (:func:`slide_pellet`) that decodes only the tiles of
its window, classifies it and leaves its arrays as ``.npy`` files, and one
that measures it from them (:func:`measure_slide_pellet`);
:func:`number_pellets` numbers the pellets, :func:`write_slide_labels` writes
each label image as tiled pyramidal OME-TIFF from those files, one tile at a
time, and :func:`finish_slide` the slide's summary. Peak memory is set by the
largest pellet, not by the slide.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .config import RunConfig
from .geojson import pellet_outline, ring_collection
from .gates import check_section
from .labels import LABEL_DTYPES
from .io import ImageReadError, LazyImage, read_window, write_json, write_label_pyramid
from .records import image_summary, pellet_boxes, table_row
from .pellets import block_mean, working_factor
from .slide import PelletClasses, SlidePlan, classify_pellet_window, measure_pellet_classes, plan_slide
from .stains import StainSet

__all__ = ["is_whole_slide", "plan_whole_slide", "slide_pellet", "measure_slide_pellet", "number_pellets", "write_slide_labels", "finish_slide"]

#: dtype of each label image.


def is_whole_slide(path, config: RunConfig) -> bool:
    """True for TIFFs with pyramid levels or at least ``config.whole_slide_min_px`` pixels (read from the header only)."""
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff", ".svs", ".btf"):
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = series.levels[0].shape
            plane = shape[-3:-1] if len(shape) >= 3 and shape[-1] in (3, 4) else shape[-2:]
            return len(series.levels) > 1 or math.prod(plane) >= config.whole_slide_min_px
    except Exception:  # unreadable files fail later with their own one-line reason
        return False


def _low_resolution(levels, factor: int):
    """Block means at ``factor`` or a little coarser, from the coarsest pyramid level that allows it.

    Returns (small, factor actually used).
    """
    rows = levels[0].shape[0]
    best, best_down = levels[0], 1
    for level in levels[1:]:
        down = max(1, round(rows / level.shape[0]))
        if down <= factor and down > best_down and abs(rows / level.shape[0] - down) < 0.01 * down:
            best, best_down = level, down
    from dask.threaded import get as threads  # the function, not "threads": Dask's name lookup imports distributed

    step = max(1, math.ceil(factor / best_down))
    return np.asarray(block_mean(best, step).compute(scheduler=threads)), best_down * step


def plan_whole_slide(lazy: LazyImage, pixel_size_um: float, config: RunConfig) -> SlidePlan:
    """Find the pellets and the white point of a whole-slide scan from low resolution.

    Parameters
    ----------
    lazy : LazyImage
        The scan, from :func:`~pellet_analysis.io.open_lazy`.
    pixel_size_um : float
    config : RunConfig

    Raises
    ------
    ImageReadError
    """
    factor = working_factor(lazy.shape, config.pellets.max_working_px)
    try:
        small, factor = _low_resolution(lazy.levels, factor)
    except Exception as error:  # a truncated or corrupt tile surfaces from the codec or the zarr store
        raise ImageReadError(f"cannot decode the image's tiles ({type(error).__name__}: {' '.join(str(error).split())[:160]})") from None
    check_section(small, dtype=lazy.dtype)
    return plan_slide(small, lazy.shape, lazy.dtype, factor=factor, pixel_size_um=pixel_size_um, config=config)


def slide_pellet(path, plan: SlidePlan, index: int, config: RunConfig, stains: StainSet, scratch) -> dict:
    """Classify pellet ``index`` from its window of the scan; its arrays go to ``scratch`` as .npy files.

    The pellet is measured by a task of its own (:func:`measure_slide_pellet`),
    from those files: the workers' last tasks are then small ones, which
    balance the end of a slide across them.

    Never raises: returns ``{"index", "kept": False}`` for a pellet smaller than
    the minimum area, ``{"index", "error"}`` for a failure.
    """
    started = time.time()
    try:
        part = classify_pellet_window(read_window(path, plan.windows[index - 1]), plan, index, config=config, stains=stains)
    except Exception as error:  # one pellet's failure is reported with its image, never kills the batch
        return _pellet_error(index, error)
    if part is None:
        return {"index": index, "kept": False}
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    files = {}
    # scratch, read back only by this run's own later tasks, and removed with the slide's summary:
    # closed, not synced (fsync took 0.19 s of a pellet)
    for kind in ("inside", "classes", "nuclei", "proteoglycan_od"):
        files[kind] = str(scratch / f"pellet{index}_{kind}.npy")
        np.save(files[kind], getattr(part, kind))
    return {
        "index": index,
        "kept": True,
        "window": part.box,  # what the files hold: the pellet's bounding box, grown by one pixel
        "stains_info": part.stains_info,
        "touches_border": part.touches_border,
        "files": files,
        "n_nuclei": int(part.nuclei.max(initial=0, where=part.inside)),
        "started_wall": started,
        "seconds": time.time() - started,
        "pid": os.getpid(),
    }


def _pellet_error(index: int, error: Exception) -> dict:
    return {"index": index, "error": f"pellet {index}: {type(error).__name__}: {' '.join(str(error).split())[:200]}"}


def measure_slide_pellet(classified: dict, pixel_size_um: float, config: RunConfig) -> dict:
    """Measure a pellet classified by :func:`slide_pellet`, from its files; its outline and box in the image.

    Returns ``classified`` itself for a pellet not kept or failed; never raises.
    """
    if not classified.get("kept"):
        return classified
    started = time.time()
    index, box = classified["index"], classified["window"]
    try:
        arrays = {kind: np.load(f, mmap_mode="r") for kind, f in classified["files"].items()}
        part = PelletClasses(index, box, stains_info=classified["stains_info"], touches_border=classified["touches_border"], **arrays)
        row = measure_pellet_classes(part, pixel_size_um=pixel_size_um, config=config)
    except Exception as error:
        return _pellet_error(index, error)
    origin = (box[0].start, box[1].start)
    return {
        "index": index,
        "row": row,
        "outline": pellet_outline(arrays["inside"], offset=origin),
        "box": next(iter(pellet_boxes(arrays["inside"], origin).values())),
        "seconds": time.time() - started,
    }


def number_pellets(pellet_results) -> dict:
    """Pellet ids 1..n (left to right) and nucleus id offsets for the kept pellets; or the first error."""
    errors = [r["error"] for r in pellet_results if "error" in r]
    if errors:
        return {"error": errors[0]}
    kept = sorted((r for r in pellet_results if r.get("kept")), key=lambda r: r["index"])
    offsets = np.concatenate([[0], np.cumsum([r["n_nuclei"] for r in kept])]).astype(int).tolist()
    return {"kept": kept, "nuclei_offsets": offsets[:-1]}


def write_slide_labels(numbered: dict, kind: str, path, shape, pixel_size_um: float) -> float | None:
    """Write one label image of a slide (``kind`` of :data:`LABEL_DTYPES`) from its pellets' files; seconds taken."""
    if "error" in numbered or not numbered["kept"]:
        return None
    t0 = time.perf_counter()
    pieces = []
    for pid, (r, offset) in enumerate(zip(numbered["kept"], numbered["nuclei_offsets"]), start=1):
        inside = np.load(r["files"]["inside"], mmap_mode="r")
        if kind == "pellets":
            pieces.append((r["window"], inside, inside, pid - 1))
        else:
            pieces.append((r["window"], np.load(r["files"][kind], mmap_mode="r"), inside, offset if kind == "nuclei" else 0))
    write_label_pyramid(path, shape, pieces, dtype=LABEL_DTYPES[kind], pixel_size_um=pixel_size_um)
    return time.perf_counter() - t0


def finish_slide(path, info: dict, numbered: dict, measured, written, config: RunConfig, output_dir, meta: dict, sha256: str | None = None) -> dict:
    """The slide's GeoJSON and summary, once its pellets are numbered and measured and its label images written.

    ``info`` holds the plan and what :func:`pellet_analysis.pipeline.process_file`
    records (pixel size and its source, warnings, start time); ``measured``
    the results of :func:`measure_slide_pellet`; ``written`` the seconds each
    label image took.
    """
    path, output_dir = Path(path), Path(output_dir)
    stem = path.stem
    error = numbered.get("error") or next((m["error"] for m in measured if "error" in m), None)
    if error:
        return {"image": stem, "file": path.name, "ok": False, "reason": error, "seconds": time.time() - info["started_wall"]}
    kept = numbered["kept"]
    if not kept:
        reason = "no pellet section found (no tissue object above pellets.tissue_min_od and pellets.min_pellet_area_um2)"
        return {"image": stem, "file": path.name, "ok": False, "reason": reason, "seconds": time.time() - info["started_wall"]}
    plan: SlidePlan = info["plan"]
    px = plan.pixel_size_um
    by_index = {m["index"]: m for m in measured}
    rows, outlines, boxes = [], [], {}
    for pid, r in enumerate(kept, start=1):
        m = by_index[r["index"]]
        row = table_row(stem, meta, {**m["row"], "pellet_id": pid}, px, info["pixel_size_source"])
        rows.append(row)
        outlines.append((row, m["outline"]))
        boxes[str(pid)] = m["box"]
    write_json(output_dir / "geojson" / f"{stem}.geojson", ring_collection(outlines))
    summary = image_summary(
        path,
        rows,
        sha256=sha256,
        shape=[*plan.shape, 3],
        dtype=plan.dtype,
        pixel_size_um=px,
        pixel_size_source=info["pixel_size_source"],
        stains=info["stains"],
        background=plan.illumination.to_dict(plan.shape),
        config_hash=info["config_hash"],
        metadata_override=info["metadata_override"],
        warnings=info["warnings"],
        timings_s={
            "plan": info["plan_s"],
            "pellets": [round(r["seconds"], 3) for r in kept],
            "measure": [round(by_index[r["index"]]["seconds"], 3) for r in kept],
            "pellets_started_after_plan_s": [round(r["started_wall"] - info["started_wall"], 3) for r in kept],
            "write_labels": [round(s, 3) for s in written],
        },
        seconds=time.time() - info["started_wall"],
        stains_source=[r["stains_info"] for r in kept],
        pellet_boxes=boxes,
        iron_granule_min_od=config.iron.granule_min_od,
        whole_slide={
            "low_resolution_factor": plan.factor,
            "pellet_windows": [[[w[0].start, w[0].stop], [w[1].start, w[1].stop]] for w in plan.windows],
        },
    )
    write_json(output_dir / "parts" / f"{stem}.json", summary)
    shutil.rmtree(info["scratch"], ignore_errors=True)
    return summary
