"""The tasks of one image, the same for an image held in memory and a whole-slide scan: plan -> classify window -> measure -> write.

:func:`plan_task` reads what the plan needs (the whole image, or a pyramid
level of a scan), gates it and finds the pellets and the white point; an
image held in memory leaves its decoded pixels in its scratch folder, a scan
is read from its file's tiles. Each pellet window is then one task
(:func:`classify_task`) that leaves its arrays as ``.npy`` files, and one that
measures it from them (:func:`measure_task`); :func:`number_task` numbers the
pellets, :func:`write_labels_task` writes each label image from those files,
and :func:`finish_task` the GeoJSON and the image's summary.
:func:`image_graph` ties them into one Dask graph per image. Peak memory is
set by the largest pellet (and, for an image held in memory, by the image).

Every task returns a record (:mod:`pellet_analysis.records`) and never
raises: an exception becomes the image's failure, with its traceback in
``logs/<image>.traceback.txt``, and the batch goes on.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bookkeeping import annotation_file, config_hash, failure, image_pixel_size, read_annotations, jsonable, pixel_size_unknown, slide_pixel_size, study_metadata, unexpected_failure
from .config import RunConfig
from .gates import NotASectionError, section_problem
from .geojson import AnnotationError, feature_collection, pellet_geometry
from .io import ImageReadError, open_lazy, read_image, read_pixel_size_um, read_window, sha256_file, write_json, write_label_pyramid, write_label_tiff
from .iron_calibration import ControlLevels, control_levels
from .labels import LABEL_DTYPES
from .records import ClassifiedPellet, ImageFailure, ImageJob, ImageSummary, PelletError, PelletResult, pellet_boxes, table_row
from .scale import NucleusSizes, nucleus_sizes_px
from .slide import PelletClasses, SlidePlan, classify_pellet_window, measure_pellet_classes, plan_image
from .stains import StainSet, configured_stains
from .wholeslide import is_whole_slide, plan_whole_slide

__all__ = [
    "PlannedImage",
    "NumberedPellets",
    "NO_PELLET",
    "plan_task",
    "classify_task",
    "measure_task",
    "number_task",
    "write_labels_task",
    "finish_task",
    "image_graph",
    "NucleiSurvey",
    "nucleus_sizes_task",
    "run_image",
    "control_iron_levels",
]

#: The failure reason of an image in which no pellet was found.
NO_PELLET = "no pellet section found (no tissue object above pellets.tissue_min_od and pellets.min_pellet_area_um2)"

#: The arrays a classified pellet leaves in its image's scratch folder.
_PELLET_ARRAYS = ("inside", "classes", "nuclei", "proteoglycan_od", "lacunae", "open_pixels")


@dataclass(frozen=True)
class PlannedImage:
    """An image planned for its pellet tasks: where its pellets are, and what its summary will record.

    Attributes
    ----------
    job : ImageJob
    plan : SlidePlan
    meta : dict
        Study metadata (sample sheet or file name).
    pixel_size_source : str
    warnings : tuple of str
    stains : StainSet
    output_dir : str
    pixels : str or None
        ``.npy`` of the decoded image held in memory; None: windows are read from the file's tiles.
    config_hash : str
    started_wall : float
        ``time.time()`` when planning started.
    timings_s : dict
        ``read`` (an image held in memory) and ``plan``.
    annotations : dict or None
        The QuPath export whose outlines are its pellets (file, sha256, outlines); None: they were found.
    """

    job: ImageJob
    plan: SlidePlan
    meta: dict
    pixel_size_source: str
    warnings: tuple
    stains: StainSet
    output_dir: str
    pixels: str | None
    config_hash: str
    started_wall: float
    timings_s: dict
    annotations: dict | None = None

    @property
    def scratch(self) -> Path:
        """The image's scratch folder: its pellets' arrays (and decoded pixels), removed with its summary."""
        return Path(self.output_dir) / "parts" / f"{self.job.stem}.pellets"

    def window(self, index: int) -> np.ndarray:
        """The RGB pixels of pellet ``index``'s window (1-based)."""
        window = self.plan.windows[index - 1]
        if self.pixels is None:
            return read_window(self.job.path, window)
        return np.ascontiguousarray(np.load(self.pixels, mmap_mode="r")[window])


