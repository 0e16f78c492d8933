"""The batch runner: every image of a folder through the same tasks, and the run's contract files::

    pellets.csv, pellets.parquet, profiles.csv, failures.csv, run.json, iron_calibration.json,
    labels/<image>_pellets.tif, labels/<image>_classes.tif, labels/<image>_nuclei.tif, labels/<image>_lacunae.tif,
    geojson/<image>.geojson, parts/<image>.json, logs/<image>.traceback.txt

A run goes in steps, each one Dask computation: the nuclei of the images
without a pixel size (when they share one estimate), the plan of every image
with its input's hash, the control pellets at the configured iron threshold
(when the threshold is calibrated on them), and the pellets of every image
with the batch's threshold (:func:`~pellet_analysis.tasks.image_graph`).
"""

from __future__ import annotations

# pandas, the review state and the sample sheet are imported where the tables are made: the worker
# processes import the tasks, never this module's tables (pandas alone is 0.2 s of start-up)

import dataclasses
import datetime as _dt
import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .bern import BERN_COLUMNS, BERN_GRADE_COLUMNS
from .bookkeeping import annotation_file, config_hash, jsonable, pixel_size_choices, with_granule_min_od
from .config import RunConfig
from .io import sha256_file, write_json, write_tables
from .iron_calibration import CALIBRATION_FILE, ControlLevels, calibrate_iron, calibration_outcome, control_levels, fixed_threshold, known_calibration
from .measure import MEASUREMENT_COLUMNS
from .metadata import METADATA_FIELDS
from .profiles import PROFILE_COLUMNS
from .records import ImageFailure, ImageJob, ImageSummary
from .scheduling import compute
from .tasks import PlannedImage, calibration_pellet, image_graph, nucleus_sizes_task, plan_task, without_iron_levels
from .wholeslide import is_whole_slide
from .workers import process_pool

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TABLE_COLUMNS", "CALIBRATION_FILE", "RunFolderConflict", "list_images", "run_batch", "write_run_outputs"]

#: Columns of pellets.csv / pellets.parquet, in order.
TABLE_COLUMNS = (
    ["image", "pellet_id", *METADATA_FIELDS]
    + [c for c in MEASUREMENT_COLUMNS if c != "pellet_id"]
    + BERN_COLUMNS
    + ["pixel_size_um", "pixel_size_source", "touches_border", "shape_exclusion_reason", "excluded", "exclusion_reason", "corrected"]
)


class RunFolderConflict(RuntimeError):
    """The output folder holds results of another config; results are never mixed."""


def list_images(input_dir, extensions) -> list[Path]:
    """Image files directly in ``input_dir`` with one of ``extensions``, sorted by name."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def run_batch(config: RunConfig, *, progress=None, pool=None) -> dict:
    """Process every image of ``config.input_dir`` into ``config.output_dir``.

    Parameters
    ----------
    config : RunConfig
    progress : callable, optional
        Called with each image's record (:class:`~pellet_analysis.records.ImageSummary`
        or :class:`~pellet_analysis.records.ImageFailure`) as it finishes.
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
    started = time.perf_counter()
    if config.annotations_dir is not None and not Path(config.annotations_dir).is_dir():
        raise FileNotFoundError(f"{config.annotations_dir}: annotations folder does not exist")
    output_dir, chash = _open_run_folder(config)
    images = list_images(config.input_dir, config.extensions)
    jobs, failures = _image_jobs(images, config)
    calibration, controls = known_calibration(jobs, config, output_dir, chash)
    skipped = [s for s in (_finished_summary(output_dir, job, chash, calibration.get("granule_min_od")) for job in jobs) if s is not None]
    finished = {s.image for s in skipped}
    jobs = [job for job in jobs if job.stem not in finished]
    report = progress or (lambda record: None)
    for summary in skipped:
        report(summary)
    with _workers(config, pool, needed=bool(jobs)) as workers:

        def run(tasks, costs=None, on_image=None):
            return compute(tasks, config, on_image, workers, costs)

        jobs, refused = _with_pixel_size_choices(jobs, config, run)
        planned, not_planned, hashes = _plan(jobs, config, output_dir, chash, run)
        failures += refused + not_planned
        done = {}
        if "granule_min_od" not in calibration:
            calibration, done = _calibrate(planned, refused + not_planned, controls, calibration, config, run)
            write_json(output_dir / CALIBRATION_FILE, {"key": calibration.pop("key"), "record": calibration})
        batch_config = with_granule_min_od(config, calibration["granule_min_od"])
        # with several images, each one is written as soon as its pellets are done: a killed batch keeps them
        graphs = [image_graph(p, batch_config, hashes[p.job.stem], done.get(p.job.stem), finish_first=len(planned) > 1) for p in planned]
        costs = {key: cost for _, graph_costs in graphs for key, cost in graph_costs.items()}
        results = run([summary for summary, _ in graphs], costs, report)
    for f in failures:
        report(f)
    results = [*results, *failures, *skipped]
    calibration = calibration_outcome({k: v for k, v in calibration.items() if k != "key"}, results, controls)
    return write_run_outputs(results, config, output_dir, started=started, images=images, iron_calibration=calibration)


