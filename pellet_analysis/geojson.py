"""QuPath GeoJSON both ways: pellet outlines with their measurements out, annotated outlines in.

Coordinates: QuPath's ROIs are in full-resolution pixels with the origin at
the top-left corner of the image, pixel (x, y) being the unit square from its
corner (x, y), so its centre lies at (x + 0.5, y + 0.5). Our pixel
(row, col) has its centre at (row, col): a QuPath point (x, y) is our
(y - 0.5, x - 0.5) (:data:`QUPATH_HALF_PIXEL`). An outline is written along
the mask's edge (between inside and outside pixel centres) and read back as
the pixels whose centres it encloses, so a written outline reads back as the
same pixels, up to the Douglas-Peucker simplification (within a pixel).

What QuPath reads of a Feature's ``properties`` (``PathObjectTypeAdapters``
in QuPath's source, v0.4 and later): ``objectType`` ("annotation",
"detection", ...), ``name``, ``classification`` (``{"name", "color"}``),
``measurements`` as a map of name -> number (shown in its measurement table;
a null value is not a number, so non-finite values are left out) and
``metadata`` as a map of name -> text; ``id`` is read as a UUID.
"""

from __future__ import annotations

import math
import uuid

import numpy as np

from .measure import _shoelace, outline_rings

__all__ = [
    "QUPATH_HALF_PIXEL",
    "DEFAULT_PELLET_CLASS",
    "AnnotationError",
    "pellet_geometry",
    "feature_collection",
    "geojson_outlines",
    "outline_mask",
    "outline_bounds",
    "fill_rings",
]

#: QuPath's pixel centres lie half a pixel from ours, along both axes (see the module's docstring).
QUPATH_HALF_PIXEL = 0.5

#: The classification name written on our pellets, and read as "this outline is a pellet" by default.
DEFAULT_PELLET_CLASS = "Pellet"

#: Study fields written to a feature's ``metadata`` (text), where QuPath shows them beside the measurements.
_METADATA_KEYS = ("image", "donor", "condition", "day", "section", "pixel_size_source", "touches_border", "shape_exclusion_reason")


class AnnotationError(ValueError):
    """A GeoJSON document that gives no pellet outline; the message is one line naming the cause."""


# ---- writing