@dataclass(frozen=True)
class NumberedPellets:
    """The kept pellets of an image in pellet id order (1..n, left to right), and each one's nucleus and lacuna id offsets."""

    kept: tuple
    nuclei_offsets: tuple
    lacuna_offsets: tuple


def plan_task(job: ImageJob, config: RunConfig, output_dir, config_hash: str) -> PlannedImage | ImageFailure:
    """Read, gate and plan one image: a :class:`PlannedImage`, or the image's failure.

    An image held in memory is read whole, gated (:func:`~pellet_analysis.gates.section_problem`),
    given its pixel size (:func:`~pellet_analysis.bookkeeping.image_pixel_size`)
    and planned at block means; a scan read window by window is planned on a
    pyramid level (:func:`~pellet_analysis.wholeslide.plan_whole_slide`).
    """
    path, output_dir = Path(job.path), Path(output_dir)
    started_wall, started = time.time(), time.perf_counter()
    warnings = []
    meta = study_metadata(path, config, job.metadata, warnings)
    if meta is None:
        return failure(path, f"file name does not match pattern {config.filename_pattern!r}", started)
    timings, pixels, outlines, annotations = {}, None, None, None
    try:
        if job.annotations is not None:
            outlines = read_annotations(job.annotations, config)
            annotations = {"file": str(job.annotations), "sha256": sha256_file(job.annotations), "outlines": len(outlines)}
        elif config.annotations_dir is not None:
            warnings.append(f"no QuPath annotations {path.stem}.geojson in {config.annotations_dir}: its pellets were found, not annotated")
        if job.whole_slide:
            lazy = open_lazy(path)
            pixel_size, source, warning = slide_pixel_size(lazy.pixel_size_um, config)
            t0 = time.perf_counter()
            plan = plan_whole_slide(lazy, pixel_size, config, outlines=outlines)
        else:
            t0 = time.perf_counter()
            rgb, file_px = read_image(path)
            timings["read"] = time.perf_counter() - t0
            problem = None if job.gated else section_problem(rgb)
            if problem is not None:
                return failure(path, problem, started)
            pixel_size, source, warning = image_pixel_size(rgb, file_px, path.stem, config, job.pixel_size_choice)
            t0 = time.perf_counter()
            plan = plan_image(rgb, pixel_size_um=pixel_size, config=config, outlines=outlines)
        timings["plan"] = time.perf_counter() - t0
        if not job.whole_slide and plan.windows:
            scratch = output_dir / "parts" / f"{path.stem}.pellets"
            scratch.mkdir(parents=True, exist_ok=True)
            pixels = str(scratch / "image.npy")
            np.save(pixels, rgb)
    except (ImageReadError, NotASectionError) as error:
        return failure(path, str(error), started)
    except AnnotationError as error:  # the reader names the file; an outline off the image is the plan's
        name = Path(job.annotations).name
        return failure(path, str(error) if str(error).startswith(name) else f"{name}: {error}", started)
    except Exception as error:  # one image's bug or bad data never stops the batch
        return unexpected_failure(path, output_dir, error, started)
    if warning:
        warnings.append(warning)
    return PlannedImage(
        job, plan, meta, source, tuple(warnings), configured_stains(config.stains.params()), str(output_dir), pixels, config_hash, started_wall, timings,
        annotations,
    )