def _open_run_folder(config: RunConfig) -> tuple[Path, str]:
    """The output folder, made and cleared of a killed run's temporary files, and the config's hash; refuses another config's folder."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    chash = config_hash(config)
    check_same_config(output_dir, chash)
    for stale in output_dir.rglob(".*.part"):  # temporary files of a killed run; never results
        stale.unlink(missing_ok=True)
    return output_dir, chash


def _image_jobs(images, config: RunConfig) -> tuple[list[ImageJob], list[ImageFailure]]:
    """One job per input image, with its sample sheet metadata; failures for duplicated names and sheet mismatches."""
    from .study import read_sample_sheet

    sheet = read_sample_sheet(config.sample_sheet, config.input_dir) if config.sample_sheet else None
    seen: dict[str, Path] = {}
    jobs, failures = [], []
    for path in images:
        if path.stem in seen:
            failures.append(ImageFailure(path.stem, path.name, f"duplicate image name (also {seen[path.stem].name})"))
            continue
        seen[path.stem] = path
        meta = None
        if sheet is not None:
            if path.stem not in sheet.index:
                failures.append(ImageFailure(path.stem, path.name, f"not listed in sample sheet {config.sample_sheet}"))
                continue
            meta = {k: sheet.at[path.stem, k] for k in ("donor", "condition", "day", "section")}
            meta["day"] = int(meta["day"])
        jobs.append(ImageJob(path, meta, whole_slide=is_whole_slide(path, config), annotations=annotation_file(path, config)))
    if sheet is not None:
        for stem in sheet.index.difference(list(seen)):
            failures.append(ImageFailure(stem, sheet.at[stem, "file"], f"listed in sample sheet {config.sample_sheet} but not found in {config.input_dir}"))
    return jobs, failures


@contextmanager
def _workers(config: RunConfig, pool, *, needed: bool):
    """The worker processes of the ``processes`` scheduler: ``pool``, or one started here (and shut down) when there is work."""
    if config.scheduler != "processes":
        yield None
    elif pool is not None or not needed:
        yield pool
    else:
        # started first: the workers import the tasks while this process plans the batch
        own = process_pool(config.n_workers)
        try:
            yield own
        finally:
            own.shutdown()


def _with_pixel_size_choices(jobs, config: RunConfig, run) -> tuple[list[ImageJob], list[ImageFailure]]:
    """``jobs`` with the batch's pixel size for the images held in memory that have none: one estimate from all their nuclei (small tiles hold few).

    Those images are gated as their nuclei are read: the ones refused are failures, never planned.
    """
    in_memory = [job for job in jobs if not job.whole_slide]
    if not (config.estimate_pixel_size and "pixel_size_um" not in config.model_fields_set and len(in_memory) >= 2):
        return jobs, []
    import dask

    surveys = dict(zip((job.stem for job in in_memory), run([dask.delayed(nucleus_sizes_task, pure=False)(job.path, config) for job in in_memory])))
    choices = pixel_size_choices({stem: survey.sizes for stem, survey in surveys.items()}, config)
    refused = [ImageFailure(job.stem, job.path.name, surveys[job.stem].problem) for job in in_memory if surveys[job.stem].problem is not None]
    jobs = [
        job if job.whole_slide else dataclasses.replace(job, pixel_size_choice=choices.get(job.stem), gated=surveys[job.stem].gated)
        for job in jobs
        if job.whole_slide or surveys[job.stem].problem is None
    ]
    return jobs, refused


def _plan(jobs, config: RunConfig, output_dir: Path, chash: str, run) -> tuple[list[PlannedImage], list[ImageFailure], dict]:
    """The images planned, those that failed, and each input's hash (read while the plans run: on two workers, on the one a plan leaves idle)."""
    import dask

    plans = [dask.delayed(plan_task, pure=False)(job, config, output_dir, chash, dask_key_name=f"plan-{job.path.name}") for job in jobs]
    hashes = [dask.delayed(sha256_file, pure=False)(job.path, dask_key_name=f"sha256-{job.path.name}") for job in jobs]
    done = run(plans + hashes)
    planned = done[: len(jobs)]
    return (
        [p for p in planned if isinstance(p, PlannedImage)],
        [p for p in planned if isinstance(p, ImageFailure)],
        {job.stem: digest for job, digest in zip(jobs, done[len(jobs) :])},
    )


