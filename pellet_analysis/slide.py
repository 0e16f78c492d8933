"""One image, pellet by pellet: plan at low resolution, analyse each pellet's window.

The same functions serve an image held in memory and a whole-slide scan read
lazily: :func:`plan_slide` works on a low-resolution copy (block means or a
pyramid level), :func:`analyze_pellet` on one pellet's full-resolution window,
however it was read. Pellets are independent, so a scheduler can run them in
parallel, and each window is small enough to hold in memory while the whole
slide is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .bern import bern_scores
from .calibrate import cell_iron_levels
from .classify import classify_maps, deconvolution_stains, pellet_maps, pixel_maps_depth_px
from .config import RunConfig
from .geojson import AnnotationError, fill_rings, outline_bounds, outline_mask
from .labels import CLASS_CODES
from .lacunae import find_lacunae
from .measure import measure_pellets, touches_border
from .pellets import (
    Illumination,
    block_mean,
    illumination_from_small,
    pellet_margin_px,
    pellet_topology,
    pellet_windows,
    refine_pellet,
    small_tissue_score,
    tissue_threshold_od,
    working_factor,
)
from .stains import StainSet, choose_stains
from .territories import cell_territories

__all__ = [
    "SlidePlan",
    "PelletPiece",
    "PelletClasses",
    "plan_slide",
    "outline_windows",
    "outline_labels_small",
    "plan_image",
    "classify_pellet_window",
    "measure_pellet_classes",
    "analyze_pellet",
    "number_pieces",
    "paste_pieces",
    "paste_lacunae",
]


@dataclass
class SlidePlan:
    """Where the pellets of one image are, and its white point; decided at low resolution."""

    shape: tuple  # full-resolution (rows, cols)
    dtype: np.dtype
    pixel_size_um: float  # full resolution
    factor: int  # full-resolution pixels per low-resolution pixel
    illumination: Illumination
    labels_small: np.ndarray  # int32 low-resolution pellets, numbered left to right
    windows: list  # full-resolution (row slice, column slice) per low-resolution pellet
    full_frame: bool = False  # tissue fills the image: one region of every pixel (pellets.fills_frame)
    tissue_od: float | None = None  # the image's tissue threshold (pellets.tissue_threshold_od); None: pellets.tissue_min_od
    outlines: list | None = None  # per pellet, its annotated polygons (geojson.geojson_outlines): the pellets; None: found


@dataclass
class PelletPiece:
    """One pellet's results inside its window."""

    index: int  # low-resolution pellet number
    window: tuple
    inside: np.ndarray  # bool
    classes: np.ndarray  # uint8
    nuclei: np.ndarray  # uint32, 1..n within this pellet
    proteoglycan_od: np.ndarray  # float32
    row: dict  # measurements; centroids in full-image pixels
    stains_info: dict  # which stain vectors were used and why (choose_stains)
    lacunae: np.ndarray | None = None  # uint32, 1..n within this pellet


def plan_slide(small_rgb, shape, dtype, *, factor: int, pixel_size_um: float, config: RunConfig, outlines=None) -> SlidePlan:
    """Estimate the white point and find the pellets on a low-resolution copy.

    Parameters
    ----------
    small_rgb : ndarray, shape (rows, cols, 3)
        Block means of ``factor`` x ``factor`` full-resolution pixels.
    shape : tuple
        Full-resolution (rows, cols).
    dtype : dtype
        Full-resolution dtype.
    factor : int, keyword-only
    pixel_size_um : float, keyword-only
        Full-resolution pixel size.
    config : RunConfig, keyword-only
    outlines : list, optional, keyword-only
        Annotated pellet outlines (:func:`~pellet_analysis.geojson.geojson_outlines`):
        they are the pellets, each pixel whose centre one encloses is its
        pellet's, and the pellet finder is not run. Their windows hold the
        outline and the classification's reach around it.

    Raises
    ------
    AnnotationError
        When an outline encloses no pixel centre of the image.
    """
    px_small = float(pixel_size_um) * factor
    small_rgb = np.asarray(small_rgb, dtype=np.float32)
    pellets = config.pellets.params()
    illumination = illumination_from_small(small_rgb, np.dtype(dtype), pixel_size_um=px_small, stains=config.stains.params(), pellets=pellets)
    depth = pixel_maps_depth_px(pixel_size_um=pixel_size_um, classify=config.classify.params(), nuclei=config.nuclei.params(), iron=config.iron.params())
    common = dict(shape=tuple(int(n) for n in shape[:2]), dtype=np.dtype(dtype), pixel_size_um=float(pixel_size_um), factor=int(factor), illumination=illumination)
    if outlines is not None:
        margin = depth + pellets.window_slack_px + 1
        windows = outline_windows(outlines, shape, margin)
        return SlidePlan(**common, labels_small=outline_labels_small(outlines, small_rgb.shape[:2], factor), windows=windows, outlines=list(outlines))
    score = small_tissue_score(small_rgb, illumination, pixel_size_um=px_small, params=pellets)
    tissue_od = tissue_threshold_od(score, params=pellets)
    labels = pellet_topology(small_rgb, illumination, pixel_size_um=px_small, params=pellets, tissue_od=tissue_od, score=score)
    margin = pellet_margin_px(pixel_size_um=pixel_size_um, factor=factor, params=pellets, extra_px=depth)
    return SlidePlan(
        **common,
        labels_small=labels,
        windows=pellet_windows(labels, factor, shape, margin),
        full_frame=bool(labels.size) and bool((labels == 1).all()),
        tissue_od=tissue_od,
    )


