"""Per-pellet measurements from label images.

The same functions measure the pipeline's labels and the synthetic
generator's ground truth, so both are defined identically.
"""

from __future__ import annotations

from concurrent.futures import Future

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .labels import CLASS_CODES
from .morphology import within_distance
from .params import CartilageParams
from .profiles import CARTILAGE_COLUMNS, cell_features_from_pixels, nonzero_pixels, pellet_cartilage
from .territories import PIXEL_MOMENT, axis_ratios, central_moments, moment_axis_ratio

__all__ = [
    "MEASUREMENT_COLUMNS",
    "measure_pellets",
    "perimeter_crofton",
    "outline_polygon",
    "outline_rings",
    "polygon_circularity",
    "touches_border",
    "depth_map",
    "BORDER_REASON",
    "SHAPE_COLUMNS",
]


#: Measurement columns, in output order (metadata columns come first in the table).
MEASUREMENT_COLUMNS = [
    "pellet_id",
    "area_um2",
    "centroid_row_px",
    "centroid_col_px",
    "circularity",
    "proteoglycan_area_fraction",
    "proteoglycan_mean_od",
    "collagen_area_fraction",
    "nuclei_count",
    "nuclei_density_per_mm2",
    "iron_area_fraction",
    "iron_granule_count",
    "iron_positive_cell_fraction",
    "proteoglycan_od_sd",
    "nuclei_nn_distance_um",
    "nuclei_roundness",
    "proteoglycan_core_fraction",
    "proteoglycan_rim_fraction",
    *CARTILAGE_COLUMNS,
]


#: Measurements of a pellet's shape: not comparable when it is cut by the image border (:func:`touches_border`).
SHAPE_COLUMNS = ("area_um2", "circularity")


def _safe_fraction(numerator, denominator) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else 0.0


#: Crofton perimeter contribution of each 2 x 2 configuration (four directions), as in scikit-image.
_CROFTON_4 = np.array(
    [
        0, np.pi / 4 * (1 + 1 / np.sqrt(2)), np.pi / (4 * np.sqrt(2)), np.pi / (2 * np.sqrt(2)),
        0, np.pi / 4 * (1 + 1 / np.sqrt(2)), 0, np.pi / (4 * np.sqrt(2)),
        np.pi / 4, np.pi / 2, np.pi / (4 * np.sqrt(2)), np.pi / (4 * np.sqrt(2)),
        np.pi / 4, np.pi / 2, 0, 0,
    ]
)  # fmt: skip


def perimeter_crofton(mask) -> float:
    """Crofton perimeter (four directions) of a binary image, as ``skimage.measure.perimeter_crofton``.

    The 2 x 2 configurations are coded with shifted 8-bit sums instead of a
    convolution (several times faster on a whole pellet).
    """
    q = np.pad(np.asarray(mask, dtype=bool).view(np.uint8), ((2, 1), (2, 1)))
    code = q[1:, 1:].copy()
    code += 2 * q[:-1, 1:]
    code += 4 * q[1:, :-1]
    code += 8 * q[:-1, :-1]
    return float(_CROFTON_4 @ np.bincount(code.ravel(), minlength=16))


def outline_polygon(mask, *, tolerance_px: float = 0.75) -> np.ndarray:
    """The outer outline of the largest part of ``mask`` as a closed polygon of (row, col) vertices (float64).

    The iso-line at 0.5 of the mask (marching squares: through the midpoints
    between inside and outside pixel centres, so it encloses the mask's
    pixels) simplified by Douglas-Peucker within ``tolerance_px``. The first
    vertex is repeated at the end. Empty (0, 2) when ``mask`` is empty.
    """
    contours = _mask_contours(mask)
    if not contours:
        return np.zeros((0, 2))
    return _simplified(max(contours, key=lambda c: abs(_shoelace(c))), tolerance_px)


def outline_rings(mask, *, tolerance_px: float = 0.75) -> list[np.ndarray]:
    """Every outline of ``mask`` (outer edges of its parts and edges of its holes) as closed polygons of (row, col) vertices.

    The contours of :func:`outline_polygon`, all of them: a part's outer edge
    has a negative signed area (:func:`_shoelace`), a hole's a positive one.
    Simplified by Douglas-Peucker within ``tolerance_px``; rings left with
    fewer than three distinct vertices are dropped.
    """
    rings = [_simplified(c, tolerance_px) for c in _mask_contours(mask)]
    return [r for r in rings if len(r) >= 4]


