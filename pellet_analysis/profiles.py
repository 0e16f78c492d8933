"""Cartilage morphology per pellet and per depth band: lacunae, rounded cells, proteoglycan from the surface inward.

:func:`cell_features` reads, once per image, each nucleus's lacuna and its
territory's roundness and each lacuna's size and cells;
:func:`pellet_cartilage` gives one pellet's columns (:data:`CARTILAGE_COLUMNS`)
and its depth profile: bands ``profile_band_um`` wide from the pellet's
surface inward (:data:`PROFILE_COLUMNS`), and the stain's uniformity as the
coefficient of variation of the proteoglycan area fraction over those bands
and over a grid of square patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lacunae import lacuna_by_majority
from .params import CartilageParams
from .territories import axis_ratios

__all__ = ["CARTILAGE_COLUMNS", "PROFILE_COLUMNS", "CellFeatures", "cell_features", "cell_features_from_pixels", "nonzero_pixels", "pellet_cartilage", "band_index", "coefficient_of_variation"]

#: Per-pellet columns of the cartilage morphology, in output order.
CARTILAGE_COLUMNS = [
    "lacuna_count",
    "lacuna_cell_fraction",
    "lacuna_mean_area_um2",
    "chondron_count",
    "rounded_cell_fraction",
    "rounded_cell_fraction_core",
    "rounded_cell_fraction_rim",
    "lacuna_density_core_per_mm2",
    "lacuna_density_rim_per_mm2",
    "stain_band_cv",
    "stain_patch_cv",
]

#: Columns of one depth band of profiles.csv (after image, pellet and study columns).
PROFILE_COLUMNS = [
    "band",
    "depth_from_um",
    "depth_to_um",
    "area_um2",
    "proteoglycan_area_fraction",
    "proteoglycan_mean_od",
    "nuclei_count",
    "nuclei_density_per_mm2",
    "rounded_cell_fraction",
    "lacuna_count",
    "lacuna_cell_fraction",
]


@dataclass(frozen=True)
class CellFeatures:
    """Per nucleus id (index): its lacuna (0 none) and whether its territory is rounded; per lacuna id: centroid, area (px) and cells."""

    host: np.ndarray  # int64
    rounded: np.ndarray  # bool
    lacuna_row: np.ndarray  # float64
    lacuna_col: np.ndarray  # float64
    lacuna_area_px: np.ndarray  # int64
    lacuna_cells: np.ndarray  # int64


def cell_features(nuclei, lacunae, territories, *, rounded_min_axis_ratio: float) -> CellFeatures:
    """Each nucleus's lacuna (the one under most of its pixels) and roundness, and each lacuna's centroid, area and cells.

    Parameters
    ----------
    nuclei : ndarray of int, shape (rows, cols)
    lacunae : ndarray of int, shape (rows, cols), or None (no lacunae)
    territories : ndarray of int, shape (rows, cols), or None (the nuclei themselves)
        Labels carrying the nucleus ids.
    rounded_min_axis_ratio : float, keyword-only
    """
    nuclei = np.asarray(nuclei)
    n = int(nuclei.max()) + 1 if nuclei.size else 1
    lacunae = np.zeros(nuclei.shape, np.uint32) if lacunae is None else np.asarray(lacunae)
    territories = nuclei if territories is None else np.asarray(territories)
    sel = nuclei != 0
    return cell_features_from_pixels(
        nuclei[sel].astype(np.int64), lacunae[sel], n, nonzero_pixels(lacunae), axis_ratios(territories), rounded_min_axis_ratio=rounded_min_axis_ratio
    )


def nonzero_pixels(labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows, columns and labels (int64) of a label image's non-zero pixels, in row-major order."""
    labels = np.asarray(labels)
    rr, cc = np.nonzero(labels)
    return rr, cc, labels[rr, cc].astype(np.int64)


def cell_features_from_pixels(nucleus_ids, nucleus_lacunae, n: int, lacuna_pixels, ratio, *, rounded_min_axis_ratio: float) -> CellFeatures:
    """:func:`cell_features` from pixels a caller has already found (its label images are then not read again).

    Parameters
    ----------
    nucleus_ids : ndarray of int64
        Nucleus id of each nucleus pixel (non-zero).
    nucleus_lacunae : ndarray of int
        Lacuna id under each of those pixels (0 none).
    n : int
        Number of nucleus ids (the largest plus one).
    lacuna_pixels : tuple of ndarray
        Rows, columns and lacuna ids (int64) of the lacunae's pixels (:func:`nonzero_pixels`).
    ratio : ndarray of float64
        Per nucleus id, its territory's minor/major axis ratio.
    rounded_min_axis_ratio : float, keyword-only
    """
    host = lacuna_by_majority(nucleus_ids, nucleus_lacunae, n)
    rounded = np.ones(n, bool)
    m = min(n, ratio.size)
    rounded[:m] = ratio[:m] >= rounded_min_axis_ratio
    rr, cc, lab = lacuna_pixels
    n_lac = int(lab.max()) + 1 if lab.size else 1
    area = np.bincount(lab, minlength=n_lac)
    safe = np.maximum(area, 1)
    cells = np.bincount(host[host > 0], minlength=n_lac)
    return CellFeatures(
        host=host,
        rounded=rounded,
        lacuna_row=np.bincount(lab, weights=rr, minlength=n_lac) / safe,
        lacuna_col=np.bincount(lab, weights=cc, minlength=n_lac) / safe,
        lacuna_area_px=area,
        lacuna_cells=cells,
    )


