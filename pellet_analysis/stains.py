"""Stain model: optical density, named stain vectors and colour deconvolution.

Optical density follows Beer-Lambert with base-10 logarithms,
``OD = -log10(I / I0)``, where ``I0`` is the background (white point)
intensity per channel. A stain is a unit vector of OD in (R, G, B); a pixel's
OD is the sum of stain vectors weighted by concentrations. Stain matrices are
data (:data:`PRESETS`), rows are stains, columns are R, G, B.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .params import StainParams

__all__ = [
    "StainSet",
    "PRESETS",
    "get_preset",
    "intensity_range",
    "rgb_to_od",
    "od_to_rgb",
    "complete_matrix",
    "unmix",
    "separate_stains",
    "rgb_to_od_field",
    "estimate_background",
    "looks_like_glass",
    "fit_background_field",
    "evaluate_background_field",
    "estimate_stains_macenko",
    "estimate_stains_nmf",
    "angles_deg",
    "configured_stains",
    "choose_stains",
    "estimate_mode",
    "MATRIX_ROLES",
]


@dataclass(frozen=True)
class StainSet:
    """Named stain vectors with the tissue role each stains.

    Attributes
    ----------
    name : str
        Preset name.
    stains : tuple of str
        Stain names, one per row of ``vectors``.
    vectors : ndarray, shape (n_stains, 3)
        Unit OD vectors (R, G, B), float64.
    roles : dict
        Role (``proteoglycan``, ``collagen``, ``cytoplasm``, ``nuclei``,
        ``iron``, ``counterstain``) -> stain name.
    """

    name: str
    stains: tuple[str, ...]
    vectors: np.ndarray
    roles: dict = field(default_factory=dict)

    def __post_init__(self):
        vectors = np.asarray(self.vectors, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != 3 or vectors.shape[0] != len(self.stains):
            raise ValueError(f"stain set {self.name!r}: vectors must be (n_stains, 3)")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if np.any(norms <= 0) or not np.all(np.isfinite(vectors)):
            raise ValueError(f"stain set {self.name!r}: every vector must be finite and non-zero")
        object.__setattr__(self, "vectors", vectors / norms)
        for role, stain in self.roles.items():
            if stain not in self.stains:
                raise ValueError(f"stain set {self.name!r}: role {role!r} names unknown stain {stain!r}")

    def vector(self, stain: str) -> np.ndarray:
        """Unit OD vector of one stain."""
        return self.vectors[self.stains.index(stain)]

    def role_vector(self, role: str) -> np.ndarray | None:
        """Unit OD vector of the stain playing ``role``, or None."""
        stain = self.roles.get(role)
        return None if stain is None else self.vector(stain)

    def subset(self, stains) -> "StainSet":
        """A StainSet of some of these stains (in the order given)."""
        stains = tuple(stains)
        roles = {r: s for r, s in self.roles.items() if s in stains}
        return StainSet(self.name, stains, np.stack([self.vector(s) for s in stains]), roles)

    def with_vectors(self, vectors) -> "StainSet":
        """The same stains and roles with other vectors (e.g. estimated per image)."""
        return StainSet(self.name, self.stains, np.asarray(vectors, dtype=np.float64), dict(self.roles))

    def with_overrides(self, vectors: dict) -> "StainSet":
        """The same set with some stains' vectors replaced, ``{stain name: (r, g, b)}``."""
        unknown = sorted(set(vectors) - set(self.stains))
        if unknown:
            raise ValueError(f"stain set {self.name!r} has no stain {unknown[0]!r}; its stains are {', '.join(self.stains)}")
        return self.with_vectors([vectors.get(s, self.vector(s)) for s in self.stains])

    @classmethod
    def from_dict(cls, data: dict) -> "StainSet":
        """Inverse of :meth:`to_dict` (e.g. the stains an image was analysed with, from run.json)."""
        stains = tuple(data["stains"])
        return cls(data["name"], stains, np.array([data["stains"][s] for s in stains], dtype=np.float64), dict(data["roles"]))

    def to_dict(self) -> dict:
        """JSON-ready description (saved with every run)."""
        return {
            "name": self.name,
            "stains": {s: [round(float(v), 6) for v in self.vector(s)] for s in self.stains},
            "roles": dict(self.roles),
        }


def _preset(name, rows, roles) -> StainSet:
    return StainSet(name, tuple(rows), np.array(list(rows.values()), dtype=np.float64), roles)