def outline_windows(outlines, shape, margin_px: int) -> list:
    """Full-resolution windows (pairs of slices) around each outline's pixels, grown by ``margin_px`` within the image.

    Raises
    ------
    AnnotationError
        For an outline that encloses no pixel centre of the image.
    """
    windows = []
    for k, polygons in enumerate(outlines, start=1):
        r0, r1, c0, c1 = outline_bounds(polygons)
        rows = (max(0, math.ceil(r0)), min(int(shape[0]), math.floor(r1) + 1))
        cols = (max(0, math.ceil(c0)), min(int(shape[1]), math.floor(c1) + 1))
        if rows[0] >= rows[1] or cols[0] >= cols[1]:
            raise AnnotationError(
                f"outline {k} (rows {r0:.0f}-{r1:.0f}, columns {c0:.0f}-{c1:.0f}) lies outside the image "
                f"({int(shape[0])} x {int(shape[1])} px): an export of another image, or of another resolution?"
            )
        windows.append(
            (slice(max(0, rows[0] - margin_px), min(int(shape[0]), rows[1] + margin_px)),
             slice(max(0, cols[0] - margin_px), min(int(shape[1]), cols[1] + margin_px)))
        )
    return windows


def outline_labels_small(outlines, small_shape, factor: int) -> np.ndarray:
    """The outlines filled at low resolution (int32, pellet k as k; a later outline over an earlier one where they overlap)."""
    labels = np.zeros(tuple(small_shape[:2]), np.int32)
    for k, polygons in enumerate(outlines, start=1):
        # a full-resolution pixel centre r lies at (r + 0.5) / factor - 0.5 in block coordinates
        for polygon in polygons:
            labels[fill_rings([(ring + 0.5) / factor - 0.5 for ring in polygon], labels.shape)] = k
    return labels


def plan_image(rgb, *, pixel_size_um: float, config: RunConfig, outlines=None) -> SlidePlan:
    """:func:`plan_slide` for an image in memory (numpy) or a lazy dask array of the full resolution (``outlines``: the annotated pellets, if any)."""
    factor = working_factor(rgb.shape, config.pellets.max_working_px)
    small = block_mean(rgb, factor)
    if hasattr(small, "dask"):
        small = small.compute()
    return plan_slide(small, rgb.shape, rgb.dtype, factor=factor, pixel_size_um=pixel_size_um, config=config, outlines=outlines)


@dataclass
class PelletClasses:
    """One pellet's classes and objects in the bounding box of its pixels (grown by one), before it is measured.

    The arrays are those of the pellet's classification, not cleared outside
    ``inside``: the measurements are taken from them as they are, and label
    images keep only the pixels ``inside``.
    """

    index: int  # low-resolution pellet number
    box: tuple  # (row slice, column slice) in the full image
    inside: np.ndarray  # bool
    classes: np.ndarray  # uint8
    nuclei: np.ndarray  # uint32, 1..n within this pellet
    proteoglycan_od: np.ndarray  # float32
    stains_info: dict  # which stain vectors were used and why (choose_stains)
    iron_levels: np.ndarray | None = None  # per nucleus: the highest granule threshold leaving it iron-positive (when asked)
    touches_border: bool = False  # the pellet reaches the image's edge (measure.touches_border)
    lacunae: np.ndarray | None = None  # uint32, 1..n within this pellet (lacunae.find_lacunae)
    open_pixels: np.ndarray | None = None  # bool: not matrix (cytoplasm or lacuna), where cell territories grow


