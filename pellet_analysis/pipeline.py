"""The per-image pipeline and the batch runner.

``analyze_image`` is a pure function of an RGB array; ``process_file`` adds
reading and writing one image's results; ``run_batch`` schedules every image
with Dask and writes the run's contract files::

    pellets.csv, pellets.parquet, failures.csv, run.json,
    labels/<image>_pellets.tif, labels/<image>_classes.tif, labels/<image>_nuclei.tif,
    geojson/<image>.geojson, parts/<image>.json
"""

from __future__ import annotations

# pandas, the review state and the sample sheet are imported where the tables are made: this module
# is what worker processes import, and they never make a table (pandas alone is 0.2 s of start-up)

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from . import __version__
from .bern import BERN_COLUMNS
from .config import RunConfig
from .gates import NotASectionError, check_section, section_problem
from .geojson import pellet_feature_collection
from .calibrate import is_control, threshold_for_fraction
from .labels import LABEL_DTYPES
from .io import ImageReadError, open_lazy, read_image, read_pixel_size_um, read_window, sha256_file, write_json, write_label_tiff, write_tables
from .measure import MEASUREMENT_COLUMNS
from .metadata import METADATA_FIELDS, parse_name
from .pellets import Illumination
from .slide import analyze_pellet, classify_pellet_window, measure_pellet_classes, number_pieces, paste_pieces, plan_image
from .stains import StainSet, configured_stains
from .records import image_summary, pellet_boxes, table_row
from .scale import NucleusSizes, PixelSizeChoice, nucleus_sizes_px, pool_pixel_sizes_um
from .wholeslide import (
    finish_slide,
    is_whole_slide,
    measure_slide_pellet,
    number_pellets,
    plan_whole_slide,
    slide_pellet,
    write_slide_labels,
)
from .workers import one_opencv_thread, opencv_threads, process_pool

__all__ = [
    "TABLE_COLUMNS",
    "ImageAnalysis",
    "analyze_image",
    "process_file",
    "list_images",
    "run_batch",
]

#: Pixel sizes (µm) a microscope scan can have; a file claiming another (72 dpi is 352.8 µm) is ignored.
PLAUSIBLE_PIXEL_SIZE_UM = (0.01, 50.0)

#: Columns of pellets.csv / pellets.parquet, in order.
TABLE_COLUMNS = (
    ["image", "pellet_id", *METADATA_FIELDS]
    + [c for c in MEASUREMENT_COLUMNS if c != "pellet_id"]
    + BERN_COLUMNS
    + ["pixel_size_um", "pixel_size_source", "touches_border", "shape_exclusion_reason", "excluded", "exclusion_reason", "corrected"]
)


@dataclass
class ImageAnalysis:
    """Everything computed for one image."""

    pellets: np.ndarray
    classes: np.ndarray
    nuclei: np.ndarray
    proteoglycan_od: np.ndarray
    rows: list
    stains: StainSet
    illumination: Illumination
    timings_s: dict
    stains_info: list = field(default_factory=list)  # per pellet: which vectors were used and why (choose_stains)


def analyze_image(rgb, *, pixel_size_um: float, config: RunConfig, stains: StainSet | None = None) -> ImageAnalysis:
    """Run every analysis step on one RGB image held in memory.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
        uint8, uint16 or float image.
    pixel_size_um : float, keyword-only
    config : RunConfig, keyword-only
    stains : StainSet, optional, keyword-only
        Defaults to the preset named in the config with its ``stains.vectors``;
        with ``stains.estimate: auto`` replaced by vectors estimated from the
        pellets when plausible (:func:`~pellet_analysis.stains.choose_stains`).

    Returns
    -------
    ImageAnalysis
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (rows, cols, 3), got {rgb.shape}")
    if not pixel_size_um or pixel_size_um <= 0:
        raise ValueError("pixel_size_um must be > 0")
    check_section(rgb)
    stains = stains or configured_stains(config.stains)
    t = {}
    t0 = time.perf_counter()
    plan = plan_image(rgb, pixel_size_um=pixel_size_um, config=config)
    t["plan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pieces = [analyze_pellet(rgb[w], plan, k, config=config, stains=stains) for k, w in enumerate(plan.windows, start=1)]
    pieces = number_pieces(pieces)
    t["pellets"] = time.perf_counter() - t0
    pellets, classes, nuclei, pg_od = paste_pieces(pieces, rgb.shape[:2])
    return ImageAnalysis(pellets, classes, nuclei, pg_od, [p.row for p in pieces], stains, plan.illumination, t, [p.stains_info for p in pieces])


def list_images(input_dir, extensions) -> list[Path]:
    """Image files directly in ``input_dir`` with one of ``extensions``, sorted by name."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


#: ``pixel_size_source`` values: the file's tags, the config (or --pixel-size-um), the config's
#: default because nothing gave one, the image's own nuclei, the nuclei of the batch's images together.
PIXEL_SIZE_SOURCES = ("file", "config", "default", "estimated", "batch estimate")


