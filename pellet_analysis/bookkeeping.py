"""What a run decides and records about each image besides its pixels' analysis.

Where its pixel size comes from (the file, the config, its nuclei or the
batch's) and the one warning that says so, its study metadata, the hash of the
settings that can change a result, and its failure record with the traceback
in the run folder. Planning an image (:mod:`pellet_analysis.tasks`) and the
batch (:mod:`pellet_analysis.batch`) both need them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .config import RunConfig
from .geojson import AnnotationError, geojson_outlines
from .metadata import parse_name
from .records import ImageFailure
from .scale import PixelSizeChoice, nucleus_sizes_px, pool_pixel_sizes_um
from .stains import configured_stains

__all__ = [
    "PLAUSIBLE_PIXEL_SIZE_UM",
    "PIXEL_SIZE_SOURCES",
    "file_or_config_pixel_size",
    "pixel_size_unknown",
    "image_pixel_size",
    "slide_pixel_size",
    "pixel_size_choices",
    "study_metadata",
    "ANNOTATION_SUFFIXES",
    "annotation_file",
    "read_annotations",
    "config_hash",
    "with_granule_min_od",
    "jsonable",
    "failure",
    "unexpected_failure",
    "one_line",
]

#: Pixel sizes (µm) a microscope scan can have; a file claiming another (72 dpi is 352.8 µm) is ignored.
PLAUSIBLE_PIXEL_SIZE_UM = (0.01, 50.0)

#: ``pixel_size_source`` values: the file's tags, the config (or --pixel-size-um), the config's
#: default because nothing gave one, the image's own nuclei, the nuclei of the batch's images together.
PIXEL_SIZE_SOURCES = ("file", "config", "default", "estimated", "batch estimate")

#: Settings that do not change results (where and how the work runs) stay out of the config hash.
_HASH_EXCLUDED = ("input_dir", "output_dir", "scheduler", "n_workers", "tile_px", "whole_slide_min_px")


def file_or_config_pixel_size(file_px, config: RunConfig) -> tuple[float, str, str]:
    """The pixel size to use, where it came from ("file" or "config"), and a note on an implausible file value ('' when none)."""
    ignored = ""
    if file_px and not PLAUSIBLE_PIXEL_SIZE_UM[0] <= file_px <= PLAUSIBLE_PIXEL_SIZE_UM[1]:
        ignored = f"the file's pixel size {file_px:.4g} µm is a screen resolution tag, not a scan's: ignored"
        file_px = None
    if file_px and not config.force_pixel_size:
        return file_px, "file", ignored
    return config.pixel_size_um, "config", ignored


def pixel_size_unknown(file_px, config: RunConfig) -> bool:
    """Whether neither the file (``file_px``, µm or None) nor the user gives the pixel size: the config's default would be used."""
    return file_or_config_pixel_size(file_px, config)[1] == "config" and "pixel_size_um" not in config.model_fields_set


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
    pixel_size, source, ignored = file_or_config_pixel_size(file_px, config)
    decision = ""
    if pixel_size_unknown(file_px, config):
        if choice is None and config.estimate_pixel_size:
            sizes = nucleus_sizes_px(rgb, configured_stains(config.stains.params()), tissue_min_od=config.pellets.tissue_min_od)
            choice = pixel_size_choices({stem: sizes}, config)[stem]
        if choice is not None and choice.pixel_size_um is not None:
            pixel_size, source, decision = choice.pixel_size_um, choice.column_source, choice.warning()
        else:
            source = "default"
            decision = _default_pixel_size("too few whole nuclei to estimate it" if config.estimate_pixel_size else "estimate_pixel_size is off", pixel_size)
    elif ignored:
        decision = f"used {pixel_size:.4g} µm from the config"
    return pixel_size, source, "; ".join(w for w in (ignored, decision) if w)


def slide_pixel_size(file_px, config: RunConfig) -> tuple[float, str, str]:
    """:func:`image_pixel_size` for a scan read window by window: its nuclei are never all read, so none is estimated."""
    pixel_size, source, ignored = file_or_config_pixel_size(file_px, config)
    decision = f"used {pixel_size:.4g} µm from the config" if ignored else ""
    if pixel_size_unknown(file_px, config):
        source, decision = "default", _default_pixel_size("none is estimated for whole-slide scans", pixel_size)
    return pixel_size, source, "; ".join(w for w in (ignored, decision) if w)


