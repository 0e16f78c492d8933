"""Lacunae: clear halos around nuclei inside stained matrix, relative to each section's own stain.

A chondrocyte sits in a lacuna, a cavity of the matrix that the section shows
as a clear (unstained) halo around the cell. Whether a pixel is clear is read
against the stained matrix around it, never against an absolute OD: a pixel
is *open* (not matrix: cytoplasm or lacuna) when its matrix stain is below
``open_fraction`` of the local matrix level, and *clear* when, in addition,
its optical density in every colour channel (their largest) is below
``clear_fraction`` of the local level of the stained matrix's: colourless,
where a counterstained cytoplasm absorbs strongly in one channel. The local levels are Gaussian-weighted
means over the stained matrix within ``neighbourhood_um``, so a pale zone and
a dark one are each judged against themselves.

A lacuna is the clear halo a nucleus reaches (through clear pixels, within
``lacuna_reach_um``) when that halo is ringed mostly by stained matrix; its
label holds the halo and the nucleus (the cavity with its cell). Touching
halos make one lacuna; several nuclei in one lacuna make a chondron.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from .filters import gaussian
from .morphology import _disk
from .params import CartilageParams
from .territories import cell_territories

__all__ = ["local_level", "local_levels", "open_and_clear", "lacunae_from_clear", "find_lacunae", "nucleus_lacuna"]


def local_level(values, weights, *, sigma_px: float) -> np.ndarray:
    """Gaussian-weighted mean of ``values`` over the pixels of ``weights`` (normalised convolution), float32.

    Parameters
    ----------
    values : ndarray of float, shape (rows, cols)
    weights : ndarray of bool or float, shape (rows, cols)
    sigma_px : float
        Gaussian sigma (px).

    Returns
    -------
    ndarray of float32
        0 where no weight lies within reach.
    """
    return local_levels([values], weights, sigma_px=sigma_px)[0]


def local_levels(values, weights, *, sigma_px: float) -> list:
    """:func:`local_level` of each array of ``values`` over the same ``weights``, the weights blurred once."""
    w = np.asarray(weights, dtype=np.float32)
    # a level of many pixels' reach is smooth: blurred on a copy reduced by a quarter of sigma, then
    # brought back by linear interpolation (a wide kernel at full resolution costs its width per pixel)
    factor = max(1, int(sigma_px // 4))
    reduced = factor > 1 and min(w.shape) > 2 * factor
    small = (max(1, w.shape[1] // factor), max(1, w.shape[0] // factor))

    def blurred(a):
        if not reduced:
            return gaussian(a, sigma_px)
        return cv2.resize(gaussian(cv2.resize(a, small, interpolation=cv2.INTER_AREA), sigma_px / factor), w.shape[::-1], interpolation=cv2.INTER_LINEAR)

    den = blurred(w.copy())
    levels = []
    for v in values:
        out = np.zeros(w.shape, np.float32)
        np.divide(blurred(np.asarray(v, dtype=np.float32) * w), den, out=out, where=den > 1e-6)
        levels.append(out)
    return levels


def open_and_clear(channel_max_od, matrix_od, inside, nuclei, *, pixel_size_um: float, params: CartilageParams):
    """The pellet's open (non-matrix) and clear pixels, each judged against the stained matrix around it.

    Parameters
    ----------
    channel_max_od : ndarray of float, shape (rows, cols)
        The largest of the colour channels' optical densities.
    matrix_od : ndarray of float, shape (rows, cols)
        Matrix stain concentration: proteoglycan plus collagen (OD).
    inside : ndarray of bool, shape (rows, cols)
    nuclei : ndarray of int, shape (rows, cols)
        Nucleus instances (0 elsewhere).
    pixel_size_um : float, keyword-only
    params : CartilageParams, keyword-only

    Returns
    -------
    open_, clear, stained : ndarray of bool
        ``open_``: matrix stain below ``params.open_fraction`` of the local
        matrix level (cytoplasm or lacuna), where the neighbourhood is
        stained matrix; ``clear``: matrix stain below ``params.pale_fraction``
        and largest channel OD below ``params.clear_fraction`` of their local
        stained-matrix levels; ``stained``: tissue (no nucleus) whose matrix
        stain reaches ``params.pale_fraction`` of the local level.
    """
    inside = np.asarray(inside, dtype=bool)
    tissue = inside & (np.asarray(nuclei) == 0)
    matrix_od = np.maximum(np.asarray(matrix_od, dtype=np.float32), 0)
    channel_max_od = np.asarray(channel_max_od, dtype=np.float32)
    sigma_px = params.neighbourhood_um / float(pixel_size_um)
    first = local_level(matrix_od, tissue, sigma_px=sigma_px)
    stained = tissue & (matrix_od >= params.stained_fraction * first)
    matrix_level, od_level = local_levels([matrix_od, channel_max_od], stained, sigma_px=sigma_px)
    strong = float(np.percentile(matrix_od[tissue], 90)) if tissue.any() else 0.0
    # a cell's outline shows only inside stained matrix: where most of the neighbourhood is stained, and strongly enough
    share = local_level(stained, tissue, sigma_px=params.share_sigma_um / float(pixel_size_um))
    open_ = (
        tissue & (matrix_od < params.open_fraction * matrix_level)
        & (matrix_level >= params.min_level_fraction * strong) & (share >= params.min_stained_share)
    )
    pale = matrix_od < params.pale_fraction * matrix_level
    clear = tissue & pale & (channel_max_od < params.clear_fraction * od_level)
    return open_, clear, tissue & ~pale


def _outer_ring(labels, width_px: int) -> np.ndarray:
    """Each pixel within ``width_px`` outside a labelled object, labelled with the (largest) object it borders; 0 elsewhere."""
    grown = ndi.maximum_filter(labels, footprint=_disk(int(width_px)).astype(bool), mode="constant", cval=0)
    return np.where(labels == 0, grown, 0)


def _solidity(labels, n: int) -> np.ndarray:
    """Per label (index), its area over the area of its pixels' convex hull (1 for a convex object; 0 for label 0)."""
    out = np.zeros(n)
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        obj = (labels[box] == k).view(np.uint8)
        points = cv2.findNonZero(obj)
        # the hull of the pixels' corners (each pixel a unit square), as skimage's convex_hull_image
        corners = (points.reshape(-1, 1, 2) + np.array([[[0, 0]], [[1, 0]], [[0, 1]], [[1, 1]]]).reshape(1, 4, 2)).reshape(-1, 2)
        hull = cv2.convexHull(corners.astype(np.float32))
        out[k] = min(1.0, float(obj.sum()) / max(cv2.contourArea(hull), 1.0))
    return out


