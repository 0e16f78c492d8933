"""Alcian blue / Van Gieson pellet sections from an independent renderer, and the pipeline's error on them.

The renderer here shares no code with the project's own generator: it draws
each section from stain concentrations per pixel (Beer-Lambert, its own stain
absorption vectors), passes the transmitted light through a Gaussian optical
PSF, a veiling haze, uneven illumination, sensor noise and a JPEG round trip,
and keeps the exact truth of what it drew: pellet masks, nucleus instances
(and their kind: round, spindle at the rim, touching, faint), the iron mask
and its granules, the proteoglycan and collagen masks and the iron-positive
cells (a nucleus with a true iron pixel within 5 µm of one of its pixels).

The sections are written as TIFF files carrying their pixel size in the
resolution tags, named ``{donor}_{condition}_d{day}_s{section}``; the pipeline
runs on the folder with a config written beside it (``run_batch``, as
``pellet-analysis run`` does) and its label images and ``pellets.csv`` are
scored against the truth::

    PYTHONPATH=. python benchmarks/foreign_sections.py --n 12 --seed 1 --output DIR

prints a table and writes ``DIR/foreign_scores.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from pellet_analysis.metrics import matched_instances

__all__ = [
    "STAIN_OD",
    "Section",
    "render_section",
    "section_plan",
    "write_sections",
    "run_pipeline",
    "score",
    "main",
]

#: Optical density per unit concentration in (red, green, blue), unit length.
#: Alcian blue 8GX absorbs red most (peak near 615 nm): cyan-blue.
#: Acid fuchsin of Van Gieson absorbs green (peak near 545 nm): red collagen.
#: Picric acid absorbs blue and violet only: the yellow of cytoplasm and background.
#: Weigert's iron hematoxylin: a blue-black lake, near neutral.
#: Iron oxide of iron-sucrose granules: brown-black, absorbing more as the wavelength falls.
STAIN_OD = {
    name: np.asarray(v, float) / np.linalg.norm(v)
    for name, v in {
        "alcian": (0.82, 0.50, 0.28),
        "fuchsin": (0.18, 0.88, 0.44),
        "picric": (0.02, 0.16, 0.99),
        "weigert": (0.56, 0.60, 0.57),
        "iron": (0.44, 0.58, 0.69),
    }.items()
}

#: Truth class codes (the pipeline's, pellet_analysis.labels.CLASS_CODES).
BACKGROUND, OTHER, PROTEOGLYCAN, COLLAGEN, NUCLEUS, IRON = 0, 1, 2, 3, 4, 5
#: Concentration (OD along the unit vector) at which drawn matrix counts as proteoglycan or collagen in the truth.
MATRIX_MIN_OD = 0.15
#: A nucleus is iron-positive when a true iron pixel lies this close to one of its pixels (docs/iron.md).
CELL_DISTANCE_UM = 5.0
DAYS = (7, 14, 28)
NUCLEUS_KINDS = ("round", "spindle", "touching", "faint")


@dataclass
class Section:
    """One rendered section and its exact truth (label arrays on the image's pixel grid)."""

    name: str
    rgb: np.ndarray
    pixel_size_um: float
    labeled: bool
    day: int
    pellets: np.ndarray  # uint16, one id per pellet
    nuclei: np.ndarray  # int32 nucleus instances
    classes: np.ndarray  # uint8 truth classes (BACKGROUND ... IRON)
    iron: np.ndarray  # bool
    nucleus_kind: dict  # nucleus id -> one of NUCLEUS_KINDS
    granule_diameters_um: list  # one per drawn granule
    granule_labels: np.ndarray  # int32: the truth iron pixels of each granule
    params: dict = field(default_factory=dict)
    granule_cluster_sizes: list = field(default_factory=list)  # one per drawn granule: the granules of its cluster


# ----------------------------------------------------------------------------- drawing primitives


def smooth_noise(shape, sigma_px: float, rng) -> np.ndarray:
    """A smooth random field in [0, 1] with features about ``sigma_px`` wide, made on a coarse grid and zoomed."""
    step = max(1, int(sigma_px / 3))
    coarse = (shape[0] // step + 2, shape[1] // step + 2)
    field_ = ndi.gaussian_filter(rng.standard_normal(coarse), sigma_px / step, mode="wrap")
    fine = ndi.zoom(field_, step, order=1)[: shape[0], : shape[1]]
    lo, hi = np.percentile(fine, (1, 99))
    return np.clip((fine - lo) / (hi - lo + 1e-12), 0.0, 1.0)


def ellipse_coverage(center_rc, semi_axes_px, angle_rad: float, shape, *, supersample: int = 3, wobble=None):
    """The fraction of each pixel an ellipse covers, in its bounding box.

    Parameters
    ----------
    center_rc : (float, float)
        Centre (row, column) in pixels, pixel centres at integers.
    semi_axes_px : (float, float)
        Semi-axes along and across ``angle_rad`` (radians from the row axis).
    shape : (int, int)
        Image shape, to clip the box.
    supersample : int
        Samples per pixel side.
    wobble : sequence of (order, amplitude, phase), optional
        Radial harmonics making the outline irregular.

    Returns
    -------
    box : tuple of slice or None
        None when the ellipse lies outside the image.
    coverage : ndarray
        Values in [0, 1] over ``box``.
    """
    reach = max(semi_axes_px) * (1.3 if wobble else 1.0) + 1.5
    r0, c0 = int(math.floor(center_rc[0] - reach)), int(math.floor(center_rc[1] - reach))
    r1, c1 = int(math.ceil(center_rc[0] + reach)) + 1, int(math.ceil(center_rc[1] + reach)) + 1
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, shape[0]), min(c1, shape[1])
    if r1 <= r0 or c1 <= c0:
        return None, None
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    rows = (np.arange(r0, r1)[:, None] + offsets[None, :]).ravel() - center_rc[0]
    cols = (np.arange(c0, c1)[:, None] + offsets[None, :]).ravel() - center_rc[1]
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    along, across = rr * cos + cc * sin, -rr * sin + cc * cos
    radius = np.hypot(along / semi_axes_px[0], across / semi_axes_px[1])
    inside_limit = 1.0
    if wobble:
        theta = np.arctan2(across, along)
        inside_limit = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in wobble)
    inside = (radius <= inside_limit).astype(np.float32)
    coverage = inside.reshape(r1 - r0, supersample, c1 - c0, supersample).mean(axis=(1, 3))
    return (slice(r0, r1), slice(c0, c1)), coverage


