"""Pixel size from the nuclei, for images that carry none."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from .stains import MATRIX_ROLES, StainSet, estimate_background, intensity_range, looks_like_glass, rgb_to_od, unmix

__all__ = [
    "NucleusSizes",
    "PixelSizeChoice",
    "area_weighted_median",
    "estimate_pixel_size_um",
    "nucleus_sizes_px",
    "pixel_size_from_sizes_um",
    "pool_pixel_sizes_um",
    "single_nucleus_areas_px",
    "single_nucleus_sizes_px",
]



@dataclass(frozen=True)
class NucleusSizes:
    """The objects of one image taken as single whole nuclei: the evidence for its pixel size.

    Attributes
    ----------
    areas_px : ndarray of int64
        Their areas (px).
    weighted : bool
        True when the typical size is their area-weighted median
        (:func:`area_weighted_median`; stain sets without a matrix stain),
        False for the plain median.
    lengths_px : ndarray of float64, optional
        Their lengths (px): the major axis of the ellipse with the same
        second moments. None: each is taken as round (its equivalent diameter).
    """

    areas_px: np.ndarray
    weighted: bool
    lengths_px: np.ndarray | None = None

    def diameter_px(self) -> float:
        """Length (px) of the typical nucleus: its major axis (a round nucleus's diameter).

        A nucleus's size, as a histologist gives it, is its length: flat and
        spindle-shaped nuclei (valve interstitial cells, fibroblasts) are as
        long as round ones are wide but much narrower, and their equivalent
        diameter made the pixel size of two Alcian-blue valve sections 1.2
        and 1.5 times too large.
        """
        return self._length_quantile(0.5)

    def spread(self) -> float:
        """How widely the nuclei disagree: the ratio of the 75th to the 25th percentile of their lengths (weighted as the typical one)."""
        return self._length_quantile(0.75) / max(self._length_quantile(0.25), 1e-9)

    def _length_quantile(self, q: float) -> float:
        lengths = self.lengths_px if self.lengths_px is not None else 2.0 * np.sqrt(np.asarray(self.areas_px, np.float64) / math.pi)
        if not self.weighted:
            return float(np.quantile(lengths, q))
        return area_weighted_median(lengths, weights=self.areas_px, q=q)


@dataclass(frozen=True)
class PixelSizeChoice:
    """The pixel size one image of a batch is measured at, and why.

    Attributes
    ----------
    pixel_size_um : float or None
        None: no estimate (too few whole nuclei in the image and the batch).
    source : str
        "estimated from nuclei" (the image's own) or "estimated from the batch's nuclei".
    own_um : float or None
        The image's own estimate.
    batch_um : float or None
        The estimate from the nuclei of every image of the batch taken together.
    n_images : int
        Images whose nuclei went into ``batch_um``.
    spread : float or None
        :meth:`NucleusSizes.spread` of the nuclei the estimate used (the
        image's own or the batch's).
    max_spread : float
        A larger spread is said in the warning: the nuclei disagree widely.
    """

    pixel_size_um: float | None
    source: str
    own_um: float | None
    batch_um: float | None
    n_images: int
    spread: float | None = None
    max_spread: float = 2.0

    @property
    def column_source(self) -> str:
        """The ``pixel_size_source`` column's value: ``estimated`` (the image's own nuclei) or ``batch estimate``."""
        return "estimated" if self.source == "estimated from nuclei" else "batch estimate"

    def warning(self) -> str:
        """The one-line warning the run records for this image."""
        if self.pixel_size_um is None:
            return ""
        doubt = ""
        if self.spread is not None and self.spread > self.max_spread:
            doubt = (
                f" UNCERTAIN: the nuclei disagree widely (the middle half of their lengths span a factor {self.spread:.2g}), "
                "so areas and densities may be off by tens of percent;"
            )
        if self.source == "estimated from nuclei":
            return f"no pixel size in the file or the config: estimated {self.pixel_size_um:.3g} µm from the nuclei;{doubt} give --pixel-size-um to set it"
        own = f"its own nuclei gave {self.own_um:.3g} µm" if self.own_um is not None else "it has too few whole nuclei for its own estimate"
        return (
            f"no pixel size in the file or the config, and {own}: used {self.pixel_size_um:.3g} µm, "
            f"estimated from the nuclei of the batch's {self.n_images} image{'s' if self.n_images != 1 else ''} together;{doubt} "
            "give --pixel-size-um to set it"
        )


def estimate_pixel_size_um(
    rgb,
    stains: StainSet,
    *,
    typical_nucleus_um: float = 8.0,
    max_side_px: int = 2048,
    bounds_um=(0.1, 4.0),
    min_nuclei: int = 5,
    smoothing_px: float = 1.5,
    min_solidity: float = 0.9,
) -> float | None:
    """Estimate µm per pixel by taking the median nucleus to be ``typical_nucleus_um`` across.

    The nuclei are those of :func:`nucleus_sizes_px`; their median (or, for
    stain sets without a matrix stain, area-weighted median) equivalent
    diameter in pixels gives the estimate (:func:`pixel_size_from_sizes_um`).

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
    stains : StainSet
        Must have a ``nuclei`` role.
    typical_nucleus_um : float, keyword-only
    max_side_px, min_nuclei, smoothing_px, min_solidity : keyword-only
        As for :func:`nucleus_sizes_px`.
    bounds_um : (float, float), keyword-only
        Estimates outside are refused.

    Returns
    -------
    float or None
        None when no nuclear stain, too few nuclei, or an estimate out of bounds.
    """
    sizes = nucleus_sizes_px(rgb, stains, max_side_px=max_side_px, min_nuclei=min_nuclei, smoothing_px=smoothing_px, min_solidity=min_solidity)
    return pixel_size_from_sizes_um(sizes, typical_nucleus_um=typical_nucleus_um, min_nuclei=min_nuclei, bounds_um=bounds_um)


def pixel_size_from_sizes_um(sizes: NucleusSizes | None, *, typical_nucleus_um: float = 8.0, min_nuclei: int = 5, bounds_um=(0.1, 4.0)) -> float | None:
    """µm per pixel with the typical nucleus of ``sizes`` taken as ``typical_nucleus_um`` across.

    None when ``sizes`` is None, holds fewer than ``min_nuclei`` nuclei, or
    the estimate falls outside ``bounds_um``.
    """
    if sizes is None or sizes.areas_px.size < min_nuclei:
        return None
    px = typical_nucleus_um / sizes.diameter_px()
    return px if bounds_um[0] <= px <= bounds_um[1] else None


def pool_pixel_sizes_um(
    sizes_by_image: Mapping[str, NucleusSizes | None],
    *,
    typical_nucleus_um: float = 8.0,
    min_nuclei: int = 5,
    bounds_um=(0.1, 4.0),
    max_ratio: float = 1.5,
    max_spread: float = 2.0,
) -> dict[str, PixelSizeChoice]:
    """Pixel sizes for the images of one batch, each estimated alone and all together.

    Tiles exported from one scan share a pixel size, but a small tile holds
    few nuclei: its own estimate may be missing or thrown off by a few
    fragmented pale nuclei. The nuclei of every image taken together give
    the batch's estimate. An image keeps its own estimate when that lies
    within ``max_ratio`` of the batch's (images of another magnification
    keep theirs only when their estimates are that far apart); otherwise,
    and when it has none, it takes the batch's.

    Parameters
    ----------
    sizes_by_image : mapping of str to NucleusSizes or None
        Each image's nuclei (:func:`nucleus_sizes_px`), all from one stain set.
    typical_nucleus_um, min_nuclei, bounds_um : keyword-only
        As for :func:`pixel_size_from_sizes_um`.
    max_ratio : float, keyword-only
        At least 1; 1 gives every image the batch's estimate.
    max_spread : float, keyword-only
        Nuclei whose :meth:`NucleusSizes.spread` is larger make the warning
        say the estimate is uncertain.

    Returns
    -------
    dict of str to PixelSizeChoice
    """
    if max_ratio < 1:
        raise ValueError("max_ratio must be at least 1")
    kwargs = dict(typical_nucleus_um=typical_nucleus_um, min_nuclei=min_nuclei, bounds_um=bounds_um)
    present = [s for s in sizes_by_image.values() if s is not None and s.areas_px.size]
    batch = pooled = None
    if present:
        lengths = None if any(s.lengths_px is None for s in present) else np.concatenate([s.lengths_px for s in present])
        pooled = NucleusSizes(np.concatenate([s.areas_px for s in present]), present[0].weighted, lengths)
        batch = pixel_size_from_sizes_um(pooled, **kwargs)
    choices = {}
    for name, sizes in sizes_by_image.items():
        own = pixel_size_from_sizes_um(sizes, **kwargs)
        if own is not None and (batch is None or max(own / batch, batch / own) <= max_ratio):
            choices[name] = PixelSizeChoice(own, "estimated from nuclei", own, batch, len(present), sizes.spread(), max_spread)
        elif batch is not None:
            choices[name] = PixelSizeChoice(batch, "estimated from the batch's nuclei", own, batch, len(present), pooled.spread(), max_spread)
        else:
            choices[name] = PixelSizeChoice(None, "config", own, batch, len(present), None, max_spread)
    return choices


def nucleus_sizes_px(
    rgb,
    stains: StainSet,
    *,
    max_side_px: int = 2048,
    min_nuclei: int = 5,
    smoothing_px: float = 1.5,
    min_solidity: float = 0.9,
    tissue_min_od: float = 0.05,
    min_area_px: int = 12,
    opening_px: int = 3,
) -> NucleusSizes | None:
    """The objects of an image that look like single whole nuclei, for its pixel size.

    Nuclei are the pixels above Otsu's threshold of the nuclear stain (the
    least-absorbed channel's OD for stain sets with iron, whose nuclear stain
    is near-neutral), taken within the tissue for a section on glass
    (on a section that is mostly glass, a threshold over the whole image
    falls between glass and tissue and leaves only a few nuclei); their
    connected objects, opened by an ``opening_px`` square,
    that look like one whole nucleus (:func:`single_nucleus_areas_px`) are
    kept. Only the central ``max_side_px`` square is looked at. Many small
    dark specks pull the plain median down: the iron granules of labeled
    AB/VG pellets at 0.25 µm per pixel would make it 0.33 µm.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
    stains : StainSet
    max_side_px : int, keyword-only
    min_nuclei : int, keyword-only
        With fewer whole nuclei, those cut by the image edge count too (a
        512 x 512 tile at 40x holds about ten, some cut by its edge).
    smoothing_px : float, keyword-only
        Gaussian sigma applied to a deconvolved nuclear stain (not to the
        darkness of near-neutral stains with iron, whose specks must stay
        apart): on synthetic H&E tiles packed with pale vesicular nuclei the
        raw stain breaks a nucleus into specks and gives estimates up to 4
        times too large; smoothed, within 2 times and mostly within 25 %.
    min_solidity : float, keyword-only
        Stain sets without iron: only objects at least
        this convex count (one whole nucleus, not a clump), and their
        area-weighted median gives the diameter, so specks of chromatin and
        stroma, however many, do not pull it down: on 20 synthetic H&E tiles
        the plain median is 1.19-4.07 times the true pixel size, this
        1.13-1.36 times.
    tissue_min_od : float, keyword-only
        On glass, only pixels whose largest channel OD is above this are
        tissue (``pellets.tissue_min_od``); Otsu's threshold is taken among
        them (not for stain sets with iron, whose darkness is 0 on glass).
    min_area_px : int, keyword-only
        Smaller objects are specks, not nuclei, at any pixel size the
        estimate can return.
    opening_px : int, keyword-only
        Side of the square that opens the nuclei mask: detaches nuclei
        touching by a pixel and drops single-pixel specks.

    Returns
    -------
    NucleusSizes or None
        None when the stain set has no nuclear stain or the stain is flat.
    """
    if "nuclei" not in stains.roles:
        return None
    rows, cols = rgb.shape[:2]
    r0, c0 = max(0, (rows - max_side_px) // 2), max(0, (cols - max_side_px) // 2)
    crop = np.asarray(rgb[r0 : r0 + max_side_px, c0 : c0 + max_side_px])
    background = estimate_background(crop)
    on_glass = looks_like_glass(background, crop.dtype)
    if not on_glass:
        background = np.full(3, intensity_range(crop.dtype))  # tissue fills the image: full scale, as for the white point
    od = rgb_to_od(crop, background)
    if "iron" in stains.roles:
        signal = np.minimum(np.minimum(od[..., 0], od[..., 1]), od[..., 2])
    else:
        signal = unmix(od, stains.vector(stains.roles["nuclei"])[None, :])[..., 0]
        # a deconvolved nuclear stain shows chromatin texture and the pale interior of vesicular nuclei:
        # smoothed, such a nucleus is one object above Otsu's threshold, not a ring of specks
        signal = cv2.GaussianBlur(np.ascontiguousarray(signal, np.float32), (0, 0), smoothing_px)
    if not np.isfinite(signal).all() or np.ptp(signal) <= 0:
        return None
    counted = np.ones(signal.shape, bool)
    if on_glass and "iron" not in stains.roles:
        # a section on glass: the nuclei against the rest of the tissue, else the threshold falls between glass and tissue
        counted = np.maximum(np.maximum(od[..., 0], od[..., 1]), od[..., 2]) > tissue_min_od
    mask = (signal > threshold_otsu(signal[counted] if counted.sum() > 16 else signal)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((opening_px, opening_px), np.uint8))
    mask = ndi.binary_fill_holes(mask).astype(np.uint8)  # vesicular nuclei: a dark membrane round a pale interior
    if "iron" not in stains.roles:
        solid = dict(min_area_px=min_area_px, min_solidity=min_solidity, min_median_fraction=0.0)
        areas, lengths = single_nucleus_sizes_px(mask, **solid)
        if areas.size < min_nuclei:
            areas, lengths = single_nucleus_sizes_px(mask, **solid, include_edge=True)
        return NucleusSizes(areas, weighted=True, lengths_px=lengths)
    areas, lengths = single_nucleus_sizes_px(mask, min_area_px=min_area_px)
    if areas.size < min_nuclei:  # a small tile: nuclei cut by its edge count too (smaller, but far nearer than none)
        areas, lengths = single_nucleus_sizes_px(mask, min_area_px=min_area_px, include_edge=True)
    return NucleusSizes(areas, weighted=False, lengths_px=lengths)


def single_nucleus_areas_px(
    mask, *, min_area_px: int = 12, min_solidity: float = 0.0, min_median_fraction: float = 0.25, include_edge: bool = False
) -> np.ndarray:
    """Areas (px) of the objects of a nuclei mask that look like one whole nucleus (see :func:`single_nucleus_sizes_px`)."""
    return single_nucleus_sizes_px(
        mask, min_area_px=min_area_px, min_solidity=min_solidity, min_median_fraction=min_median_fraction, include_edge=include_edge
    )[0]


def single_nucleus_sizes_px(
    mask, *, min_area_px: int = 12, min_solidity: float = 0.0, min_median_fraction: float = 0.25, include_edge: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Areas and lengths (px) of the objects of a nuclei mask that look like one whole nucleus.

    Left out: objects cut by the image edge (smaller than they are; kept
    with ``include_edge``), concave
    ones (solidity below ``min_solidity``: touching nuclei merged into a
    clump, larger than one), those under ``min_area_px`` and fragments under
    ``min_median_fraction`` of the median area of the rest (pale nuclei
    broken up by the threshold, specks). Crops of one H&E image gave
    estimates 0.19-0.22 µm with all objects, closer together without these.

    Parameters
    ----------
    mask : ndarray of uint8 or bool, shape (rows, cols)
    min_area_px : int, keyword-only
    min_solidity : float, keyword-only
    min_median_fraction : float, keyword-only
    include_edge : bool, keyword-only

    Returns
    -------
    areas : ndarray of int64
    lengths : ndarray of float64
        Major axis of the ellipse with the same second moments.
    """
    from skimage.measure import regionprops

    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, np.uint8), connectivity=8)
    x, y, w, h, area = (stats[1:, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT, cv2.CC_STAT_AREA))
    rows, cols = labels.shape
    inner = (area >= min_area_px) & (include_edge | ((x > 0) & (y > 0) & (x + w < cols) & (y + h < rows)))
    keep = np.zeros(n, bool)
    keep[1:] = inner
    props = sorted((p.label, p.solidity, p.axis_major_length) for p in regionprops(np.where(keep[labels], labels, 0)))
    chosen = [(area[k - 1], length) for k, solidity, length in props if solidity >= min_solidity]
    areas = np.array([a for a, _ in chosen], np.int64)
    lengths = np.array([length for _, length in chosen], np.float64)
    if areas.size:
        big = areas >= min_median_fraction * np.median(areas)
        areas, lengths = areas[big], lengths[big]
    return areas, lengths


def area_weighted_median(areas, *, weights=None, q: float = 0.5) -> float:
    """The value below which objects hold half the total area (the median of a pixel's object area).

    Many small specks hold little area and barely move it, unlike the plain
    median. With ``weights`` (the objects' areas), the same median of
    another size of the objects (``areas`` then holds those values); with
    ``q``, another quantile than the median.
    """
    values = np.asarray(areas, np.float64)
    weights = values if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][min(values.size - 1, int(np.searchsorted(cumulative, q * cumulative[-1])))])