#: Stain presets. Sources and derivations are given in docs/stains.md.
PRESETS: dict[str, StainSet] = {
    "ab-vg": _preset(
        "ab-vg",
        {
            "alcian_blue": (0.874622, 0.457711, 0.158256),
            "acid_fuchsin": (0.120, 0.860, 0.490),
            "picric_acid": (0.040, 0.170, 0.980),
            "weigert_hematoxylin": (0.600, 0.620, 0.500),
            "iron": (0.400, 0.570, 0.720),
        },
        {
            "proteoglycan": "alcian_blue",
            "collagen": "acid_fuchsin",
            "cytoplasm": "picric_acid",
            "nuclei": "weigert_hematoxylin",
            "iron": "iron",
        },
    ),
    "safranin-o": _preset(
        "safranin-o",
        {
            "safranin_o": (0.215, 0.643, 0.735),
            "fast_green": (0.98003, 0.14429, 0.13661),
            "hematoxylin": (0.650, 0.704, 0.286),
        },
        {"proteoglycan": "safranin_o", "collagen": "fast_green", "nuclei": "hematoxylin"},
    ),
    "alcian-nfr": _preset(
        "alcian-nfr",
        {
            "alcian_blue": (0.874622, 0.457711, 0.158256),
            "nuclear_fast_red": (0.39888, 0.83921, 0.36963),
        },
        {"proteoglycan": "alcian_blue", "nuclei": "nuclear_fast_red"},
    ),
    "he": _preset(
        "he",
        {"hematoxylin": (0.650, 0.704, 0.286), "eosin": (0.072, 0.990, 0.105)},
        {"nuclei": "hematoxylin", "counterstain": "eosin"},
    ),
    "h-dab": _preset(
        "h-dab",
        {"hematoxylin": (0.650, 0.704, 0.286), "dab": (0.268, 0.570, 0.776)},
        {"nuclei": "hematoxylin", "counterstain": "dab"},
    ),
}


def get_preset(name: str) -> StainSet:
    """Return the preset ``name`` or raise a one-line ``KeyError``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown stain preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None


def intensity_range(dtype) -> float:
    """Full-scale intensity of an image dtype (255 for uint8, 65535 for uint16, 1.0 for floats)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise TypeError(f"unsupported image dtype {dtype}")


def _broadcast_background(background, image_shape, channel_axis) -> np.ndarray:
    # a field stays in its own (float32) dtype: a float64 copy of a whole-window field is hundreds of MB
    bg = np.asarray(background)
    bg = bg if bg.ndim >= 2 and bg.dtype == np.float32 else bg.astype(np.float64)
    if bg.ndim == 1:
        shape = [1] * len(image_shape)
        shape[channel_axis] = bg.shape[0]
        bg = bg.reshape(shape)
    if bg.min() <= 0:
        raise ValueError("background intensity must be > 0 in every channel")
    return bg


def rgb_to_od(image, background=None, *, channel_axis=-1) -> np.ndarray:
    """Convert an RGB image to optical density, ``-log10(I / I0)``.

    Parameters
    ----------
    image : ndarray
        RGB image of any integer or float dtype.
    background : float, sequence of 3 floats or ndarray, optional
        ``I0`` in the image's intensity units: a scalar, one value per
        channel, or a field broadcastable to ``image``. Defaults to the
        dtype's full scale.
    channel_axis : int, keyword-only
        Axis of the colour channels.

    Returns
    -------
    od : ndarray of float32
        Optical density, 0 or more. Intensities are clipped to at least one
        part in 255 of ``I0`` (0.0039 for floats) so black stays finite.
    """
    image = np.asarray(image)
    full = intensity_range(image.dtype)
    if background is None:
        background = full
    bg = _broadcast_background(background, image.shape, channel_axis)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3 and channel_axis in (-1, 2):
        return _uint8_od(image, bg)
    floor = bg / 255.0 if np.issubdtype(image.dtype, np.floating) else 1.0
    intensity = np.maximum(image.astype(np.float32), np.asarray(floor, dtype=np.float32))
    od = -np.log10(intensity / bg.astype(np.float32))
    np.maximum(od, 0, out=od)
    return od.astype(np.float32, copy=False)


#: -log10 of each 8-bit intensity (0 taken as 1), for cv2.LUT. One table serves every channel: OpenCV
#: applies a single-channel table to each channel of a 3-channel image twice as fast as a table
#: with a column per channel (0.80 against 1.54 ms per megapixel here), with the same values.
_NEG_LOG_LUT = -np.log10(np.maximum(np.arange(256), 1.0)).astype(np.float32)

#: log10(e): natural logs (cv2.log) to base-10 optical density.
_LOG10_E = float(np.log10(np.e))