def classify_pellet_window(
    rgb_window, plan: SlidePlan, index: int, *, config: RunConfig, stains: StainSet, iron_levels: bool = False
) -> PelletClasses | None:
    """Refine and classify one pellet from its full-resolution window (the first part of :func:`analyze_pellet`).

    Parameters
    ----------
    rgb_window : ndarray, shape (rows, cols, 3)
        ``rgb[plan.windows[index - 1]]``.
    plan : SlidePlan
    index : int
        The pellet's low-resolution number (1-based).
    config : RunConfig, keyword-only
    stains : StainSet, keyword-only
        With ``stains.estimate: auto`` the stain vectors are estimated from
        the pellet's own pixels (:func:`~pellet_analysis.stains.choose_stains`).
    iron_levels : bool, keyword-only
        Also give each nucleus's :func:`~pellet_analysis.calibrate.cell_iron_levels`
        (stain sets with iron; an empty array for others): what the
        calibration on control pellets needs.

    Returns
    -------
    PelletClasses, or None when the refined pellet is smaller than ``pellets.min_pellet_area_um2``.
        When the tissue fills the image (``plan.full_frame``) every pixel is
        inside, lumina and vacuoles included, whatever the area; an annotated
        outline (``plan.outlines``) is the pellet whatever its area, None
        only when it encloses no pixel centre.
    """
    window = plan.windows[index - 1]
    px = plan.pixel_size_um
    pellets = config.pellets.params()
    od = plan.illumination.od(np.asarray(rgb_window), plan.shape, window)
    del rgb_window
    if plan.outlines is not None:  # the pellet is the annotated outline, whatever its size
        inside = outline_mask(plan.outlines[index - 1], window)
        if not inside.any():
            return None
    elif plan.full_frame:
        inside = np.ones(od.shape[:2], bool)
    else:
        inside = refine_pellet(od, plan.labels_small, index, window, plan.factor, pixel_size_um=px, params=pellets, tissue_od=plan.tissue_od)
        if inside.sum() * px**2 < pellets.min_pellet_area_um2:
            return None
    stains, stains_info = choose_stains(od, inside, stains, config.stains.params(), pixel_size_um=px, names=deconvolution_stains(stains))
    if stains_info["source"] != "preset":
        stains_info = {**stains_info, "vectors": {name: [round(float(v), 5) for v in stains.vector(name)] for name in stains.stains}}
    tile_px = config.tile_px if config.tile_px and max(inside.shape) > config.tile_px else None
    kwargs = dict(pixel_size_um=px, classify=config.classify.params(), nuclei=config.nuclei.params(), iron=config.iron.params(), tile_px=tile_px)
    maps = pellet_maps(od, stains, **kwargs)
    # objects and measurements need only the pellet's bounding box and a ring of background around it
    # (the same labels: every object lies inside the pellet, and the ring stands for all outside it)
    box = _grown_box(inside)
    # a lacuna is colourless: clear in every channel, where a counterstained cytoplasm absorbs strongly in one
    # (its crop to the box, three float32 planes, stays through the object step for the lacuna step; the
    # window's OD with its filter margin is freed before it)
    od_box = np.ascontiguousarray(od[box], dtype=np.float32)
    del od
    inside_box = inside[box]
    result = classify_maps(maps[box], inside_box, stains, **kwargs)
    matrix_od = maps[box][..., 1] + maps[box][..., 2]
    nuclei_inside = result.nuclei * inside_box
    lacunae, open_pixels = find_lacunae(od_box, matrix_od, inside_box, nuclei_inside, pixel_size_um=px, params=config.cartilage.params())
    del od_box, matrix_od
    levels = None
    if iron_levels:
        levels = np.zeros(0, np.float64)
        if "iron" in stains.roles:
            # the contrast of the granules the detector kept (colour and form tests passed), not of every dark spot:
            # a control's rim nucleus that those tests reject must not raise the batch's threshold
            granules = np.where(result.classes == CLASS_CODES["iron"], maps[box][..., 3], np.float32(0))
            levels = cell_iron_levels(granules, inside_box, nuclei_inside, pixel_size_um=px, iron=kwargs["iron"])
    del maps
    in_image = tuple(slice(w.start + b.start, w.start + b.stop) for w, b in zip(window, box))
    border = touches_border(_grown_box(inside, by=0, offset=(window[0].start, window[1].start)), plan.shape)
    return PelletClasses(
        index, in_image, inside_box, result.classes, result.nuclei, result.proteoglycan_od, stains_info, levels,
        touches_border=border, lacunae=lacunae, open_pixels=open_pixels,
    )


def measure_pellet_classes(part: PelletClasses, *, pixel_size_um: float, config: RunConfig) -> dict:
    """The measurements of one classified pellet (the second part of :func:`analyze_pellet`); centroids in full-image pixels.

    Cell territories grow from the nuclei into the pellet's open pixels (:func:`~pellet_analysis.territories.cell_territories`).
    """
    inside = np.asarray(part.inside, dtype=bool)
    cartilage = config.cartilage.params()
    territories = None
    if part.open_pixels is not None:
        territories = cell_territories(
            np.where(inside, part.nuclei, 0), np.asarray(part.open_pixels) & inside, max_distance_px=cartilage.territory_max_um / pixel_size_um,
            min_width_px=cartilage.territory_min_width_um / pixel_size_um,
        )
    (row,) = measure_pellets(
        inside.view(np.uint8),
        part.classes,
        part.nuclei,
        pixel_size_um=pixel_size_um,
        proteoglycan_od=part.proteoglycan_od,
        iron_cell_distance_um=config.iron.cell_distance_um,
        rim_width_um=config.pellets.rim_width_um,
        lacunae=part.lacunae,
        territories=territories,
        cartilage=cartilage,
    )
    row["centroid_row_px"] += part.box[0].start
    row["centroid_col_px"] += part.box[1].start
    return {**row, **bern_scores(row, config.bern.params()), "touches_border": part.touches_border}