def _pixel_size(file_px, config: RunConfig) -> tuple[float, str, str]:
    """The pixel size to use, where it came from ("file" or "config"), and a note on an implausible file value ('' when none)."""
    ignored = ""
    if file_px and not PLAUSIBLE_PIXEL_SIZE_UM[0] <= file_px <= PLAUSIBLE_PIXEL_SIZE_UM[1]:
        ignored = f"the file's pixel size {file_px:.4g} µm is a screen resolution tag, not a scan's: ignored"
        file_px = None
    if file_px and not config.force_pixel_size:
        return file_px, "file", ignored
    return config.pixel_size_um, "config", ignored


def _pixel_size_unknown(px_source: str, config: RunConfig) -> bool:
    """Whether the pixel size is the config's default: neither the file nor the user gave one."""
    return px_source == "config" and "pixel_size_um" not in config.model_fields_set


def _default_pixel_size(why: str, pixel_size: float) -> str:
    """The warning for an image measured at the config's default pixel size: every size in µm rests on a guess."""
    return f"no pixel size in the file or the config, and {why}: used the default {pixel_size:.3g} µm; give --pixel-size-um to set it"


def image_pixel_size(rgb, file_px, stem: str, config: RunConfig, choice: PixelSizeChoice | None = None) -> tuple[float, str, str]:
    """The pixel size an image in memory is measured at, its ``pixel_size_source`` and one warning ('' when none).

    The warning says in one line what was decided and why: an implausible
    file value, an estimate or the default are never silent, and never said
    in two lines that contradict each other.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
    file_px : float or None
        The file's pixel size (µm).
    stem : str
    config : RunConfig
    choice : PixelSizeChoice, optional
        The batch's choice for this image (:func:`pixel_size_choices`); by
        default estimated from this image's nuclei alone.

    Returns
    -------
    pixel_size_um : float
    source : str
        One of :data:`PIXEL_SIZE_SOURCES`.
    warning : str
    """
    pixel_size, source, ignored = _pixel_size(file_px, config)
    decision = ""
    if _pixel_size_unknown(source, config):
        if choice is None and config.estimate_pixel_size:
            choice = pixel_size_choices({stem: nucleus_sizes_px(rgb, configured_stains(config.stains), tissue_min_od=config.pellets.tissue_min_od)}, config)[stem]
        if choice is not None and choice.pixel_size_um is not None:
            pixel_size, source, decision = choice.pixel_size_um, choice.column_source, choice.warning()
        else:
            source = "default"
            decision = _default_pixel_size("too few whole nuclei to estimate it" if config.estimate_pixel_size else "estimate_pixel_size is off", pixel_size)
    elif ignored:
        decision = f"used {pixel_size:.4g} µm from the config"
    return pixel_size, source, "; ".join(w for w in (ignored, decision) if w)


def _metadata(path: Path, config: RunConfig, metadata, warnings: list):
    """Study metadata from the sample sheet or the file name; None when required and missing."""
    if metadata is not None:
        return metadata
    meta = parse_name(path.stem, config.filename_pattern)
    if meta is None:
        if config.require_metadata:
            return None
        warnings.append(f"file name does not match pattern {config.filename_pattern!r}; metadata left empty")
        meta = {}
    return meta


def _failure(path: Path, reason: str, started: float) -> dict:
    return {"image": path.stem, "file": path.name, "ok": False, "reason": reason, "seconds": time.perf_counter() - started}


def nucleus_sizes_task(path, config: RunConfig) -> NucleusSizes | None:
    """The nuclei of an image whose pixel size neither its file nor the config gives, for the batch's estimate; else None.

    A TIFF's pixel size is read from its tags alone; an unreadable file gives
    None (:func:`process_file` reports it).
    """
    def unknown(file_px) -> bool:
        return _pixel_size_unknown(_pixel_size(file_px, config)[1], config)

    if not unknown(read_pixel_size_um(path)):
        return None
    try:
        rgb, file_px = read_image(path)
        if not unknown(file_px) or section_problem(rgb) is not None:
            return None
        return nucleus_sizes_px(rgb, configured_stains(config.stains), tissue_min_od=config.pellets.tissue_min_od)
    except Exception:  # whatever it is, process_file meets it again and reports it as the image's failure
        return None


def pixel_size_choices(sizes_by_image: dict, config: RunConfig) -> dict[str, PixelSizeChoice]:
    """:func:`~pellet_analysis.scale.pool_pixel_sizes_um` with the config's settings."""
    return pool_pixel_sizes_um(
        sizes_by_image, typical_nucleus_um=config.nuclei.typical_diameter_um, max_ratio=config.batch_pixel_size_max_ratio
    )