def _od_table(bg) -> np.ndarray:
    """cv2.LUT table of the OD of every 8-bit intensity against a constant I0 (one or three values), clipped at 0.

    One column when the channels share I0 (OpenCV's single-table path), else one per channel.
    """
    bg = np.broadcast_to(np.asarray(bg, dtype=np.float32).reshape(-1), (3,))
    table = np.maximum(_NEG_LOG_LUT[:, None] + np.log10(bg)[None, :], 0)
    return np.ascontiguousarray(table[:, 0]) if (bg == bg[0]).all() else table.reshape(256, 1, 3)


def _uint8_od(image, bg) -> np.ndarray:
    """:func:`rgb_to_od` of 8-bit RGB: one table look-up for a constant I0; for a field, ``+ log10(I0)`` in place after it."""
    image = np.ascontiguousarray(image)
    bg = np.asarray(bg, dtype=np.float32)
    if bg.size <= 3:  # a scalar or one value per channel (broadcast to (1, 1, 3))
        return cv2.LUT(image, _od_table(bg))
    od = cv2.LUT(image, _NEG_LOG_LUT)
    od += np.log10(bg)
    np.maximum(od, 0, out=od)
    return od


def od_to_rgb(od, background=255.0, *, dtype=np.uint8, channel_axis=-1) -> np.ndarray:
    """Render optical density back to intensities, ``I0 * 10**-OD``.

    Parameters
    ----------
    od : ndarray
        Optical density.
    background : float, sequence or ndarray
        ``I0`` in the output dtype's units.
    dtype : dtype, keyword-only
        Output dtype; integers are rounded and clipped to their range.
    channel_axis : int, keyword-only
    """
    od = np.asarray(od, dtype=np.float64)
    bg = _broadcast_background(background, od.shape, channel_axis)
    out = bg * np.power(10.0, -od)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    return out.astype(dtype)


