"""The typed records a run passes between its tasks, and their ``run.json`` encoding.

Every image, held in memory or read window by window, goes through the same
steps (:mod:`pellet_analysis.tasks`): an :class:`ImageJob` is planned into a
:class:`~pellet_analysis.tasks.PlannedImage`; each pellet window becomes a
:class:`ClassifiedPellet`, then a :class:`PelletResult` (or a
:class:`PelletError`); the image ends as an :class:`ImageSummary` or an
:class:`ImageFailure`. The records are frozen: a task never changes what
another task gave it. The two image records own their JSON form (written to
``parts/<image>.json`` and run.json's ``images``) and read it back
(:func:`decode_image`), so no reader of a run folder depends on string keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from .measure import BORDER_REASON
from .metadata import METADATA_FIELDS

if TYPE_CHECKING:
    from .scale import PixelSizeChoice

__all__ = [
    "ImageJob",
    "ClassifiedPellet",
    "PelletResult",
    "PelletError",
    "ImageSummary",
    "ImageFailure",
    "decode_image",
    "table_row",
    "pellet_boxes",
]


@dataclass(frozen=True)
class ImageJob:
    """One input image of a batch and what the batch decided for it before it is read.

    Attributes
    ----------
    path : Path
    metadata : dict or None
        Study metadata from the sample sheet; None: parsed from the file name.
    pixel_size_choice : PixelSizeChoice or None
        The batch's pixel size for an image without one in its file or the
        config (:func:`~pellet_analysis.bookkeeping.pixel_size_choices`);
        None: estimated from the image's own nuclei.
    whole_slide : bool
        Read window by window from the file's tiles, never whole
        (:func:`~pellet_analysis.wholeslide.is_whole_slide`).
    gated : bool
        The input gate passed it already (when the batch read its nuclei
        for the pixel size): its plan does not gate it again.
    annotations : Path or None
        Its QuPath GeoJSON export, whose outlines are its pellets; None: they are found.
    """

    path: Path
    metadata: dict | None = None
    pixel_size_choice: PixelSizeChoice | None = None
    whole_slide: bool = False
    gated: bool = False
    annotations: Path | None = None

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class ClassifiedPellet:
    """One pellet classified from its window, its arrays left as ``.npy`` files in the image's scratch folder.

    Attributes
    ----------
    index : int
        The pellet's low-resolution number (1-based) in the plan.
    box : tuple of slice
        What the files hold: the pellet's bounding box in the image, grown by one pixel.
    files : dict
        ``inside``, ``classes``, ``nuclei``, ``proteoglycan_od``, ``lacunae``, ``open_pixels`` -> ``.npy`` path.
    n_nuclei : int
        The largest nucleus id inside the pellet (ids are 1..n within it).
    stains_info : dict
        Which stain vectors were used and why (:func:`~pellet_analysis.stains.choose_stains`).
    touches_border : bool
    started_wall, seconds : float
        When the task started (``time.time()``) and how long it took.
    iron_levels : ndarray or None
        Per nucleus, the highest granule threshold leaving it iron-positive
        (only when the iron calibration asked for it).
    n_lacunae : int
        The largest lacuna id inside the pellet (ids are 1..n within it).
    """

    index: int
    box: tuple
    files: dict
    n_nuclei: int
    stains_info: dict
    touches_border: bool
    started_wall: float
    seconds: float
    iron_levels: np.ndarray | None = field(default=None, compare=False)
    n_lacunae: int = 0


@dataclass(frozen=True)
class PelletResult:
    """One measured pellet: its table measurements, its outline and box in the image."""

    index: int
    row: dict
    outline: list
    box: list  # [row_start, row_stop, col_start, col_stop]
    seconds: float


@dataclass(frozen=True)
class PelletError:
    """A pellet whose classification or measurement raised: the image fails with this one-line reason."""

    index: int
    reason: str


def _jsonable(value):
    """Tuples as lists, numpy scalars as Python ones: what ``json.loads(json.dumps(value))`` gives back."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class ImageSummary:
    """A finished image: its table rows and everything run.json records about it.

    :meth:`to_json` is the content of ``parts/<image>.json`` (with ``rows``)
    and of run.json's ``images[<image>]`` (without); :meth:`from_json` reads
    either back.
    """

    image: str
    file: str
    path: str
    rows: tuple
    shape: tuple
    dtype: str
    pixel_size_um: float
    pixel_size_source: str
    stains: dict  # StainSet.to_dict() of the vectors the image was analysed with
    background: dict  # Illumination.to_dict()
    sha256: str
    config_hash: str
    metadata_override: dict | None
    warnings: tuple
    timings_s: dict
    seconds: float
    stains_source: tuple  # per pellet: which vectors were used and why
    pellet_boxes: dict  # pellet id (str) -> [row_start, row_stop, col_start, col_stop]
    iron_granule_min_od: float
    whole_slide: dict | None = None  # low-resolution factor and pellet windows of a scan read window by window
    annotations: dict | None = None  # the QuPath export whose outlines are the pellets: file, sha256, outlines; None: found
    skipped: bool = False  # finished by an earlier run of the same folder, read back from its part

    ok = True

    def to_json(self, *, rows: bool = True) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not self.skipped:
            del data["skipped"]
        if self.whole_slide is None:
            del data["whole_slide"]
        if self.annotations is None:
            del data["annotations"]
        if not rows:
            del data["rows"]
        return _jsonable({**data, "ok": True})

    @classmethod
    def from_json(cls, data: dict) -> ImageSummary:
        """The summary of :meth:`to_json`'s dict; what a run of an earlier version did not record takes its empty value."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {**_NOT_RECORDED, **{k: v for k, v in data.items() if k in names}}
        for name in ("rows", "shape", "warnings", "stains_source"):
            values[name] = tuple(values[name] or ())
        return cls(**values)


#: An :class:`ImageSummary`'s fields that runs of earlier versions may lack, and the value read for them.
_NOT_RECORDED = {
    "rows": (),
    "stains": {},
    "background": {},
    "sha256": "",
    "config_hash": "",
    "metadata_override": None,
    "warnings": (),
    "timings_s": {},
    "seconds": 0.0,
    "stains_source": (),
    "pellet_boxes": {},
    "iron_granule_min_od": None,
}


@dataclass(frozen=True)
class ImageFailure:
    """An input that could not be analysed: its ``failures.csv`` row."""

    image: str
    file: str
    reason: str  # one line
    seconds: float | None = None

    ok = False
    skipped = False
    rows = ()

    def to_json(self, *, rows: bool = True) -> dict:
        data = {"image": self.image, "file": self.file, "ok": False, "reason": self.reason}
        if self.seconds is not None:
            data["seconds"] = self.seconds
        return data

    @classmethod
    def from_json(cls, data: dict) -> ImageFailure:
        return cls(data["image"], data.get("file", data["image"]), data["reason"], data.get("seconds"))


def decode_image(data: dict, image: str | None = None) -> ImageSummary | ImageFailure:
    """The record of a ``parts/<image>.json``, or of run.json's ``images[image]`` (which is keyed by the image's name)."""
    data = {**data, "image": image} if image is not None else data
    return ImageSummary.from_json(data) if data.get("ok", True) else ImageFailure.from_json(data)


def table_row(image: str, meta: dict, measurements: dict, pixel_size_um: float, pixel_size_source: str) -> dict:
    """One pellets.csv row: image, study metadata, measurements, the pixel size and where it came from, and review columns at their defaults.

    A pellet cut by the image border (``touches_border``) gets :data:`~pellet_analysis.measure.BORDER_REASON`
    as its ``shape_exclusion_reason``: its area and circularity are left out of the report's means.
    """
    row = {"image": image, **{k: meta.get(k) for k in METADATA_FIELDS}, **measurements}
    touches = bool(row.get("touches_border", False))
    row.update(
        pixel_size_um=pixel_size_um,
        pixel_size_source=pixel_size_source,
        touches_border=touches,
        shape_exclusion_reason=BORDER_REASON if touches else "",
        excluded=False,
        exclusion_reason="",
        corrected=False,
    )
    return row


def pellet_boxes(pellets, origin=(0, 0)) -> dict:
    """Pellet id (str) -> [row_start, row_stop, col_start, col_stop] of its bounding box in the image."""
    pellets = np.asarray(pellets)
    if pellets.dtype == bool:  # one pellet: its box from the row and column projections, no label-sized copy
        rows, cols = np.flatnonzero(pellets.any(axis=1)), np.flatnonzero(pellets.any(axis=0))
        return {"1": [int(rows[0]) + origin[0], int(rows[-1]) + 1 + origin[0], int(cols[0]) + origin[1], int(cols[-1]) + 1 + origin[1]]} if rows.size else {}
    boxes = {}
    for pid, box in enumerate(ndi.find_objects(pellets if pellets.dtype.kind in "ui" else pellets.astype(np.int64)), start=1):
        if box is not None:
            boxes[str(pid)] = [box[0].start + origin[0], box[0].stop + origin[0], box[1].start + origin[1], box[1].stop + origin[1]]
    return boxes