def _relabel_raster(labels) -> np.ndarray:
    """Labels renumbered 1..n in the raster order of their first pixel (uint32), 0 kept."""
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    out = np.zeros(labels.shape, np.uint32)
    if nz.size == 0:
        return out
    values, first = np.unique(flat[nz], return_index=True)
    order = np.argsort(first)
    lut = np.zeros(int(values.max()) + 1, np.uint32)
    lut[values[order]] = np.arange(1, values.size + 1, dtype=np.uint32)
    out.ravel()[nz] = lut[flat[nz]]
    return out


def lacunae_from_clear(clear, nuclei, stained, *, pixel_size_um: float, params: CartilageParams) -> np.ndarray:
    """Lacunae (uint32 labels, 1..n in raster order) grown from the nuclei into the clear pixels around them.

    Parameters
    ----------
    clear : ndarray of bool, shape (rows, cols)
        Clear pixels (nuclei are left out).
    nuclei : ndarray of int, shape (rows, cols)
    stained : ndarray of bool, shape (rows, cols)
        Stained matrix: what must ring a lacuna.
    pixel_size_um : float, keyword-only
    params : CartilageParams, keyword-only

    Returns
    -------
    ndarray of uint32
        Each nucleus whose one-pixel ring ``nucleus_gap_um`` past its edge (its
        blurred edge is neither nucleus nor clear) is at least
        ``params.nucleus_contact_fraction`` clear claims that edge and the clear pixels it reaches first, through clear pixels and
        within ``lacuna_reach_um`` (:func:`~pellet_analysis.territories.cell_territories`).
        Its halo is a lacuna's when the ring around it (``lacuna_ring_um``
        wide; nuclei and other cells' halos left out) is at least
        ``lacuna_min_enclosure`` stained matrix: a pale zone of the matrix
        reaches past ``lacuna_reach_um`` and is not enclosed. Touching halos
        make one lacuna (a chondron when it holds several nuclei); a lacuna's
        label holds its halos and nuclei, its clear area (nuclei not
        counted) lies between ``lacuna_min_area_um2`` and ``lacuna_max_area_um2``,
        and it is compact: its solidity (area over convex hull) reaches
        ``lacuna_min_solidity`` (the gaps between a fibrous capsule's fibres
        are clear and ringed by stain too, but ragged).
    """
    nuclei = np.asarray(nuclei)
    clear = np.asarray(clear, dtype=bool) & (nuclei == 0)
    out = np.zeros(clear.shape, np.uint32)
    if not clear.any() or not nuclei.any():
        return out
    n = int(nuclei.max()) + 1
    nid = nuclei.astype(np.int64, copy=False)
    # a nucleus's blurred edge is neither nucleus nor clear: contact is read on the ring just past it
    gap_px = params.nucleus_gap_um / float(pixel_size_um)
    dist, (ir, ic) = ndi.distance_transform_edt(nuclei == 0, return_indices=True)
    nearest = nid[ir, ic]
    del ir, ic
    ring = np.where((dist > gap_px) & (dist <= gap_px + 1.5), nearest, 0)
    ring_size = np.bincount(ring.ravel(), minlength=n)
    ring_clear = np.bincount(ring.ravel(), weights=clear.ravel(), minlength=n)
    touching = ring_clear >= params.nucleus_contact_fraction * np.maximum(ring_size, 1)
    touching[0] = False
    seeds = np.where(touching[nid], nid, 0)
    room = clear | ((dist <= gap_px + 0.5) & touching[nearest] & (nuclei == 0))
    del dist, nearest
    halos = cell_territories(seeds, room, max_distance_px=params.lacuna_reach_um / float(pixel_size_um)).astype(np.int64)
    halos[nuclei != 0] = 0
    # enclosure of each halo: its ring, less nuclei and the other halos
    outer = _outer_ring(halos, max(1, int(round(params.lacuna_ring_um / pixel_size_um))))
    outer[(nuclei != 0) | (halos != 0)] = 0
    ring_all = np.bincount(outer.ravel(), minlength=n)
    ring_stained = np.bincount(outer.ravel(), weights=np.asarray(stained, bool).ravel(), minlength=n)
    enclosure = np.divide(ring_stained, ring_all, out=np.zeros(n), where=ring_all > 0)
    good = touching & (enclosure >= params.lacuna_min_enclosure) & (np.bincount(halos.ravel(), minlength=n) > 0)
    cavity = (good[halos] & (halos != 0)) | (good[nid] & (nuclei != 0))
    n_comp, comps = cv2.connectedComponents(cavity.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n_comp <= 1:
        return out
    area_um2 = np.bincount(comps[clear & cavity], minlength=n_comp) * float(pixel_size_um) ** 2
    keep = (area_um2 >= params.lacuna_min_area_um2) & (area_um2 <= params.lacuna_max_area_um2)
    keep[0] = False
    keep &= _solidity(comps, n_comp) >= params.lacuna_min_solidity
    return _relabel_raster(np.where(keep[comps], comps, 0))


def find_lacunae(channel_max_od, matrix_od, inside, nuclei, *, pixel_size_um: float, params: CartilageParams):
    """Lacunae and open (non-matrix) pixels of one pellet from its optical density and matrix stain.

    :func:`open_and_clear`, then :func:`lacunae_from_clear` with the stained
    matrix (inside, no nucleus, not open) as what must ring a lacuna.

    Returns
    -------
    lacunae : ndarray of uint32
    open_ : ndarray of bool
        Open pixels and the lacunae: where cell territories may grow.
    """
    inside = np.asarray(inside, dtype=bool)
    open_, clear, stained = open_and_clear(channel_max_od, matrix_od, inside, nuclei, pixel_size_um=pixel_size_um, params=params)
    lacunae = lacunae_from_clear(clear, nuclei, stained, pixel_size_um=pixel_size_um, params=params)
    return lacunae, open_ | ((lacunae != 0) & (np.asarray(nuclei) == 0))


def nucleus_lacuna(nuclei, lacunae) -> np.ndarray:
    """Per nucleus id (index), the lacuna holding most of its pixels (0: none), int64."""
    nuclei = np.asarray(nuclei)
    n = int(nuclei.max()) + 1 if nuclei.size else 1
    out = np.zeros(n, np.int64)
    sel = nuclei != 0
    if not sel.any():
        return out
    nid = nuclei[sel].astype(np.int64)
    lid = np.asarray(lacunae)[sel].astype(np.int64)
    size = np.bincount(nid, minlength=n)
    inl = lid != 0
    if not inl.any():
        return out
    pairs, counts = np.unique(nid[inl] * (int(lid.max()) + 1) + lid[inl], return_counts=True)
    p_nid, p_lid = pairs // (int(lid.max()) + 1), pairs % (int(lid.max()) + 1)
    majority = counts * 2 > size[p_nid]
    out[p_nid[majority]] = p_lid[majority]
    return out
