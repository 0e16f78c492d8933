"""QuPath-readable GeoJSON of pellet outlines with their measurements as properties."""

from __future__ import annotations

import math

import numpy as np

from .measure import outline_polygon

__all__ = ["pellet_outline", "polygon_ring", "ring_collection"]


def pellet_outline(mask, *, offset=(0, 0), tolerance_px: float = 0.75) -> list[list[float]]:
    """Closed outer outline of the largest part of ``mask`` as ``[x, y]`` (column, row) pixel coordinates (:func:`~pellet_analysis.measure.outline_polygon`)."""
    return polygon_ring(outline_polygon(mask, tolerance_px=tolerance_px), offset=offset)


def polygon_ring(polygon, *, offset=(0, 0)) -> list[list[float]]:
    """A polygon of (row, col) vertices as the ``[x, y]`` (column, row) ring :func:`pellet_outline` gives, shifted by ``offset`` (rows, cols)."""
    return [[float(c + offset[1]), float(r + offset[0])] for r, c in polygon]


def _json_value(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


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
