"""QuPath-readable GeoJSON of pellet outlines with their measurements as properties."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .measure import outline_polygon

__all__ = ["pellet_outline", "pellet_feature_collection", "feature_collection", "ring_collection"]


def pellet_outline(mask, *, offset=(0, 0), tolerance_px: float = 0.75) -> list[list[float]]:
    """Closed outer outline of the largest part of ``mask`` as ``[x, y]`` (column, row) pixel coordinates (:func:`~pellet_analysis.measure.outline_polygon`)."""
    return [[float(c + offset[1]), float(r + offset[0])] for r, c in outline_polygon(mask, tolerance_px=tolerance_px)]


def _json_value(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def pellet_feature_collection(pellets, rows) -> dict:
    """GeoJSON FeatureCollection: one annotation polygon per pellet, measurements as properties.

    Coordinates are pixels of the full-resolution image (x = column, y = row),
    as QuPath imports them.
    """
    pellets = np.asarray(pellets)
    objects = ndi.find_objects(pellets.astype(np.int64, copy=False))
    outlined = []
    for row in rows:
        pid = int(row["pellet_id"])
        sl = objects[pid - 1] if pid - 1 < len(objects) else None
        if sl is not None:
            outlined.append((row, pellets[sl] == pid, (sl[0].start, sl[1].start)))
    return feature_collection(outlined)


def feature_collection(outlined) -> dict:
    """GeoJSON FeatureCollection from ``(row, mask, (row_offset, col_offset))`` triples, one per pellet."""
    return ring_collection([(row, pellet_outline(mask, offset=offset)) for row, mask, offset in outlined])


def ring_collection(outlines) -> dict:
    """GeoJSON FeatureCollection from ``(row, ring)`` pairs, rings from :func:`pellet_outline`."""
    features = []
    for row, ring in outlines:
        pid = int(row["pellet_id"])
        if len(ring) < 4:
            continue
        properties = {
            "objectType": "annotation",
            "name": f"{row.get('image', '')} pellet {pid}",
            "classification": {"name": "Pellet", "color": [0, 200, 0]},
            "measurements": {k: _json_value(v) for k, v in row.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)},
        }
        properties.update(
            {
                k: _json_value(v)
                for k, v in row.items()
                if k in ("image", "donor", "condition", "day", "section", "pixel_size_um", "pixel_size_source", "touches_border", "shape_exclusion_reason")
            }
        )
        features.append({"type": "Feature", "id": f"pellet-{pid}", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties})
    return {"type": "FeatureCollection", "features": features}