def classify_task(planned: PlannedImage, index: int, config: RunConfig, *, iron_levels: bool = False) -> ClassifiedPellet | PelletError | None:
    """Classify pellet ``index`` (1-based) from its window; its arrays go to the image's scratch folder.

    None for a pellet smaller than ``pellets.min_pellet_area_um2``.
    ``iron_levels``: also keep each nucleus's iron level (the iron calibration's controls).
    """
    started = time.time()
    try:
        part = classify_pellet_window(planned.window(index), planned.plan, index, config=config, stains=planned.stains, iron_levels=iron_levels)
        if part is None:
            return None
        scratch = planned.scratch
        scratch.mkdir(parents=True, exist_ok=True)
        files = {}
        # scratch, read back only by this run's own later tasks, and removed with the image's summary:
        # closed, not synced (fsync took 0.19 s of a pellet)
        for kind in _PELLET_ARRAYS:
            files[kind] = str(scratch / f"pellet{index}_{kind}.npy")
            np.save(files[kind], getattr(part, kind))
    except Exception as error:  # one pellet's failure is its image's, never the batch's
        return _pellet_error(planned, index, error)
    return ClassifiedPellet(
        index=index,
        box=part.box,
        files=files,
        n_nuclei=int(part.nuclei.max(initial=0, where=part.inside)),
        n_lacunae=int(part.lacunae.max(initial=0, where=part.inside)),
        stains_info=part.stains_info,
        touches_border=part.touches_border,
        started_wall=started,
        seconds=time.time() - started,
        iron_levels=part.iron_levels,
    )


def _pellet_error(planned: PlannedImage, index: int, error: Exception) -> PelletError:
    logged = unexpected_failure(planned.job.path, planned.output_dir, error, label=f"pellet {index}: ")
    return PelletError(index, logged.reason)


def _load(classified: ClassifiedPellet) -> PelletClasses:
    arrays = {kind: np.load(f, mmap_mode="r") for kind, f in classified.files.items()}
    return PelletClasses(classified.index, classified.box, stains_info=classified.stains_info, touches_border=classified.touches_border, **arrays)


def measure_task(classified, planned: PlannedImage, config: RunConfig) -> PelletResult | PelletError | None:
    """Measure a pellet of :func:`classify_task` from its files: its table measurements, outline and box in the image.

    A pellet not kept (None) or failed is passed on as it is.
    """
    if not isinstance(classified, ClassifiedPellet):
        return classified
    started = time.time()
    try:
        part = _load(classified)
        row = measure_pellet_classes(part, pixel_size_um=planned.plan.pixel_size_um, config=config)
        origin = (part.box[0].start, part.box[1].start)
        outline = pellet_geometry(part.inside, offset=origin)
        box = next(iter(pellet_boxes(part.inside, origin).values()))
    except Exception as error:
        return _pellet_error(planned, classified.index, error)
    return PelletResult(classified.index, row, outline, box, time.time() - started)


def number_task(classified) -> NumberedPellets | PelletError:
    """Pellet ids 1..n (left to right) and nucleus id offsets of the kept pellets; or the first pellet's error."""
    errors = [c for c in classified if isinstance(c, PelletError)]
    if errors:
        return errors[0]
    kept = sorted((c for c in classified if c is not None), key=lambda c: c.index)
    offsets = np.concatenate([[0], np.cumsum([c.n_nuclei for c in kept])]).astype(int).tolist()
    lacuna_offsets = np.concatenate([[0], np.cumsum([c.n_lacunae for c in kept])]).astype(int).tolist()
    return NumberedPellets(tuple(kept), tuple(offsets[:-1]), tuple(lacuna_offsets[:-1]))


def _label_pieces(numbered: NumberedPellets, kind: str) -> list:
    """``(box, values, inside, offset)`` per kept pellet for a label image of ``kind`` (:data:`~pellet_analysis.labels.LABEL_DTYPES`)."""
    pieces = []
    for pid, (c, offset, lacuna_offset) in enumerate(zip(numbered.kept, numbered.nuclei_offsets, numbered.lacuna_offsets), start=1):
        inside = np.load(c.files["inside"], mmap_mode="r")
        if kind == "pellets":
            pieces.append((c.box, inside, inside, pid - 1))
        else:
            shift = {"nuclei": offset, "lacunae": lacuna_offset}.get(kind, 0)
            pieces.append((c.box, np.load(c.files[kind], mmap_mode="r"), inside, shift))
    return pieces


