"""Synthetic H&E tiles where the tissue fills the frame, with exact nucleus instances.

A proxy for 40x H&E fields of view (MoNuSeg-like tiles, PNG without a pixel
size): hematoxylin nuclei on eosin stroma and cytoplasm, nowhere glass.
Epithelial nests hold crowded, touching nuclei of varied size and shape, many
pale and vesicular (a faint interior, a darker membrane, a nucleolus); the
stroma between them holds thin spindle nuclei and small dark lymphocytes.
Concentration maps are built in micrometres, rendered by Beer-Lambert with a
random stain hue drift, then blurred, with sensor noise and optional JPEG.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

from .stains import PRESETS, StainSet, od_to_rgb
from .synthetic import _smooth_noise, jitter_stains

__all__ = ["HETileParams", "HETile", "he_tile_params", "make_he_tile"]


@dataclass
class HETileParams:
    """Parameters of one synthetic H&E tile (units in the names)."""

    size_px: int = 512
    pixel_size_um: float = 0.25
    nest_fraction: float = 0.55  # share of the tile in epithelial nests (crowded nuclei)
    pale_fraction: float = 0.4  # share of nest nuclei that are pale and vesicular
    lumen_fraction: float = 0.04  # share of the tile that is near-white lumen or vacuole
    hue_jitter_deg: float = 4.0
    blur_sigma_um: float = 0.35
    noise_sigma: float = 2.5
    jpeg_quality: int | None = None
    background_rgb: tuple[float, float, float] = (245.0, 242.0, 246.0)
    seed: int = 0


@dataclass
class HETile:
    """A rendered tile and its truth."""

    image: np.ndarray  # uint8 RGB
    nuclei: np.ndarray  # uint32 instances
    pixel_size_um: float
    stains: StainSet
    params: HETileParams


def he_tile_params(rng, *, size_px: int = 512) -> dict:
    """Random parameters of one tile: pixel size 0.22-0.3 µm, nest share, pale share, blur, noise, JPEG or not."""
    return {
        "size_px": int(size_px),
        "pixel_size_um": float(rng.uniform(0.22, 0.3)),
        "nest_fraction": float(rng.uniform(0.35, 0.7)),
        "pale_fraction": float(rng.uniform(0.2, 0.6)),
        "lumen_fraction": float(rng.uniform(0.0, 0.08)),
        "hue_jitter_deg": 4.0,
        "blur_sigma_um": float(rng.uniform(0.25, 0.5)),
        "noise_sigma": float(rng.uniform(1.5, 4.0)),
        "jpeg_quality": None if rng.random() < 0.5 else int(rng.integers(80, 96)),
        "background_rgb": tuple(float(v) for v in rng.uniform(232, 250, 3)),
        "seed": int(rng.integers(2**31)),
    }


def _nucleus_kinds(n: int, in_nest: np.ndarray, pale_fraction: float, rng) -> list[str]:
    """epithelial-dark / epithelial-pale in nests; spindle / lymphocyte in the stroma."""
    kinds = []
    for k in range(n):
        if in_nest[k]:
            kinds.append("pale" if rng.random() < pale_fraction else "dark")
        else:
            kinds.append("lymphocyte" if rng.random() < 0.45 else "spindle")
    return kinds


def _shape_um(kind: str, rng) -> tuple[float, float]:
    """Semi-axes (µm) of a nucleus of this kind."""
    if kind == "lymphocyte":
        a = rng.uniform(2.3, 3.3)
        return a, a * rng.uniform(0.85, 1.0)
    if kind == "spindle":
        return rng.uniform(4.5, 8.0), rng.uniform(1.3, 2.2)
    a = rng.uniform(3.2, 6.5) if kind == "pale" else rng.uniform(2.8, 5.5)
    return a, a * rng.uniform(0.6, 0.95)


def _place(mask_um, density_um2: float, spacing: float, shape, px, rng, *, max_radius_um: float):
    """Centres (px) thrown at random into ``mask_um`` with at most ``density_um2`` per µm² and a minimum distance factor."""
    rows, cols = np.nonzero(mask_um)
    n_target = int(rows.size * px * px * density_um2)
    centres, radii = [], []
    grid = {}
    cell = max(1, int(2 * max_radius_um / px))
    for _ in range(n_target * 20):
        if len(centres) >= n_target:
            break
        i = rng.integers(rows.size)
        r, c = rows[i] + rng.uniform(-0.5, 0.5), cols[i] + rng.uniform(-0.5, 0.5)
        radius = rng.uniform(2.5, max_radius_um) / px
        key = (int(r) // cell, int(c) // cell)
        clash = any(
            np.hypot(qr - r, qc - c) < spacing * (qrad + radius)
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
            for qr, qc, qrad in grid.get((key[0] + dr, key[1] + dc), ())
        )
        if clash:
            continue
        grid.setdefault(key, []).append((r, c, radius))
        centres.append((r, c))
        radii.append(radius)
    return centres, radii


def _outline(a_px: float, b_px: float, rng):
    """Radius as a function of angle: an ellipse with a few random low harmonics (irregular outlines)."""
    harmonics = [(k, rng.uniform(0, 0.06), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)]

    def radius(theta):
        base = a_px * b_px / np.sqrt((b_px * np.cos(theta)) ** 2 + (a_px * np.sin(theta)) ** 2)
        return base * (1 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in harmonics))

    return radius


def _draw_nucleus(hema, labels, idx, centre, kind, px, rng, chromatin):
    """Paint one nucleus's hematoxylin and its instance (drawn over earlier ones where they overlap)."""
    a_um, b_um = _shape_um(kind, rng)
    a, b = a_um / px, b_um / px
    radius = _outline(a, b, rng)
    angle = rng.uniform(-np.pi, np.pi)
    reach = int(np.ceil(1.4 * a)) + 2
    r0, c0 = int(centre[0]) - reach, int(centre[1]) - reach
    rr, cc = np.mgrid[r0 : r0 + 2 * reach + 1, c0 : c0 + 2 * reach + 1]
    ok = (rr >= 0) & (rr < labels.shape[0]) & (cc >= 0) & (cc < labels.shape[1])
    dr, dc = rr - centre[0], cc - centre[1]
    theta = np.arctan2(dr, dc) - angle
    rel = np.hypot(dr, dc) / np.maximum(radius(theta), 1e-6)  # < 1 inside
    inside = ok & (rel < 1)
    if not inside.any():
        return
    level = {"dark": rng.uniform(0.75, 1.2), "pale": rng.uniform(0.28, 0.5), "lymphocyte": rng.uniform(1.0, 1.5), "spindle": rng.uniform(0.6, 1.0)}[kind]
    value = level * chromatin[rr[inside], cc[inside]]
    if kind == "pale":
        # vesicular: a darker membrane, chromatin clumps and a nucleolus
        value = value * (1 + 0.8 * np.clip((rel[inside] - 0.75) / 0.25, 0, 1))
        nr, nc = centre[0] + rng.uniform(-0.3, 0.3) * b, centre[1] + rng.uniform(-0.3, 0.3) * b
        nucleolus = np.hypot(rr[inside] - nr, cc[inside] - nc) < max(1.0, 0.7 / px)
        value = np.where(nucleolus, value + rng.uniform(0.4, 0.8), value)
    hema[rr[inside], cc[inside]] = value.astype(np.float32)
    labels[rr[inside], cc[inside]] = idx