def process_file(
    path, config: RunConfig, output_dir, metadata: dict | None = None, pixel_size_choice: PixelSizeChoice | None = None, granule_min_od: float | None = None
) -> dict:
    """Read, analyse and write one image; never raises for a bad image.

    Label images go to ``output_dir/labels`` and the image's summary to
    ``output_dir/parts/<image>.json``, each written atomically, so finished
    images survive an interrupted batch.

    Returns
    -------
    dict
        ``ok`` True with rows, stains, background, pixel size, hash and
        timings; or ``ok`` False with a one-line ``reason``.

    Other Parameters
    ----------------
    metadata : dict, optional
        Study metadata (from a sample sheet); by default parsed from the file name.
    pixel_size_choice : PixelSizeChoice, optional
        For an image without a pixel size in its file or the config: the
        batch's choice (:func:`pixel_size_choices`); by default estimated
        from this image's nuclei alone.
    granule_min_od : float, optional
        The batch's calibrated iron granule threshold (:func:`calibrate_iron`);
        by default ``config.iron.granule_min_od``. The summary records the
        one used; the config hash stays that of ``config``.
    """
    path = Path(path)
    output_dir = Path(output_dir)
    started = time.perf_counter()
    try:
        return _process_file(path, config, output_dir, metadata, pixel_size_choice, granule_min_od, started)
    except Exception as error:  # one image's bug or bad data never stops the batch
        return _unexpected_failure(path, output_dir, error, started)


def _unexpected_failure(path: Path, output_dir: Path, error: Exception, started: float) -> dict:
    """A failure summary naming the exception in one line; its traceback goes to ``logs/<image>.traceback.txt`` in the run folder."""
    import traceback

    log = output_dir / "logs" / f"{path.stem}.traceback.txt"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        where = f"; traceback in {log.relative_to(output_dir)}"
    except OSError:
        where = ""
    return _failure(path, f"{type(error).__name__}: {' '.join(str(error).split())[:200]}{where}", started)


def _process_file(path: Path, config: RunConfig, output_dir: Path, metadata, pixel_size_choice, granule_min_od, started: float) -> dict:
    """:func:`process_file`'s work; exceptions other than a bad image's own are left to it."""
    stem = path.stem
    warnings = []
    meta = _metadata(path, config, metadata, warnings)
    if meta is None:
        return _failure(path, f"file name does not match pattern {config.filename_pattern!r}", started)
    try:
        t0 = time.perf_counter()
        rgb, file_px = read_image(path)
        read_s = time.perf_counter() - t0
    except ImageReadError as error:
        return _failure(path, str(error), started)
    problem = section_problem(rgb)
    if problem is not None:
        return _failure(path, problem, started)
    pixel_size, px_source, px_warning = image_pixel_size(rgb, file_px, stem, config, pixel_size_choice)
    if px_warning:
        warnings.append(px_warning)
    analysis_config = with_granule_min_od(config, granule_min_od)
    try:
        analysis = analyze_image(rgb, pixel_size_um=pixel_size, config=analysis_config)
    except (ValueError, MemoryError) as error:
        return _failure(path, f"analysis failed ({type(error).__name__}: {' '.join(str(error).split())[:200]})", started)
    if not analysis.rows:
        return _failure(path, "no pellet section found (no tissue object above pellets.tissue_min_od and pellets.min_pellet_area_um2)", started)
    labels_dir = output_dir / "labels"
    t0 = time.perf_counter()
    write_label_tiff(labels_dir / f"{stem}_pellets.tif", analysis.pellets.astype(LABEL_DTYPES["pellets"]), pixel_size_um=pixel_size)
    write_label_tiff(labels_dir / f"{stem}_classes.tif", analysis.classes.astype(LABEL_DTYPES["classes"]), pixel_size_um=pixel_size)
    write_label_tiff(labels_dir / f"{stem}_nuclei.tif", analysis.nuclei.astype(LABEL_DTYPES["nuclei"]), pixel_size_um=pixel_size)
    write_s = time.perf_counter() - t0
    rows = [table_row(stem, meta, r, pixel_size, px_source) for r in analysis.rows]
    write_json(output_dir / "geojson" / f"{stem}.geojson", pellet_feature_collection(analysis.pellets, rows))
    summary = image_summary(
        path,
        rows,
        shape=rgb.shape,
        dtype=rgb.dtype,
        pixel_size_um=pixel_size,
        pixel_size_source=px_source,
        stains=analysis.stains,
        background=analysis.illumination.to_dict(rgb.shape[:2]),
        config_hash=config_hash(config),
        metadata_override=_jsonable(metadata),
        warnings=warnings,
        timings_s={"read": read_s, **analysis.timings_s, "write": write_s},
        seconds=time.perf_counter() - started,
        stains_source=analysis.stains_info,
        pellet_boxes=pellet_boxes(analysis.pellets),
        iron_granule_min_od=analysis_config.iron.granule_min_od,
    )
    write_json(output_dir / "parts" / f"{stem}.json", summary)
    return summary