def _encloses(ring, point) -> bool:
    """Even-odd test: does the closed (row, col) ``ring`` enclose ``point``."""
    r, c = np.asarray(ring, np.float64).T
    r1, c1 = np.roll(r, -1), np.roll(c, -1)
    crosses = (r <= point[0]) != (r1 <= point[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        col = c + (point[0] - r) * (c1 - c) / (r1 - r)
    return bool(np.count_nonzero(crosses & (col > point[1])) % 2)


def pellet_geometry(mask, *, offset=(0, 0), tolerance_px: float = 0.75) -> dict | None:
    """The outline of ``mask`` as a GeoJSON geometry in QuPath's pixel coordinates; None when the mask is empty.

    Every part of the mask with its holes (:func:`~pellet_analysis.measure.outline_rings`,
    Douglas-Peucker within ``tolerance_px``): a Polygon for one part, a
    MultiPolygon for several, outer rings first in each.

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, cols)
    offset : (int, int), keyword-only
        The mask's (row, col) origin in the full image.
    tolerance_px : float, keyword-only
    """
    signed = [(_shoelace(r), r) for r in outline_rings(mask, tolerance_px=tolerance_px)]
    outers = sorted((pair for pair in signed if pair[0] < 0), key=lambda pair: pair[0])  # largest first
    if not outers:
        return None
    polygons = [[outer] for _, outer in outers]
    for area, hole in signed:
        if area <= 0:
            continue
        # the smallest part around the hole (a part may lie inside another's hole)
        around = [k for k, (_, outer) in enumerate(outers) if _encloses(outer, hole[0])]
        if around:
            polygons[max(around, key=lambda k: outers[k][0])].append(hole)
    shift = np.array([offset[0], offset[1]], np.float64) + QUPATH_HALF_PIXEL
    coordinates = [[[[float(c), float(r)] for r, c in ring + shift] for ring in polygon] for polygon in polygons]
    if len(coordinates) == 1:
        return {"type": "Polygon", "coordinates": coordinates[0]}
    return {"type": "MultiPolygon", "coordinates": coordinates}


def _number(value) -> float | int | None:
    """A measurement as QuPath's table takes it: a finite number, else None (left out)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value) if math.isfinite(float(value)) else None


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return str(value.item() if isinstance(value, np.generic) else value)


def feature_collection(pellets, *, pellet_class: str = DEFAULT_PELLET_CLASS) -> dict:
    """A GeoJSON FeatureCollection QuPath imports as classified annotations with our measurements.

    Parameters
    ----------
    pellets : iterable of (dict, dict or None)
        Each pellet's table row and its geometry (:func:`pellet_geometry`);
        pellets without a geometry are left out.
    pellet_class : str, keyword-only
        The classification name of every feature.

    Returns
    -------
    dict
        Features with ``objectType`` "annotation", the classification,
        ``measurements`` (every finite number of the row) and ``metadata``
        (the study fields as text); ``id`` a UUID derived from image and
        pellet id, so a re-run gives the same ids.
    """
    features = []
    for row, geometry in pellets:
        if geometry is None:
            continue
        pid = int(row["pellet_id"])
        measurements = {k: _number(v) for k, v in row.items()}
        metadata = {k: _text(row.get(k)) for k in _METADATA_KEYS}
        properties = {
            "objectType": "annotation",
            "name": f"{row.get('image', '')} pellet {pid}",
            "classification": {"name": pellet_class, "color": [0, 200, 0]},
            "measurements": {k: v for k, v in measurements.items() if v is not None},
            "metadata": {k: v for k, v in metadata.items() if v is not None},
        }
        feature_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pellet-analysis:{row.get('image', '')}:{pid}"))
        features.append({"type": "Feature", "id": feature_id, "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


# ---- reading


def _features(data) -> list:
    """The features of a FeatureCollection, a list of Features or a single Feature."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list):
                raise AnnotationError("a FeatureCollection without a list of features")
            return features
        if kind == "Feature":
            return [data]
        raise AnnotationError(f"top level is a GeoJSON {kind!r}, not a FeatureCollection or a list of Features")
    raise AnnotationError(f"top level is a {type(data).__name__}, not a FeatureCollection or a list of Features")


def _class_names(properties: dict) -> set[str]:
    """The lower-case names of a feature's classification, each part of a derived class ("Pellet: Positive") too."""
    classification = properties.get("classification")
    if isinstance(classification, str):
        names = [classification]
    elif isinstance(classification, dict):
        names = [classification.get("name") or ""] + list(classification.get("names") or [])
    else:
        names = []
    out = set()
    for name in names:
        if isinstance(name, str):
            out.add(name.strip().lower())
            out.update(part.strip().lower() for part in name.split(":"))
    return out - {""}


def _ring(points, where: str) -> np.ndarray:
    """A GeoJSON ring of [x, y] points as (row, col) in our pixel coordinates, closed."""
    try:
        xy = np.array([[float(p[0]), float(p[1])] for p in points], np.float64)
    except (TypeError, ValueError, IndexError, KeyError):
        raise AnnotationError(f"{where}: a ring is not a list of [x, y] numbers") from None
    if len(xy) == 0 or not np.isfinite(xy).all():
        raise AnnotationError(f"{where}: a ring is empty or holds a non-finite coordinate")
    ring = xy[:, ::-1] - QUPATH_HALF_PIXEL
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    if len(np.unique(ring, axis=0)) < 3:
        raise AnnotationError(f"{where}: a ring has fewer than three distinct points")
    return ring


def _polygons(geometry: dict, where: str) -> list[list[np.ndarray]]:
    coordinates = geometry.get("coordinates")
    polygons = [coordinates] if geometry["type"] == "Polygon" else coordinates
    if not isinstance(polygons, list) or not polygons or not all(isinstance(p, list) and p for p in polygons):
        raise AnnotationError(f"{where}: its {geometry['type']} has no coordinates")
    return [[_ring(ring, where) for ring in polygon] for polygon in polygons]


def _centroid(polygons) -> tuple[float, float]:
    """(row, col) centroid of the outer rings (area-weighted), for numbering the pellets left to right."""
    total, rows, cols = 0.0, 0.0, 0.0
    for polygon in polygons:
        r, c = polygon[0].T
        cross = r * np.roll(c, -1) - np.roll(r, -1) * c
        area = 0.5 * cross.sum()
        if area == 0:
            continue
        total += area
        rows += ((r + np.roll(r, -1)) * cross).sum() / 6
        cols += ((c + np.roll(c, -1)) * cross).sum() / 6
    if total == 0:
        ring = polygons[0][0]
        return float(ring[:, 0].mean()), float(ring[:, 1].mean())
    return rows / total, cols / total


def geojson_outlines(data, *, pellet_class: str = DEFAULT_PELLET_CLASS) -> list[list[list[np.ndarray]]]:
    """The pellet outlines of a parsed QuPath GeoJSON export, numbered left to right.

    Annotations (``objectType`` "annotation", or none given) with a Polygon
    or MultiPolygon geometry are the candidates; those classified as
    ``pellet_class`` (case-insensitive, also as part of a derived class) are
    the pellets, or all candidates when none is so classified. Detections,
    cells, points and lines are never pellets.

    Parameters
    ----------
    data : dict or list
        ``json.load`` of a FeatureCollection, a list of Features or a Feature.
    pellet_class : str, keyword-only

    Returns
    -------
    list
        Per pellet, its polygons; per polygon, its rings (outer first, then
        holes), each an ndarray (n, 2) of closed (row, col) vertices in our
        pixel coordinates. Ordered by the outline's centroid, left to right
        (then top to bottom), as the pellet finder numbers its pellets.

    Raises
    ------
    AnnotationError
        One line: the structure that is wrong, or that no annotation outline is found.
    """
    candidates = []
    for k, feature in enumerate(_features(data), start=1):
        where = f"feature {k}"
        if not isinstance(feature, dict):
            raise AnnotationError(f"{where} is a {type(feature).__name__}, not a GeoJSON Feature")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise AnnotationError(f"{where}: properties is not a mapping")
        if str(properties.get("objectType", properties.get("object_type", "annotation"))).lower() != "annotation":
            continue
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict) or "type" not in geometry:
            raise AnnotationError(f"{where} has no geometry")
        if geometry["type"] not in ("Polygon", "MultiPolygon"):
            continue
        candidates.append((_class_names(properties), _polygons(geometry, where)))
    if not candidates:
        raise AnnotationError("no annotation with a Polygon or MultiPolygon outline")
    named = [polygons for names, polygons in candidates if pellet_class.strip().lower() in names]
    chosen = named or [polygons for _, polygons in candidates]
    return sorted(chosen, key=lambda polygons: _centroid(polygons)[::-1])


def outline_bounds(polygons) -> tuple[float, float, float, float]:
    """(row_min, row_max, col_min, col_max) of an outline's vertices."""
    points = np.concatenate([ring for polygon in polygons for ring in polygon])
    return float(points[:, 0].min()), float(points[:, 0].max()), float(points[:, 1].min()), float(points[:, 1].max())


def fill_rings(rings, shape) -> np.ndarray:
    """The pixels whose centres the closed (row, col) ``rings`` enclose, by the even-odd rule (holes stay empty).

    A scanline fill: each pixel row's crossings with the rings, paired left
    to right; a centre lying on an edge counts on the edge's right and lower
    side only, so polygons sharing an edge share no pixel. Linear in the
    pixels and the crossings (a point-in-polygon test per pixel is not: a
    whole-slide pellet has tens of millions of pixels).

    Parameters
    ----------
    rings : list of ndarray, shape (n, 2)
        Closed rings in the array's (row, col) coordinates (pixel centres at integers).
    shape : (int, int)

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    n_rows, n_cols = (int(n) for n in shape[:2])
    crossing_rows, crossing_cols = [], []
    for ring in rings:
        ring = np.asarray(ring, np.float64)
        r0, c0 = ring[:-1, 0], ring[:-1, 1]
        r1, c1 = ring[1:, 0], ring[1:, 1]
        # an edge crosses pixel row y when min(r0, r1) <= y < max(r0, r1): horizontal edges never do
        first = np.clip(np.ceil(np.minimum(r0, r1)), 0, n_rows).astype(np.int64)
        stop = np.clip(np.ceil(np.maximum(r0, r1)), 0, n_rows).astype(np.int64)
        counts = np.maximum(stop - first, 0)
        if not counts.any():
            continue
        edge = np.repeat(np.arange(len(counts)), counts)
        starts = np.cumsum(counts) - counts
        rows = first[edge] + (np.arange(int(counts.sum())) - starts[edge])
        t = (rows - r0[edge]) / (r1[edge] - r0[edge])
        crossing_rows.append(rows)
        crossing_cols.append(c0[edge] + t * (c1[edge] - c0[edge]))
    # the pairs of a row never overlap, so every running sum is 0 or 1 and its steps fit int8 (a whole-slide
    # pellet's window has 1e8 pixels: an int64 running sum would be 0.8 GB)
    mask_counts = np.zeros((n_rows, n_cols + 1), np.int8)
    if crossing_rows:
        rows, cols = np.concatenate(crossing_rows), np.concatenate(crossing_cols)
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        # each row's crossings are even in number: pair them left to right; pixel c is in [a, b) when a <= c < b
        start = np.clip(np.ceil(cols[0::2]), 0, n_cols).astype(np.int64)
        end = np.clip(np.ceil(cols[1::2]), 0, n_cols).astype(np.int64)
        np.add.at(mask_counts, (rows[0::2], start), 1)
        np.add.at(mask_counts, (rows[1::2], end), -1)
    np.cumsum(mask_counts, axis=1, dtype=np.int8, out=mask_counts)
    return mask_counts[:, :n_cols] > 0


def outline_mask(polygons, window) -> np.ndarray:
    """An outline's pixels inside ``window`` (a pair of slices of the full image): each polygon filled, their union."""
    origin = np.array([window[0].start, window[1].start], np.float64)
    shape = (window[0].stop - window[0].start, window[1].stop - window[1].start)
    mask = np.zeros(shape, bool)
    for polygon in polygons:
        mask |= fill_rings([ring - origin for ring in polygon], shape)
    return mask