def band_index(depth_um, band_um: float) -> np.ndarray:
    """The depth band (0 at the surface) of each depth (µm), int64: ``floor(depth / band_um)`` in float64.

    A float32 depth (a distance map's) is not widened to float64: its band is
    found by comparison with each band's first float32 depth (the least whose
    float64 quotient reaches it), which gives the float64 quotient's floor
    exactly, since that quotient never decreases as the depth grows.
    """
    depth = np.asarray(depth_um)
    band_um = float(band_um)
    if depth.dtype != np.float32 or depth.size == 0:
        return np.floor(np.asarray(depth, dtype=np.float64) / band_um).astype(np.int64)
    lo, hi = (int(np.floor(np.float64(v) / band_um)) if np.isfinite(v) else None for v in (depth.min(), depth.max()))
    # NaN or infinite depths, or more bands than a table of their starts is worth: the quotient's own floor
    if lo is None or hi is None or hi - lo > max(4096, depth.size // 16):
        return np.floor(depth.astype(np.float64) / band_um).astype(np.int64)
    starts = _band_starts(np.arange(lo + 1, hi + 1), band_um)
    out = np.searchsorted(starts, depth, side="right").astype(np.int64, copy=False)
    if lo:
        out += lo
    return out


def _band_starts(bands, band_um: float) -> np.ndarray:
    """For each band k, the least float32 depth ``d`` with ``floor(float64(d) / band_um) >= k`` (float32, ascending)."""
    starts = np.asarray(bands, np.float64) * band_um
    starts = starts.astype(np.float32)
    reached = lambda d: np.floor(d.astype(np.float64) / band_um) >= bands  # noqa: E731
    # float32 rounding of k * band_um lands within a step or two of the start: walk down while still reached, then up until reached
    while True:
        below = np.nextafter(starts, np.float32(-np.inf))
        back = reached(below)
        if not back.any():
            break
        starts = np.where(back, below, starts)
    while True:
        short = ~reached(starts)
        if not short.any():
            break
        starts = np.where(short, np.nextafter(starts, np.float32(np.inf)), starts)
    return starts


def _fraction(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def coefficient_of_variation(values) -> float:
    """Standard deviation over mean of ``values`` (float); NaN with fewer than two values or a mean of 0 or below."""
    values = np.asarray(values, np.float64)
    if values.size < 2 or values.mean() <= 0:
        return float("nan")
    return float(values.std() / values.mean())


def _at(depth_map, rows, cols) -> np.ndarray:
    """Depth (µm) at the pixels nearest to (rows, cols), clipped to the map."""
    r = np.clip(np.rint(rows).astype(np.int64), 0, depth_map.shape[0] - 1)
    c = np.clip(np.rint(cols).astype(np.int64), 0, depth_map.shape[1] - 1)
    return depth_map[r, c]


def pellet_cartilage(
    mask,
    depth_map_um,
    proteoglycan,
    proteoglycan_od,
    cells,
    lacunae,
    features: CellFeatures,
    *,
    pixel_size_um: float,
    rim_width_um: float,
    params: CartilageParams,
    inside=None,
) -> tuple[dict, list[dict]]:
    """One pellet's :data:`CARTILAGE_COLUMNS` and its depth profile (a dict of :data:`PROFILE_COLUMNS` per band).

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, cols)
        The pellet's pixels in its box.
    depth_map_um : ndarray of float, shape (rows, cols)
        Distance (µm) of each pixel to the pellet's edge.
    proteoglycan : ndarray of bool, shape (rows, cols)
        Proteoglycan class.
    proteoglycan_od : ndarray of float, shape (rows, cols), or None
    cells : ndarray of float, shape (n, 3)
        The pellet's nuclei: id, centroid row and column in the pellet's box.
    lacunae : ndarray of int
        The pellet's lacuna ids.
    features : CellFeatures
    pixel_size_um, rim_width_um : float, keyword-only
    params : CartilageParams, keyword-only
    inside : tuple of ndarray, optional, keyword-only
        ``depth_map_um`` and ``proteoglycan`` at the pixels of ``mask``, and
        ``proteoglycan_od`` (or None) at those of them that are proteoglycan
        (row-major order), when the caller has already selected them: they
        are then not selected again.

    Notes
    -----
    ``cells`` is an (n, 3) array: nucleus id, centroid row and column in the box.
    """
    px = float(pixel_size_um)
    band_um = params.profile_band_um
    mask = np.asarray(mask, dtype=bool)
    if inside is None:
        pg_in = np.asarray(proteoglycan, bool)[mask]
        inside = (depth_map_um[mask], pg_in, None if proteoglycan_od is None else np.asarray(proteoglycan_od)[mask][pg_in])
    depth_in, pg_in, pg_od = inside
    band_px = band_index(depth_in, band_um)
    n_bands = int(band_px.max()) + 1 if band_px.size else 0
    area_px = np.bincount(band_px, minlength=n_bands)
    # over the proteoglycan pixels alone (the same sums, in the same order, without the others' zeros)
    band_pg = band_px[pg_in]
    pg_px = np.bincount(band_pg, minlength=n_bands)
    od_sum = np.zeros(n_bands)
    if proteoglycan_od is not None:
        od_sum = np.bincount(band_pg, weights=pg_od, minlength=n_bands)

    cells = np.asarray(cells, np.float64).reshape(-1, 3)
    ids = cells[:, 0].astype(np.int64)
    cell_depth = _at(depth_map_um, cells[:, 1], cells[:, 2])
    cell_band = np.minimum(band_index(cell_depth, band_um), max(n_bands - 1, 0))
    rounded = features.rounded[ids] if ids.size else np.zeros(0, bool)
    in_lacuna = features.host[ids] > 0 if ids.size else np.zeros(0, bool)
    lac = np.asarray(lacunae, np.int64)
    lac_depth = _at(depth_map_um, features.lacuna_row[lac], features.lacuna_col[lac]) if lac.size else np.zeros(0)
    lac_band = np.minimum(band_index(lac_depth, band_um), max(n_bands - 1, 0))

    n_cells = np.bincount(cell_band, minlength=n_bands)
    n_round = np.bincount(cell_band, weights=rounded, minlength=n_bands)
    n_in = np.bincount(cell_band, weights=in_lacuna, minlength=n_bands)
    n_lac = np.bincount(lac_band, minlength=n_bands)
    pg_fraction = _fraction(pg_px, area_px)
    profile = [
        {
            "band": k,
            "depth_from_um": k * band_um,
            "depth_to_um": (k + 1) * band_um,
            "area_um2": float(area_px[k] * px * px),
            "proteoglycan_area_fraction": float(pg_fraction[k]),
            "proteoglycan_mean_od": float(_fraction(od_sum[k], pg_px[k])),
            "nuclei_count": int(n_cells[k]),
            "nuclei_density_per_mm2": float(_fraction(n_cells[k], area_px[k] * px * px / 1e6)),
            "rounded_cell_fraction": float(_fraction(n_round[k], n_cells[k])),
            "lacuna_count": int(n_lac[k]),
            "lacuna_cell_fraction": float(_fraction(n_in[k], n_cells[k])),
        }
        for k in range(n_bands)
    ]

    core_cell = cell_depth > rim_width_um
    n_core = int(np.count_nonzero(depth_in > rim_width_um))  # depths are never NaN: the rest is the rim
    core_area_mm2 = float(n_core) * px * px / 1e6
    rim_area_mm2 = float(depth_in.size - n_core) * px * px / 1e6
    core_lac = lac_depth > rim_width_um
    row = {
        "lacuna_count": int(lac.size),
        "lacuna_cell_fraction": float(_fraction(in_lacuna.sum(), ids.size)),
        "lacuna_mean_area_um2": float(features.lacuna_area_px[lac].mean() * px * px) if lac.size else 0.0,
        "chondron_count": int((features.lacuna_cells[lac] >= 2).sum()) if lac.size else 0,
        "rounded_cell_fraction": float(_fraction(rounded.sum(), ids.size)),
        "rounded_cell_fraction_core": float(_fraction(rounded[core_cell].sum(), core_cell.sum())),
        "rounded_cell_fraction_rim": float(_fraction(rounded[~core_cell].sum(), (~core_cell).sum())),
        "lacuna_density_core_per_mm2": float(_fraction(core_lac.sum(), core_area_mm2)),
        "lacuna_density_rim_per_mm2": float(_fraction((~core_lac).sum(), rim_area_mm2)),
        "stain_band_cv": coefficient_of_variation(pg_fraction[area_px > 0]),
        "stain_patch_cv": coefficient_of_variation(_patch_fractions(mask, proteoglycan, max(1, int(round(params.uniformity_patch_um / px))))),
    }
    return row, profile


def _patch_fractions(mask, proteoglycan, patch_px: int, *, min_inside: float = 0.9) -> np.ndarray:
    """Proteoglycan area fraction of each square patch of a grid (``patch_px`` side) at least ``min_inside`` inside the pellet."""
    rows, cols = mask.shape
    nr, nc = rows // patch_px, cols // patch_px
    if nr == 0 or nc == 0:
        return np.zeros(0)
    # the grid centred on the box, so the patches left out at its edges are shared evenly
    r0, c0 = (rows - nr * patch_px) // 2, (cols - nc * patch_px) // 2
    crop = (slice(r0, r0 + nr * patch_px), slice(c0, c0 + nc * patch_px))
    inside = mask[crop].reshape(nr, patch_px, nc, patch_px).sum(axis=(1, 3))
    pg = (np.asarray(proteoglycan, bool) & mask)[crop].reshape(nr, patch_px, nc, patch_px).sum(axis=(1, 3))
    keep = inside >= min_inside * patch_px * patch_px
    return (pg[keep] / inside[keep]).astype(np.float64)
