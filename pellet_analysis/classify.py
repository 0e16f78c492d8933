"""Per-pixel classes, nucleus instances and iron granules inside pellets.

Classes (``CLASS_CODES``): proteoglycan and collagen come from colour
deconvolution of the chromatic stains; nuclei and iron from local dark spots.
For ``ab-vg`` (Weigert's iron hematoxylin, near-neutral black) darkness is the
OD of the least-absorbed channel above the surrounding matrix (a white
top-hat); dark objects thick and large enough to be a nucleus are nuclei, the
small ones beside them iron granules. Other presets take nuclei from the
deconvolved nuclear stain."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import disk, h_maxima, remove_small_objects
from skimage.segmentation import expand_labels, watershed

from .config import ClassifyConfig, IronConfig, NucleiConfig
from .filters import smooth_channels
from .measure import CLASS_CODES
from .stains import StainSet, unmix

__all__ = [
    "ClassResult",
    "deconvolution_stains",
    "dark_spots",
    "stain_concentrations",
    "proteoglycan_concentration",
    "half_maximum_threshold",
    "split_nuclei",
    "classify_pixels",
]

_DECONV_ROLES = ("proteoglycan", "collagen", "cytoplasm", "counterstain", "nuclei")


@dataclass
class ClassResult:
    classes: np.ndarray  # uint8 class codes
    nuclei: np.ndarray  # uint32 instances
    proteoglycan_od: np.ndarray  # float32 concentration of the proteoglycan stain (0 where absent)


def deconvolution_stains(stains: StainSet) -> list[str]:
    """The (at most three) stains separated by colour deconvolution, by role priority.

    For sets with a dark near-neutral nuclear stain and iron (``ab-vg``) the
    nuclear stain is left to the darkness test.
    """
    chosen = []
    for role in _DECONV_ROLES:
        stain = stains.roles.get(role)
        if stain is None or stain in chosen:
            continue
        if role == "nuclei" and "iron" in stains.roles:
            continue
        chosen.append(stain)
    return chosen[:3]


def split_nuclei(mask, *, min_radius_px: float) -> np.ndarray:
    """Split a binary nuclei mask into instances by distance-transform watershed.

    Parameters
    ----------
    mask : ndarray of bool
    min_radius_px : float, keyword-only
        Smallest nucleus radius; seeds closer than this merge.

    Returns
    -------
    ndarray of uint32
    """
    if not mask.any():
        return np.zeros(mask.shape, np.uint32)
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    components, n = ndi.label(mask)
    # a seed per distance maximum that stands out by h from the saddle to its neighbour:
    # touching nuclei keep a waist between them, an elongated nucleus does not. Concave
    # objects (solidity below 0.9: a waist) are seeded with a small h, convex ones with a
    # larger h, so ellipses stay whole at fine pixel sizes and touching pairs split at coarse ones.
    eight = np.ones((3, 3), bool)
    fine, _ = ndi.label(h_maxima(dist, 0.3), structure=eight)
    coarse, _ = ndi.label(h_maxima(dist, max(0.5, 0.2 * min_radius_px)), structure=eight)
    concave = np.zeros(n + 1, bool)
    for region in regionprops(components):
        concave[region.label] = region.solidity < 0.9
    use_fine = concave[components]
    markers, n_markers = ndi.label(np.where(use_fine, fine > 0, coarse > 0), structure=eight)
    # every component gets at least one seed
    seeded = np.unique(components[markers > 0])
    missing = np.setdiff1d(np.arange(1, n + 1), seeded)
    if missing.size:
        centres = ndi.maximum_position(dist, components, missing)
        for k, (r, c) in enumerate(centres):
            markers[r, c] = n_markers + 1 + k
    labels = watershed(-dist, markers, mask=mask)
    return labels.astype(np.uint32)


def _compact_objects(mask, *, min_radius_px: float, min_area_px: int):
    """Objects of ``mask`` at least as thick as a nucleus, holes filled.

    An opening with a disk a little smaller than the smallest nucleus removes
    granules and the thin bridges that join them to nuclei; the objects that
    survive with at least ``min_area_px`` pixels are grown back by a pixel
    within ``mask``. Form, not colour, separates nuclei from iron granules:
    JPEG chroma subsampling smears the brown of 1-3 µm granules and the
    yellow of the cytoplasm around nuclei into each other.
    """
    radius = max(1, int(0.4 * min_radius_px))
    opened = ndi.binary_opening(mask, structure=disk(radius))
    opened = remove_small_objects(opened, max_size=max(1, min_area_px - 1))
    objects = mask & ndi.binary_dilation(opened, structure=disk(1))
    objects = ndi.binary_fill_holes(objects)
    return remove_small_objects(objects, max_size=max(1, min_area_px - 1))


def _grow_to_half_maximum(instances, signal, inside, *, distance_px: int):
    """Grow each object by up to ``distance_px`` over pixels at least half its median signal.

    Objects found above a global threshold are cut inside their blurred
    edges; this moves each edge out to the object's own half maximum.
    """
    n = int(instances.max())
    if n == 0:
        return instances
    median = np.zeros(n + 1, np.float32)
    median[1:] = ndi.median(signal, instances, np.arange(1, n + 1))
    grown = expand_labels(instances, distance=distance_px)
    keep = (instances > 0) | (inside & (signal >= 0.5 * median[grown]))
    return np.where(keep, grown, 0).astype(np.uint32)


def _granules(candidates, nuclear, *, gap_px: int, max_area_px: float):
    """Iron granules: small dark objects not on a nucleus's rim.

    Candidates within ``gap_px`` of a nucleus (its blurred edge) and objects
    larger than ``max_area_px`` (matrix overlaps, not granules) are dropped.
    """
    near = ndi.binary_dilation(nuclear, structure=disk(gap_px)) if nuclear.any() and gap_px > 0 else np.zeros_like(nuclear)
    candidates = candidates & ~near
    labels, n = ndi.label(candidates)
    if n == 0:
        return candidates
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes <= max_area_px
    keep[0] = False
    return keep[labels]


def half_maximum_threshold(values, floor: float) -> float:
    """Threshold at half the typical stained level, never below ``floor``.

    The typical level is the median of the values above ``floor``; a stained
    region's edge is placed where its stain falls to half that level, so faint
    (day 7) and intense (day 28) staining are outlined alike.
    """
    values = np.asarray(values)
    stained = values[values > floor]
    if stained.size == 0:
        return float(floor)
    return max(float(floor), 0.5 * float(np.median(stained)))


def dark_spots(od_fine, stains: StainSet, *, pixel_size_um: float, nuclei: NucleiConfig) -> np.ndarray:
    """Local darkness of nuclei and granules above the slowly varying matrix level.

    For ``ab-vg``, Weigert's iron hematoxylin and iron granules absorb in every
    channel while each chromatic stain leaves one channel bright, so the least
    absorbed channel's OD measures darkness without a stain vector; other
    presets use the deconvolved nuclear stain. A white top-hat larger than the
    largest nucleus removes the matrix level (dense Alcian blue, iron haze).
    """
    names = deconvolution_stains(stains)
    if "iron" in stains.roles:
        # channel by channel: numpy's reduction over a last axis of length 3 is several times slower
        signal = np.minimum(np.minimum(od_fine[..., 0], od_fine[..., 1]), od_fine[..., 2])
    else:
        nuc_names = names if stains.roles.get("nuclei") in names else [stains.roles["nuclei"]]
        signal = unmix(od_fine, np.stack([stains.vector(n) for n in nuc_names]))[..., nuc_names.index(stains.roles["nuclei"])]
    radius_px = top_hat_radius_px(pixel_size_um=pixel_size_um, nuclei=nuclei)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.morphologyEx(np.ascontiguousarray(signal, dtype=np.float32), cv2.MORPH_TOPHAT, kernel)


def top_hat_radius_px(*, pixel_size_um: float, nuclei: NucleiConfig) -> int:
    """Radius (px) of the top-hat: half the largest nucleus diameter."""
    return max(1, int(math.ceil(nuclei.max_diameter_um / 2 / pixel_size_um)))


def stain_concentrations(od, spots, stains: StainSet, *, pixel_size_um: float, classify: ClassifyConfig) -> dict:
    """Role -> concentration (OD) of the chromatic stains, by deconvolution.

    For ``ab-vg`` the grey of the dark spots is taken out first, so a nucleus's
    blurred edge does not read as Alcian blue.
    """
    names = deconvolution_stains(stains)
    if not names:
        return {}
    od_chromatic = np.maximum(od - spots[..., None], 0) if "iron" in stains.roles else od
    conc = unmix(smooth_channels(od_chromatic, classify.smoothing_um / pixel_size_um), np.stack([stains.vector(n) for n in names]))
    return {role: conc[..., names.index(stain)] for role, stain in stains.roles.items() if stain in names}


def proteoglycan_concentration(od, stains: StainSet, *, pixel_size_um: float, classify: ClassifyConfig, nuclei: NucleiConfig):
    """The proteoglycan stain's concentration exactly as :func:`classify_pixels` computes it (None without one)."""
    if "proteoglycan" not in stains.roles:
        return None
    spots = dark_spots(smooth_channels(od, 0.4 / pixel_size_um), stains, pixel_size_um=pixel_size_um, nuclei=nuclei)
    return stain_concentrations(od, spots, stains, pixel_size_um=pixel_size_um, classify=classify).get("proteoglycan")


