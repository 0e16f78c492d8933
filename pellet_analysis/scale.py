"""Pixel size from the nuclei, for images that carry none."""

from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.filters import threshold_otsu

from .stains import StainSet, estimate_background, intensity_range, rgb_to_od, unmix

__all__ = ["estimate_pixel_size_um"]


def estimate_pixel_size_um(
    rgb, stains: StainSet, *, typical_nucleus_um: float = 8.0, max_side_px: int = 2048, bounds_um=(0.1, 4.0)
) -> float | None:
    """Estimate µm per pixel by taking the median nucleus to be ``typical_nucleus_um`` across.

    Nuclei are the pixels above Otsu's threshold of the nuclear stain (the
    least-absorbed channel's OD for stain sets with iron, whose nuclear stain
    is near-neutral); their connected objects, opened by a 3 x 3 square and
    at least 12 pixels, give a median equivalent diameter in pixels. Only the
    central ``max_side_px`` square is looked at. Many small dark specks pull
    the median down: iron granules in labeled AB/VG pellets at 0.25 µm per
    pixel made the estimate 0.33 µm.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
    stains : StainSet
        Must have a ``nuclei`` role.
    typical_nucleus_um : float, keyword-only
    max_side_px : int, keyword-only
    bounds_um : (float, float), keyword-only
        Estimates outside are refused.

    Returns
    -------
    float or None
        None when no nuclear stain, too few nuclei, or an estimate out of bounds.
    """
    if "nuclei" not in stains.roles:
        return None
    rows, cols = rgb.shape[:2]
    r0, c0 = max(0, (rows - max_side_px) // 2), max(0, (cols - max_side_px) // 2)
    crop = np.asarray(rgb[r0 : r0 + max_side_px, c0 : c0 + max_side_px])
    background = estimate_background(crop)
    if background.mean() < 0.72 * intensity_range(crop.dtype):
        background = np.full(3, intensity_range(crop.dtype))  # tissue fills the image: full scale, as for the white point
    od = rgb_to_od(crop, background)
    if "iron" in stains.roles:
        signal = np.minimum(np.minimum(od[..., 0], od[..., 1]), od[..., 2])
    else:
        signal = unmix(od, stains.vector(stains.roles["nuclei"])[None, :])[..., 0]
    if not np.isfinite(signal).all() or np.ptp(signal) <= 0:
        return None
    mask = (signal > threshold_otsu(signal)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    areas = areas[areas >= 12]
    if areas.size < 10:
        return None
    diameter_px = 2.0 * math.sqrt(float(np.median(areas)) / math.pi)
    px = typical_nucleus_um / diameter_px
    return px if bounds_um[0] <= px <= bounds_um[1] else None
