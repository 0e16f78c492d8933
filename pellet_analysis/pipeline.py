"""The library's entry points: one image held in memory, or a folder of images.

``analyze_image`` runs the steps every image of a run goes through (plan,
classify each pellet window, measure, number the pellets) on an RGB array,
synchronously and without writing anything; ``run_batch``
(:mod:`pellet_analysis.batch`) schedules them over a folder with Dask and
writes the run's contract files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .batch import TABLE_COLUMNS, list_images, run_batch
from .config import RunConfig
from .gates import check_section
from .pellets import Illumination
from .slide import analyze_pellet, number_pieces, paste_lacunae, paste_pieces, plan_image
from .stains import StainSet, configured_stains

__all__ = ["TABLE_COLUMNS", "ImageAnalysis", "analyze_image", "list_images", "run_batch"]


@dataclass
class ImageAnalysis:
    """Everything computed for one image."""

    pellets: np.ndarray
    classes: np.ndarray
    nuclei: np.ndarray
    proteoglycan_od: np.ndarray
    rows: list
    stains: StainSet
    illumination: Illumination
    timings_s: dict
    stains_info: list = field(default_factory=list)  # per pellet: which vectors were used and why (choose_stains)
    lacunae: np.ndarray | None = None  # uint32 lacunae (pellet_analysis.lacunae)


def analyze_image(rgb, *, pixel_size_um: float, config: RunConfig, stains: StainSet | None = None) -> ImageAnalysis:
    """Run every analysis step on one RGB image held in memory.

    The steps of a run's tasks (:mod:`pellet_analysis.tasks`), one after
    another and with the arrays kept in memory: the image is gated, planned
    at block means, and each pellet window classified and measured.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
        uint8, uint16 or float image.
    pixel_size_um : float, keyword-only
    config : RunConfig, keyword-only
    stains : StainSet, optional, keyword-only
        Defaults to the preset named in the config with its ``stains.vectors``;
        with ``stains.estimate: auto`` replaced by vectors estimated from the
        pellets when plausible (:func:`~pellet_analysis.stains.choose_stains`).

    Returns
    -------
    ImageAnalysis

    Raises
    ------
    ValueError
        For an array that is not RGB or a pixel size that is not positive;
        :class:`~pellet_analysis.gates.NotASectionError` for an image that is
        not a brightfield scan of a stained section.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (rows, cols, 3), got {rgb.shape}")
    if not pixel_size_um or pixel_size_um <= 0:
        raise ValueError("pixel_size_um must be > 0")
    check_section(rgb)
    stains = stains or configured_stains(config.stains.params())
    t = {}
    t0 = time.perf_counter()
    plan = plan_image(rgb, pixel_size_um=pixel_size_um, config=config)
    t["plan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pieces = number_pieces(analyze_pellet(rgb[w], plan, k, config=config, stains=stains) for k, w in enumerate(plan.windows, start=1))
    t["pellets"] = time.perf_counter() - t0
    pellets, classes, nuclei, pg_od = paste_pieces(pieces, rgb.shape[:2])
    return ImageAnalysis(
        pellets, classes, nuclei, pg_od, [p.row for p in pieces], stains, plan.illumination, t, [p.stains_info for p in pieces],
        paste_lacunae(pieces, rgb.shape[:2]),
    )