def _mask_contours(mask) -> list[np.ndarray]:
    """Closed iso-lines at 0.5 of ``mask`` (padded by one, so none is left open), in the padded array's coordinates."""
    from skimage.measure import find_contours

    mask = np.pad(np.asarray(mask, bool), 1)
    return find_contours(mask.view(np.uint8).astype(np.float32), 0.5)


def _simplified(contour, tolerance_px: float) -> np.ndarray:
    """A padded-array contour simplified within ``tolerance_px``, in the mask's coordinates, first vertex repeated at the end."""
    # Douglas-Peucker, as skimage's approximate_polygon (whose import costs scipy.signal, most of a second
    # in every worker); the closed contour repeats its first point, so both ends stay
    contour = cv2.approxPolyDP(np.ascontiguousarray(contour, dtype=np.float32)[:, None, :], float(tolerance_px), False)[:, 0, :]
    contour = contour.astype(np.float64) - 1.0
    if not np.array_equal(contour[0], contour[-1]):
        contour = np.vstack([contour, contour[:1]])
    return contour


def _shoelace(points) -> float:
    """Signed area of the polygon through ``points`` (rows, cols)."""
    r, c = np.asarray(points, np.float64).T
    return 0.5 * float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1)))


def polygon_circularity(polygon) -> float:
    """ImageJ's circularity of a polygon: 4 pi area / perimeter², at most 1 (0 for an empty polygon).

    Area (shoelace) and perimeter (the sum of its sides' lengths) are those
    ImageJ's Measure and QuPath give for the same polygon ROI, for instance
    the pellet outline imported from the run's GeoJSON.
    """
    polygon = np.asarray(polygon, np.float64)
    if len(polygon) < 4:
        return 0.0
    perimeter = float(np.hypot(*np.diff(polygon, axis=0).T).sum())
    return min(1.0, 4.0 * np.pi * abs(_shoelace(polygon)) / perimeter**2) if perimeter > 0 else 0.0


#: The pellets.csv reason, in ``shape_exclusion_reason``, why a pellet's area and circularity are not comparable.
BORDER_REASON = "cut by the image border"


def touches_border(box, shape) -> bool:
    """Whether a pellet whose bounding box (pair of slices) lies in an image of ``shape`` reaches the image's edge.

    Such a pellet may be cut there (a field of view inside a section always
    is): its area and circularity are those of the part in the image, not
    comparable with whole sections (``shape_exclusion_reason`` is then
    :data:`BORDER_REASON`), while its fractions, densities and scores stay valid.
    """
    return bool(any(s.start <= 0 or s.stop >= n for s, n in zip(box, shape[:2])))


def _labels_present(labels) -> np.ndarray:
    """The non-zero labels that occur in an integer label image, ascending (counted, not sorted)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0, np.int64)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if labels.dtype in (np.uint8, np.uint16):  # a histogram of the values (only >0 is read): no copy to 64-bit integers
        bins = 1 << (8 * labels.dtype.itemsize)
        counts = cv2.calcHist([np.ascontiguousarray(labels)], [0], None, [bins], [0, bins]).ravel()
    else:
        if labels.min() < 0:
            raise ValueError("labels must be non-negative")
        counts = np.bincount(labels[labels != 0].ravel())
    present = np.flatnonzero(counts)
    return present[present != 0]


def _majority_pellet(objects, pellets) -> dict:
    """Map each object label to the pellet label under most of its pixels."""
    sel = objects != 0
    return _majority(objects[sel].astype(np.int64), pellets[sel])


def _majority(obj, pel) -> dict:
    """Object label -> the pellet label most of its pixels have, from the two labels of each object pixel (``obj`` nonzero int64)."""
    pel = np.asarray(pel).astype(np.int64)
    if obj.size == 0:
        return {}
    n_pel = int(pel.max()) + 1
    counts = np.bincount(obj * n_pel + pel, minlength=(int(obj.max()) + 1) * n_pel).reshape(-1, n_pel)
    present = np.nonzero(counts.sum(axis=1))[0]
    best = counts[present].argmax(axis=1)
    return dict(zip(present.tolist(), best.tolist()))


def _nucleus_shapes(rr, cc, lab, ids) -> tuple[dict, np.ndarray | None]:
    """id -> (centroid row, centroid col, minor/major axis ratio) for each nucleus, from its pixels' rows, columns and labels (int64).

    Also, per id (index), the axis ratio with each pixel's own moment added
    (:func:`~pellet_analysis.territories.axis_ratios` of the nuclei: their
    roundness as territories of their own), from the same moments; None
    without nuclei.
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return {}, None
    mr, mc, second = central_moments(rr, cc, lab, int(ids.max()) + 1)
    ratio = moment_axis_ratio(*second)
    return {int(i): (float(mr[i]), float(mc[i]), float(ratio[i])) for i in ids}, moment_axis_ratio(*second, pixel_moment=PIXEL_MOMENT)


