"""Whole-slide scans: which images are read window by window, and their plan from low resolution.

A scan too large to hold in memory (or any pyramidal TIFF) is never read
whole. :func:`plan_whole_slide` reads a pyramid level (or block means of the
full resolution, tile by tile) to find the pellets and the white point; its
pellets then go through the same tasks as those of any image
(:mod:`pellet_analysis.tasks`), each decoding only the tiles of its window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .config import RunConfig
from .gates import check_section
from .io import ImageReadError, LazyImage
from .pellets import block_mean, working_factor
from .readers import SCANNER_SUFFIXES, TIFF_FORMATS, UNREADABLE_FORMATS, main_series
from .slide import SlidePlan, plan_slide

__all__ = ["is_whole_slide", "plan_whole_slide"]


def is_whole_slide(path, config: RunConfig) -> bool:
    """True for scanner formats, and for TIFFs with pyramid levels or at least ``config.whole_slide_min_px`` pixels.

    A scanner file (:data:`~pellet_analysis.readers.SCANNER_SUFFIXES`) is
    always read window by window through its reader; a TIFF's main series
    (:func:`~pellet_analysis.readers.main_series`) is judged from its header only.
    """
    import tifffile

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SCANNER_SUFFIXES or suffix in UNREADABLE_FORMATS:
        return True
    if suffix not in TIFF_FORMATS:
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[main_series(tif)]
            shape = series.levels[0].shape
            plane = shape[-3:-1] if len(shape) >= 3 and shape[-1] in (3, 4) else shape[-2:]
            return len(series.levels) > 1 or math.prod(plane) >= config.whole_slide_min_px
    except Exception:  # unreadable files fail later with their own one-line reason
        return False


def _low_resolution(levels, factor: int):
    """Block means at ``factor`` or a little coarser, from the coarsest pyramid level that allows it.

    Returns (small, factor actually used).
    """
    rows = levels[0].shape[0]
    best, best_down = levels[0], 1
    for level in levels[1:]:
        down = max(1, round(rows / level.shape[0]))
        if down <= factor and down > best_down and abs(rows / level.shape[0] - down) < 0.01 * down:
            best, best_down = level, down
    from dask.threaded import get as threads  # the function, not "threads": Dask's name lookup imports distributed

    step = max(1, math.ceil(factor / best_down))
    return np.asarray(block_mean(best, step).compute(scheduler=threads)), best_down * step


def plan_whole_slide(lazy: LazyImage, pixel_size_um: float, config: RunConfig, *, outlines=None) -> SlidePlan:
    """Find the pellets and the white point of a whole-slide scan from low resolution.

    Parameters
    ----------
    lazy : LazyImage
        The scan, from :func:`~pellet_analysis.io.open_lazy`.
    pixel_size_um : float
    config : RunConfig
    outlines : list, optional, keyword-only
        Annotated pellet outlines in full-resolution pixels: the pellets (:func:`~pellet_analysis.slide.plan_slide`).

    Raises
    ------
    ImageReadError
    AnnotationError
        For an outline outside the image.
    """
    factor = working_factor(lazy.shape, config.pellets.max_working_px)
    try:
        small, factor = _low_resolution(lazy.levels, factor)
    except Exception as error:  # a truncated or corrupt tile surfaces from the codec or the zarr store
        raise ImageReadError(f"cannot decode the image's tiles ({type(error).__name__}: {' '.join(str(error).split())[:160]})") from None
    check_section(small, dtype=lazy.dtype)
    return plan_slide(small, lazy.shape, lazy.dtype, factor=factor, pixel_size_um=pixel_size_um, config=config, outlines=outlines)
