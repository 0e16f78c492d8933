"""Segmentation overlays for figures, thumbnails and reports (pure array functions)."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

from .labels import CLASS_CODES

__all__ = ["CLASS_COLOURS", "class_colours", "render_overlay"]

#: RGB colour of each class code (background white).
CLASS_COLOURS = {
    "background": (255, 255, 255),
    "other_tissue": (236, 200, 90),
    "proteoglycan": (40, 90, 210),
    "collagen": (215, 40, 70),
    "nuclei": (25, 25, 25),
    "iron": (160, 82, 0),
}


def class_colours() -> np.ndarray:
    """Lookup table (6, 3) uint8: class code -> RGB."""
    lut = np.zeros((max(CLASS_CODES.values()) + 1, 3), np.uint8)
    for name, code in CLASS_CODES.items():
        lut[code] = CLASS_COLOURS[name]
    return lut


def render_overlay(rgb, classes, *, pellets=None, nuclei=None, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours over an RGB image and draw pellet and nucleus outlines.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
        uint8 (other dtypes are scaled to uint8).
    classes : ndarray of uint8, shape (rows, cols)
    pellets, nuclei : ndarray of int, optional, keyword-only
        Pellet outlines are drawn in green, nucleus outlines in white.
    alpha : float, keyword-only
        Opacity of the class colours inside pellets.

    Returns
    -------
    ndarray of uint8, shape (rows, cols, 3)
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        scale = 255.0 / (np.iinfo(rgb.dtype).max if np.issubdtype(rgb.dtype, np.integer) else 1.0)
        rgb = np.clip(rgb.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    out = rgb.astype(np.float32)
    inside = np.asarray(classes) > 0
    colours = class_colours()[classes].astype(np.float32)
    out[inside] = (1 - alpha) * out[inside] + alpha * colours[inside]
    if nuclei is not None:
        out[find_boundaries(nuclei, mode="inner")] = (255, 255, 255)
    if pellets is not None:
        out[find_boundaries(pellets, mode="thick")] = (0, 200, 0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
