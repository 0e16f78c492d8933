"""Small image filters shared by the pipeline steps."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["GAUSSIAN_TRUNCATE", "gaussian", "gaussian_radius_px", "smooth_channels"]

#: Half-width of :func:`gaussian`'s kernel in sigmas: OpenCV's for float images, when it chooses the size.
GAUSSIAN_TRUNCATE = 4.0


def gaussian_radius_px(sigma_px: float) -> int:
    """How far (px) :func:`gaussian` of ``sigma_px`` reads: the overlap a tile or window needs for it."""
    return int(math.ceil(GAUSSIAN_TRUNCATE * float(sigma_px)))


def gaussian(image, sigma_px: float, *, out=None):
    """Gaussian blur of a 2-D float image (OpenCV, reflected borders); unchanged below 0.3 px.

    ``out`` (which may be ``image`` itself) receives the result.
    """
    if sigma_px <= 0.3:
        if out is not None and out is not image:
            out[...] = image
            return out
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma_px), dst=out, borderType=cv2.BORDER_REFLECT)


def smooth_channels(image, sigma_px: float, *, out=None) -> np.ndarray:
    """:func:`gaussian` applied to each channel of a (rows, cols, channels) image.

    OpenCV blurs up to four channels in one pass (the same numbers as channel
    by channel, three times faster than splitting and stacking them);
    ``out`` (which may be ``image``) receives the result.
    """
    if image.shape[-1] <= 4 and image.dtype in (np.float32, np.float64, np.uint8, np.uint16) and image.flags.c_contiguous:
        return gaussian(image, sigma_px, out=out)
    if sigma_px <= 0.3:
        return image
    return np.dstack([gaussian(np.ascontiguousarray(image[..., c]), sigma_px) for c in range(image.shape[-1])])