def paste_labels(shape, pieces, dtype) -> np.ndarray:
    """A whole label image from ``(box, values, inside, offset)`` pieces, as :func:`~pellet_analysis.io.write_label_pyramid` fills its tiles."""
    dtype = np.dtype(dtype)
    labels = np.zeros(tuple(shape[:2]), dtype)
    for box, values, inside, offset in pieces:
        found = np.asarray(values).astype(dtype)
        if offset:
            np.add(found, dtype.type(offset), out=found, where=found > 0)
        np.copyto(labels[box], found, where=np.asarray(inside, bool))
    return labels


def write_labels_task(numbered, kind: str, planned: PlannedImage) -> float | PelletError | None:
    """Write the label image ``kind`` of an image from its pellets' files; the seconds taken.

    A scan read window by window gets a tiled pyramidal OME-TIFF written tile
    by tile, an image held in memory a plain TIFF.
    """
    if not isinstance(numbered, NumberedPellets) or not numbered.kept:
        return None
    t0 = time.perf_counter()
    path = Path(planned.output_dir) / "labels" / f"{planned.job.stem}_{kind}.tif"
    plan = planned.plan
    try:
        pieces = _label_pieces(numbered, kind)
        if planned.job.whole_slide:
            write_label_pyramid(path, plan.shape, pieces, dtype=LABEL_DTYPES[kind], pixel_size_um=plan.pixel_size_um)
        else:
            write_label_tiff(path, paste_labels(plan.shape, pieces, LABEL_DTYPES[kind]), pixel_size_um=plan.pixel_size_um)
    except Exception as error:
        return _pellet_error(planned, 0, error)
    return time.perf_counter() - t0


def finish_task(planned: PlannedImage, numbered, measured, written, config: RunConfig, sha256: str) -> ImageSummary | ImageFailure:
    """The image's GeoJSON and summary (``parts/<image>.json``), once its pellets are numbered and measured and its label images written."""
    path = Path(planned.job.path)
    try:
        return _finish(planned, numbered, measured, written, config, sha256)
    except Exception as error:
        return unexpected_failure(path, planned.output_dir, error)
    finally:
        shutil.rmtree(planned.scratch, ignore_errors=True)


def _finish(planned: PlannedImage, numbered, measured, written, config: RunConfig, sha256: str) -> ImageSummary | ImageFailure:
    path, output_dir, plan = Path(planned.job.path), Path(planned.output_dir), planned.plan
    seconds = time.time() - planned.started_wall
    error = next((r for r in (numbered, *measured, *written) if isinstance(r, PelletError)), None)
    if error is not None:
        return ImageFailure(path.stem, path.name, error.reason, seconds)
    if not numbered.kept:
        return ImageFailure(path.stem, path.name, NO_PELLET, seconds)
    px = plan.pixel_size_um
    by_index = {m.index: m for m in measured if m is not None}
    rows, outlines, boxes = [], [], {}
    for pid, c in enumerate(numbered.kept, start=1):
        m = by_index[c.index]
        row = table_row(path.stem, planned.meta, {**m.row, "pellet_id": pid}, px, planned.pixel_size_source)
        rows.append(row)
        outlines.append((row, m.outline))
        boxes[str(pid)] = m.box
    write_json(output_dir / "geojson" / f"{path.stem}.geojson", feature_collection(outlines, pellet_class=config.annotations_pellet_class))
    timings = {
        **planned.timings_s,
        "pellets": [round(c.seconds, 3) for c in numbered.kept],
        "measure": [round(by_index[c.index].seconds, 3) for c in numbered.kept],
        "pellets_started_after_plan_s": [round(c.started_wall - planned.started_wall, 3) for c in numbered.kept],
        "write_labels": [round(s, 3) for s in written],
    }
    whole_slide = None
    if planned.job.whole_slide:
        whole_slide = {"low_resolution_factor": plan.factor, "pellet_windows": [[[w[0].start, w[0].stop], [w[1].start, w[1].stop]] for w in plan.windows]}
    summary = ImageSummary(
        image=path.stem,
        file=path.name,
        path=str(path.resolve()),
        rows=tuple(rows),
        shape=(*plan.shape, 3),
        dtype=str(plan.dtype),
        pixel_size_um=px,
        pixel_size_source=planned.pixel_size_source,
        stains=planned.stains.to_dict(),
        background=plan.illumination.to_dict(plan.shape),
        sha256=sha256,
        config_hash=planned.config_hash,
        metadata_override=jsonable(planned.job.metadata),
        warnings=planned.warnings,
        timings_s=timings,
        seconds=time.time() - planned.started_wall,
        stains_source=tuple(c.stains_info for c in numbered.kept),
        pellet_boxes=boxes,
        iron_granule_min_od=config.iron.granule_min_od,
        whole_slide=whole_slide,
        annotations=planned.annotations,
    )
    write_json(output_dir / "parts" / f"{path.stem}.json", summary.to_json())
    return summary