def analyze_pellet(rgb_window, plan: SlidePlan, index: int, *, config: RunConfig, stains: StainSet) -> PelletPiece | None:
    """Refine, classify and measure one pellet from its full-resolution window.

    :func:`classify_pellet_window`, then :func:`measure_pellet_classes`, with
    the results laid out in the window (0 outside the pellet).

    Returns
    -------
    PelletPiece, or None when the refined pellet is smaller than ``pellets.min_pellet_area_um2``.
    """
    part = classify_pellet_window(rgb_window, plan, index, config=config, stains=stains)
    if part is None:
        return None
    row = measure_pellet_classes(part, pixel_size_um=plan.pixel_size_um, config=config)
    window = plan.windows[index - 1]
    box = tuple(slice(b.start - w.start, b.stop - w.start) for w, b in zip(window, part.box))
    shape = tuple(w.stop - w.start for w in window)
    inside = np.zeros(shape, bool)
    nuclei = np.zeros(shape, np.uint32)
    classes = np.zeros(shape, np.uint8)
    pg_od = np.zeros(shape, np.float32)
    inside[box] = part.inside
    nuclei[box] = np.where(part.inside, part.nuclei, 0)
    classes[box] = np.where(part.inside, part.classes, 0)
    pg_od[box] = np.where(part.inside, part.proteoglycan_od, 0)
    lacunae = np.zeros(shape, np.uint32)
    if part.lacunae is not None:
        lacunae[box] = np.where(part.inside, part.lacunae, 0)
    return PelletPiece(index, window, inside, classes, nuclei, pg_od, row, part.stains_info, lacunae)


def _grown_box(inside, by: int = 1, offset=(0, 0)) -> tuple:
    """The bounding box of ``inside`` grown by ``by`` pixels within the array (the whole array when empty), shifted by ``offset``."""
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    if rows.size == 0:
        rows, cols = np.array([0, inside.shape[0] - 1]), np.array([0, inside.shape[1] - 1])
        by = 0
    return (
        slice(offset[0] + max(0, rows[0] - by), offset[0] + min(inside.shape[0], rows[-1] + 1 + by)),
        slice(offset[1] + max(0, cols[0] - by), offset[1] + min(inside.shape[1], cols[-1] + 1 + by)),
    )


def number_pieces(pieces) -> list[PelletPiece]:
    """Number the pellets 1..n left to right and make nucleus and lacuna ids unique across them (in place)."""
    pieces = sorted((p for p in pieces if p is not None), key=lambda p: p.index)
    offset = lacuna_offset = 0
    for pid, piece in enumerate(pieces, start=1):
        piece.row["pellet_id"] = pid
        n = int(piece.nuclei.max()) if piece.nuclei.size else 0
        piece.nuclei = np.where(piece.nuclei > 0, piece.nuclei + np.uint32(offset), 0).astype(np.uint32)
        offset += n
        if piece.lacunae is not None:
            m = int(piece.lacunae.max()) if piece.lacunae.size else 0
            piece.lacunae = np.where(piece.lacunae > 0, piece.lacunae + np.uint32(lacuna_offset), 0).astype(np.uint32)
            lacuna_offset += m
    return pieces


def paste_pieces(pieces, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full-size pellets (uint16), classes (uint8), nuclei (uint32) and proteoglycan OD (float32) from numbered pieces."""
    pellets = np.zeros(shape, np.uint16)
    classes = np.zeros(shape, np.uint8)
    nuclei = np.zeros(shape, np.uint32)
    pg_od = np.zeros(shape, np.float32)
    for piece in pieces:
        w, inside = piece.window, piece.inside
        pellets[w][inside] = piece.row["pellet_id"]
        classes[w][inside] = piece.classes[inside]
        nuclei[w][inside] = piece.nuclei[inside]
        pg_od[w][inside] = piece.proteoglycan_od[inside]
    return pellets, classes, nuclei, pg_od


def paste_lacunae(pieces, shape) -> np.ndarray:
    """Full-size lacunae (uint32) from numbered pieces."""
    lacunae = np.zeros(shape, np.uint32)
    for piece in pieces:
        if piece.lacunae is not None:
            lacunae[piece.window][piece.inside] = piece.lacunae[piece.inside]
    return lacunae
