"""The per-image record of a run (``parts/<image>.json``) and its table rows, shared by both image paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .io import sha256_file
from .measure import BORDER_REASON
from .metadata import METADATA_FIELDS

__all__ = ["table_row", "image_summary", "pellet_boxes"]


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


def image_summary(path, rows, *, sha256=None, shape, dtype, pixel_size_um, pixel_size_source, stains, background, config_hash, metadata_override, warnings, timings_s, seconds, **extra) -> dict:
    """The summary of a finished image, as written to ``parts/<image>.json`` and run.json (``sha256`` of the input: computed when None)."""
    path = Path(path)
    return {
        "image": path.stem,
        "file": path.name,
        "path": str(path.resolve()),
        "ok": True,
        "rows": rows,
        "shape": list(shape),
        "dtype": str(dtype),
        "pixel_size_um": pixel_size_um,
        "pixel_size_source": pixel_size_source,
        "stains": stains.to_dict(),
        "background": background,
        "sha256": sha256 or sha256_file(path),
        "config_hash": config_hash,
        "metadata_override": metadata_override,
        "warnings": warnings,
        "timings_s": timings_s,
        "seconds": seconds,
        **extra,
    }


def pellet_boxes(pellets, origin=(0, 0)) -> dict:
    """Pellet id (str) -> [row_start, row_stop, col_start, col_stop] of its bounding box in the image."""
    boxes = {}
    for pid, box in enumerate(ndi.find_objects(np.asarray(pellets).astype(np.int64, copy=False)), start=1):
        if box is not None:
            boxes[str(pid)] = [box[0].start + origin[0], box[0].stop + origin[0], box[1].start + origin[1], box[1].stop + origin[1]]
    return boxes