#: Expected work of an image's small tasks per pixel of pellet window, as a share of classifying
#: that pixel: measuring a pellet, and writing each label image. On the 40k benchmark slide
#: (2026-12-02) a pellet's classification took 2.0-3.3 s, its measurements 0.5-0.7 s, the nucleus
#: label image 0.6 s and the other two 0.3 s each for the six pellets.
_SMALL_TASK_SHARES = {"measure": 0.2, "nuclei": 0.03, "classes": 0.015, "pellets": 0.015, "lacunae": 0.03}


def image_graph(planned: PlannedImage, config: RunConfig, sha256, done=None, *, finish_first=False):
    """One task per pellet window, one that measures each pellet, then one per label image and one that writes the image's summary; and the tasks' costs.

    Parameters
    ----------
    planned : PlannedImage
    config : RunConfig
    sha256 : str or Delayed
        The input file's hash.
    done : dict, optional
        Pellet index -> ``(classified, measured)`` already computed with this
        ``config`` (the iron calibration's control pellets): used as they are.

    Returns
    -------
    summary : Delayed
        Computes to the image's :class:`~pellet_analysis.records.ImageSummary` or failure.
    costs : dict
        ``{key: cost}`` for :func:`~pellet_analysis.scheduling.compute`: a
        pellet costs its window's pixels, and its measurements and the label
        images their shares of those (:data:`_SMALL_TASK_SHARES`), so that
        the small tasks wait until no pellet is left to start and then fill
        in around the last ones; with ``finish_first`` they cost ``inf``.
    """
    import dask

    done = done or {}
    name = planned.job.path.name
    plan = dask.delayed(planned, name=f"plan-{name}")
    areas = [(rows.stop - rows.start) * (cols.stop - cols.start) for rows, cols in planned.plan.windows]
    classified, measured = [], []
    for k in range(1, len(areas) + 1):
        if k in done:
            classified.append(dask.delayed(done[k][0], name=f"pellet-{name}-{k}"))
            measured.append(dask.delayed(done[k][1], name=f"measure-{name}-{k}"))
            continue
        pellet = dask.delayed(classify_task, pure=False)(plan, k, config, dask_key_name=f"pellet-{name}-{k}")
        classified.append(pellet)
        measured.append(dask.delayed(measure_task, pure=False)(pellet, plan, config, dask_key_name=f"measure-{name}-{k}"))
    numbered = dask.delayed(number_task, pure=False)(classified, dask_key_name=f"number-{name}")
    written = [  # one task per label image: on two workers two are written at once
        dask.delayed(write_labels_task, pure=False)(numbered, kind, plan, dask_key_name=f"labels-{kind}-{name}") for kind in LABEL_DTYPES
    ]
    summary = dask.delayed(finish_task, pure=False)(plan, numbered, measured, written, config, sha256, dask_key_name=f"image-{name}")
    costs = {task.key: area for k, (task, area) in enumerate(zip(classified, areas), start=1) if k not in done}
    costs.update({task.key: _SMALL_TASK_SHARES["measure"] * area for k, (task, area) in enumerate(zip(measured, areas), start=1) if k not in done})
    costs.update({task.key: _SMALL_TASK_SHARES[kind] * sum(areas) for task, kind in zip(written, LABEL_DTYPES)})
    costs[numbered.key] = math.inf  # instant, and what the label images wait for
    if finish_first:
        small = [task for k, task in enumerate(measured, start=1) if k not in done] + [*written, summary]
        costs.update({task.key: math.inf for task in small})
    return summary, costs


