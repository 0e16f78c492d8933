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
``lacuna_reach_um``) when that halo is ringed mostly by stained matrix and is
*empty*: its clearest pixels absorb little in every colour channel against
the stained matrix around them (a yellow cytoplasm in blue matrix is clear
in its largest channel, not in all) and little in total against the tissue
around them (unstained matrix beside a dark capsule is pale against the
capsule, not against the tissue it lies in). Its label holds the halo and
the nucleus (the cavity with its cell). Touching halos make one lacuna;
several nuclei in one lacuna make a chondron.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from .filters import gaussian
from .morphology import _disk
from .params import CartilageParams
from .territories import cell_territories

__all__ = ["local_level", "local_levels", "open_and_clear", "emptiness", "lacunae_from_clear", "find_lacunae", "nucleus_lacuna", "lacuna_by_majority"]


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


def local_levels(values, weights, *, sigma_px: float, at=None) -> list:
    """:func:`local_level` of each array of ``values`` over the same ``weights``, the weights blurred once.

    Parameters
    ----------
    values : sequence of ndarray of float, each shape (rows, cols)
    weights : ndarray of float, shape (rows, cols)
    sigma_px : float, keyword-only
        Reach of the level (Gaussian sigma, px).
    at : ndarray of int, optional, keyword-only
        Flat indices of the pixels wanted.

    Returns
    -------
    list of ndarray of float32
        One level per array of ``values``: full size, or, given ``at``, a
        1-D array of those pixels' levels (not brought back to full size).
    """
    w = np.asarray(weights, dtype=np.float32)
    # a level of many pixels' reach is smooth: blurred on a copy reduced by a quarter of sigma, then
    # brought back by linear interpolation (a wide kernel at full resolution costs its width per pixel)
    factor = max(1, int(sigma_px // 4))
    reduced = factor > 1 and min(w.shape) > 2 * factor
    small = (max(1, w.shape[1] // factor), max(1, w.shape[0] // factor))
    sample = None
    if at is not None and reduced:
        sample = _bilinear_sampler(w.shape, small[::-1], np.asarray(at))

    def blurred(a):
        if not reduced:
            out = gaussian(a, sigma_px)
            return out if at is None else out.ravel()[at]
        low = gaussian(cv2.resize(a, small, interpolation=cv2.INTER_AREA), sigma_px / factor)
        if sample is not None:
            return sample(low)
        return cv2.resize(low, w.shape[::-1], interpolation=cv2.INTER_LINEAR)

    den = blurred(w.copy())
    levels = []
    for v in values:
        out = np.zeros(den.shape, np.float32)
        np.divide(blurred(np.asarray(v, dtype=np.float32) * w), den, out=out, where=den > 1e-6)
        levels.append(out)
    return levels


def _bilinear_sampler(shape, small_shape, flat_index):
    """A function giving a reduced image's values at full-size pixels ``flat_index``, interpolated as ``cv2.resize`` (INTER_LINEAR) does."""
    rows, cols = np.divmod(flat_index.astype(np.int64), shape[1])
    weights, corners = [], []
    for pos, full, low in ((rows, shape[0], small_shape[0]), (cols, shape[1], small_shape[1])):
        x = np.clip((pos + 0.5) * (low / full) - 0.5, 0, low - 1).astype(np.float32)
        x0 = np.minimum(x.astype(np.int64), low - 1)
        x1 = np.minimum(x0 + 1, low - 1)
        weights.append(x - x0)
        corners.append((x0, x1))
    (r0, r1), (c0, c1) = corners
    wr, wc = weights

    def sample(low):
        top = low[r0, c0] * (1 - wc) + low[r0, c1] * wc
        bottom = low[r1, c0] * (1 - wc) + low[r1, c1] * wc
        return (top * (1 - wr) + bottom * wr).astype(np.float32)

    return sample


def open_and_clear(od, matrix_od, inside, nuclei, *, pixel_size_um: float, params: CartilageParams):
    """The pellet's open (non-matrix) and clear pixels, each judged against the stained matrix around it.

    Parameters
    ----------
    od : ndarray of float, shape (rows, cols, channels)
        Optical density of each colour channel.
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
    empty : ndarray of float32
        :func:`emptiness` of the clear pixels (inf elsewhere).
    """
    inside = np.asarray(inside, dtype=bool)
    tissue = inside & (np.asarray(nuclei) == 0)
    matrix_od = np.maximum(np.asarray(matrix_od, dtype=np.float32), 0)
    od = np.asarray(od, dtype=np.float32)
    if od.ndim != 3 or od.shape[:2] != inside.shape:
        raise ValueError(f"od must be (rows, cols, channels) over the {inside.shape} pixels of inside, got shape {od.shape}")
    # the channels as planes (a reduction over a short last axis is slow in NumPy)
    channels = list(cv2.split(od)) if od.shape[-1] <= 4 else [np.ascontiguousarray(od[..., k]) for k in range(od.shape[-1])]
    channel_max_od, total_od = channels[0].copy(), channels[0].copy()
    for ch in channels[1:]:
        np.maximum(channel_max_od, ch, out=channel_max_od)
        total_od += ch
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
    # the levels emptiness is read against, only where it is read
    sel = np.flatnonzero(clear)
    channel_levels = local_levels(channels, stained, sigma_px=sigma_px, at=sel)
    (tissue_level,) = local_levels([total_od], tissue, sigma_px=sigma_px, at=sel)
    empty = np.full(clear.shape, np.inf, np.float32)
    empty.ravel()[sel] = emptiness(
        np.stack([ch.ravel()[sel] for ch in channels], axis=-1), np.stack(channel_levels, axis=-1), tissue_level, params=params
    )
    return open_, clear, tissue & ~pale, empty


def emptiness(od, channel_levels, tissue_level, *, params: CartilageParams) -> np.ndarray:
    """How far from empty pixels are: 1 at the larger of the two limits a lacuna's clearest pixels must stay below, float32.

    The larger of (a) the largest over the colour channels of the pixel's OD
    over the stained matrix's level in the same channel (each level at least
    ``params.channel_floor_fraction`` of the strongest), over
    ``params.lacuna_max_channel_ratio``, and (b) its total absorbance over the
    tissue's around it, over ``params.lacuna_max_absorbance_ratio``. Below 1
    a pixel absorbs little in every channel against the matrix and little in
    all against its tissue: a cavity, where a yellow cytoplasm fails (a) in
    blue matrix and unstained matrix beside a dark capsule fails (b).

    Parameters
    ----------
    od : ndarray of float, shape (..., channels)
        Each colour channel's optical density of the pixels judged.
    channel_levels : ndarray of float, shape (..., channels)
        Local level of each channel's OD in the stained matrix.
    tissue_level : ndarray of float, shape (...)
        Local level of the total absorbance in the tissue.
    params : CartilageParams, keyword-only

    Returns
    -------
    ndarray of float32, shape (...)
        inf where no tissue lies within reach.
    """
    od = np.asarray(od, dtype=np.float32)
    levels = np.asarray(channel_levels, dtype=np.float32)
    levels = np.maximum(levels, params.channel_floor_fraction * levels.max(axis=-1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        channel = np.where(levels > 1e-6, od / levels, np.inf).max(axis=-1)
        tissue_level = np.asarray(tissue_level, dtype=np.float32)
        total = np.where(tissue_level > 1e-6, od.sum(axis=-1) / tissue_level, np.inf)
    return np.maximum(channel / params.lacuna_max_channel_ratio, total / params.lacuna_max_absorbance_ratio).astype(np.float32)


def _outer_ring(labels, width_px: int) -> np.ndarray:
    """Each pixel within ``width_px`` outside a labelled object, labelled with the (largest) object it borders; 0 elsewhere."""
    labels = np.asarray(labels)
    disk = _disk(int(width_px))
    if labels.max(initial=0) < 2**24:  # float32 holds the labels exactly: OpenCV's dilation, the same maximum, many times faster
        grown = cv2.dilate(labels.astype(np.float32), disk.astype(np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(labels.dtype)
    else:
        grown = ndi.maximum_filter(labels, footprint=disk.astype(bool), mode="constant", cval=0)
    return np.where(labels == 0, grown, 0)


def _solidity(labels, n: int, which=None) -> np.ndarray:
    """Per label (index), its area over the area of its pixels' convex hull (1 for a convex object; 0 for label 0).

    ``which``: bool per label, the labels to measure (the others get 0); all when None.
    """
    out = np.zeros(n)
    area = np.bincount(labels.ravel(), minlength=n)
    corner = np.array([[0, 0], [1, 0], [0, 1], [1, 1]]).reshape(1, 4, 2)
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or (which is not None and not which[k]):
            continue
        obj = (labels[box] == k).view(np.uint8)
        # the hull of the pixels' corners (each pixel a unit square), as skimage's convex_hull_image: only the
        # outline's pixels can hold its corners, and of a straight run only its ends
        contours, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        points = np.concatenate(contours).reshape(-1, 1, 2)
        hull = cv2.convexHull((points + corner).reshape(-1, 2).astype(np.float32))
        out[k] = min(1.0, float(area[k]) / max(cv2.contourArea(hull), 1.0))
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


def lacunae_from_clear(clear, nuclei, stained, *, pixel_size_um: float, params: CartilageParams, empty=None) -> np.ndarray:
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
    empty : ndarray of float, shape (rows, cols), optional, keyword-only
        :func:`emptiness` of the clear pixels. Given, a lacuna's
        ``params.lacuna_clear_quantile`` quantile of it over its clear
        pixels must be below 1 (its clearest part empty); None: no such
        test (the generator's exact halos).

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
        are clear and ringed by stain too, but ragged). A group of touching
        halos that is not compact, and whose clear area lies in that range, is
        cut into its cells' own halos, each a lacuna when its solidity
        reaches ``split_min_solidity`` (a larger ragged group is dropped whole).
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
    area_um2, solidity = _area_and_solidity(comps, clear & cavity, n_comp, pixel_size_um=pixel_size_um)
    compact = solidity >= params.lacuna_min_solidity
    split = (area_um2 >= params.lacuna_min_area_um2) & (area_um2 <= params.lacuna_max_area_um2) & ~compact
    split[0] = False
    if split.any():
        # a ragged group of touching halos is no lacuna as a whole, but each cell's own halo (its nucleus and the
        # clear pixels it reached first) may be one: two crowded lacunae whose blurred wall reads clear, or a
        # cell beside a lacuna that took part of it, would otherwise cost both
        cells = np.where(nuclei != 0, nid, halos)
        comps = np.where(split[comps], n_comp + cells, comps).astype(np.int64)
        area_um2, cut = _area_and_solidity(comps, clear & cavity, n_comp + n, pixel_size_um=pixel_size_um, which=np.arange(n_comp + n) >= n_comp)
        # a halo cut from a group must be rounder than a lacuna on its own: a fibrous capsule's network of clear
        # gaps cut at its cells leaves pieces that are compact enough, but not round
        compact = np.concatenate([compact & ~split, cut[n_comp:] >= params.split_min_solidity])
        n_comp += n
    keep = (area_um2 >= params.lacuna_min_area_um2) & (area_um2 <= params.lacuna_max_area_um2) & compact
    keep[0] = False
    if empty is not None:
        keep &= _quantile_by_label(comps, np.asarray(empty, np.float32), clear & cavity, n_comp, params.lacuna_clear_quantile) < 1
    return _relabel_raster(np.where(keep[comps], comps, 0))


def _area_and_solidity(labels, clear, n: int, *, pixel_size_um: float, which=None):
    """Per label (index, 0..n-1): its clear area (µm², pixels of ``clear``) and its solidity (of the labels ``which``, :func:`_solidity`)."""
    area_um2 = np.bincount(labels[clear], minlength=n) * float(pixel_size_um) ** 2
    return area_um2, _solidity(labels, n, which)


def _quantile_by_label(labels, values, where, n: int, q: float) -> np.ndarray:
    """Per label (index, 0..n-1), the ``q`` quantile (lower value) of ``values`` over its pixels in ``where``; inf for a label with none."""
    out = np.full(n, np.inf)
    lab = labels[where].astype(np.int64)
    if lab.size == 0:
        return out
    val = values[where].astype(np.float64)
    order = np.lexsort((val, lab))
    lab, val = lab[order], val[order]
    count = np.bincount(lab, minlength=n)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    has = count > 0
    out[has] = val[start[has] + np.floor(q * (count[has] - 1)).astype(np.int64)]
    return out


def find_lacunae(od, matrix_od, inside, nuclei, *, pixel_size_um: float, params: CartilageParams):
    """Lacunae and open (non-matrix) pixels of one pellet from its optical density and matrix stain.

    :func:`open_and_clear`, then :func:`lacunae_from_clear` with the stained
    matrix (inside, no nucleus, not open) as what must ring a lacuna and the
    clear pixels' :func:`emptiness`; the parameters are :func:`open_and_clear`'s
    (``od`` each colour channel's optical density).

    Returns
    -------
    lacunae : ndarray of uint32
    open_ : ndarray of bool
        Open pixels and the lacunae: where cell territories may grow.
    """
    inside = np.asarray(inside, dtype=bool)
    open_, clear, stained, empty = open_and_clear(od, matrix_od, inside, nuclei, pixel_size_um=pixel_size_um, params=params)
    lacunae = lacunae_from_clear(clear, nuclei, stained, pixel_size_um=pixel_size_um, params=params, empty=empty)
    return lacunae, open_ | ((lacunae != 0) & (np.asarray(nuclei) == 0))


def nucleus_lacuna(nuclei, lacunae) -> np.ndarray:
    """Per nucleus id (index), the lacuna holding most of its pixels (0: none), int64."""
    nuclei = np.asarray(nuclei)
    n = int(nuclei.max()) + 1 if nuclei.size else 1
    sel = nuclei != 0
    return lacuna_by_majority(nuclei[sel].astype(np.int64), np.asarray(lacunae)[sel], n)


def lacuna_by_majority(nid, lid, n: int) -> np.ndarray:
    """:func:`nucleus_lacuna` from the nuclei's pixels: their nucleus ids ``nid`` (int64, non-zero) and lacuna ids ``lid``; ``n`` ids (0..n-1)."""
    out = np.zeros(n, np.int64)
    if not nid.size:
        return out
    lid = np.asarray(lid).astype(np.int64)
    size = np.bincount(nid, minlength=n)
    inl = lid != 0
    if not inl.any():
        return out
    pairs, counts = np.unique(nid[inl] * (int(lid.max()) + 1) + lid[inl], return_counts=True)
    p_nid, p_lid = pairs // (int(lid.max()) + 1), pairs % (int(lid.max()) + 1)
    majority = counts * 2 > size[p_nid]
    out[p_nid[majority]] = p_lid[majority]
    return out