def complete_matrix(vectors) -> np.ndarray:
    """Return a 3 x 3 matrix of unit stain vectors (rows).

    One or two vectors are completed with the normalised cross product (and,
    for one, a vector orthogonal to it), as in Ruifrok & Johnston 2001.
    """
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    if v.shape[0] > 3:
        raise ValueError("at most three stains can be separated in three channels")
    if v.shape[0] == 1:
        helper = np.array([0.0, 0.0, 1.0]) if abs(v[0, 2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        second = np.cross(v[0], helper)
        v = np.vstack([v, second / np.linalg.norm(second)])
    if v.shape[0] == 2:
        third = np.cross(v[0], v[1])
        norm = np.linalg.norm(third)
        if norm < 1e-8:
            raise ValueError("stain vectors are parallel")
        v = np.vstack([v, third / norm])
    return v


def unmix(od, vectors, *, channel_axis=-1, out=None) -> np.ndarray:
    """Colour deconvolution: stain concentrations from optical density.

    Solves ``od = c @ M`` per pixel with ``M`` the 3 x 3 matrix completed by
    :func:`complete_matrix` (least squares when fewer than three stains).

    Parameters
    ----------
    od : ndarray
        Optical density with 3 channels on ``channel_axis``.
    vectors : array_like, shape (n_stains, 3)
        Stain OD vectors (rows), 1 to 3 of them.
    channel_axis : int, keyword-only
    out : ndarray of float32, optional, keyword-only
        C-contiguous, of ``od``'s shape with ``n_stains`` channels (channels
        last): the concentrations are written there. It may be ``od`` itself
        (three stains), whose memory is then reused instead of a new array
        as large.

    Returns
    -------
    conc : ndarray of float32
        Concentrations (OD units along each unit vector); the channel axis
        holds the ``n_stains`` given (the completing residual is dropped).
        Values may be negative where a pixel is not explained by the stains.
    """
    if out is not None and channel_axis not in (-1, np.ndim(od) - 1):
        raise ValueError("unmix writes into out only with the channels last")
    od = np.moveaxis(np.asarray(od, dtype=np.float32), channel_axis, -1)
    conc = _rows_transform(od, _unmixing_rows(vectors), out=out)
    return np.moveaxis(conc, -1, channel_axis)


def _unmixing_rows(vectors) -> np.ndarray:
    """Rows of the inverse stain matrix giving each given stain's concentration from OD (float32)."""
    n = np.atleast_2d(vectors).shape[0]
    matrix = complete_matrix(vectors)
    if np.linalg.cond(matrix) > 1e6:
        raise ValueError("stain vectors are (nearly) parallel: the stain matrix is singular")
    return np.linalg.inv(matrix).T[:n].astype(np.float32)


#: Pixels per block of the fused colour deconvolution (a whole number of rows): the block's optical
#: density and its three concentrations (12 bytes a pixel each) stay in the core's cache. On
#: the benchmark's three pellet windows (38 MP, two threads, fresh output each time, best of 15):
#: 0.086-0.091 s against 0.102-0.117 s for blocks of 2^20 px handed to the threads in turn
#: (skimage: 1.08 s); in a prototype, blocks of 2^15-2^17 px took 0.083 s and 2^14 px 0.093 s.
_BLOCK_PX = 2**16


def _rows_transform(od, matrix, lut=None, out=None) -> np.ndarray:
    """``od @ matrix.T`` per pixel (float32), block by block of rows with OpenCV; ``lut`` first maps uint8 input to OD.

    ``out``, when given, receives the result; it may be ``od`` itself
    (OpenCV's 3 x 3 transform reads each pixel before it writes it:
    ``test_unmix_into_its_own_input_gives_the_same_concentrations``).

    The rows are split into one contiguous span per thread (as many as
    OpenCV may use, ``cv2.getNumThreads()``; pipeline tasks set it to one,
    as Dask supplies their parallelism). Each thread walks its span in
    blocks of :data:`_BLOCK_PX` pixels through one reused buffer, so the
    optical density never leaves the cache, and it alone first touches its
    part of the output (no two threads fault in the same huge page).
    """
    shape = od.shape[:-1] + (matrix.shape[0],)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")
    if od.ndim != 3 or od.shape[0] * od.shape[1] == 0:
        out[...] = np.asarray(od, np.float32) @ matrix.T.astype(np.float32)
        return out
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    step = max(1, _BLOCK_PX // od.shape[1])

    def span(start, stop):
        buffer = np.empty((min(step, stop - start),) + od.shape[1:], np.float32)
        for r in range(start, stop, step):
            rows = od[r : min(r + step, stop)]
            if lut is not None:
                block = cv2.LUT(rows, lut, dst=buffer[: rows.shape[0]])
            elif rows.dtype == np.float32 and rows.flags.c_contiguous:
                block = rows
            else:
                block = buffer[: rows.shape[0]]
                block[...] = rows
            target = out[r : r + rows.shape[0]]
            if m.shape[0] > 1:
                cv2.transform(block, m, dst=target)  # straight into the output rows: no copy
            else:
                target[..., 0] = cv2.transform(block, m)

    n_rows = od.shape[0]
    threads = max(1, min(cv2.getNumThreads(), -(-n_rows // step)))
    bounds = [n_rows * k // threads for k in range(threads + 1)]
    if threads == 1:
        span(0, n_rows)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:  # OpenCV releases the GIL
            list(pool.map(span, bounds[:-1], bounds[1:]))
    return out


def separate_stains(rgb, vectors, background=255.0, *, channel_axis=-1) -> np.ndarray:
    """Stain concentrations straight from an 8-bit RGB image: :func:`rgb_to_od` and :func:`unmix` fused.

    A 256-entry table per channel gives the optical density of every 8-bit
    intensity (``background`` constant per channel); a 3 x 3 transform per
    block of rows, while the block is in the CPU cache, gives the
    concentrations. Same numbers as ``unmix(rgb_to_od(rgb, background), vectors)``.

    Parameters
    ----------
    rgb : ndarray of uint8
    vectors : array_like, shape (n_stains, 3)
    background : float or sequence of 3 floats
        ``I0`` per channel (constant; for a flat-field surface use
        :func:`rgb_to_od` and :func:`unmix`).
    channel_axis : int, keyword-only

    Returns
    -------
    ndarray of float32
        ``n_stains`` concentrations on ``channel_axis``.
    """
    rgb = np.moveaxis(np.asarray(rgb), channel_axis, -1)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3 or rgb.ndim != 3:
        return np.moveaxis(unmix(rgb_to_od(rgb, background), vectors), -1, channel_axis)
    conc = _rows_transform(np.ascontiguousarray(rgb), _unmixing_rows(vectors), lut=_od_table(background))
    return np.moveaxis(conc, -1, channel_axis)


def estimate_background(image, tissue_mask=None, *, channel_axis=-1, percentile=50.0) -> np.ndarray:
    """Estimate the background intensity ``I0`` per channel.

    Parameters
    ----------
    image : ndarray
        RGB image.
    tissue_mask : ndarray of bool, optional
        Pixels to leave out; when None, the brightest 10 % of pixels (by
        channel sum) are taken as background.
    channel_axis : int, keyword-only
    percentile : float, keyword-only
        Percentile of the background pixels taken per channel.

    Returns
    -------
    ndarray of float64, shape (3,)
    """
    rgb = np.moveaxis(np.asarray(image), channel_axis, -1).reshape(-1, 3).astype(np.float64)
    if tissue_mask is not None:
        keep = ~np.asarray(tissue_mask, dtype=bool).reshape(-1)
        if keep.sum() >= 100:
            rgb = rgb[keep]
        else:
            tissue_mask = None
    if tissue_mask is None:
        total = rgb.sum(axis=1)
        rgb = rgb[total >= np.percentile(total, 90)]
    full = intensity_range(np.asarray(image).dtype)
    return np.clip(np.percentile(rgb, percentile, axis=0), full / 255.0, None)


def looks_like_glass(white, dtype) -> bool:
    """Whether a first white point (:func:`estimate_background` without a mask) is bare glass or a lumen.

    Glass is near-neutral and the brightest part of the image. Where tissue
    fills the image the brightest tenth of the pixels is tissue: coloured, as
    pale eosin is (its weakest channel under 0.8 of its strongest; glass and
    lumina on H&E tiles and pellet scans measured 0.89-0.98, synthetic tiles
    of packed eosin 0.59-0.75), or dark (mean under half of full scale). A
    hazy scan's glass is neutral grey (a veil of OD 0.15 leaves 0.7 of full
    scale), and still glass: whether tissue fills such a frame is decided by
    the tissue found against it (:func:`~pellet_analysis.pellets.fills_frame`).

    Parameters
    ----------
    white : array-like, shape (3,)
    dtype : dtype
        The image's dtype (its full scale).

    Returns
    -------
    bool
    """
    white = np.asarray(white, dtype=np.float64)
    return bool(white.mean() >= 0.5 * intensity_range(dtype) and white.min() >= 0.8 * white.max())


def _poly_terms(rows, cols, order):
    return np.stack([rows**i * cols**j for i in range(order + 1) for j in range(order + 1 - i)], axis=-1)


def fit_background_field(image, tissue_mask, *, order=2, channel_axis=-1, max_samples=20000, seed=0):
    """Fit a smooth per-channel background surface (flat field).

    A polynomial of ``order`` in normalised row and column is fitted, by
    least squares, to background pixels of each channel.

    Parameters
    ----------
    image : ndarray
        RGB image (any size; a low-resolution copy is enough).
    tissue_mask : ndarray of bool
        True on tissue; those pixels are left out of the fit.
    order : int, keyword-only
    channel_axis : int, keyword-only
    max_samples : int, keyword-only
        Background pixels sampled for the fit.
    seed : int, keyword-only

    Returns
    -------
    coefficients : ndarray, shape (n_terms, 3)
        Use :func:`evaluate_background_field` to render it at any size.
        None when too few background pixels exist (tissue fills the image).
    """
    rgb = np.moveaxis(np.asarray(image), channel_axis, -1).astype(np.float64)
    h, w = rgb.shape[:2]
    rows, cols = np.nonzero(~np.asarray(tissue_mask, dtype=bool))
    if rows.size < max(200, 0.05 * h * w):
        return None
    if rows.size > max_samples:
        pick = np.random.default_rng(seed).choice(rows.size, max_samples, replace=False)
        rows, cols = rows[pick], cols[pick]
    terms = _poly_terms(rows / max(h - 1, 1), cols / max(w - 1, 1), order)
    values = rgb[rows, cols]
    coef, *_ = np.linalg.lstsq(terms, values, rcond=None)
    # one robust pass: drop the worst 10 % residuals (dust, pellet halo) and refit
    resid = np.abs(values - terms @ coef).sum(axis=1)
    keep = resid <= np.percentile(resid, 90)
    coef, *_ = np.linalg.lstsq(terms[keep], values[keep], rcond=None)
    return coef


def _field_factors(coef, shape, order, window):
    """The polynomial field as products: row powers (rows x order+1) @ per-channel column factors (order+1 x cols), float32.

    ``sum_i r**i * (sum_j a_ij c**j)``: any block of rows of the field is a
    small matrix product per channel, the same numbers whatever the block.
    """
    window = window or (slice(0, shape[0]), slice(0, shape[1]))
    r, c = (
        np.arange(*s.indices(n)[:2], dtype=np.float64) / max(n - 1, 1) for s, n in zip(window, shape)
    )
    powers = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    coef = np.asarray(coef, dtype=np.float64)
    row_powers = np.stack([r**i for i in range(order + 1)], axis=1).astype(np.float32)
    by_row_power = []
    for ch in range(3):
        factors = np.zeros((order + 1, c.size))
        for k, (i, j) in enumerate(powers):
            factors[i] += coef[k, ch] * c**j
        by_row_power.append(factors.astype(np.float32))
    return row_powers, by_row_power


def _field_rows(row_powers, by_row_power) -> np.ndarray:
    """Rows of the field, channels interleaved, floored at 1/255 (float32)."""
    planes = [row_powers @ factors for factors in by_row_power]
    out = cv2.merge(planes) if planes[0].size else np.zeros((row_powers.shape[0], by_row_power[0].shape[1], 3), np.float32)
    return np.clip(out, 1.0 / 255.0, None, out=out)


def evaluate_background_field(coef, shape, *, order=2, dtype=np.float32, window=None) -> np.ndarray:
    """Render background coefficients from :func:`fit_background_field` at ``shape`` (rows, cols).

    Each term ``r**i * c**j`` is an outer product, so every channel is one
    small matrix product (rows x terms @ terms x cols). ``window``, a pair of
    slices, renders only that part of the image.
    """
    return _field_rows(*_field_factors(coef, shape, order, window)).astype(dtype, copy=False)


#: Pixels per block of :func:`rgb_to_od_field`: the block's field, its log and its table look-up stay in the CPU cache.
_OD_BLOCK_PX = 2**16


def rgb_to_od_field(rgb, coef, shape, *, order=2, window=None) -> np.ndarray:
    """Optical density against a polynomial background field, without rendering the field whole.

    The same numbers as ``rgb_to_od(rgb, evaluate_background_field(coef,
    shape, order=order, window=window))``, block by block of rows: only the
    result is as large as the image. On a 3,550 x 2,974 pellet window that
    is one window-sized float32 array instead of four.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
        The image, or its ``window`` of the image of ``shape``.
    coef : ndarray, shape (n_terms, 3)
        From :func:`fit_background_field`.
    shape : tuple
        (rows, cols) of the whole image the field was fitted on.
    order : int, keyword-only
    window : pair of slices, optional, keyword-only

    Returns
    -------
    ndarray of float32
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        return rgb_to_od(rgb, evaluate_background_field(coef, shape, order=order, window=window))
    row_powers, by_row_power = _field_factors(coef, shape, order, window)
    if row_powers.shape[0] != rgb.shape[0] or by_row_power[0].shape[1] != rgb.shape[1]:
        raise ValueError(f"image of {rgb.shape[:2]} pixels does not match the field's window of {(row_powers.shape[0], by_row_power[0].shape[1])}")
    out = np.empty(rgb.shape, np.float32)
    step = max(1, _OD_BLOCK_PX // max(rgb.shape[1], 1))
    rgb = np.ascontiguousarray(rgb)
    for r in range(0, rgb.shape[0], step):
        log_field = cv2.log(_field_rows(row_powers[r : r + step], by_row_power))  # natural log: 3.2e-7 from exact, 1/10 of np.log10's time
        od = cv2.scaleAdd(log_field, _LOG10_E, cv2.LUT(rgb[r : r + step], _NEG_LOG_LUT))
        np.maximum(od, 0, out=out[r : r + step])
    return out


def estimate_stains_macenko(od, *, min_od: float = 0.151, percentile: float = 1.0, channel_axis=-1, mask=None) -> np.ndarray:
    """Estimate two stain vectors from an image's own pixels (Macenko et al., ISBI 2009).

    The principal plane of the optical densities (singular vectors of the
    uncentred OD matrix) is found from all pixels; pixels whose projection on
    that plane is longer than ``min_od`` are kept, their angle in the plane is
    ranked, and the pixels at the ``percentile`` and ``100 - percentile``
    ranks give the two stain directions.

    Parameters
    ----------
    od : ndarray
        Optical density, 3 channels on ``channel_axis``.
    min_od : float, keyword-only
        Smallest in-plane OD magnitude of a pixel used for the angles
        (0.151 is Macenko's 0.15 on HistomicsTK's scale).
    percentile : float, keyword-only
        Robust extremes of the angle distribution, in percent.
    channel_axis : int, keyword-only
    mask : ndarray of bool, optional, keyword-only
        Pixels to use (e.g. the pellet); default all.

    Returns
    -------
    ndarray, shape (2, 3)
        Unit stain vectors (rows), non-negative in their largest component,
        ordered by angle.

    Raises
    ------
    ValueError
        When fewer than 10 pixels pass ``min_od``.
    """
    od = np.moveaxis(np.asarray(od, dtype=np.float64), channel_axis, -1)
    pixels = od.reshape(-1, 3)
    if mask is not None:
        pixels = pixels[np.asarray(mask, bool).reshape(-1)]
    pixels = pixels[np.isfinite(pixels).all(axis=1)]
    u, _, _ = np.linalg.svd(pixels.T, full_matrices=False)
    plane = u[:, :2] * np.where(u[:, :2].sum(axis=0) < 0, -1.0, 1.0)  # OD is positive: orient the axes along it
    proj = pixels @ plane
    keep = np.hypot(proj[:, 0], proj[:, 1]) > min_od
    if keep.sum() < 10:
        raise ValueError(f"only {int(keep.sum())} pixels above {min_od} OD: too few to estimate stains")
    proj = proj[keep]
    angles = np.arctan2(proj[:, 1], proj[:, 0])
    order = np.argsort(angles, kind="stable")

    def at(p):
        i = min(len(order) - 1, int(p / 100.0 * len(order) + 0.5))
        return plane @ proj[order[i]]

    vectors = np.stack([at(percentile), at(100.0 - percentile)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    signs = np.where(vectors[np.arange(2), np.abs(vectors).argmax(axis=1)] < 0, -1.0, 1.0)
    return vectors * signs[:, None]


def estimate_stains_nmf(od, init, *, free=None, sparsity: float = 0.003, n_iter: int = 300, channel_axis=-1, mask=None) -> np.ndarray:
    """Refine stain vectors by sparse non-negative matrix factorisation of optical densities.

    Minimises ``||X - C V||^2 + sparsity * sum(C)`` over non-negative
    concentrations ``C`` and unit stain vectors ``V`` (rows) with Lee & Seung
    multiplicative updates, starting from ``init``. The L1 term on the
    concentrations makes each pixel prefer few stains, which moves the
    vectors towards the pixels of pure stain (the edges of the data cone);
    without it more stains than channels would have no unique solution.

    Parameters
    ----------
    od : ndarray
        Optical density, 3 channels on ``channel_axis`` (a pixel sample is enough).
    init : array_like, shape (n_stains, 3)
        Starting vectors, e.g. a preset's.
    free : sequence of bool, optional, keyword-only
        Which rows are refined; the others stay fixed (e.g. near-neutral dark
        stains that absorb the grey of nuclei). Default: all.
    sparsity : float, keyword-only
        Weight of the L1 term, in OD units.
    n_iter : int, keyword-only
    channel_axis : int, keyword-only
    mask : ndarray of bool, optional, keyword-only
        Pixels to use; default all.

    Returns
    -------
    ndarray, shape (n_stains, 3)
        Unit, non-negative stain vectors in the order of ``init``.
    """
    x = np.moveaxis(np.asarray(od, dtype=np.float64), channel_axis, -1).reshape(-1, 3)
    if mask is not None:
        x = x[np.asarray(mask, bool).reshape(-1)]
    x = np.maximum(x[np.isfinite(x).all(axis=1)], 0)
    v = np.maximum(np.atleast_2d(np.asarray(init, dtype=np.float64)), 1e-6)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    free = np.ones(len(v), bool) if free is None else np.asarray(free, bool)
    c = np.maximum(x @ np.linalg.pinv(v), 1e-6)
    eps = 1e-12
    for _ in range(n_iter):
        c *= (x @ v.T) / (c @ (v @ v.T) + sparsity + eps)
        updated = v * (c.T @ x) / ((c.T @ c) @ v + eps)
        v[free] = updated[free]
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        v /= norms
        c *= norms.T  # same product C V, so the L1 term cannot shrink by scaling
    # the L1 term biases stains of few pixels (nuclei) outwards: end with the mean direction of
    # the pixels each free stain dominates (80 % or more of their concentration), where there are enough
    share = c / (c.sum(axis=1, keepdims=True) + eps)
    for k in np.flatnonzero(free):
        pure = share[:, k] >= 0.8
        if pure.sum() >= 30:
            mean = x[pure].sum(axis=0)
            v[k] = mean / np.linalg.norm(mean)
    return v


def angles_deg(a, b) -> np.ndarray:
    """Angle in degrees between corresponding rows of two arrays of vectors."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def configured_stains(params: StainParams) -> StainSet:
    """The preset named in ``params.preset`` with its ``vectors`` overrides applied."""
    preset = get_preset(params.preset)
    return preset.with_overrides(params.vectors) if params.vectors else preset


#: Largest condition number of an estimated (completed) stain matrix; the presets have 2.8-5.5.
MAX_CONDITION = 20.0
#: In-pellet pixels with an OD vector longer than this count as stained (Macenko's 0.15).
STAINED_MIN_OD = 0.15


#: Roles of matrix stains; a set with none of them (he, h-dab) has nuclei as its only objects.
MATRIX_ROLES = frozenset({"iron", "proteoglycan", "collagen"})


def estimate_mode(stains: StainSet, params: StainParams) -> str:
    """``params.estimate`` resolved: unset, "auto" for a stain set without a matrix stain and no vectors given, else "off"."""
    if params.estimate is not None:
        return params.estimate
    return "off" if params.vectors or MATRIX_ROLES & set(stains.roles) else "auto"


def choose_stains(od, mask, preset: StainSet, params: StainParams, *, pixel_size_um: float, names=None, max_pixels: int = 20000, seed: int = 0):
    """Stain vectors estimated from an image's own (pellet) pixels, or the preset when implausible.

    Two-stain sets are estimated with :func:`estimate_stains_macenko`, larger
    ones with :func:`estimate_stains_nmf` started from the preset, refining
    only ``names`` and keeping the other stains fixed. The estimate is used
    only when enough pixels are stained, every refined vector lies within
    ``params.estimate_max_angle_deg`` of its preset vector and the completed
    matrix is well conditioned; otherwise the preset is returned.

    Parameters
    ----------
    od : ndarray, shape (rows, cols, 3)
        Optical density.
    mask : ndarray of bool, shape (rows, cols)
        Pixels to learn from (the pellets).
    preset : StainSet
        Stains as configured (preset with any user vectors).
    params : StainParams
        ``estimate`` ("off" or "auto"), ``estimate_max_angle_deg``,
        ``estimate_min_stained_um2``.
    pixel_size_um : float, keyword-only
    names : sequence of str, optional, keyword-only
        Stains to estimate (at most three; e.g. those separated by colour
        deconvolution). Default: all when at most three, else the first three.
    max_pixels : int, keyword-only
        Stained pixels sampled (fixed ``seed``: the result is reproducible).

    Returns
    -------
    stains : StainSet
    info : dict
        ``source`` ("estimated-macenko", "estimated-nmf" or "preset"),
        ``reason`` (why), ``angles_deg`` (stain -> angle between estimate and
        preset, when estimated) and ``n_stained_px``.
    """
    names = list(names) if names is not None else list(preset.stains[:3])
    if estimate_mode(preset, params) == "off":
        return preset, {"source": "preset", "reason": "stains.estimate is off"}
    pixels = np.asarray(od).reshape(-1, 3)[np.flatnonzero(np.asarray(mask, bool).reshape(-1))]
    pixels = pixels[np.linalg.norm(pixels, axis=1) > STAINED_MIN_OD]
    info = {"n_stained_px": int(len(pixels))}
    stained_um2 = len(pixels) * pixel_size_um**2
    if stained_um2 < params.estimate_min_stained_um2:
        return preset, {**info, "source": "preset", "reason": f"only {stained_um2:.0f} µm² stained (< stains.estimate_min_stained_um2)"}
    if len(pixels) > max_pixels:
        pixels = pixels[np.sort(np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False))]
    rows = [preset.stains.index(n) for n in names]
    vectors = preset.vectors.copy()
    if len(names) == 2 and len(preset.stains) == 2:
        source = "estimated-macenko"
        try:
            pair = estimate_stains_macenko(pixels)
        except ValueError as error:
            return preset, {**info, "source": "preset", "reason": str(error)}
        # the two extremes carry no names: pair them with the preset's vectors by the smaller total angle
        if angles_deg(pair[::-1], vectors[rows]).sum() < angles_deg(pair, vectors[rows]).sum():
            pair = pair[::-1]
        vectors[rows] = pair
    else:
        source = "estimated-nmf"
        vectors = estimate_stains_nmf(pixels, vectors, free=np.isin(np.arange(len(vectors)), rows))
    angles = angles_deg(vectors[rows], preset.vectors[rows])
    info["angles_deg"] = {n: round(float(a), 2) for n, a in zip(names, angles)}
    worst = int(np.argmax(angles))
    if angles[worst] > params.estimate_max_angle_deg:
        reason = f"{names[worst]} estimated {angles[worst]:.1f}° from the preset (> stains.estimate_max_angle_deg)"
        return preset, {**info, "source": "preset", "reason": reason}
    try:
        condition = float(np.linalg.cond(complete_matrix(vectors[rows])))
    except ValueError:
        condition = np.inf
    if condition > MAX_CONDITION:
        return preset, {**info, "source": "preset", "reason": f"estimated matrix ill-conditioned (condition number {condition:.3g})"}
    return preset.with_vectors(vectors), {**info, "source": source, "reason": f"plausible: within {params.estimate_max_angle_deg:g}° of the preset"}