def classify_pixels(
    od,
    pellets,
    stains: StainSet,
    *,
    pixel_size_um: float,
    classify: ClassifyConfig,
    nuclei: NucleiConfig,
    iron: IronConfig,
) -> ClassResult:
    """Classify every pellet pixel and find nuclei and iron granules.

    Parameters
    ----------
    od : ndarray, shape (rows, cols, 3)
        Optical density.
    pellets : ndarray of int, shape (rows, cols)
        Pellet labels; only pixels inside pellets are classified.
    stains : StainSet
    pixel_size_um : float, keyword-only
    classify, nuclei, iron : config sections, keyword-only

    Returns
    -------
    ClassResult
    """
    od = np.asarray(od, dtype=np.float32)
    inside = np.asarray(pellets) > 0
    shape = inside.shape
    px = float(pixel_size_um)
    has_iron = "iron" in stains.roles
    spots = dark_spots(smooth_channels(od, 0.4 / px), stains, pixel_size_um=px, nuclei=nuclei)
    threshold = float(nuclei.dark_min_od)
    values = spots[inside]
    if values.size > 16 and np.ptp(values) > 0:
        threshold = max(threshold, float(threshold_otsu(values)))

    min_r_px = nuclei.min_diameter_um / 2 / px
    min_nucleus_px = max(2, int(math.pi * min_r_px**2 * 0.55))
    nuclear = _compact_objects(inside & (spots > threshold), min_radius_px=min_r_px, min_area_px=min_nucleus_px)
    if has_iron and iron.min_od < threshold:
        # nuclei of low contrast (in the collagen rim, say) are missed at the image's threshold but
        # are still nucleus-sized and thick at the granules' lower one: nuclei, not iron
        faint = _compact_objects(inside & (spots > iron.min_od) & ~nuclear, min_radius_px=min_r_px, min_area_px=min_nucleus_px)
        nuclear |= faint
    instances = _grow_to_half_maximum(
        split_nuclei(nuclear, min_radius_px=min_r_px), spots, inside, distance_px=max(1, round(1.0 / px))
    )
    nuclear = instances > 0
    iron_mask = np.zeros(shape, bool)
    if has_iron:
        iron_mask = _granules(
            inside & (spots > iron.min_od) & ~nuclear,
            nuclear,
            gap_px=round(iron.nucleus_gap_um / px),
            max_area_px=3 * math.pi * (iron.max_granule_diameter_um / 2 / px) ** 2,
        )
        # granules, like nuclei, are cut inside their blurred edges by the threshold: grow each
        # to half its own peak darkness, by up to 1 µm, without entering a nucleus
        granules, _ = ndi.label(iron_mask, structure=np.ones((3, 3), bool))
        grown = _grow_to_half_maximum(granules, spots, inside & ~nuclear, distance_px=max(1, round(1.0 / px)))
        iron_mask = grown > 0

    concentration = stain_concentrations(od, spots, stains, pixel_size_um=px, classify=classify)
    pg_conc = concentration.get("proteoglycan")
    col_conc = concentration.get("collagen")
    classes = np.zeros(shape, np.uint8)
    classes[inside] = CLASS_CODES["other_tissue"]
    if col_conc is not None:
        classes[inside & (col_conc > classify.collagen_min_od)] = CLASS_CODES["collagen"]
    if pg_conc is not None:
        floor = half_maximum_threshold(pg_conc[inside], classify.proteoglycan_min_od)
        classes[inside & (pg_conc > floor)] = CLASS_CODES["proteoglycan"]
    classes[nuclear] = CLASS_CODES["nuclei"]
    classes[iron_mask] = CLASS_CODES["iron"]
    pg_od = np.zeros(shape, np.float32) if pg_conc is None else np.where(inside, pg_conc, 0).astype(np.float32)
    return ClassResult(classes=classes, nuclei=instances, proteoglycan_od=pg_od)
