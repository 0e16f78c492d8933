"""Illumination (white point) estimation and pellet-section detection."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.measure import regionprops
from skimage.morphology import disk, remove_small_holes, remove_small_objects
from skimage.segmentation import expand_labels

from .config import PelletConfig, StainConfig
from .filters import gaussian
from .stains import (
    estimate_background,
    evaluate_background_field,
    fit_background_field,
    intensity_range,
    rgb_to_od,
)

__all__ = ["Illumination", "downscale", "estimate_illumination", "tissue_score", "find_pellets"]


@dataclass
class Illumination:
    """Background intensity I0: a constant per channel or a smooth polynomial field."""

    background_rgb: np.ndarray  # (3,) mean I0 over the image
    coefficients: np.ndarray | None = None  # polynomial field, see fit_background_field
    order: int = 2
    source: str = "estimated"  # estimated | flat-field | config | full-scale (no background)

    def field(self, shape) -> np.ndarray:
        """I0 at every pixel of ``shape`` (rows, cols) as (rows, cols, 3), or (3,) when constant."""
        if self.coefficients is None:
            return np.asarray(self.background_rgb, dtype=np.float32)
        return evaluate_background_field(self.coefficients, shape, order=self.order)

    def to_dict(self, shape=None) -> dict:
        out = {"source": self.source, "background_rgb": [round(float(v), 3) for v in self.background_rgb]}
        if self.coefficients is not None and shape is not None:
            f = self.field((min(shape[0], 64), min(shape[1], 64))).reshape(-1, 3)
            out["field_min_rgb"] = [round(float(v), 3) for v in f.min(0)]
            out["field_max_rgb"] = [round(float(v), 3) for v in f.max(0)]
        return out


def downscale(image, max_side_px: int):
    """Area-average ``image`` so its longer side is at most ``max_side_px``; returns (small, factor)."""
    h, w = image.shape[:2]
    factor = max(1, math.ceil(max(h, w) / max_side_px))
    if factor == 1:
        return image, 1
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    src = image if image.dtype != np.float64 else image.astype(np.float32)
    return cv2.resize(src, size, interpolation=cv2.INTER_AREA), factor


def tissue_score(od, *, channel_axis=-1) -> np.ndarray:
    """Tissue evidence per pixel: the largest channel optical density (float32)."""
    od = np.moveaxis(od, channel_axis, -1)
    # channel by channel: numpy's reduction over a last axis of length 3 is several times slower
    return np.maximum(np.maximum(od[..., 0], od[..., 1]), od[..., 2]).astype(np.float32, copy=False)


def estimate_illumination(rgb, *, pixel_size_um: float, stains: StainConfig, pellets: PelletConfig) -> Illumination:
    """Estimate the background intensity I0 of an RGB image.

    The brightest tenth of a low-resolution copy gives a first white point;
    tissue is masked out at that white point, then either a smooth
    polynomial surface (``stains.flat_field``) or the per-channel median of
    the remaining background gives I0. If even the brightest pixels are far
    from white, the tissue fills the image and the dtype's full scale is used.
    """
    full = intensity_range(rgb.dtype)
    if stains.background_rgb is not None:
        bg = np.asarray(stains.background_rgb, dtype=np.float64)
        if np.issubdtype(rgb.dtype, np.floating) and bg.max() > 1.0:
            bg = bg / 255.0
        return Illumination(bg, source="config")
    small, factor = downscale(rgb, pellets.max_working_px)
    first = estimate_background(small)
    if first.mean() < 0.72 * full:
        return Illumination(np.full(3, full), source="full-scale (no background found)")
    score = gaussian(tissue_score(rgb_to_od(small, first)), pellets.smoothing_um / (pixel_size_um * factor))
    mask = ndi.binary_dilation(score > pellets.tissue_min_od * 0.7, iterations=3)
    if stains.flat_field:
        coef = fit_background_field(small, mask)
        if coef is not None:
            illum = Illumination(np.zeros(3), coef, source="flat-field")
            illum.background_rgb = illum.field(small.shape[:2]).reshape(-1, 3).mean(0).astype(np.float64)
            return illum
    return Illumination(estimate_background(small, mask), source="estimated")


def find_pellets(od, *, pixel_size_um: float, config: PelletConfig) -> np.ndarray:
    """Label every pellet section.

    Topology (which pixels form which pellet, holes, small debris) is decided
    on a low-resolution copy; the boundary is then placed at full resolution
    by thresholding the smoothed tissue score inside the grown low-resolution
    pellets.

    Parameters
    ----------
    od : ndarray, shape (rows, cols, 3)
        Optical density.
    pixel_size_um : float, keyword-only
    config : PelletConfig, keyword-only

    Returns
    -------
    labels : ndarray of uint16
        0 outside pellets, 1..n inside, numbered left to right.
    """
    score = gaussian(tissue_score(od), config.smoothing_um / pixel_size_um)
    threshold = float(config.tissue_min_od)
    small, factor = downscale(score, config.max_working_px)
    px_small = pixel_size_um * factor
    mask = small > threshold
    mask = ndi.binary_opening(mask, structure=disk(max(1, round(2.0 / px_small))))
    mask = remove_small_holes(mask, max_size=max(1, int(config.fill_holes_max_um2 / px_small**2)))
    mask = remove_small_objects(mask, max_size=max(1, int(config.min_pellet_area_um2 / px_small**2) - 1))
    labels_small = cc_label(mask, connectivity=2)
    if factor > 1:
        up = cv2.resize(labels_small.astype(np.float32), (score.shape[1], score.shape[0]), interpolation=cv2.INTER_NEAREST)
        grown = expand_labels(up.astype(np.int32), distance=factor + 1)
    else:
        grown = labels_small
    full_mask = _half_maximum_edges(score, threshold, band_px=max(1, round(config.edge_band_um / pixel_size_um)))
    full_mask = remove_small_holes(full_mask, max_size=max(1, int(config.fill_holes_max_um2 / pixel_size_um**2)))
    labels = np.where(full_mask, grown, 0)
    return _renumber_left_to_right(labels, min_area_px=config.min_pellet_area_um2 / pixel_size_um**2)


def _half_maximum_edges(score, threshold: float, *, band_px: int) -> np.ndarray:
    """Tissue mask whose edges sit at half the local tissue level.

    A blurred edge thresholded at a low fixed level lies outside the true
    edge, the more so the darker the tissue; within ``band_px`` of the
    background a pixel must also reach half the highest score within
    ``band_px`` of it.
    """
    mask = score > threshold
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_px + 1, 2 * band_px + 1))
    local_max = cv2.dilate(score, kernel)
    near_edge = cv2.dilate((~mask).astype(np.uint8), kernel).astype(bool)
    return mask & ~(near_edge & (score < 0.5 * local_max))


def _renumber_left_to_right(labels, *, min_area_px: float) -> np.ndarray:
    props = [p for p in regionprops(labels) if p.area >= min_area_px]
    props.sort(key=lambda p: (p.centroid[1], p.centroid[0]))
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    for new, p in enumerate(props, start=1):
        lut[p.label] = new
    return lut[labels]