def with_granule_min_od(config: RunConfig, granule_min_od: float | None) -> RunConfig:
    """``config`` with ``iron.granule_min_od`` replaced (unchanged for None)."""
    if granule_min_od is None or granule_min_od == config.iron.granule_min_od:
        return config
    return config.model_copy(update={"iron": config.iron.model_copy(update={"granule_min_od": float(granule_min_od)})})


def control_iron_levels(path, config: RunConfig, pixel_size_choice: PixelSizeChoice | None = None, slide_info: dict | None = None) -> dict:
    """Classify a control image's pellets at the configured threshold: its cells' iron levels and positive count.

    Parameters
    ----------
    path : str or Path
    config : RunConfig
    pixel_size_choice : PixelSizeChoice, optional
        As for :func:`process_file`.
    slide_info : dict, optional
        A whole-slide scan's :func:`plan_slide_task` result: its pellets are
        read window by window.

    Returns
    -------
    dict
        ``image``, ``levels`` (:func:`~pellet_analysis.calibrate.cell_iron_levels`
        of every cell), ``n_pellets``, ``n_cells`` and ``n_positive`` (cells
        iron-positive at the configured threshold); or ``image`` and ``error``.
    """
    path = Path(path)
    stains = configured_stains(config.stains)
    try:
        if slide_info is None:
            rgb, file_px = read_image(path)
            check_section(rgb)
            pixel_size = image_pixel_size(rgb, file_px, path.stem, config, pixel_size_choice)[0]
            plan = plan_image(rgb, pixel_size_um=pixel_size, config=config)

            def window_rgb(window):
                return rgb[window]
        else:
            plan = slide_info["plan"]

            def window_rgb(window):
                return read_window(path, window)

        levels, n_pellets, n_cells, n_positive = [], 0, 0, 0
        for k, window in enumerate(plan.windows, start=1):
            part = classify_pellet_window(window_rgb(window), plan, k, config=config, stains=stains, iron_levels=True)
            if part is None:
                continue
            row = measure_pellet_classes(part, pixel_size_um=plan.pixel_size_um, config=config)
            n_pellets += 1
            n_cells += int(row["nuclei_count"])
            n_positive += int(round(row["iron_positive_cell_fraction"] * row["nuclei_count"]))
            levels.append(part.iron_levels)
    except Exception as error:  # the control is left out of the calibration; process_file reports the image itself
        return {"image": path.stem, "error": f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"}
    levels = np.concatenate(levels) if levels else np.zeros(0, np.float64)
    return {"image": path.stem, "levels": levels, "n_pellets": n_pellets, "n_cells": n_cells, "n_positive": n_positive}


def calibrate_iron(control_results, config: RunConfig) -> dict:
    """The batch's iron calibration record from its controls' :func:`control_iron_levels`.

    The threshold is the lowest, never below ``iron.granule_min_od``, under
    which at most ``iron.calibrate_max_positive_fraction`` of the control
    cells stay iron-positive (:func:`~pellet_analysis.calibrate.threshold_for_fraction`).

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
    ok = [r for r in control_results if "error" not in r]
    levels = np.concatenate([r["levels"] for r in ok]) if ok else np.zeros(0, np.float64)
    record = {
        "mode": "controls",
        "control_conditions": list(config.iron.control_conditions),
        "configured_granule_min_od": fixed,
        "max_positive_fraction": config.iron.calibrate_max_positive_fraction,
        "control_images": sorted(r["image"] for r in ok),
        "failed_control_images": {r["image"]: r["error"] for r in control_results if "error" in r},
        "n_control_pellets": sum(r["n_pellets"] for r in ok),
        "n_control_cells": int(levels.size),
    }
    if levels.size == 0:
        return {**record, "calibrated": False, "granule_min_od": fixed, "reason": "the control pellets hold no nuclei: the configured threshold is used"}
    threshold = threshold_for_fraction(levels, max_fraction=config.iron.calibrate_max_positive_fraction, floor=fixed)
    n_cells = sum(r["n_cells"] for r in ok)
    return {
        **record,
        "calibrated": True,
        "granule_min_od": threshold,
        "positive_fraction_before": sum(r["n_positive"] for r in ok) / n_cells if n_cells else 0.0,
        "positive_fraction_predicted": float(np.mean(levels > threshold)),
    }


def _calibration_outcome(record: dict, results, control_images) -> dict:
    """``record`` with the controls' iron-positive cell fraction as measured at the threshold used (``positive_fraction_after``)."""
    rows = [row for r in results if r.get("ok") and r["image"] in control_images for row in r["rows"]]
    cells = sum(int(row["nuclei_count"]) for row in rows)
    if not rows:
        return record
    positive = sum(row["iron_positive_cell_fraction"] * row["nuclei_count"] for row in rows)
    return {**record, "positive_fraction_after": positive / cells if cells else 0.0, "n_control_pellets_measured": len(rows)}


def _compute(tasks, config: RunConfig, progress, pool=None, costs=None):
    """Run delayed tasks on the configured scheduler, reporting each finished image.

    ``costs`` maps task keys to their expected work (any unit): on the local
    schedulers the tasks ready at the start run costliest first (longest
    processing time first), so that no worker is left with a large pellet
    while the others idle; tasks without a cost keep Dask's order after them.
    """
    import dask

    if config.scheduler.startswith("tcp://"):
        from distributed import Client, as_completed

        with Client(config.scheduler) as client:
            client.run(one_opencv_thread)  # the cluster's workers run one task per thread already
            futures = client.compute(tasks)
            index = {f.key: i for i, f in enumerate(futures)}
            results = [None] * len(futures)
            for future in as_completed(futures):
                results[index[future.key]] = future.result()
                progress(results[index[future.key]])
            return results
    from dask.callbacks import Callback

    class _Progress(Callback):
        @staticmethod
        def _costliest_last(state):
            if costs:  # the scheduler takes ready tasks from the end of the list
                state["ready"].sort(key=lambda key: costs.get(key, 0))

        def _start_state(self, dsk, state):
            self._costliest_last(state)

        def _posttask(self, key, result, dsk, state, worker_id):
            # called after the tasks this one made ready were added, before the next are sent: those
            # too wait behind costlier ones (Dask's own order would run them first, one by one)
            self._costliest_last(state)
            if isinstance(result, dict) and "ok" in result:
                progress(result)

    kwargs = {"scheduler": _local_scheduler(config.scheduler)}
    if config.n_workers and config.scheduler != "synchronous":
        kwargs["num_workers"] = config.n_workers
    if config.scheduler == "processes":
        # one task per dispatch: Dask's default batches of 6 would run a slide's pellets one after another
        kwargs["chunksize"] = 1
        if pool is not None:
            kwargs["pool"] = pool  # its workers were started with one OpenCV thread each
        else:
            kwargs["initializer"] = one_opencv_thread
    # Dask runs one task per worker: more OpenCV threads per task would only oversubscribe the
    # cores. Set for this computation's threads and restored after it, not for the caller's process.
    with opencv_threads(1), _Progress():
        return list(dask.compute(*tasks, **kwargs))


def _local_scheduler(name: str):
    """Dask's scheduler function for a local scheduler's name.

    Dask resolves a name by first looking for a dask.distributed client,
    which imports distributed (0.16 s, before the first task is sent); a
    function is used as it is.
    """
    if name == "processes":
        from dask.multiprocessing import get
    elif name == "threads":
        from dask.threaded import get
    else:
        from dask.local import get_sync as get
    return get


def plan_slide_task(path, config: RunConfig, metadata, output_dir) -> dict:
    """Plan one whole-slide scan (see :mod:`pellet_analysis.wholeslide`); a failure summary if it cannot be planned."""
    path = Path(path)
    started_wall, started = time.time(), time.perf_counter()
    warnings = []
    meta = _metadata(path, config, metadata, warnings)
    if meta is None:
        return _failure(path, f"file name does not match pattern {config.filename_pattern!r}", started)
    try:
        lazy = open_lazy(path)
        pixel_size, px_source, ignored = _pixel_size(lazy.pixel_size_um, config)
        decision = f"used {pixel_size:.4g} µm from the config" if ignored else ""
        if _pixel_size_unknown(px_source, config):
            px_source, decision = "default", _default_pixel_size("none is estimated for whole-slide scans", pixel_size)
        if ignored or decision:
            warnings.append("; ".join(w for w in (ignored, decision) if w))
        plan = plan_whole_slide(lazy, pixel_size, config)
    except (ImageReadError, NotASectionError) as error:
        return _failure(path, str(error), started)
    except Exception as error:
        return _unexpected_failure(path, Path(output_dir), error, started)
    return {
        "plan": plan,
        "meta": meta,
        "pixel_size_source": px_source,
        "warnings": warnings,
        "stains": configured_stains(config.stains),
        "config_hash": config_hash(config),
        "metadata_override": _jsonable(metadata),
        "plan_s": time.perf_counter() - started,
        "started_wall": started_wall,
        "scratch": str(Path(output_dir) / "parts" / f"{path.stem}.pellets"),
    }


#: Expected work of a slide's small tasks per pixel of pellet window, as a share of classifying
#: that pixel: measuring a pellet, and writing each label image. On the 40k benchmark slide
#: (2026-12-02) a pellet's classification took 2.0-3.3 s, its measurements 0.5-0.7 s, the nucleus
#: label image 0.6 s and the other two 0.3 s each for the six pellets.
_SMALL_TASK_SHARES = {"measure": 0.2, "nuclei": 0.03, "classes": 0.015, "pellets": 0.015}


def _slide_graph(path: Path, info: dict, config: RunConfig, output_dir, metadata, sha256: str | None = None):
    """One task per pellet window, one that measures each pellet, then one per label image and one that writes the slide's summary; and the tasks' costs.

    Returns the slide's delayed summary and ``{key: cost}`` for :func:`_compute`:
    a pellet costs its window's pixels, and its measurements and the label
    images their shares of those (:data:`_SMALL_TASK_SHARES`), so that the
    small tasks wait until no pellet is left to start and then fill in
    around the last ones. ``sha256``, the input's hash, was computed beside
    the plan (computed at the end when not given).
    """
    import dask

    plan_info = info["plan"]
    plan = dask.delayed(plan_info, name=f"plan-{path.name}")
    areas = [(rows.stop - rows.start) * (cols.stop - cols.start) for rows, cols in plan_info.windows]
    shape, px = plan_info.shape, plan_info.pixel_size_um
    pellets = [
        dask.delayed(slide_pellet, pure=False)(path, plan, k, config, info["stains"], info["scratch"], dask_key_name=f"pellet-{path.name}-{k}")
        for k in range(1, len(areas) + 1)
    ]
    measured = [
        dask.delayed(measure_slide_pellet, pure=False)(task, px, config, dask_key_name=f"measure-{path.name}-{k}")
        for k, task in enumerate(pellets, start=1)
    ]
    numbered = dask.delayed(number_pellets, pure=False)(pellets, dask_key_name=f"number-{path.name}")
    written = [  # one task per label image: on two workers two are written at once
        dask.delayed(write_slide_labels, pure=False)(
            numbered, kind, Path(output_dir) / "labels" / f"{path.stem}_{kind}.tif", shape, px, dask_key_name=f"labels-{kind}-{path.name}"
        )
        for kind in LABEL_DTYPES
    ]
    summary = dask.delayed(finish_slide, pure=False)(
        path, info, numbered, measured, written, config, output_dir, info["meta"], sha256, dask_key_name=f"image-{path.name}"
    )
    costs = {task.key: area for task, area in zip(pellets, areas)}
    costs.update({task.key: _SMALL_TASK_SHARES["measure"] * area for task, area in zip(measured, areas)})
    costs.update({task.key: _SMALL_TASK_SHARES[kind] * sum(areas) for task, kind in zip(written, LABEL_DTYPES)})
    costs[numbered.key] = math.inf  # instant, and what the label images wait for
    return summary, costs


class RunFolderConflict(RuntimeError):
    """The output folder holds results of another config; results are never mixed."""


#: Settings that do not change results (where and how the work runs) stay out of the config hash.
_HASH_EXCLUDED = ("input_dir", "output_dir", "scheduler", "n_workers", "tile_px", "whole_slide_min_px")


def config_hash(config: RunConfig) -> str:
    """SHA-256 of every setting that can change a result."""
    data = config.model_dump(mode="json", exclude=set(_HASH_EXCLUDED))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _check_same_config(output_dir: Path, chash: str) -> None:
    previous = set()
    run_json = output_dir / "run.json"
    if run_json.is_file():
        try:
            previous.add(json.loads(run_json.read_text(encoding="utf-8")).get("config_hash"))
        except (OSError, ValueError):
            pass
    for part in (output_dir / "parts").glob("*.json") if (output_dir / "parts").is_dir() else ():
        try:
            previous.add(json.loads(part.read_text(encoding="utf-8")).get("config_hash"))
        except (OSError, ValueError):
            continue
    other = sorted(h for h in previous - {chash, None})
    if other:
        raise RunFolderConflict(
            f"{output_dir}: holds results of a different config (hash {other[0][:12]}, this run {chash[:12]}); "
            "results are never mixed: choose a new --output folder"
        )


def _finished_summary(output_dir: Path, path: Path, chash: str, meta, granule_min_od: float | None) -> dict | None:
    """The summary of an image finished earlier with the same input file, config, metadata and iron threshold, else None.

    ``granule_min_od`` None: the batch's threshold is not known yet (its
    calibration is to be done), so no image counts as finished.
    """
    part = output_dir / "parts" / f"{path.stem}.json"
    if not part.is_file():
        return None
    try:
        summary = json.loads(part.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if summary.get("config_hash") != chash or summary.get("metadata_override") != _jsonable(meta):
        return None
    if granule_min_od is None or summary.get("iron_granule_min_od") != granule_min_od:
        return None
    if not all((output_dir / "labels" / f"{path.stem}_{k}.tif").is_file() for k in ("pellets", "classes", "nuclei")):
        return None
    if summary.get("sha256") != sha256_file(path):
        return None
    return {**summary, "skipped": True}


#: The batch's iron calibration, kept beside its results so that a run again skips finished images
#: without classifying the controls again (only while the config and the control files are the same).
CALIBRATION_FILE = "iron_calibration.json"


def _fixed_threshold(config: RunConfig, reason: str) -> dict:
    """The calibration record of a batch classified with the configured iron threshold, and why."""
    return {"mode": config.iron.calibrate, "calibrated": False, "granule_min_od": float(config.iron.granule_min_od), "reason": reason}


def _known_calibration(entries, config: RunConfig, output_dir: Path, chash: str) -> tuple[dict, set]:
    """The batch's iron calibration as far as it is known before any image is analysed, and its control images.

    Returns the record of a fixed threshold (calibration off, no iron in the
    stain set, no controls), the record calibrated earlier on the same
    control files with the same config (from :data:`CALIBRATION_FILE`), or a
    record without ``granule_min_od`` holding the ``key`` a new calibration
    is stored under.
    """
    controls = {}
    for path, meta in entries:
        meta = meta if meta is not None else (parse_name(path.stem, config.filename_pattern) or {})
        if is_control(meta.get("condition"), config.iron.control_conditions):
            controls[path.stem] = path
    if "iron" not in configured_stains(config.stains).roles:
        return _fixed_threshold(config, "the stain set has no iron"), set()
    if config.iron.calibrate == "off":  # the controls' iron-positive fraction is still recorded
        return _fixed_threshold(config, "iron.calibrate is off"), set(controls)
    if not controls:
        names = ", ".join(config.iron.control_conditions)
        return _fixed_threshold(config, f"no control pellets (condition {names}) in this batch: the configured threshold is used"), set()
    key = {"config_hash": chash, "controls": {stem: sha256_file(path) for stem, path in sorted(controls.items())}}
    try:
        stored = json.loads((output_dir / CALIBRATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    if stored.get("key") == key and "granule_min_od" in stored.get("record", {}):
        return {**stored["record"], "reused": True}, set(controls)
    return {"key": key}, set(controls)


def _jsonable(meta):
    return None if meta is None else json.loads(json.dumps(meta, default=str))


def run_batch(config: RunConfig, *, progress=None, pool=None) -> dict:
    """Process every image of ``config.input_dir`` into ``config.output_dir``.

    Parameters
    ----------
    config : RunConfig
    progress : callable, optional
        Called with each image's summary dict as it finishes.
    pool : concurrent.futures.ProcessPoolExecutor, optional
        Worker processes for the ``processes`` scheduler
        (:func:`~pellet_analysis.workers.process_pool`), left running; by
        default one is started and shut down here.

    Returns
    -------
    dict
        The run record written to run.json, plus ``table`` (DataFrame) and
        ``failures`` (DataFrame).
    """
    import dask

    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    chash = config_hash(config)
    _check_same_config(output_dir, chash)
    for stale in output_dir.rglob(".*.part"):  # temporary files of a killed run; never results
        stale.unlink(missing_ok=True)
    images = list_images(config.input_dir, config.extensions)
    from .study import read_sample_sheet

    sheet = read_sample_sheet(config.sample_sheet, config.input_dir) if config.sample_sheet else None
    seen: dict[str, Path] = {}
    tasks, pre_failures, skipped, slides, todo, entries = [], [], [], [], [], []

    def fail(stem, name, reason):
        pre_failures.append({"image": stem, "file": name, "ok": False, "reason": reason})

    for path in images:
        if path.stem in seen:
            fail(path.stem, path.name, f"duplicate image name (also {seen[path.stem].name})")
            continue
        seen[path.stem] = path
        meta = None
        if sheet is not None:
            if path.stem not in sheet.index:
                fail(path.stem, path.name, f"not listed in sample sheet {config.sample_sheet}")
                continue
            meta = {k: sheet.at[path.stem, k] for k in ("donor", "condition", "day", "section")}
            meta["day"] = int(meta["day"])
        entries.append((path, meta))
    if sheet is not None:
        for stem in sheet.index.difference(list(seen)):
            fail(stem, sheet.at[stem, "file"], f"listed in sample sheet {config.sample_sheet} but not found in {config.input_dir}")
    calibration, controls = _known_calibration(entries, config, output_dir, chash)
    granule_min_od = calibration.get("granule_min_od")  # None: to be calibrated on the controls below
    for path, meta in entries:
        done = _finished_summary(output_dir, path, chash, meta, granule_min_od)
        if done is not None:
            skipped.append(done)
        elif is_whole_slide(path, config):
            slides.append((path, meta))
        else:
            todo.append((path, meta))
    report = progress or (lambda summary: None)
    for summary in skipped:
        report(summary)
    # whole-slide scans are planned first (their pellets become tasks); the worker processes, once
    # started and their imports done, serve both steps
    own_pool = pool is None and config.scheduler == "processes" and bool(slides or todo)
    if own_pool:
        pool = process_pool(config.n_workers)
    elif config.scheduler != "processes":
        pool = None
    costs = {}
    # the images without a pixel size share one estimate from all their nuclei (small tiles hold few)
    pool_scale = config.estimate_pixel_size and "pixel_size_um" not in config.model_fields_set and len(todo) >= 2
    try:
        first = [dask.delayed(plan_slide_task, pure=False)(p, config, m, output_dir) for p, m in slides]
        first += [dask.delayed(nucleus_sizes_task, pure=False)(p, config) for p, _ in todo] if pool_scale else []
        # a slide's hash is read while its plan runs: on two workers, on the one the plan leaves idle
        first += [dask.delayed(sha256_file, pure=False)(p, dask_key_name=f"sha256-{p.name}") for p, _ in slides]
        done_first = _compute(first, config, lambda r: None, pool) if first else []
        planned, sizes = done_first[: len(slides)], done_first[len(slides) : len(first) - len(slides)]
        digests = done_first[len(first) - len(slides) :]
        choices = pixel_size_choices({p.stem: s for (p, _), s in zip(todo, sizes)}, config) if pool_scale else {}
        if granule_min_od is None:
            # the controls are classified at the configured threshold first; every image then with the calibrated one
            slide_infos = {p.stem: info for (p, _), info in zip(slides, planned) if info.get("ok", True)}
            calibration_tasks = [
                dask.delayed(control_iron_levels, pure=False)(
                    p, config, choices.get(p.stem), slide_infos.get(p.stem), dask_key_name=f"calibrate-{p.name}"
                )
                for p, _ in todo + slides
                if p.stem in controls and (p.stem in slide_infos or not is_whole_slide(p, config))
            ]
            calibration = {**calibration, **calibrate_iron(_compute(calibration_tasks, config, lambda r: None, pool) if calibration_tasks else [], config)}
            granule_min_od = calibration["granule_min_od"]
            write_json(output_dir / CALIBRATION_FILE, {"key": calibration.pop("key"), "record": calibration})
        batch_config = with_granule_min_od(config, granule_min_od)
        tasks += [
            dask.delayed(process_file, pure=False)(
                path, config, output_dir, meta, choices.get(path.stem), granule_min_od, dask_key_name=f"image-{path.name}"
            )
            for path, meta in todo
        ]
        if slides:
            for (path, meta), info, digest in zip(slides, planned, digests):
                if not info.get("ok", True):
                    pre_failures.append(info)
                else:
                    summary, slide_costs = _slide_graph(path, info, batch_config, output_dir, meta, digest)
                    tasks.append(summary)
                    costs.update(slide_costs)
        results = _compute(tasks, config, report, pool, costs) if tasks else []
    finally:
        if own_pool:
            pool.shutdown()
    results.extend(pre_failures)
    results.extend(skipped)
    for f in pre_failures:
        report(f)
    calibration.pop("key", None)
    calibration = _calibration_outcome(calibration, results, controls)
    return write_run_outputs(results, config, output_dir, started=started, images=images, iron_calibration=calibration)


def _table(results) -> pd.DataFrame:
    import pandas as pd

    rows = [row for r in results if r.get("ok") for row in r["rows"]]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["pellet_id"] = table["pellet_id"].astype("int64")
    table["day"] = pd.array(table["day"], dtype="Int64")
    for col in ("nuclei_count", "iron_granule_count", *BERN_COLUMNS):
        table[col] = table[col].astype("int64")
    for col in ("excluded", "corrected", "touches_border"):
        table[col] = table[col].astype(bool)
    for col in ("image", "donor", "condition", "section", "pixel_size_source", "exclusion_reason", "shape_exclusion_reason"):
        table[col] = table[col].astype("string")
    return table.sort_values(["image", "pellet_id"], kind="stable").reset_index(drop=True)


def write_run_outputs(results, config: RunConfig, output_dir, *, started: float, images, iron_calibration: dict | None = None) -> dict:
    """Write pellets.csv/.parquet, failures.csv and run.json from per-image summaries (atomically).

    ``iron_calibration``: the batch's iron threshold and how it was found
    (:func:`calibrate_iron`), recorded as run.json's ``iron_calibration``.
    """
    import pandas as pd

    from .review import apply_review

    output_dir = Path(output_dir)
    table = _table(results)
    failures = pd.DataFrame(
        [{"image": r["image"], "reason": r["reason"]} for r in results if not r.get("ok")], columns=["image", "reason"]
    )
    record = {
        "software": "pellet-analysis",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host_cores": os.cpu_count(),
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "n_skipped": sum(1 for r in results if r.get("skipped")),
        "images": {
            r["image"]: {k: v for k, v in r.items() if k not in ("rows", "image")} for r in results
        },
        "n_images": len(images),
        "n_pellets": int(len(table)),
        "n_failures": int(len(failures)),
        "iron_calibration": iron_calibration or _fixed_threshold(config, "not recorded"),
        "seconds": time.perf_counter() - started,
    }
    write_json(output_dir / "run.json", record)
    # reviewer corrections and exclusions made on an earlier run of this folder are kept
    table = apply_review(table, output_dir, config=config)
    write_tables(output_dir, {"pellets": table, "failures": failures}, parquet=("pellets",))
    return {**record, "table": table, "failures": failures}
