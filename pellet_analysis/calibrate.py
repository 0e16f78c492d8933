"""The iron granule threshold calibrated on a batch's unlabeled control pellets.

Control pellets hold no iron: every iron-positive cell the detector finds in
them is a false positive. :func:`cell_iron_levels` gives, for each nucleus of
a control pellet, the highest granule threshold (``iron.granule_min_od``, a
threshold on the granule contrast map) at which that cell would still be
iron-positive; the threshold under which at most a given fraction of the
control cells stays positive is then a quantile of those levels
(:func:`threshold_for_fraction`), found without classifying the controls
again for every candidate.
"""

from __future__ import annotations

import math
import cv2
import numpy as np
from scipy import ndimage as ndi

from .morphology import binary_dilation_disk, disk_sequence
from .params import IronParams

__all__ = ["GRANULE_GROWTH_UM", "cell_iron_levels", "threshold_for_fraction", "is_control"]

#: How far (µm) the classifier grows each granule past its threshold to half its own contrast
#: (classify.classify_objects): a granule seed this much beyond ``iron.cell_distance_um`` can
#: still reach a nucleus, so the levels look that much further.
GRANULE_GROWTH_UM = 0.5


def is_control(condition, controls) -> bool:
    """Whether a pellet's condition (from its file name or the sample sheet) names a control; case and spaces ignored."""
    if condition is None or (isinstance(condition, float) and math.isnan(condition)):
        return False
    names = {str(c).strip().lower() for c in controls}
    return str(condition).strip().lower() in names


def _grey_dilation_disk(image, radius_px: int) -> np.ndarray:
    """Grey dilation of a float32 image with a disk of ``radius_px`` (scikit-image's 3 x 3 decomposition, one pixel wider)."""
    out = np.ascontiguousarray(image, dtype=np.float32)
    # the decomposition's near-disk polygon may miss a pixel of the exact disk: one more ring keeps every level an upper bound
    for kernel, repeats in disk_sequence(int(radius_px) + 1):
        out = cv2.dilate(out, kernel, iterations=repeats, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def cell_iron_levels(granule_contrast, inside, nuclei, *, pixel_size_um: float, iron: IronParams) -> np.ndarray:
    """Per nucleus, the highest granule threshold at which its cell would still be iron-positive.

    A cell is iron-positive when an iron pixel lies within
    ``iron.cell_distance_um`` of its nucleus (:func:`~pellet_analysis.measure.measure_pellets`).
    The classifier's iron pixels are granule-contrast pixels above
    ``iron.granule_min_od`` inside the pellet, off the nuclei and their
    blurred rims (``iron.nucleus_gap_um``), grown by up to
    :data:`GRANULE_GROWTH_UM`. The level of a nucleus is the largest contrast
    of such a pixel within the distance plus that growth: with any threshold
    below its level the cell can be positive, at or above it never.
    The granule size limit is ignored, so from the contrast of every
    candidate a level is an upper bound: a threshold chosen from the levels
    leaves at most as many positive cells as they predict. From the
    classified granules only (as the pipeline passes them) it is nearly
    one: the colour and isolation tests judge whole objects, and a granule
    that shrinks at a higher threshold can pass a test it failed before.

    Parameters
    ----------
    granule_contrast : ndarray of float, shape (rows, cols)
        The granule contrast map (``maps[..., 3]`` of
        :func:`~pellet_analysis.classify.pixel_maps`); the pipeline passes it
        on the pixels classified as iron only (0 elsewhere), so that dark
        spots the detector's colour and form tests reject (a control's small
        dark nuclei) do not raise the threshold.
    inside : ndarray of bool, shape (rows, cols)
        The pellet.
    nuclei : ndarray of int, shape (rows, cols)
        Nucleus instances (0 elsewhere), as classified.
    pixel_size_um : float, keyword-only
    iron : IronParams, keyword-only

    Returns
    -------
    ndarray of float64
        One level per nucleus label present, ascending by label; 0 for a
        nucleus with no candidate pixel in reach.
    """
    nuclei = np.asarray(nuclei)
    if nuclei.shape != np.shape(inside) or nuclei.shape != np.shape(granule_contrast):
        raise ValueError("granule_contrast, inside and nuclei must have the same shape")
    if pixel_size_um <= 0:
        raise ValueError("pixel_size_um must be > 0")
    ids = np.unique(nuclei[nuclei > 0])
    if ids.size == 0:
        return np.zeros(0, np.float64)
    nuclear = nuclei > 0
    px = float(pixel_size_um)
    rim = binary_dilation_disk(nuclear, round(iron.nucleus_gap_um / px))
    candidates = np.asarray(inside, bool) & ~rim
    contrast = np.where(candidates, np.asarray(granule_contrast, np.float32), np.float32(0))
    reach_px = int(math.ceil((iron.cell_distance_um + GRANULE_GROWTH_UM) / px))
    reached = _grey_dilation_disk(np.maximum(contrast, 0), reach_px)
    return np.asarray(ndi.maximum(reached, labels=nuclei, index=ids), np.float64)


def threshold_for_fraction(levels, *, max_fraction: float, floor: float) -> float:
    """The lowest granule threshold, at least ``floor``, under which at most ``max_fraction`` of the cells stay iron-positive.

    A cell is positive when its level (:func:`cell_iron_levels`) is above the
    threshold. With ``n`` cells at most ``floor(max_fraction * n)`` may stay
    positive: the threshold is the next-highest level (fewer than 100 cells
    at 1 %: the highest, none positive).

    Parameters
    ----------
    levels : array_like of float
    max_fraction : float, keyword-only
        In [0, 1].
    floor : float, keyword-only
        The configured threshold; calibration only makes it stricter.

    Returns
    -------
    float
    """
    if not 0 <= max_fraction <= 1:
        raise ValueError("max_fraction must be in [0, 1]")
    levels = np.sort(np.asarray(levels, np.float64))[::-1]
    allowed = int(math.floor(max_fraction * levels.size + 1e-9))
    if allowed >= levels.size:
        return float(floor)
    return float(max(floor, levels[allowed]))
