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
from pathlib import Path

import numpy as np

from .batch import TABLE_COLUMNS, list_images, run_batch
from .config import RunConfig, load_config
from .gates import check_section
from .pellets import Illumination
from .slide import analyze_pellet, number_pieces, paste_lacunae, paste_pieces, plan_image
from .stains import StainSet, configured_stains

__all__ = ["TABLE_COLUMNS", "ImageAnalysis", "analyze_image", "list_images", "run_batch", "BatchCancelled", "batch_config", "run_cancellable_batch"]


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


def analyze_image(rgb, *, pixel_size_um: float, config: RunConfig, stains: StainSet | None = None, outlines=None) -> ImageAnalysis:
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
    outlines : list, optional, keyword-only
        Annotated pellet outlines (:func:`~pellet_analysis.geojson.geojson_outlines`
        of a QuPath export): they are the pellets instead of those the finder finds.

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
    plan = plan_image(rgb, pixel_size_um=pixel_size_um, config=config, outlines=outlines)
    t["plan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pieces = number_pieces(analyze_pellet(rgb[w], plan, k, config=config, stains=stains) for k, w in enumerate(plan.windows, start=1))
    t["pellets"] = time.perf_counter() - t0
    pellets, classes, nuclei, pg_od = paste_pieces(pieces, rgb.shape[:2])
    return ImageAnalysis(
        pellets, classes, nuclei, pg_od, [p.row for p in pieces], stains, plan.illumination, t, [p.stains_info for p in pieces],
        paste_lacunae(pieces, rgb.shape[:2]),
    )


class BatchCancelled(Exception):
    """A batch stopped between images at the user's request.

    The images finished before it stay in the run folder (``parts/`` and
    ``labels/``); a run into the same folder skips them and does the rest.
    ``done``: the images reported before the batch stopped.
    """

    def __init__(self, done: int, output_dir):
        self.done, self.output_dir = done, Path(output_dir)
        super().__init__(
            f"batch cancelled after {done} image(s); those finished stay in {self.output_dir}, "
            "and a run into the same folder skips them"
        )


def batch_config(input_dir, output_dir, *, stains: str | None = None, pixel_size_um: float | None = None, config_file=None, **overrides) -> RunConfig:
    """The config of a batch started from a form (the napari widget): a YAML file with the form's values over it, as the CLI's options.

    Parameters
    ----------
    input_dir, output_dir : str or Path
    stains : str, optional, keyword-only
        A stain preset name; None keeps the file's (or the default).
    pixel_size_um : float, optional, keyword-only
        For images whose files carry none; None or 0 keeps the file's (or
        the default, with the estimate from the nuclei).
    config_file : str or Path, optional, keyword-only
        YAML config; None or '' gives the defaults.
    **overrides
        Further dotted keys (``annotations_dir=...``), as :func:`~pellet_analysis.config.load_config` takes them.

    Raises
    ------
    ConfigError
        One line naming the file or the form's field and the key.
    """
    options = {"input_dir": "input folder", "output_dir": "output folder", "stains__preset": "stain preset", "pixel_size_um": "pixel size", "annotations_dir": "QuPath outlines"}
    return load_config(
        config_file or None,
        options=options,
        input_dir=str(input_dir),
        output_dir=str(output_dir),
        stains__preset=stains or None,
        pixel_size_um=pixel_size_um or None,
        **overrides,
    )


def run_cancellable_batch(config: RunConfig, *, progress=None, cancelled=None, pool=None) -> dict:
    """:func:`run_batch`, stopping between images when ``cancelled()`` turns true.

    ``cancelled`` is asked after each image is reported to ``progress``:
    the images being processed then are dropped (a pellet under way on a
    thread finishes first), and :class:`BatchCancelled` is raised; no
    pellets.csv or run.json is written for the stopped run.

    Raises
    ------
    BatchCancelled
    FileNotFoundError
        The input (or annotations) folder does not exist, or holds no image.
    """
    images = list_images(config.input_dir, config.extensions)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(config.extensions)}) in {config.input_dir}")
    done = 0
    report = progress or (lambda record: None)
    stop = cancelled or (lambda: False)

    def each(record):
        nonlocal done
        done += 1
        report(record)
        if stop():
            raise BatchCancelled(done, config.output_dir)

    return run_batch(config, progress=each, pool=pool)