def _calibrate(planned, not_planned, controls, calibration: dict, config: RunConfig, run) -> tuple[dict, dict]:
    """Classify the control images' pellets at the configured threshold and calibrate the batch's on them.

    Returns the calibration record and, per control image whose pellets the
    final pass can reuse (the threshold stayed as configured), pellet index ->
    ``(classified, measured)``.
    """
    import dask

    planned_controls = [p for p in planned if p.job.stem in controls]
    # one task per control pellet, not per control image: a batch with one control still fills every worker
    keys = [(p, k) for p in planned_controls for k in range(1, len(p.plan.windows) + 1)]
    done = run([dask.delayed(calibration_pellet, pure=False)(p, k, config, dask_key_name=f"calibrate-{p.job.path.name}-{k}") for p, k in keys])
    passes = [{k: result for (q, k), result in zip(keys, done) if q is p} for p in planned_controls]
    levels = [control_levels(p.job.stem, pellets) for p, pellets in zip(planned_controls, passes)]
    levels += [ControlLevels(f.image, np.zeros(0, np.float64), error=f.reason) for f in not_planned if f.image in controls]
    calibration = {**calibration, **calibrate_iron(levels, config)}
    if calibration["granule_min_od"] != config.iron.granule_min_od:
        return calibration, {}
    reuse = {}
    for p, pellets, found in zip(planned_controls, passes, levels):
        if found.error is None:
            reuse[p.job.stem] = {k: (without_iron_levels(c), m) for k, (c, m) in pellets.items()}
    return calibration, reuse


def check_same_config(output_dir: Path, chash: str) -> None:
    """Raise :class:`RunFolderConflict` when ``output_dir`` holds results of a config whose hash is not ``chash``."""
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