def pixel_size_choices(sizes_by_image: dict, config: RunConfig) -> dict[str, PixelSizeChoice]:
    """:func:`~pellet_analysis.scale.pool_pixel_sizes_um` with the config's settings."""
    return pool_pixel_sizes_um(
        sizes_by_image, typical_nucleus_um=config.nuclei.typical_diameter_um, max_ratio=config.batch_pixel_size_max_ratio
    )


def study_metadata(path: Path, config: RunConfig, metadata, warnings: list):
    """Study metadata from the sample sheet or the file name; None when required and missing (a warning appended when not required)."""
    if metadata is not None:
        return metadata
    meta = parse_name(Path(path).stem, config.filename_pattern)
    if meta is None:
        if config.require_metadata:
            return None
        warnings.append(f"file name does not match pattern {config.filename_pattern!r}; metadata left empty")
        meta = {}
    return meta


#: File endings of an image's QuPath GeoJSON export in ``annotations_dir``, in the order they are looked for.
ANNOTATION_SUFFIXES = (".geojson", ".json")


def annotation_file(image_path, config: RunConfig) -> Path | None:
    """The QuPath GeoJSON export of an image in ``config.annotations_dir`` (``<image stem>.geojson`` or ``.json``), or None."""
    if config.annotations_dir is None:
        return None
    stem = Path(image_path).stem
    for suffix in ANNOTATION_SUFFIXES:
        candidate = Path(config.annotations_dir) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_annotations(path, config: RunConfig) -> list:
    """The pellet outlines of a QuPath GeoJSON export (:func:`~pellet_analysis.geojson.geojson_outlines`).

    Raises
    ------
    AnnotationError
        One line naming the file and the cause (unreadable, not JSON, not
        GeoJSON of annotation outlines).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise AnnotationError(f"{path.name}: cannot read annotations ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{path.name}: not a text file (a QuPath GeoJSON export is UTF-8 JSON)") from None
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path.name}: not JSON (line {error.lineno} column {error.colno}: {error.msg})") from None
    try:
        return geojson_outlines(data, pellet_class=config.annotations_pellet_class)
    except AnnotationError as error:
        raise AnnotationError(f"{path.name}: {error}") from None


def config_hash(config: RunConfig) -> str:
    """SHA-256 of every setting that can change a result."""
    data = config.model_dump(mode="json", exclude=set(_HASH_EXCLUDED))
    if config.annotations_dir is None:
        # without annotations their settings change nothing: a config's hash stays what it was before
        # they existed, so a run folder of an earlier version is resumed, not refused
        for key in ("annotations_dir", "annotations_pellet_class"):
            data.pop(key)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def with_granule_min_od(config: RunConfig, granule_min_od: float | None) -> RunConfig:
    """``config`` with ``iron.granule_min_od`` replaced (unchanged for None)."""
    if granule_min_od is None or granule_min_od == config.iron.granule_min_od:
        return config
    return config.model_copy(update={"iron": config.iron.model_copy(update={"granule_min_od": float(granule_min_od)})})


def jsonable(meta):
    """``meta`` as it reads back from JSON (sample sheet values are numpy scalars); None stays None."""
    return None if meta is None else json.loads(json.dumps(meta, default=str))


def one_line(error: BaseException, limit: int = 200) -> str:
    """An exception as ``Type: message`` on one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def failure(path, reason: str, started: float | None = None) -> ImageFailure:
    """The failure record of ``path`` (``started``: its ``time.perf_counter()`` start, for the seconds spent)."""
    path = Path(path)
    return ImageFailure(path.stem, path.name, reason, None if started is None else time.perf_counter() - started)


def unexpected_failure(path, output_dir, error: BaseException, started: float | None = None, *, label: str = "") -> ImageFailure:
    """A failure naming the exception in one line; its traceback goes to ``logs/<image>.traceback.txt`` in the run folder.

    ``label`` goes before the exception's name (e.g. ``pellet 2: ``).
    """
    import traceback

    path, output_dir = Path(path), Path(output_dir)
    log = output_dir / "logs" / f"{path.stem}.traceback.txt"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        where = f"; traceback in {log.relative_to(output_dir)}"
    except OSError:
        where = ""
    return failure(path, f"{label}{one_line(error)}{where}", started)