def make_he_tile(params: HETileParams | None = None, **overrides) -> HETile:
    """Render one full-frame H&E tile and its nucleus instances.

    Parameters
    ----------
    params : HETileParams, optional
    **overrides
        Fields of :class:`HETileParams` to replace.

    Returns
    -------
    HETile
        ``image`` uint8 RGB (size_px x size_px), ``nuclei`` uint32 instances
        (a nucleus drawn later covers an earlier one where they overlap).
    """
    p = params or HETileParams()
    if overrides:
        p = HETileParams(**{**p.__dict__, **overrides})
    rng = np.random.default_rng(p.seed)
    px = float(p.pixel_size_um)
    shape = (int(p.size_px), int(p.size_px))
    stains = jitter_stains(PRESETS["he"], p.hue_jitter_deg, rng)

    # ---- architecture: nests (crowded epithelium), stroma, a few lumina
    field_ = _smooth_noise(shape, 18.0 / px, rng)
    nest = field_ > np.quantile(field_, 1 - p.nest_fraction)
    lumen_field = _smooth_noise(shape, 6.0 / px, rng)
    lumen = (lumen_field > np.quantile(lumen_field, 1 - p.lumen_fraction)) if p.lumen_fraction > 0 else np.zeros(shape, bool)
    lumen &= ndi.distance_transform_edt(~nest) * px > 4.0  # lumina and vacuoles lie in the stroma here
    # ---- nuclei
    hema = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint32)
    chromatin = (1 + 0.18 * _smooth_noise(shape, 0.6 / px, rng)).astype(np.float32)
    nest_centres, _ = _place(nest, 1 / 70.0, 0.8, shape, px, rng, max_radius_um=6.5)
    stroma_centres, _ = _place(~nest & ~lumen, 1 / 260.0, 1.0, shape, px, rng, max_radius_um=6.0)
    centres = nest_centres + stroma_centres
    in_nest = np.array([True] * len(nest_centres) + [False] * len(stroma_centres))
    order = rng.permutation(len(centres))
    kinds = _nucleus_kinds(len(centres), in_nest, p.pale_fraction, rng)
    for idx, k in enumerate(order, start=1):
        _draw_nucleus(hema, labels, idx, centres[k], kinds[k], px, rng, chromatin)
    nuclei_mask = labels > 0
    # ---- eosin: fibrous stroma, granular cytoplasm in nests, little in lumina
    fibres = _smooth_noise(shape, 0.8 / px, rng)
    stroma_eosin = 0.45 + 0.12 * _smooth_noise(shape, 10.0 / px, rng) + 0.12 * fibres
    cyto_eosin = 0.3 + 0.08 * _smooth_noise(shape, 8.0 / px, rng) + 0.06 * _smooth_noise(shape, 0.5 / px, rng)
    eosin = np.where(nest, cyto_eosin, stroma_eosin).astype(np.float32)
    eosin = np.where(lumen, 0.03, eosin) * rng.uniform(0.75, 1.25)
    eosin = np.where(nuclei_mask, 0.12, eosin)
    # hematoxylin haze in tissue (basophilic cytoplasm, mucin), none in lumina
    haze = np.where(lumen, 0.0, 0.07 + 0.04 * _smooth_noise(shape, 4.0 / px, rng)).astype(np.float32)
    hema = np.maximum(hema, np.clip(haze, 0, None))
    od = np.clip(eosin, 0, None)[..., None] * stains.vector("eosin") + hema[..., None] * stains.vector("hematoxylin")
    # ---- optics, sensor, compression
    sigma_px = p.blur_sigma_um / px
    intensity = (10.0 ** (-od)).astype(np.float32)
    if sigma_px > 0:
        intensity = np.stack([ndi.gaussian_filter(intensity[..., ch], sigma_px) for ch in range(3)], axis=-1)
    od = -np.log10(np.clip(intensity, 1e-6, None))
    image = od_to_rgb(od, np.asarray(p.background_rgb, np.float32), dtype=np.float32)
    image += rng.normal(0, p.noise_sigma, size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if p.jpeg_quality:
        _, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(p.jpeg_quality)])
        image = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return HETile(image=image, nuclei=_relabel(labels), pixel_size_um=px, stains=stains, params=p)


def _relabel(labels) -> np.ndarray:
    """Instances numbered 1..n; each keeps its largest connected piece, pieces under 12 px are dropped.

    A nucleus drawn over another may cut it in two; the truth keeps one piece.
    """
    from skimage.measure import label

    pieces = label(labels, connectivity=1, background=0)
    sizes = np.bincount(pieces.ravel())
    owner = np.zeros(sizes.size, np.int64)
    owner[pieces.ravel()] = labels.ravel()
    best: dict = {}
    for piece in range(1, sizes.size):
        inst = owner[piece]
        if inst and (inst not in best or sizes[piece] > sizes[best[inst]]):
            best[inst] = piece
    keep = np.zeros(sizes.size, np.uint32)
    n = 0
    for inst, piece in sorted(best.items()):
        if sizes[piece] >= 12:
            n += 1
            keep[piece] = n
    return keep[pieces]