def _finished_summary(output_dir: Path, job: ImageJob, chash: str, granule_min_od: float | None) -> ImageSummary | None:
    """The summary of an image finished earlier with the same input file, config, metadata and iron threshold, else None.

    ``granule_min_od`` None: the batch's threshold is not known yet (its
    calibration is to be done), so no image counts as finished.
    """
    part = output_dir / "parts" / f"{job.stem}.json"
    if granule_min_od is None or not part.is_file():
        return None
    try:
        summary = ImageSummary.from_json(json.loads(part.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if summary.config_hash != chash or summary.metadata_override != jsonable(job.metadata) or summary.iron_granule_min_od != granule_min_od:
        return None
    if not all((output_dir / "labels" / f"{job.stem}_{k}.tif").is_file() for k in ("pellets", "classes", "nuclei")):
        return None
    if summary.sha256 != sha256_file(job.path):
        return None
    recorded = (summary.annotations or {}).get("sha256")
    if (job.annotations is None) != (recorded is None) or (recorded is not None and recorded != sha256_file(job.annotations)):
        return None  # annotated since, no longer, or its outlines changed
    return dataclasses.replace(summary, skipped=True)


def _table(results) -> pd.DataFrame:
    import pandas as pd

    rows = [row for r in results for row in r.rows]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["pellet_id"] = table["pellet_id"].astype("int64")
    table["day"] = pd.array(table["day"], dtype="Int64")
    for col in ("nuclei_count", "iron_granule_count", *BERN_GRADE_COLUMNS):
        table[col] = table[col].astype("int64")
    for col in ("excluded", "corrected", "touches_border"):
        table[col] = table[col].astype(bool)
    for col in ("image", "donor", "condition", "section", "pixel_size_source", "exclusion_reason", "shape_exclusion_reason"):
        table[col] = table[col].astype("string")
    return table.sort_values(["image", "pellet_id"], kind="stable").reset_index(drop=True)


def profile_table(results) -> pd.DataFrame:
    """profiles.csv: one row per depth band of each pellet (image, pellet, study metadata, :data:`~pellet_analysis.profiles.PROFILE_COLUMNS`)."""
    import pandas as pd

    columns = ["image", "pellet_id", *METADATA_FIELDS, *PROFILE_COLUMNS]
    rows = [
        {"image": row["image"], "pellet_id": row["pellet_id"], **{k: row.get(k) for k in METADATA_FIELDS}, **band}
        for r in results
        for row in r.rows
        for band in row.get("depth_profile") or ()
    ]
    table = pd.DataFrame(rows, columns=columns)
    table["day"] = pd.array(table["day"], dtype="Int64")
    return table.sort_values(["image", "pellet_id", "band"], kind="stable").reset_index(drop=True)


def write_run_outputs(results, config: RunConfig, output_dir, *, started: float, images, iron_calibration: dict | None = None) -> dict:
    """Write pellets.csv/.parquet, profiles.csv, failures.csv and run.json from the images' records (atomically).

    ``iron_calibration``: the batch's iron threshold and how it was found
    (:func:`~pellet_analysis.iron_calibration.calibrate_iron`), recorded as run.json's ``iron_calibration``.
    """
    import pandas as pd

    from .review import apply_review

    output_dir = Path(output_dir)
    table = _table(results)
    failures = pd.DataFrame([{"image": r.image, "reason": r.reason} for r in results if isinstance(r, ImageFailure)], columns=["image", "reason"])
    record = {
        "software": "pellet-analysis",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host_cores": os.cpu_count(),
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "n_skipped": sum(1 for r in results if r.skipped),
        "images": {r.image: {k: v for k, v in r.to_json(rows=False).items() if k != "image"} for r in results},
        "n_images": len(images),
        "n_pellets": int(len(table)),
        "n_failures": int(len(failures)),
        "iron_calibration": iron_calibration or fixed_threshold(config, "not recorded"),
        "seconds": time.perf_counter() - started,
    }
    write_json(output_dir / "run.json", record)
    # reviewer corrections and exclusions made on an earlier run of this folder are kept
    table = apply_review(table, output_dir, config=config)
    profiles = profile_table(results)
    write_tables(output_dir, {"pellets": table, "profiles": profiles, "failures": failures}, parquet=("pellets",))
    return {**record, "table": table, "profiles": profiles, "failures": failures}
