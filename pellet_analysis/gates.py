"""Input gates: does an image look like a brightfield scan of a stained section at all?

Checked before any analysis, so that an all-black frame, a mask saved as
TIFF or a file of noise fails with its own cause instead of coming out as a
pellet with numbers. Each check is cheap (a strided sample of at most
262,144 pixels, about 10 ms) and names the cause in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GateParams", "NotASectionError", "check_section", "section_problem", "full_scale"]


class NotASectionError(ValueError):
    """The image is not a brightfield scan of a stained section (the message says why, in one line)."""


@dataclass(frozen=True)
class GateParams:
    """Thresholds of the input gates.

    Attributes
    ----------
    min_side_px : int
        Shortest image side: fewer pixels than this cannot hold a nucleus and
        its surroundings.
    min_median_fraction : float
        Lowest median brightness, as a fraction of full scale. Brightfield
        tissue transmits light: even dense tissue stays above a fifth of full
        scale, where dark-field, fluorescence and black frames do not.
    min_range_fraction : float
        Lowest spread between the 0.01st and 99.99th brightness percentiles
        (fraction of full scale): below it the image is uniform. The tails
        are thin so that a slide of glass holding one small pellet passes.
    max_label_levels : int
        A colourless image with at most this many grey levels is a mask or a
        label image.
    min_neighbour_correlation : float
        Lowest correlation of each pixel's brightness with its right and lower
        neighbours: a scan of tissue is smooth at the pixel scale (0.8 and
        above, JPEG included); independent noise is near 0.
    max_sample_px : int
        Pixels looked at, at most (rows are strided, each kept whole so that
        neighbours stay neighbours).
    """

    min_side_px: int = 16
    min_median_fraction: float = 0.2
    min_range_fraction: float = 0.06
    max_label_levels: int = 16
    min_neighbour_correlation: float = 0.3
    max_sample_px: int = 1 << 18


def full_scale(dtype, sample) -> float:
    """The brightness of white for an image of ``dtype``.

    uint8: 255; float: 1.0; uint16: the smallest 2**bits - 1 that holds the
    brightest pixel, at least 12 bits (scanners store 10-, 12- and 14-bit data
    in 16-bit files).
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if np.issubdtype(dtype, np.floating):
        return 1.0
    brightest = int(np.max(sample)) if np.size(sample) else 0
    bits = max(12, int(brightest).bit_length())
    return float((1 << bits) - 1)


def _sample_rows(rgb, max_px: int) -> np.ndarray:
    rows, cols = rgb.shape[:2]
    step = max(1, int(np.ceil(rows * cols / max_px)))
    if step == 1:
        return rgb
    # pairs of adjacent rows, so vertical neighbours remain in the sample
    starts = np.arange(0, rows - 1, 2 * step)
    return rgb[np.sort(np.concatenate([starts, starts + 1]))]


def _neighbour_correlation(grey) -> float:
    """The smaller of the horizontal and vertical lag-1 correlations of ``grey`` (1.0 where a direction is constant)."""
    values = []
    for a, b in ((grey[:, :-1], grey[:, 1:]), (grey[:-1:2], grey[1::2])):
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        if a.size < 2 or a.std() == 0 or b.std() == 0:
            values.append(1.0)
            continue
        values.append(float(np.corrcoef(a, b)[0, 1]))
    return min(values)


def section_problem(rgb, params: GateParams = GateParams(), *, dtype=None) -> str | None:
    """Why ``rgb`` is not a brightfield scan of a stained section, in one line; None when it may be one.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
        uint8, uint16 or float (0-1) RGB, as :func:`pellet_analysis.io.read_image` returns.
    params : GateParams, optional
    dtype : dtype, optional, keyword-only
        The scan's own pixel type, where ``rgb`` is a float copy of it (a
        whole slide's block means); by default ``rgb.dtype``.

    Returns
    -------
    str or None
    """
    rgb = np.asarray(rgb)
    dtype = np.dtype(dtype if dtype is not None else rgb.dtype)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        return f"expected an RGB image of shape (rows, cols, 3), got {rgb.shape}"
    if dtype not in (np.uint8, np.uint16) and not np.issubdtype(dtype, np.floating):
        return f"pixels of type {dtype}; a brightfield scan has unsigned integer or 0-1 float pixels"
    rows, cols = rgb.shape[:2]
    if min(rows, cols) < params.min_side_px:
        return f"the image is {rows} x {cols} px, too small to hold a section (at least {params.min_side_px} px a side)"
    sample = _sample_rows(rgb, params.max_sample_px)
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
        return "pixels that are NaN or infinite"
    scale = full_scale(dtype, sample)
    colourless = bool((sample[..., 0] == sample[..., 1]).all() and (sample[..., 1] == sample[..., 2]).all())
    levels = np.unique(sample[..., 0]).size if colourless else None
    if colourless and 1 < levels <= params.max_label_levels:
        return f"a mask or label image ({levels} grey levels), not a stained section"
    grey = sample.astype(np.float32).mean(axis=-1) / np.float32(scale)
    low, median, high = np.percentile(grey, [0.01, 50, 99.99])
    if median < params.min_median_fraction:
        return (
            f"too dark for a brightfield scan (median brightness {100 * median:.0f} % of full scale; "
            "dark-field, fluorescence or an empty frame?)"
        )
    if high - low < params.min_range_fraction:
        return f"no pellet section found: the image is uniform (brightness {100 * low:.0f}-{100 * high:.0f} % of full scale)"
    if colourless:
        return "no colour (all three channels equal): stains cannot be told apart in a greyscale image"
    correlation = _neighbour_correlation(grey)
    if correlation < params.min_neighbour_correlation:
        return f"noise, not a scan: neighbouring pixels are uncorrelated (r = {correlation:.2f})"
    return None


def check_section(rgb, params: GateParams = GateParams(), *, dtype=None) -> None:
    """Raise :class:`NotASectionError` with :func:`section_problem`'s cause, if there is one."""
    problem = section_problem(rgb, params, dtype=dtype)
    if problem is not None:
        raise NotASectionError(problem)