def _nuclei_spacing_and_roundness(shapes, pixel_size_um: float) -> tuple[float, float]:
    """Mean nearest-neighbour distance between nucleus centroids (µm; 0 with fewer than two
    nuclei) and mean minor/major axis ratio (1 is round; 0 with no nuclei)."""
    if not shapes:
        return 0.0, 0.0
    arr = np.asarray(shapes, dtype=np.float64)
    roundness = float(arr[:, 2].mean())
    if len(arr) < 2:
        return 0.0, roundness
    distances, _ = cKDTree(arr[:, :2]).query(arr[:, :2], k=2)
    return float(distances[:, 1].mean() * pixel_size_um), roundness


def measure_pellets(
    pellets,
    classes,
    nuclei,
    *,
    pixel_size_um: float,
    proteoglycan_od=None,
    iron_cell_distance_um: float = 5.0,
    rim_width_um: float = 50.0,
    lacunae=None,
    territories=None,
    cartilage: CartilageParams | None = None,
) -> list[dict]:
    """Measure every pellet of a label image.

    Parameters
    ----------
    pellets : ndarray of int, shape (rows, cols)
        Pellet labels, 0 outside pellets.
    classes : ndarray of uint8, shape (rows, cols)
        Class codes (:data:`CLASS_CODES`).
    nuclei : ndarray of int, shape (rows, cols)
        Nucleus instance labels, 0 elsewhere.
    pixel_size_um : float, keyword-only
        Pixel size (µm per pixel).
    proteoglycan_od : ndarray of float, or Future of one, optional, keyword-only
        Proteoglycan stain concentration (OD); its mean over proteoglycan
        pixels gives ``proteoglycan_mean_od`` (NaN-free: 0 where absent).
        A :class:`concurrent.futures.Future` is waited for only once the
        measurements of the labels alone are done, so a caller can compute
        the OD meanwhile (re-quantifying a pellet does).
    iron_cell_distance_um : float, keyword-only
        A nucleus with an iron pixel within this distance (µm) of its pixels
        counts as an iron-positive cell.
    rim_width_um : float, keyword-only
        Pixels within this distance (µm) of the pellet's edge form its rim,
        the rest its core; proteoglycan fractions are given for each zone.
    lacunae : ndarray of int, optional, keyword-only
        Lacuna labels (:mod:`~pellet_analysis.lacunae`); none when omitted.
    territories : ndarray of int, optional, keyword-only
        Cell territories carrying the nucleus ids (:mod:`~pellet_analysis.territories`);
        the nuclei themselves when omitted.
    cartilage : CartilageParams, optional, keyword-only
        Rounded-cell threshold, depth bands and patches; without it the
        cartilage columns (:data:`~pellet_analysis.profiles.CARTILAGE_COLUMNS`)
        are NaN and the profile empty.

    Returns
    -------
    list of dict
        One dict per pellet with :data:`MEASUREMENT_COLUMNS`, ordered by id,
        and ``depth_profile``: a list of dicts, one per depth band
        (:data:`~pellet_analysis.profiles.PROFILE_COLUMNS`).
    """
    pellets = np.asarray(pellets)
    classes = np.asarray(classes)
    nuclei = np.asarray(nuclei)
    if not (pellets.shape == classes.shape == nuclei.shape):
        raise ValueError("pellets, classes and nuclei must have the same shape")
    if pixel_size_um <= 0:
        raise ValueError("pixel_size_um must be > 0")
    if pellets.dtype == bool:
        pellets = pellets.view(np.uint8)
    ids = _labels_present(pellets)
    if ids.size == 0:
        return []
    px_area_um2 = float(pixel_size_um) ** 2

    iron_mask = classes == CLASS_CODES["iron"]
    _, iron_labels = cv2.connectedComponents(iron_mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    near_iron = within_distance(iron_mask, iron_cell_distance_um / pixel_size_um) if iron_mask.any() and nuclei.any() else None

    # the nuclei's pixels, found once: their pellets, iron contacts and shapes are reductions over them
    nucleus_rows, nucleus_cols = np.nonzero(nuclei)
    nucleus_labels = nuclei[nucleus_rows, nucleus_cols].astype(np.int64)
    if nucleus_labels.size and nucleus_labels.min() < 0:
        raise ValueError("labels must be non-negative")
    nucleus_ids = np.flatnonzero(np.bincount(nucleus_labels)) if nucleus_labels.size else np.zeros(0, np.int64)
    nucleus_pellet = {}
    nucleus_positive = {}
    if nucleus_ids.size:
        # nucleus -> pellet by the pellet label under most of its pixels (its centroid may fall in a hole)
        nucleus_pellet = _majority(nucleus_labels, pellets[nucleus_rows, nucleus_cols])
        if near_iron is not None:
            touched = np.bincount(nucleus_labels[near_iron[nucleus_rows, nucleus_cols]], minlength=int(nucleus_ids.max()) + 1)
            nucleus_positive = dict(zip(nucleus_ids.tolist(), (touched[nucleus_ids] > 0).tolist()))

    # iron granule -> pellet by majority, likewise
    granule_pellet = {}
    if iron_labels.max():
        granule_pellet = _majority_pellet(iron_labels, pellets)

    shapes, own_ratio = _nucleus_shapes(nucleus_rows, nucleus_cols, nucleus_labels, nucleus_ids)
    features = lacuna_pellet = None
    if cartilage is not None:
        # from the nuclei's and the lacunae's pixels found once; without territories a nucleus is its own,
        # and its roundness comes from the moments of its shape above
        lacuna_pixels = nonzero_pixels(lacunae) if lacunae is not None else (np.zeros(0, np.intp),) * 2 + (np.zeros(0, np.int64),)
        if territories is not None:
            ratio = axis_ratios(territories)
        else:
            ratio = own_ratio if own_ratio is not None else np.ones(1)
        features = cell_features_from_pixels(
            nucleus_labels,
            np.asarray(lacunae)[nucleus_rows, nucleus_cols] if lacunae is not None else np.zeros(nucleus_labels.size, np.int64),
            int(nucleus_labels.max()) + 1 if nucleus_labels.size else 1,
            lacuna_pixels,
            ratio,
            rounded_min_axis_ratio=cartilage.rounded_min_axis_ratio,
        )
        lac_rows, lac_cols, lac_labels = lacuna_pixels
        lacuna_pellet = _majority(lac_labels, pellets[lac_rows, lac_cols]) if lac_labels.size else {}
    # one pellet (the pipeline measures each alone): its box from row and column projections, no label-sized copy
    objects = ndi.find_objects(pellets) if ids.size > 1 else {int(ids[0]) - 1: _nonzero_box(pellets)}
    rows = []
    for pid in ids.tolist():
        sl = objects[pid - 1]
        mask = pellets[sl] == pid
        n_px = int(np.count_nonzero(mask))
        cls = classes[sl][mask]
        # centroid from the row and column sums (integer sums: the same numbers as the mean of the pixels' indices)
        row_counts, col_counts = np.count_nonzero(mask, axis=1), np.count_nonzero(mask, axis=0)
        centroid_row = float(np.dot(np.arange(row_counts.size, dtype=np.int64), row_counts)) / n_px
        centroid_col = float(np.dot(np.arange(col_counts.size, dtype=np.int64), col_counts)) / n_px
        circ = polygon_circularity(outline_polygon(mask))
        # the three classes counted: a bincount would first widen every pixel's code to 64 bits
        pg = cls == CLASS_CODES["proteoglycan"]
        n_pg = int(np.count_nonzero(pg))
        n_collagen = int(np.count_nonzero(cls == CLASS_CODES["collagen"]))
        n_iron = int(np.count_nonzero(cls == CLASS_CODES["iron"]))
        pellet_nuclei = [n for n, p in nucleus_pellet.items() if p == pid]
        n_nuclei = len(pellet_nuclei)
        area_um2 = n_px * px_area_um2
        positive = sum(1 for n in pellet_nuclei if nucleus_positive.get(n, False))
        depth_map_um = depth_map(mask, pixel_size_um=pixel_size_um)
        depth_um = depth_map_um[mask]
        core = depth_um > rim_width_um
        n_core = int(np.count_nonzero(core))
        n_pg_core = int(np.count_nonzero(pg & core))
        nn_um, roundness = _nuclei_spacing_and_roundness([shapes[n] for n in pellet_nuclei], pixel_size_um)
        # the proteoglycan OD is read only from here on: all above needs the labels alone (see ``proteoglycan_od``)
        proteoglycan_od = _resolved(proteoglycan_od)
        mean_od = sd_od = 0.0
        pg_values = None
        if proteoglycan_od is not None:
            pg_values = np.asarray(proteoglycan_od)[sl][mask][pg].astype(np.float64)
            if n_pg:
                mean_od, sd_od = float(pg_values.mean()), float(pg_values.std())
        rows.append(
            {
                "pellet_id": int(pid),
                "area_um2": area_um2,
                "centroid_row_px": centroid_row + sl[0].start,
                "centroid_col_px": centroid_col + sl[1].start,
                "circularity": float(circ),
                "proteoglycan_area_fraction": _safe_fraction(n_pg, n_px),
                "proteoglycan_mean_od": mean_od,
                "collagen_area_fraction": _safe_fraction(n_collagen, n_px),
                "nuclei_count": int(n_nuclei),
                "nuclei_density_per_mm2": _safe_fraction(n_nuclei, area_um2 / 1e6),
                "iron_area_fraction": _safe_fraction(n_iron, n_px),
                "iron_granule_count": int(sum(1 for p in granule_pellet.values() if p == pid)),
                "iron_positive_cell_fraction": _safe_fraction(positive, n_nuclei),
                "proteoglycan_od_sd": sd_od,
                "nuclei_nn_distance_um": nn_um,
                "nuclei_roundness": roundness,
                "proteoglycan_core_fraction": _safe_fraction(n_pg_core, n_core),
                "proteoglycan_rim_fraction": _safe_fraction(n_pg - n_pg_core, n_px - n_core),
            }
        )
        if cartilage is None:
            rows[-1].update({c: float("nan") for c in CARTILAGE_COLUMNS}, depth_profile=[])
            continue
        cells = np.asarray([(n, shapes[n][0] - sl[0].start, shapes[n][1] - sl[1].start) for n in pellet_nuclei], np.float64)
        extra, profile = pellet_cartilage(
            mask,
            depth_map_um,
            classes[sl] == CLASS_CODES["proteoglycan"],
            None if proteoglycan_od is None else np.asarray(proteoglycan_od)[sl],
            cells,
            np.asarray([k for k, p in lacuna_pellet.items() if p == pid], np.int64),
            _shifted(features, sl),
            pixel_size_um=pixel_size_um,
            rim_width_um=rim_width_um,
            params=cartilage,
            inside=(depth_um, pg, pg_values),  # the pellet's pixels as selected above, not again
        )
        rows[-1].update(extra, depth_profile=profile)
    return rows


def _resolved(value):
    """``value``, or its result when it is a :class:`concurrent.futures.Future` (waited for)."""
    return value.result() if isinstance(value, Future) else value


def depth_map(mask, *, pixel_size_um: float) -> np.ndarray:
    """Distance (µm) of every pixel of ``mask`` to the nearest pixel outside it (the image's edge counts as outside).

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, cols)
    pixel_size_um : float, keyword-only

    Returns
    -------
    ndarray of float32
        The exact Euclidean distance between pixel centres (OpenCV's, float32),
        times the pixel size; 0 outside ``mask``. NumPy's promotion decides
        the product's type: float32 for a Python float, float64 for a NumPy
        float64 pixel size.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1).view(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1] * pixel_size_um


def _nonzero_box(labels) -> tuple:
    """The bounding box (pair of slices) of the nonzero pixels of ``labels`` (at least one)."""
    present = labels != 0
    rows, cols = np.flatnonzero(present.any(axis=1)), np.flatnonzero(present.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _shifted(features, sl):
    """``features`` with the lacuna centroids in the coordinates of the box ``sl``."""
    from dataclasses import replace

    return replace(features, lacuna_row=features.lacuna_row - sl[0].start, lacuna_col=features.lacuna_col - sl[1].start)