def calibration_pass(planned: PlannedImage, config: RunConfig) -> dict:
    """Classify and measure every pellet of a control image at ``config``'s iron threshold, keeping each nucleus's iron level.

    Returns pellet index -> ``(classified, measured)`` (the iron calibration
    reads them; the final pass reuses them when the threshold stays).
    """
    return {k: calibration_pellet(planned, k, config) for k in range(1, len(planned.plan.windows) + 1)}


def calibration_pellet(planned: PlannedImage, index: int, config: RunConfig) -> tuple:
    """Pellet ``index`` of a control image for :func:`calibration_pass`: ``(classified, measured)``, its nuclei's iron levels kept."""
    classified = classify_task(planned, index, config, iron_levels=True)
    return classified, measure_task(classified, planned, config)


def without_iron_levels(classified):
    """``classified`` without its iron levels (what the final pass needs of a calibration pellet)."""
    return dataclasses.replace(classified, iron_levels=None) if isinstance(classified, ClassifiedPellet) else classified


@dataclass(frozen=True)
class NucleiSurvey:
    """What reading an image for the batch's pixel size found.

    ``gated``: the image was read and gated, and ``problem`` says why it is
    not a section (None: it is, with its nuclei in ``sizes``); not gated: it
    has a pixel size of its own, or could not be read (its plan reports it).
    """

    gated: bool = False
    problem: str | None = None
    sizes: NucleusSizes | None = None


def nucleus_sizes_task(path, config: RunConfig) -> NucleiSurvey:
    """The nuclei of an image whose pixel size neither its file nor the config gives, for the batch's estimate.

    A TIFF's pixel size is read from its tags alone. The image is gated here,
    so that its plan need not gate it again (:attr:`ImageJob.gated`).
    """
    if not pixel_size_unknown(read_pixel_size_um(path), config):
        return NucleiSurvey()
    try:
        rgb, file_px = read_image(path)
        if not pixel_size_unknown(file_px, config):
            return NucleiSurvey()
        problem = section_problem(rgb)
        if problem is not None:
            return NucleiSurvey(True, problem)
        return NucleiSurvey(True, None, nucleus_sizes_px(rgb, configured_stains(config.stains.params()), tissue_min_od=config.pellets.tissue_min_od))
    except Exception:  # whatever it is, the image's plan meets it again and reports it as the image's failure
        return NucleiSurvey()


def run_image(job: ImageJob, config: RunConfig, output_dir) -> ImageSummary | ImageFailure:
    """One image through all its tasks in this thread, one after another (what a batch of one image on the synchronous scheduler does)."""
    import dask
    from dask.local import get_sync  # the function, not "synchronous": Dask's name lookup imports distributed

    planned = plan_task(job, config, output_dir, config_hash(config))
    if not isinstance(planned, PlannedImage):
        return planned
    summary, _ = image_graph(planned, config, sha256_file(job.path))
    (result,) = dask.compute(summary, scheduler=get_sync)
    return result


def control_iron_levels(path, config: RunConfig) -> ControlLevels:
    """One image's :class:`~pellet_analysis.iron_calibration.ControlLevels` at the configured threshold, as a run's calibration finds them (its scratch in a temporary folder)."""
    import tempfile

    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        job = ImageJob(path, whole_slide=is_whole_slide(path, config), annotations=annotation_file(path, config))
        planned = plan_task(job, config, scratch, config_hash(config))
        if not isinstance(planned, PlannedImage):
            return ControlLevels(path.stem, np.zeros(0, np.float64), error=planned.reason)
        return control_levels(path.stem, calibration_pass(planned, config))