def stamp_max(target, box, values) -> None:
    """``target[box] = max(target[box], values)``."""
    np.maximum(target[box], values, out=target[box])


# ----------------------------------------------------------------------------- the section's plan


def section_plan(index: int, seed: int) -> dict:
    """Name and condition of section ``index`` of a batch: labeled and unlabeled alternate, days cycle, three donors."""
    labeled = index % 2 == 0
    day = DAYS[(index // 2) % 3]
    donor = f"F{(index // 6) % 3 + 1}"
    section = index // 18 + 1
    condition = "labeled" if labeled else "unlabeled"
    return {"name": f"{donor}_{condition}_d{day}_s{section}", "labeled": labeled, "day": day, "seed": seed * 1000 + index}


def _pellet_shapes(rng, pixel_size_um: float, n_pellets: int, max_side_px: int):
    """Centres, radii (px) and outline harmonics of the pellets, and the image shape."""
    radius_um = rng.uniform(110, 220)
    gap_um = rng.uniform(40, 120)
    width_um = n_pellets * 2.5 * radius_um + (n_pellets - 1) * gap_um + 80
    scale = min(1.0, max_side_px * pixel_size_um / width_um)
    radius_um = max(radius_um * scale, 95.0)
    radii_um = radius_um * rng.uniform(0.8, 1.0, n_pellets)
    rows_px = int(2.6 * radius_um / pixel_size_um + 80 / pixel_size_um)
    cols_px = int((n_pellets * 2.5 * radius_um + (n_pellets - 1) * gap_um + 80) / pixel_size_um)
    pellets = []
    col_um = 40 + 1.25 * radius_um
    for r_um in radii_um:
        irregular = rng.uniform(0.02, 0.12)
        harmonics = [(k, irregular * rng.uniform(0.3, 1.0) / k ** 0.5, rng.uniform(0, 2 * np.pi)) for k in range(2, 7)]
        centre = (rows_px / 2 + rng.uniform(-10, 10) / pixel_size_um, col_um / pixel_size_um)
        pellets.append({"centre": centre, "radius_px": r_um / pixel_size_um, "harmonics": harmonics})
        col_um += 2.5 * radius_um + gap_um
    return pellets, (rows_px, cols_px)


def _pellet_masks(pellets, shape):
    """Truth pellet labels and a soft tissue coverage (anti-aliased at one pixel)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    labels = np.zeros(shape, np.uint16)
    coverage = np.zeros(shape, np.float32)
    for k, p in enumerate(pellets, start=1):
        dr, dc = rows - p["centre"][0], cols - p["centre"][1]
        theta = np.arctan2(dr, dc)
        edge = p["radius_px"] * (1 + sum(a * np.cos(o * theta + ph) for o, a, ph in p["harmonics"]))
        inside_px = edge - np.hypot(dr, dc)
        labels[inside_px >= 0] = k
        np.maximum(coverage, np.clip(inside_px + 0.5, 0, 1), out=coverage)
    return labels, coverage


# ----------------------------------------------------------------------------- cells


def _cell_centres(pellets_mask, depth_um, spacing_um: float, pixel_size_um: float, rng):
    """Jittered hexagonal lattice of cell centres (row, col in px) inside the pellets, a few dropped."""
    s = spacing_um / pixel_size_um
    rows, cols = pellets_mask.shape
    r = np.arange(s / 2, rows, s * math.sqrt(3) / 2)
    centres = []
    for i, row in enumerate(r):
        c = np.arange((s / 2) * (i % 2), cols, s)
        centres.append(np.stack([np.full_like(c, row), c], axis=1))
    pts = np.concatenate(centres) + rng.uniform(-0.3, 0.3, (sum(len(c) for c in centres), 2)) * s
    pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < rows - 1) & (pts[:, 1] >= 0) & (pts[:, 1] < cols - 1)]
    ri, ci = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
    keep = pellets_mask[ri, ci] & (depth_um[ri, ci] > 3.0) & (rng.random(len(pts)) > 0.12)
    return pts[keep]


def _tangent_angle(depth_um, row: int, col: int) -> float:
    """Angle (radians from the row axis) along the pellet's surface at a pixel: across the depth gradient."""
    r0, r1 = max(row - 2, 0), min(row + 3, depth_um.shape[0])
    c0, c1 = max(col - 2, 0), min(col + 3, depth_um.shape[1])
    patch = depth_um[r0:r1, c0:c1]
    g_r, g_c = np.gradient(patch) if min(patch.shape) > 1 else (np.zeros(1), np.zeros(1))
    return math.atan2(float(np.mean(g_c)), float(np.mean(g_r))) + math.pi / 2


def _nucleus_geometry(kind: str, rng, pixel_size_um: float, angle_surface: float):
    """Semi-axes (px), angle and outline wobble of a nucleus of a kind."""
    if kind == "spindle":
        length_um, width_um, angle = rng.uniform(10, 16), rng.uniform(2.5, 4.0), angle_surface + rng.normal(0, 0.15)
    else:
        length_um = rng.uniform(6.0, 10.0)
        width_um, angle = length_um * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
    wobble = [(k, rng.uniform(0, 0.07), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
    return (length_um / 2 / pixel_size_um, width_um / 2 / pixel_size_um), angle, wobble


@dataclass
class _Layers:
    """Per-pixel amounts of each stain (OD along its unit vector) and the truth drawn so far."""

    shape: tuple
    nucleus_od: np.ndarray = None
    cytoplasm: np.ndarray = None  # coverage of cytoplasm (picric yellow, no matrix)
    lacuna: np.ndarray = None  # coverage of clear lacunae (no stain)
    nuclei: np.ndarray = None
    nucleus_cover: np.ndarray = None
    nuclei_kind: dict = field(default_factory=dict)

    def __post_init__(self):
        self.nucleus_od = np.zeros(self.shape, np.float32)
        self.cytoplasm = np.zeros(self.shape, np.float32)
        self.lacuna = np.zeros(self.shape, np.float32)
        self.nuclei = np.zeros(self.shape, np.int32)
        self.nucleus_cover = np.zeros(self.shape, np.float32)


def _draw_nucleus(layers: _Layers, centre, axes_px, angle, wobble, od: float, kind: str, texture) -> tuple | None:
    """Draw one nucleus's stain and truth label; returns its box and coverage (None outside the image)."""
    box, cov = ellipse_coverage(centre, axes_px, angle, layers.shape, wobble=wobble)
    if box is None or cov.max() < 0.5:
        return None
    label = len(layers.nuclei_kind) + 1
    layers.nuclei_kind[label] = kind
    stamp_max(layers.nucleus_od, box, cov * od * texture[box])
    # the pixel belongs to the nucleus covering most of it
    own = (cov >= 0.5) & (cov > layers.nucleus_cover[box])
    layers.nuclei[box][own] = label
    stamp_max(layers.nucleus_cover, box, cov)
    return box, cov


def _draw_cells(layers: _Layers, centres, depth_um, rng, *, pixel_size_um: float, day: int, rim_um: float, faint_fraction: float, texture):
    """Nuclei (round, spindle at the rim, touching pairs, faint), their cytoplasm and, at day 28, lacunae.

    Returns
    -------
    list of dict
        One per cell: its nucleus's centre, semi-axes (px), angle and label.
    """
    cells = []
    lacuna_fraction = {7: 0.0, 14: 0.15, 28: rng.uniform(0.5, 0.8)}[day]
    touching_fraction = rng.uniform(0.05, 0.12)
    for row, col in centres:
        depth = depth_um[int(round(row)), int(round(col))]
        surface = _tangent_angle(depth_um, int(round(row)), int(round(col)))
        kind = "spindle" if depth < rim_um else "round"
        axes, angle, wobble = _nucleus_geometry(kind, rng, pixel_size_um, surface)
        faint = kind == "round" and rng.random() < faint_fraction
        od = rng.uniform(0.22, 0.42) if faint else rng.uniform(0.75, 1.35)
        in_lacuna = kind == "round" and rng.random() < lacuna_fraction
        scale = rng.uniform(1.25, 1.45) if in_lacuna else rng.uniform(1.5, 1.9)
        cyto_axes = (axes[0] * scale + 1.0 / pixel_size_um, axes[1] * scale + 1.0 / pixel_size_um)
        box, cov = ellipse_coverage((row, col), cyto_axes, angle, layers.shape, supersample=2)
        if box is not None:
            stamp_max(layers.cytoplasm, box, cov)
        if in_lacuna:
            lac_axes = (cyto_axes[0] * rng.uniform(1.3, 1.7), cyto_axes[1] * rng.uniform(1.3, 1.7))
            box, cov = ellipse_coverage((row, col), lac_axes, angle + rng.normal(0, 0.3), layers.shape, supersample=2)
            if box is not None:
                stamp_max(layers.lacuna, box, cov)
        touching = kind == "round" and not in_lacuna and rng.random() < touching_fraction
        drawn = _draw_nucleus(layers, (row, col), axes, angle, wobble, od, "touching" if touching else ("faint" if faint else kind), texture)
        if drawn is None:
            continue
        cells.append({"centre": (row, col), "axes": axes, "angle": angle, "label": len(layers.nuclei_kind)})
        if touching:
            # a partner touching it: centre at the sum of the two radii along a random direction, a little overlapped
            phi = rng.uniform(0, 2 * np.pi)
            p_axes, p_angle, p_wobble = _nucleus_geometry("round", rng, pixel_size_um, surface)
            reach = 0.92 * (_radius_toward(axes, angle, phi) + _radius_toward(p_axes, p_angle, phi + np.pi))
            p_centre = (row + reach * math.cos(phi), col + reach * math.sin(phi))
            if _draw_nucleus(layers, p_centre, p_axes, p_angle, p_wobble, od * rng.uniform(0.85, 1.15), "touching", texture):
                cells.append({"centre": p_centre, "axes": p_axes, "angle": p_angle, "label": len(layers.nuclei_kind)})
    return cells


def _radius_toward(axes, angle: float, phi: float) -> float:
    """Distance (px) from an ellipse's centre to its outline in direction ``phi``."""
    t = phi - angle
    return 1.0 / math.sqrt((math.cos(t) / axes[0]) ** 2 + (math.sin(t) / axes[1]) ** 2)


# ----------------------------------------------------------------------------- iron


def _draw_iron(cells, shape, rng, *, pixel_size_um: float, labeled_fraction: float):
    """Iron-sucrose granules in the cytoplasm beside the nuclei of the labeled cells, often in clusters.

    Returns
    -------
    od_rgb : ndarray, shape (rows, cols, 3)
        Each pixel's mean optical density of the granules over its area (the mean of the transmitted light, not of the OD).
    granule_labels : ndarray of int32
        The truth pixels of each granule: covered at least 30 % or holding its centre.
    diameters_um : list of float
    cluster_sizes : list of int
        For each granule, the number of granules drawn in its cluster.
    """
    transmitted = np.ones(shape + (3,), np.float32)
    labels = np.zeros(shape, np.int32)
    diameters, cluster_sizes = [], []
    for cell in cells:
        if rng.random() >= labeled_fraction:
            continue
        for _ in range(rng.integers(1, 4)):
            phi = rng.uniform(0, 2 * np.pi)
            edge_px = _radius_toward(cell["axes"], cell["angle"], phi)
            n_granules = int(rng.choice([1, 1, 2, 3, 4, 6]))
            cluster_um = rng.uniform(0.4, 3.5)
            for _ in range(n_granules):
                d_um = float(np.clip(rng.lognormal(math.log(0.9), 0.5), 0.3, 2.8))
                offset_px = edge_px + (cluster_um + d_um / 2) / pixel_size_um
                jitter = rng.normal(0, 0.6 / pixel_size_um, 2) if n_granules > 1 else np.zeros(2)
                centre = (cell["centre"][0] + offset_px * math.cos(phi) + jitter[0], cell["centre"][1] + offset_px * math.sin(phi) + jitter[1])
                radius_px = d_um / 2 / pixel_size_um
                ss = int(min(12, max(3, math.ceil(3 / radius_px))))
                box, cov = ellipse_coverage(centre, (radius_px, radius_px), 0.0, shape, supersample=ss)
                if box is None or cov.max() <= 0:
                    continue
                peak_od = rng.uniform(0.8, 2.0)
                # a pixel partly covered passes the uncovered share of its light unabsorbed
                t = 1.0 - cov[..., None] * (1.0 - 10.0 ** (-peak_od * STAIN_OD["iron"]))
                transmitted[box] *= t.astype(np.float32)
                truth = cov >= 0.3
                ci, cj = int(round(centre[0])) - box[0].start, int(round(centre[1])) - box[1].start
                if 0 <= ci < truth.shape[0] and 0 <= cj < truth.shape[1]:
                    truth[ci, cj] = True
                diameters.append(d_um)
                cluster_sizes.append(n_granules)
                labels[box][truth] = len(diameters)
    return -np.log10(transmitted), labels, diameters, cluster_sizes


# ----------------------------------------------------------------------------- optics


def _to_rgb(od_rgb, rng, *, pixel_size_um: float, psf_fwhm_um: float, haze: float, jpeg_quality: int):
    """Transmitted light of an OD image through the microscope and camera: PSF, haze, illumination, noise, JPEG."""
    transmitted = 10.0 ** (-od_rgb)
    sigma_px = psf_fwhm_um / 2.3548 / pixel_size_um
    for c in range(3):
        transmitted[..., c] = ndi.gaussian_filter(transmitted[..., c], sigma_px, mode="nearest")
    transmitted = (1 - haze) * transmitted + haze
    rows, cols = od_rgb.shape[:2]
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float32)
    centre = (rows * rng.uniform(0.3, 0.7), cols * rng.uniform(0.3, 0.7))
    falloff = 1.0 - rng.uniform(0.0, 0.10) * (((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (rows**2 + cols**2) * 4)
    white = rng.uniform(228, 250) + rng.normal(0, 4, 3)
    intensity = transmitted * falloff[..., None] * white[None, None, :]
    intensity += rng.normal(0, 1, intensity.shape) * np.sqrt(0.5 + 0.04 * intensity)
    rgb = np.clip(np.round(intensity), 0, 255).astype(np.uint8)
    ok, buffer = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    return cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1].copy()


# ----------------------------------------------------------------------------- one section


def render_section(name: str, *, labeled: bool, day: int, seed: int, max_side_px: int = 1800) -> Section:
    """Render one AB/VG section with its truth.

    Parameters
    ----------
    name : str
        File stem.
    labeled : bool
        Iron granules in the labeled cells; none at all otherwise.
    day : int
        7, 14 or 28: the matrix's Alcian blue grows and the cells part with the day; lacunae at 14 (few) and 28.
    seed : int
    max_side_px : int
        The image's longer side, about (smaller pellets at fine pixel sizes).

    Returns
    -------
    Section
    """
    rng = np.random.default_rng(seed)
    px = float(rng.uniform(0.25, 1.0))
    n_pellets = int(rng.integers(1, 3))
    pellets, shape = _pellet_shapes(rng, px, n_pellets, max_side_px)
    pellet_labels, tissue = _pellet_masks(pellets, shape)
    inside = pellet_labels > 0
    depth_um = ndi.distance_transform_edt(inside) * px

    params = {
        "pixel_size_um": px,
        "n_pellets": n_pellets,
        "psf_fwhm_um": float(rng.uniform(0.5, 1.5)),
        "haze": float(rng.uniform(0.0, 0.08)),
        "jpeg_quality": int(rng.integers(60, 96)),
        "stain_strength": float(rng.uniform(0.75, 1.3)),
        "alcian_level_od": float({7: rng.uniform(0.12, 0.35), 14: rng.uniform(0.25, 0.55), 28: rng.uniform(0.4, 0.8)}[day]),
        "collagen_level_od": float(rng.uniform(0.3, 0.8)),
        "collagen_rim_um": float(rng.uniform(6, 20)),
        "picric_level_od": float(rng.uniform(0.06, 0.18)),
        "cell_spacing_um": float({7: rng.uniform(11, 14), 14: rng.uniform(14, 19), 28: rng.uniform(19, 26)}[day]),
        "faint_nuclei_fraction": float(rng.uniform(0.1, 0.3)),
        "labeled_cell_fraction": float(rng.uniform(0.45, 0.9)) if labeled else 0.0,
    }
    strength = params["stain_strength"] * rng.uniform(0.9, 1.1, 4)  # per stain: alcian, fuchsin, picric, weigert

    # the matrix: Alcian blue rising from the surface, patchy; the Van Gieson collagen capsule at the rim
    patches = smooth_noise(shape, 25 / px, rng)
    fibres = smooth_noise(shape, 2 / px, rng)
    rim = np.exp(-depth_um / params["collagen_rim_um"])
    alcian = params["alcian_level_od"] * (0.5 + 0.5 * patches) * (1 - rim) * inside
    fuchsin = (params["collagen_level_od"] * rim * (0.55 + 0.45 * fibres) + 0.04 * (day == 28)) * inside

    layers = _Layers(shape)
    texture = 0.75 + 0.5 * smooth_noise(shape, 0.6 / px, rng)
    centres = _cell_centres(inside, depth_um, params["cell_spacing_um"], px, rng)
    rim_cells_um = params["collagen_rim_um"] + rng.uniform(6, 12)
    cells = _draw_cells(layers, centres, depth_um, rng, pixel_size_um=px, day=day, rim_um=rim_cells_um, faint_fraction=params["faint_nuclei_fraction"], texture=texture)
    layers.nuclei[~inside] = 0

    open_ = np.clip(np.maximum(layers.cytoplasm, layers.lacuna), 0, 1)
    alcian *= 1 - open_
    fuchsin *= 1 - open_
    picric = (params["picric_level_od"] * (1 - layers.lacuna) + 0.22 * layers.cytoplasm * (1 - layers.lacuna)) * tissue
    alcian, fuchsin, picric, weigert = alcian * strength[0], fuchsin * strength[1], picric * strength[2], layers.nucleus_od * strength[3]

    od = alcian[..., None] * STAIN_OD["alcian"] + fuchsin[..., None] * STAIN_OD["fuchsin"]
    od += picric[..., None] * STAIN_OD["picric"] + weigert[..., None] * STAIN_OD["weigert"]
    od *= tissue[..., None]
    iron_od, granule_labels, diameters, cluster_sizes = (
        _draw_iron(cells, shape, rng, pixel_size_um=px, labeled_fraction=params["labeled_cell_fraction"]) if labeled else (0.0, np.zeros(shape, np.int32), [], [])
    )
    od = od + iron_od
    granule_labels[~inside] = 0
    _dust(od, rng, px)
    rgb = _to_rgb(od.astype(np.float32), rng, pixel_size_um=px, psf_fwhm_um=params["psf_fwhm_um"], haze=params["haze"], jpeg_quality=params["jpeg_quality"])

    iron = granule_labels > 0
    classes = truth_classes(inside, alcian, fuchsin, open_, layers.nuclei > 0, iron)
    present = set(np.unique(layers.nuclei).tolist()) - {0}  # a nucleus outside the pellets, or covered by its partner, is gone
    kinds = {k: v for k, v in layers.nuclei_kind.items() if k in present}
    return Section(name, rgb, px, labeled, day, pellet_labels, layers.nuclei, classes, iron, kinds, diameters, granule_labels, params, cluster_sizes)


def truth_classes(inside, alcian, fuchsin, open_, nuclei, iron) -> np.ndarray:
    """Exclusive truth classes: iron over nuclei over open cell space over the matrix stain that dominates."""
    classes = np.where(inside, OTHER, BACKGROUND).astype(np.uint8)
    classes[inside & (alcian >= MATRIX_MIN_OD) & (alcian >= fuchsin)] = PROTEOGLYCAN
    classes[inside & (fuchsin >= MATRIX_MIN_OD) & (fuchsin > alcian)] = COLLAGEN
    classes[inside & (open_ >= 0.5)] = OTHER
    classes[inside & nuclei] = NUCLEUS
    classes[inside & iron] = IRON
    return classes


def _dust(od, rng, pixel_size_um: float) -> None:
    """A few faint specks of dust on the glass, far smaller than a pellet."""
    for _ in range(int(rng.integers(0, 6))):
        centre = (rng.uniform(0, od.shape[0]), rng.uniform(0, od.shape[1]))
        r_px = rng.uniform(1.5, 6) / pixel_size_um
        box, cov = ellipse_coverage(centre, (r_px, r_px * rng.uniform(0.5, 1)), rng.uniform(0, np.pi), od.shape[:2], supersample=1)
        if box is not None:
            od[box] += cov[..., None] * rng.uniform(0.05, 0.25) * np.array([0.5, 0.55, 0.65])


def iron_positive(nuclei, iron, pixel_size_um: float, distance_um: float = CELL_DISTANCE_UM) -> set:
    """Nucleus labels with an iron pixel within ``distance_um`` of one of their pixels."""
    if not iron.any():
        return set()
    near = ndi.distance_transform_edt(~iron, sampling=pixel_size_um) <= distance_um
    return set(np.unique(nuclei[near & (nuclei > 0)]).tolist())


def majority_owner(labels, owners) -> dict:
    """For each positive label, the positive owner label under most of its pixels (0 when none)."""
    both = (labels > 0)
    if not both.any():
        return {}
    pairs, counts = np.unique(np.stack([labels[both].astype(np.int64), owners[both].astype(np.int64)], axis=1), axis=0, return_counts=True)
    owner = {}
    best = {}
    for (lab, own), n in zip(pairs.tolist(), counts.tolist()):
        if own > 0 and n > best.get(lab, 0):
            owner[lab], best[lab] = own, n
    return owner


def truth_table(section: Section) -> list[dict]:
    """Per true pellet: pixels, proteoglycan and collagen area fractions, nuclei, iron-positive fraction, granules."""
    px = section.pixel_size_um
    positive = iron_positive(section.nuclei, section.iron, px)
    nucleus_pellet = majority_owner(section.nuclei, section.pellets)
    granule_pellet = majority_owner(section.granule_labels, section.pellets)
    rows = []
    for pid in range(1, int(section.pellets.max()) + 1):
        mask = section.pellets == pid
        n_px = int(mask.sum())
        cls = section.classes[mask]
        nuclei = [n for n, p in nucleus_pellet.items() if p == pid]
        rows.append({
            "pellet": pid,
            "area_px": n_px,
            "proteoglycan_area_fraction": float(np.mean(cls == PROTEOGLYCAN)),
            "collagen_area_fraction": float(np.mean(cls == COLLAGEN)),
            "nuclei_count": len(nuclei),
            "iron_positive_cell_fraction": sum(n in positive for n in nuclei) / max(len(nuclei), 1),
            "iron_granule_count": sum(1 for p in granule_pellet.values() if p == pid),
        })
    return rows


# ----------------------------------------------------------------------------- writing and running


def write_sections(sections, folder: Path) -> None:
    """Each section as ``images/<name>.tif`` (pixel size in the resolution tags) and its truth as ``truth/<name>.npz``."""
    import tifffile

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(parents=True, exist_ok=True)
    for s in sections:
        per_cm = 1e4 / s.pixel_size_um
        tifffile.imwrite(folder / "images" / f"{s.name}.tif", s.rgb, photometric="rgb", resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", compression="zlib")
        np.savez_compressed(
            folder / "truth" / f"{s.name}.npz",
            pellets=s.pellets, nuclei=s.nuclei, classes=s.classes, granule_labels=s.granule_labels,
        )
        meta = {"params": s.params, "labeled": s.labeled, "day": s.day, "nucleus_kind": s.nucleus_kind, "granule_diameters_um": s.granule_diameters_um,
                "granule_cluster_sizes": s.granule_cluster_sizes}
        (folder / "truth" / f"{s.name}.json").write_text(json.dumps(meta))


def run_folder(folder: Path, settings=()) -> Path:
    """``folder/run``, or ``folder/run-<settings joined>`` for a run with config settings changed."""
    return folder / ("run-" + "-".join(settings).replace("=", "_") if settings else "run")


def run_pipeline(folder: Path, *, workers: int = 1, settings=()) -> Path:
    """Run the pipeline on ``folder/images`` with a config written to ``folder/config.yaml``; returns the run folder.

    ``settings``: ``dotted.key=value`` strings (YAML values) over that config, as ``load_config`` overrides.
    """
    import yaml

    from pellet_analysis.batch import run_batch
    from pellet_analysis.config import load_config

    config_path = folder / "config.yaml"
    config_path.write_text(
        "# the pixel size comes from each TIFF's resolution tags\n"
        f"input_dir: {folder / 'images'}\n"
        f"output_dir: {folder / 'run'}\n"
        "filename_pattern: \"{donor}_{condition}_d{day}_s{section}\"\n"
        "require_metadata: true\n"
        "scheduler: threads\n"
        f"n_workers: {int(workers)}\n"
    )
    overrides = {key.replace(".", "__"): yaml.safe_load(value) for key, value in (item.split("=", 1) for item in settings)}
    run = run_folder(folder, settings)
    run_batch(load_config(config_path, output_dir=str(run), **overrides))
    return run


# ----------------------------------------------------------------------------- scoring


def matched_true(found, true, *, iou_threshold: float = 0.5) -> set:
    """True instance labels that one found instance overlaps with IoU above the threshold."""
    return set(matched_instances(found, true, iou_threshold=iou_threshold)[:, 0].tolist())


def nearest_kind(found_iron, nuclei, kinds: dict, pixel_size_um: float, within_um: float = 2.0) -> dict:
    """How many found iron objects lie within ``within_um`` of a true nucleus of each kind (``none``: of no nucleus)."""
    objects, n = ndi.label(found_iron, structure=np.ones((3, 3)))
    counts = {kind: 0 for kind in (*NUCLEUS_KINDS, "none")}
    if n == 0:
        return counts
    distance, (ri, ci) = ndi.distance_transform_edt(nuclei == 0, sampling=pixel_size_um, return_indices=True)
    for k, sl in enumerate(ndi.find_objects(objects), start=1):
        own = objects[sl] == k
        d = np.where(own, distance[sl], np.inf)
        at = np.unravel_index(np.argmin(d), d.shape)
        label = nuclei[ri[sl][at], ci[sl][at]] if d[at] <= within_um else 0
        counts[kinds.get(int(label), "none") if label else "none"] += 1
    return counts


#: Granule diameter bins (µm) and gap bins (µm from the granule's truth pixels to the nearest true nucleus).
GRANULE_SIZE_BINS = ((0.0, 1.0), (1.0, 2.0), (2.0, np.inf))
GRANULE_GAP_BINS = ((0.0, 1.0), (1.0, np.inf))


def granule_recall_bins(granule_labels, hit: set, diameters_um, nuclei, pixel_size_um: float) -> list:
    """Granules found and drawn, ``[[found, drawn] per gap bin] per size bin`` (:data:`GRANULE_SIZE_BINS`, :data:`GRANULE_GAP_BINS`).

    A granule counts when any of its truth pixels is left on the image (a later granule may cover an earlier one).
    """
    present = np.unique(granule_labels[granule_labels > 0])
    counts = [[[0, 0] for _ in GRANULE_GAP_BINS] for _ in GRANULE_SIZE_BINS]
    if present.size == 0:
        return counts
    to_nucleus = ndi.distance_transform_edt(nuclei == 0, sampling=pixel_size_um)
    gaps = np.asarray(ndi.minimum(to_nucleus, granule_labels, present))
    sizes = np.asarray(diameters_um, float)[present - 1]
    for label, size, gap in zip(present.tolist(), sizes, gaps):
        i = next(k for k, (lo, hi) in enumerate(GRANULE_SIZE_BINS) if lo <= size < hi)
        j = next(k for k, (lo, hi) in enumerate(GRANULE_GAP_BINS) if lo <= gap < hi)
        counts[i][j][0] += label in hit
        counts[i][j][1] += 1
    return counts


CLASS_NAMES = ("background", "other_tissue", "proteoglycan", "collagen", "nuclei", "iron")


def confusion(true_classes, found_classes, inside) -> np.ndarray:
    """Pixel counts, true class (rows) by found class (columns), over ``inside``."""
    n = len(CLASS_NAMES)
    return np.bincount(true_classes[inside].astype(np.int64) * n + found_classes[inside], minlength=n * n).reshape(n, n)


def _read_as(counts, true_class: int) -> dict:
    row = np.asarray(counts)[true_class]
    return {name: float(v / max(row.sum(), 1)) for name, v in zip(CLASS_NAMES, row)}


def granules_found_by_cluster(granule_labels, hit: set, cluster_sizes) -> list:
    """``[found, drawn]`` of the granules drawn alone, then of those drawn in clusters of two or more."""
    present = np.unique(granule_labels[granule_labels > 0]).tolist()
    counts = [[0, 0], [0, 0]]
    for label in present:
        k = int(cluster_sizes[label - 1] > 1)
        counts[k][0] += label in hit
        counts[k][1] += 1
    return counts


def _load_found(run: Path, name: str):
    import tifffile

    return {kind: tifffile.imread(run / "labels" / f"{name}_{kind}.tif") for kind in ("pellets", "classes", "nuclei")}


def score_section(truth: dict, meta: dict, found: dict, rows, pixel_size_um: float) -> dict:
    """The pipeline's error on one section: per true pellet, its nuclei, its iron.

    Parameters
    ----------
    truth : dict
        ``pellets``, ``nuclei``, ``classes``, ``granule_labels`` arrays (:func:`write_sections`).
    meta : dict
        ``labeled``, ``nucleus_kind`` (id -> kind; JSON keys), ``granule_diameters_um``.
    found : dict
        The pipeline's ``pellets``, ``classes`` and ``nuclei`` label images.
    rows : DataFrame
        The section's rows of ``pellets.csv``.
    """
    kinds = {int(k): v for k, v in meta["nucleus_kind"].items()}
    section = Section(
        "", None, pixel_size_um, meta["labeled"], 0, truth["pellets"], truth["nuclei"], truth["classes"],
        truth["granule_labels"] > 0, kinds, meta["granule_diameters_um"], truth["granule_labels"],
    )
    true_rows = truth_table(section)
    by_id = {int(r.pellet_id): r for r in rows.itertuples()}
    pellets = []
    for t in true_rows:
        mask = truth["pellets"] == t["pellet"]
        ids, counts = np.unique(found["pellets"][mask], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        fid = int(ids[np.argmax(counts)]) if ids.size else 0
        d = float(2 * (mask & (found["pellets"] == fid)).sum() / (mask.sum() + (found["pellets"] == fid).sum())) if fid else 0.0
        f = by_id.get(fid)
        pellets.append({
            "true": t, "found_id": fid, "dice": d,
            "found": None if f is None else {
                k: float(getattr(f, k)) for k in ("proteoglycan_area_fraction", "collagen_area_fraction", "nuclei_count", "iron_positive_cell_fraction", "iron_granule_count")
            },
        })
    hit = matched_true(found["nuclei"], truth["nuclei"])
    n_found = len(np.unique(found["nuclei"][found["nuclei"] > 0]))
    true_iron, found_iron = truth["granule_labels"] > 0, found["classes"] == IRON
    by_kind = {kind: [0, 0] for kind in NUCLEUS_KINDS}
    for label, kind in kinds.items():
        by_kind[kind][1] += 1
        by_kind[kind][0] += label in hit
    granule_hit = set(np.unique(truth["granule_labels"][ndi.binary_dilation(found_iron) & true_iron]).tolist())
    return {
        "pellets": pellets,
        "n_pellets_found": len(by_id),
        "nuclei_tp": len(hit), "nuclei_true": len(kinds), "nuclei_found": n_found,
        "nuclei_by_kind": by_kind,
        "iron_tp": int((true_iron & found_iron).sum()), "iron_true": int(true_iron.sum()), "iron_found": int(found_iron.sum()),
        "confusion": confusion(truth["classes"], found["classes"], truth["pellets"] > 0).tolist(),
        "granules_found": granule_recall_bins(truth["granule_labels"], granule_hit, meta["granule_diameters_um"], truth["nuclei"], pixel_size_um),
        "granules_found_alone_in_cluster": granules_found_by_cluster(truth["granule_labels"], granule_hit, meta["granule_cluster_sizes"]),
        "false_iron_near": nearest_kind(found_iron & ~ndi.binary_dilation(true_iron, iterations=2), truth["nuclei"], kinds, pixel_size_um),
    }


def score(folder: Path, run: Path) -> dict:
    """Score the run against every section's truth in ``folder/truth``; the summary and each section's figures."""
    import pandas as pd

    table = pd.read_csv(run / "pellets.csv")
    sections = {}
    for npz in sorted((folder / "truth").glob("*.npz")):
        name = npz.stem
        meta = json.loads(npz.with_suffix(".json").read_text())
        with np.load(npz) as data:
            truth = {k: data[k] for k in data.files}
        sections[name] = {"labeled": meta["labeled"], "day": meta["day"], "params": meta["params"]}
        sections[name].update(score_section(truth, meta, _load_found(run, name), table[table.image == name], meta["params"]["pixel_size_um"]))
    return {"summary": summarize(sections), "sections": sections}


def _pp(values) -> dict:
    """Mean absolute, mean signed and largest absolute error, in percentage points."""
    v = 100 * np.asarray(values, float)
    return {"mean_abs_pp": float(np.mean(np.abs(v))), "mean_pp": float(np.mean(v)), "max_abs_pp": float(np.max(np.abs(v)))} if v.size else {}


def _recall(found_drawn) -> float:
    return float(found_drawn[0] / found_drawn[1]) if found_drawn[1] else float("nan")


def _bin_name(bounds) -> str:
    lo, hi = bounds
    return f">= {lo:g} um" if np.isinf(hi) else f"{lo:g}-{hi:g} um"


def _f1(tp: int, n_true: int, n_found: int) -> float:
    return 2 * tp / (n_true + n_found) if n_true + n_found else float("nan")


def summarize(sections: dict) -> dict:
    """Pooled figures over the sections (see the module's docstring)."""
    pellets = [(s, p) for s in sections.values() for p in s["pellets"]]
    found = [(s, p) for s, p in pellets if p["found"] is not None]
    labeled = [s for s in sections.values() if s["labeled"]]
    total = lambda key, ss=sections.values(): sum(s[key] for s in ss)  # noqa: E731
    kinds = {k: [sum(s["nuclei_by_kind"][k][i] for s in sections.values()) for i in (0, 1)] for k in NUCLEUS_KINDS}

    def found_minus_true(key, which=lambda s: True, relative=False):
        return [(p["found"][key] - p["true"][key]) / (p["true"][key] if relative else 1) for s, p in found if which(s)]

    def count_error(which):
        return 100 * np.asarray(found_minus_true("nuclei_count", which, relative=True))

    lab_pos = [(p["found"]["iron_positive_cell_fraction"], p["true"]["iron_positive_cell_fraction"]) for s, p in found if s["labeled"]]
    unl = [p["found"] for s, p in found if not s["labeled"]]
    false_near = {k: sum(s["false_iron_near"][k] for s in sections.values() if not s["labeled"]) for k in (*NUCLEUS_KINDS, "none")}
    days = sorted({s["day"] for s in sections.values()})
    granules = np.sum([s["granules_found"] for s in labeled], axis=0) if labeled else np.zeros((len(GRANULE_SIZE_BINS), len(GRANULE_GAP_BINS), 2))
    return {
        "sections": len(sections),
        "pellets_true": len(pellets),
        "pellets_found": total("n_pellets_found"),
        "pellets_matched": sum(p["dice"] > 0.5 for _, p in pellets),
        "dice_min": min(p["dice"] for _, p in pellets),
        "dice_mean": float(np.mean([p["dice"] for _, p in pellets])),
        "nuclei_f1": _f1(total("nuclei_tp"), total("nuclei_true"), total("nuclei_found")),
        "nuclei_recall_by_kind": {k: v[0] / v[1] if v[1] else float("nan") for k, v in kinds.items()},
        "nuclei_count_error_pct": {
            "mean_abs": float(np.mean(np.abs(count_error(lambda s: True)))),
            "labeled_mean": float(np.mean(count_error(lambda s: s["labeled"]))) if labeled else float("nan"),
            "unlabeled_mean": float(np.mean(count_error(lambda s: not s["labeled"]))),
            "by_day_mean": {d: float(np.mean(count_error(lambda s, d=d: s["day"] == d))) for d in days},
        },
        "labeled_iron_pixel_f1": _f1(total("iron_tp", labeled), total("iron_true", labeled), total("iron_found", labeled)),
        "labeled_iron_pixel_f1_per_section": [_f1(s["iron_tp"], s["iron_true"], s["iron_found"]) for s in labeled],
        "labeled_iron_read_as": _read_as(np.sum([s["confusion"] for s in labeled], axis=0), IRON) if labeled else {},
        "proteoglycan_read_as": _read_as(np.sum([s["confusion"] for s in sections.values()], axis=0), PROTEOGLYCAN),
        "labeled_granules_found": _recall(granules.sum(axis=(0, 1))),
        "labeled_granules_found_by_size": {_bin_name(b): _recall(granules[i].sum(axis=0)) for i, b in enumerate(GRANULE_SIZE_BINS)},
        "labeled_granules_found_alone_clustered": [_recall(c) for c in np.sum([s["granules_found_alone_in_cluster"] for s in labeled], axis=0)] if labeled else [],
        "labeled_granules_found_by_gap_to_nucleus": {_bin_name(b): _recall(granules[:, j].sum(axis=0)) for j, b in enumerate(GRANULE_GAP_BINS)},
        "labeled_positive_found_mean": float(np.mean([f for f, _ in lab_pos])) if lab_pos else float("nan"),
        "labeled_positive_true_mean": float(np.mean([t for _, t in lab_pos])) if lab_pos else float("nan"),
        "labeled_positive_error_pp": _pp([f - t for f, t in lab_pos]),
        "unlabeled_positive_mean": float(np.mean([r["iron_positive_cell_fraction"] for r in unl])),
        "unlabeled_positive_max": float(np.max([r["iron_positive_cell_fraction"] for r in unl])),
        "unlabeled_granules_max": int(np.max([r["iron_granule_count"] for r in unl])),
        "unlabeled_false_iron_objects_near": false_near,
        "proteoglycan_error": _pp(found_minus_true("proteoglycan_area_fraction")),
        "proteoglycan_error_by_day": {d: _pp(found_minus_true("proteoglycan_area_fraction", lambda s, d=d: s["day"] == d)) for d in days},
        "collagen_error": _pp(found_minus_true("collagen_area_fraction")),
    }


def format_table(summary: dict) -> str:
    """The summary as aligned lines."""
    s = summary
    rows = [
        ("sections", f"{s['sections']}"),
        ("pellets found / true (matched, Dice > 0.5)", f"{s['pellets_found']} / {s['pellets_true']} ({s['pellets_matched']})"),
        ("pellet Dice min, mean", f"{s['dice_min']:.3f}, {s['dice_mean']:.3f}"),
        ("nuclei instance F1 (IoU 0.5)", f"{s['nuclei_f1']:.3f}"),
        ("nuclei recall round / spindle / touching / faint", " / ".join(f"{s['nuclei_recall_by_kind'][k]:.2f}" for k in NUCLEUS_KINDS)),
        ("nuclei count error |mean| %, labeled, unlabeled", "{mean_abs:.1f}, {labeled_mean:+.1f}, {unlabeled_mean:+.1f}".format(**s["nuclei_count_error_pct"])),
        ("labeled iron pixel F1 (pooled)", f"{s['labeled_iron_pixel_f1']:.3f}"),
        ("labeled granules found", f"{s['labeled_granules_found']:.2f}"),
        ("  by diameter", ", ".join(f"{k} {v:.2f}" for k, v in s["labeled_granules_found_by_size"].items())),
        ("  drawn alone, in a cluster", ", ".join(f"{v:.2f}" for v in s["labeled_granules_found_alone_clustered"])),
        ("  by gap to the nearest nucleus", ", ".join(f"{k} {v:.2f}" for k, v in s["labeled_granules_found_by_gap_to_nucleus"].items())),
        ("labeled true iron read as", _shares(s["labeled_iron_read_as"])),
        ("labeled iron-positive found vs true (mean)", f"{s['labeled_positive_found_mean']:.3f} vs {s['labeled_positive_true_mean']:.3f}"),
        ("unlabeled iron-positive mean, max", f"{s['unlabeled_positive_mean']:.4f}, {s['unlabeled_positive_max']:.4f}"),
        ("unlabeled granule count max", f"{s['unlabeled_granules_max']}"),
        ("unlabeled false iron objects near", ", ".join(f"{k} {v}" for k, v in s["unlabeled_false_iron_objects_near"].items())),
        ("nuclei count error mean % by day", ", ".join(f"d{d} {v:+.1f}" for d, v in s["nuclei_count_error_pct"]["by_day_mean"].items())),
        ("proteoglycan error pp |mean|, mean, max", "{mean_abs_pp:.1f}, {mean_pp:+.1f}, {max_abs_pp:.1f}".format(**s["proteoglycan_error"])),
        ("proteoglycan error mean pp by day", ", ".join(f"d{d} {v['mean_pp']:+.1f}" for d, v in s["proteoglycan_error_by_day"].items())),
        ("true proteoglycan read as", _shares(s["proteoglycan_read_as"])),
        ("collagen error pp |mean|, mean, max", "{mean_abs_pp:.1f}, {mean_pp:+.1f}, {max_abs_pp:.1f}".format(**s["collagen_error"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def proteoglycan_readings(folder: Path, name: str) -> dict:
    """Percentiles (10, 50, 90) of the Alcian blue read in a section's true proteoglycan pixels.

    ``pipeline``: the pipeline's own proteoglycan OD (``analyze_image``, the darkness of its dark
    spots taken out first); ``deconvolution``: plain colour deconvolution of the same image with the
    preset's three chromatic vectors, white from the image's glass (its 95th percentile per channel).
    """
    import tifffile

    from pellet_analysis.config import RunConfig
    from pellet_analysis.pipeline import analyze_image
    from pellet_analysis.stains import PRESETS, rgb_to_od, unmix

    rgb = tifffile.imread(folder / "images" / f"{name}.tif")
    meta = json.loads((folder / "truth" / f"{name}.json").read_text())
    with np.load(folder / "truth" / f"{name}.npz") as data:
        true_pg = data["classes"] == PROTEOGLYCAN
    found = analyze_image(rgb, pixel_size_um=meta["params"]["pixel_size_um"], config=RunConfig())
    preset = PRESETS["ab-vg"]
    vectors = np.stack([preset.vector(n) for n in ("alcian_blue", "acid_fuchsin", "picric_acid")])
    plain = unmix(rgb_to_od(rgb, np.percentile(rgb.reshape(-1, 3), 95, axis=0)), vectors)[..., 0]
    return {k: np.percentile(v[true_pg], (10, 50, 90)).round(3).tolist() for k, v in (("pipeline", found.proteoglycan_od), ("deconvolution", plain))}


def _shares(read_as: dict) -> str:
    return ", ".join(f"{k.replace('_tissue', '')} {v:.2f}" for k, v in read_as.items() if k != "background")


def render_batch(n: int, seed: int) -> list:
    """The ``n`` sections of a batch (:func:`section_plan`)."""
    plans = [section_plan(i, seed) for i in range(n)]
    return [render_section(p["name"], labeled=p["labeled"], day=p["day"], seed=p["seed"]) for p in plans]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=12, help="sections (default 12; labeled and unlabeled alternate)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1, help="pipeline worker threads (default 1)")
    parser.add_argument("--rescore", action="store_true", help="score the sections and run already in --output, without rendering or running")
    parser.add_argument("--keep-sections", action="store_true", help="run on the sections already in --output, without rendering them")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="a config setting over the defaults (e.g. iron.calibrate=off); the run goes to --output/run-KEY_VALUE")
    parser.add_argument("--proteoglycan-od", metavar="NAME", help="print the Alcian blue read in the true proteoglycan of section NAME of --output, and stop")
    args = parser.parse_args(argv)
    folder = args.output.resolve()
    if args.proteoglycan_od:
        readings = proteoglycan_readings(folder, args.proteoglycan_od)
        print(json.dumps(readings))
        return readings
    run = run_folder(folder, args.settings)
    if not (args.rescore or args.keep_sections):
        write_sections(render_batch(args.n, args.seed), folder)
    if not args.rescore:
        run = run_pipeline(folder, workers=args.workers, settings=args.settings)
    scores = score(folder, run)
    scores["command"] = {"n": args.n, "seed": args.seed, "settings": args.settings}
    (run / "foreign_scores.json" if args.settings else folder / "foreign_scores.json").write_text(json.dumps(scores, indent=1, default=float))
    print(format_table(scores["summary"]))
    return scores


if __name__ == "__main__":
    main()
