"""Synthetic Alcian blue / Van Gieson pellet sections with exact ground truth.

Sections are built as stain-concentration maps in micrometres (so any pixel
size gives the same biology) and rendered by Beer-Lambert, then degraded with
optical blur, uneven tinted illumination, sensor noise and JPEG compression.
The ground truth (pellet labels, class codes, nucleus instances,
proteoglycan concentration) is exact for every output of the pipeline, and
:func:`truth_table` measures it with the same code the pipeline uses.

Biology encoded (see docs/synthetic.md): proteoglycan area rises from day 7
to day 28, is lower in iron-labeled pellets and richer in the core than in the
rim; a collagen-rich fibrous capsule lines the rim; cells are denser early;
labeled cells carry 0.5-3 µm brown-black iron granules next to their nuclei
and labeled matrix carries a faint brown haze.

Nuclei (``SectionParams.nuclei_model``): "varied" (the default) draws
irregular outlines, a fifth of them touching a neighbour (chains of two to
four), a quarter faint, granular chromatin, a cytoplasm ring around only 40 %
of the cells, and small dark flat or round nuclei in the fibrous rim;
"simple" draws the smooth dark ellipses, each in a pale ring, of the
committed demo study (images/), whose truth :func:`study_sections` keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk, ellipse, polygon

from .config import CartilageConfig
from .labels import CLASS_CODES
from .lacunae import lacunae_from_clear
from .measure import measure_pellets
from .morphology import within_distance
from .territories import cell_territories
from .stains import PRESETS, StainSet, od_to_rgb

__all__ = [
    "SectionParams",
    "SyntheticSection",
    "make_section",
    "truth_table",
    "jitter_stains",
    "proteoglycan_target",
    "write_section",
    "study_sections",
    "make_study",
]

DAYS = (7, 14, 28)


@dataclass
class SectionParams:
    """Parameters of one synthetic section (units in the names)."""

    day: int = 14
    labeled: bool = False
    n_pellets: int = 1
    pixel_size_um: float = 1.0
    pellet_diameter_um: tuple[float, float] = (320.0, 480.0)
    donor_offset: float = 0.0
    hue_jitter_deg: float = 0.0
    blur_sigma_um: float = 0.6
    noise_sigma: float = 2.0
    jpeg_quality: int | None = 90
    illumination_variation: float = 0.08
    background_rgb: tuple[float, float, float] = (242.0, 238.0, 232.0)
    seed: int = 0
    #: "varied": irregular, touching, textured nuclei of mixed darkness, not all ringed by
    #: cytoplasm, and small dark flat nuclei in the fibrous rim; "simple": the smooth dark ellipses,
    #: each in a pale cytoplasm ring, of the committed demo study (images/).
    nuclei_model: str = "varied"
    #: With the "varied" nuclei: chondrocytes in lacunae (clear halos in the proteoglycan matrix, some
    #: holding two or more cells), more of them with day, and spindle-shaped cells with a long
    #: cytoplasm in the outer zone, fewer with day. Drawn from a random stream of their own.
    cartilage: bool = True


@dataclass
class SyntheticSection:
    """A rendered section and its ground truth."""

    image: np.ndarray
    pellets: np.ndarray
    classes: np.ndarray
    nuclei: np.ndarray
    proteoglycan_od: np.ndarray
    pixel_size_um: float
    stains: StainSet
    background_rgb: np.ndarray
    params: SectionParams
    metadata: dict = field(default_factory=dict)
    #: lacunae (uint32: each clear halo with the nuclei it holds) and cell territories (uint32, nucleus
    #: ids: each nucleus with its cytoplasm or lacuna), exact
    lacunae: np.ndarray | None = None
    territories: np.ndarray | None = None


def proteoglycan_target(day: int, labeled: bool, donor_offset: float = 0.0) -> float:
    """Expected proteoglycan area fraction of a pellet (0-1) for a day and condition."""
    base = {7: 0.14, 14: 0.32, 28: 0.50}.get(int(day))
    if base is None:
        base = float(np.interp(day, DAYS, (0.14, 0.32, 0.50)))
    if labeled:
        base *= 0.65
    return float(np.clip(base + donor_offset, 0.03, 0.8))


def _rotate_towards(vector, rng, max_deg):
    """Rotate a unit vector by up to ``max_deg`` about a random axis, keeping it non-negative."""
    if max_deg <= 0:
        return vector
    for _ in range(20):
        axis = rng.normal(size=3)
        axis -= axis.dot(vector) * vector
        axis /= np.linalg.norm(axis)
        angle = np.deg2rad(rng.uniform(0.5, 1.0) * max_deg)
        out = vector * np.cos(angle) + axis * np.sin(angle)
        if out.min() >= 0:
            return out / np.linalg.norm(out)
    return vector


def jitter_stains(stains: StainSet, max_deg: float, rng) -> StainSet:
    """Rotate every stain vector by up to ``max_deg`` degrees (hue and saturation drift)."""
    return stains.with_vectors(np.stack([_rotate_towards(v, rng, max_deg) for v in stains.vectors]))


def _smooth_noise(shape, sigma_px, rng):
    field_ = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma_px, mode="reflect")
    return (field_ - field_.mean()) / (field_.std() + 1e-9)


def _pellet_mask(shape, center, radius_px, rng):
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dr, dc = rr - center[0], cc - center[1]
    theta = np.arctan2(dr, dc)
    ratio = rng.uniform(0.8, 1.0)
    tilt = rng.uniform(0, np.pi)
    radius = radius_px * (1 + (1 / ratio - 1) * np.cos(2 * (theta - tilt)) / 2)
    for k in range(3, 7):
        radius = radius * (1 + rng.uniform(0, 0.035) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)))
    return np.hypot(dr, dc) <= radius


def _ellipse_radius(a, b, theta):
    """Distance from an ellipse's centre to its edge at ``theta`` radians from its ``a`` axis."""
    return a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)


def _place_nuclei(pellet_mask, depth_um, px, density_per_mm2, rng, *, touching_p=0.06, contact=False):
    """Dart-throw nucleus centres (rows, cols, semi-axes in px, angle); ``touching_p`` of them touch the previous one.

    A nucleus touching one that itself touched another makes a chain: with
    ``touching_p`` above a few percent, clusters of three or four form. With
    ``contact`` a touching nucleus is placed where the two ellipses meet
    (their radii towards each other summed, times 0.92-1), whatever their
    orientations, and clear of every other nucleus; without it, at 0.95 of the
    sum of the two minor semi-axes, which can overlap them deeply.
    """
    area_mm2 = pellet_mask.sum() * (px / 1000.0) ** 2
    n_target = int(density_per_mm2 * area_mm2)
    rows, cols = np.nonzero(pellet_mask & (depth_um > 9.0))
    if rows.size == 0 or n_target == 0:
        return []
    grid_um = 12.0
    cell = max(1, int(round(grid_um / px)))
    occupied: dict = {}
    nuclei = []
    tries = 0
    while len(nuclei) < n_target and tries < n_target * 30:
        tries += 1
        i = rng.integers(rows.size)
        r, c = float(rows[i] + rng.uniform(-0.5, 0.5)), float(cols[i] + rng.uniform(-0.5, 0.5))
        a_um = rng.uniform(3.2, 6.0)
        b_um = a_um * rng.uniform(0.55, 0.95)
        touching = len(nuclei) > 0 and rng.random() < touching_p
        own_angle = None
        if touching:
            pr, pc, pa, pb, p_angle = nuclei[-1]
            angle = rng.uniform(0, 2 * np.pi)
            if contact:
                own_angle = rng.uniform(-np.pi, np.pi)
                reach = _ellipse_radius(pa, pb, angle - p_angle) + _ellipse_radius(a_um / px, b_um / px, angle - own_angle)
                dist = reach * rng.uniform(0.92, 1.0)
            else:
                dist = (pb + b_um / px) * 0.95
            r, c = pr + dist * np.sin(angle), pc + dist * np.cos(angle)
            ri, ci = int(round(r)), int(round(c))
            if not (0 <= ri < depth_um.shape[0] and 0 <= ci < depth_um.shape[1]) or depth_um[ri, ci] <= 9.0:
                continue
        key = (int(r) // cell, int(c) // cell)
        min_gap = (a_um + 4.0) / px
        clash = False
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                for (qr, qc, qa) in occupied.get((key[0] + dr, key[1] + dc), ()):
                    if contact and touching and (qr, qc) == (pr, pc):
                        continue
                    need = (qa / px + a_um / px) * (0.8 if touching else 1.0) + (0 if touching else 3.0 / px)
                    if np.hypot(qr - r, qc - c) < min(need, min_gap + qa / px):
                        clash = True
        if clash and (contact or not touching):
            continue
        occupied.setdefault(key, []).append((r, c, a_um))
        nuclei.append((r, c, a_um / px, b_um / px, own_angle if own_angle is not None else rng.uniform(-np.pi, np.pi)))
    return nuclei


def _draw_nucleus(labels, idx, r, c, a, b, angle, amplitudes, phases) -> None:
    """Draw an irregular nucleus (an ellipse whose radius carries harmonics 2-5) into free pixels of ``labels``.

    Parameters
    ----------
    labels : ndarray of uint32, modified in place
    idx : int
    r, c : float
        Centre (px).
    a, b : float
        Semi-axes (px), ``a`` along ``angle`` (radians from the column axis towards the row axis).
    amplitudes, phases : ndarray of float, shape (4,)
        Relative amplitude and phase of the radius harmonics 2, 3, 4 and 5.
    """
    a, b = max(float(a), 0.8), max(float(b), 0.8)
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    radius = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    for k, (amp, phase) in enumerate(zip(amplitudes, phases), start=2):
        radius = radius * (1 + amp * np.cos(k * theta + phase))
    u, v = radius * np.cos(theta), radius * np.sin(theta)
    rows = r + u * np.sin(angle) + v * np.cos(angle)
    cols = c + u * np.cos(angle) - v * np.sin(angle)
    rr, cc = polygon(rows, cols, shape=labels.shape)
    if rr.size == 0:
        rr, cc = np.array([int(round(r))]), np.array([int(round(c))])
        if not (0 <= rr[0] < labels.shape[0] and 0 <= cc[0] < labels.shape[1]):
            return
    free = labels[rr, cc] == 0
    labels[rr[free], cc[free]] = idx


def _place_rim_nuclei(labels, pellets, depth_um, px, rng) -> None:
    """Add small dark nuclei in each pellet's fibrous rim: flat ones along the edge, a third small and round.

    About one per 35 µm of perimeter, 1.5-18 µm deep, in pixels no other
    nucleus holds; numbered after the existing ones.
    """
    next_id = int(labels.max()) + 1
    grad_r, grad_c = np.gradient(depth_um)
    for k in range(1, int(pellets.max()) + 1):
        sel = pellets == k
        perimeter_um = float(np.count_nonzero(sel & (depth_um <= px))) * px
        rows, cols = np.nonzero(sel & (depth_um > 1.5) & (depth_um < 18.0) & (labels == 0))
        if rows.size == 0:
            continue
        for _ in range(int(perimeter_um / 35.0)):
            i = rng.integers(rows.size)
            r, c = float(rows[i]), float(cols[i])
            if rng.random() < 0.33:
                a_um = b_um = rng.uniform(1.2, 2.2)
            else:
                a_um, b_um = rng.uniform(2.5, 5.0), rng.uniform(0.9, 1.6)
            # the long axis along the edge: perpendicular to the depth gradient
            angle = np.arctan2(-grad_c[rows[i], cols[i]], grad_r[rows[i], cols[i]])
            before = np.count_nonzero(labels == next_id)
            _draw_nucleus(labels, next_id, r, c, a_um / px, b_um / px, angle, rng.uniform(0, 0.06, 4), rng.uniform(0, 2 * np.pi, 4))
            if np.count_nonzero(labels == next_id) > before:
                next_id += 1


def _varied_weigert(nuclei, n_cells, px, rng) -> np.ndarray:
    """Weigert's hematoxylin (OD) of the varied nuclei: faint and dark cells, granular chromatin, dark rim nuclei.

    A quarter of the cells are faint (0.5-0.8), the rest dark (0.95-1.5);
    chromatin varies by ±25 % at 0.5 µm with denser clumps; the fibrous rim's
    nuclei (ids above ``n_cells``) are dark (1.3-1.8).
    """
    n_all = int(nuclei.max())
    level = np.where(rng.random(n_all + 1) < 0.25, rng.uniform(0.5, 0.8, n_all + 1), rng.uniform(0.95, 1.5, n_all + 1))
    level[n_cells + 1 :] = rng.uniform(1.3, 1.8, max(0, n_all - n_cells))
    texture = 1 + 0.25 * _smooth_noise(nuclei.shape, 0.5 / px, rng)
    texture += 0.4 * (_smooth_noise(nuclei.shape, 0.4 / px, rng) > 1.5)
    return (level[nuclei] * np.clip(texture, 0.3, None)).astype(np.float32)


#: Share of the chondrocytes in proteoglycan-rich matrix that sit in a lacuna, by day (three quarters of it in labeled pellets).
LACUNA_SHARE = {7: 0.25, 14: 0.5, 28: 0.75}
#: Share of the outer zone's cells (relative depth below 0.5) that are spindle-shaped, by day.
SPINDLE_SHARE = {7: 0.7, 14: 0.5, 28: 0.3}
#: Truth territories reach at most this far from their nucleus (µm): past every drawn cytoplasm and halo.
TRUTH_TERRITORY_UM = 30.0


def _ellipse_mask(shape, r, c, a, b, angle) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (rows, cols) of an ellipse of semi-axes ``a``, ``b`` (px), ``a`` along ``angle`` as :func:`_draw_nucleus` draws it."""
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    u, v = max(a, 0.8) * np.cos(theta), max(b, 0.8) * np.sin(theta)
    return polygon(r + u * np.sin(angle) + v * np.cos(angle), c + u * np.cos(angle) - v * np.sin(angle), shape=shape)


def _cartilage_cells(centres, reach, nuclei, *, in_matrix, in_fibrous, rel_depth, day, labeled, px, rng):
    """Halos (lacunae) and spindle cytoplasm around the cells: two bool masks, before nuclei are cut out.

    A cell whose centre lies in proteoglycan-rich matrix (``in_matrix``) sits in
    a lacuna with the day's :data:`LACUNA_SHARE`; a touching neighbour joins
    its lacuna (a chondron) with probability 0.35. The halo is a near-round
    ellipse 1.5-3.5 µm wider than the nucleus, the nucleus off its centre by
    up to a third of that; a halo that would come within 1.5 µm of another
    lacuna or cover another cell's nucleus is not drawn (that cell stays in
    the matrix). Of the other cells of the outer zone (relative
    depth below 0.5) that lie in stained matrix (proteoglycan, or the fibrous
    capsule and strands: ``in_fibrous``), the day's :data:`SPINDLE_SHARE` get
    a cytoplasm 2.2-3 times the nucleus's length along its long axis; in
    unstained matrix a cell's outline would not show, whatever its shape.
    """
    from scipy.spatial import cKDTree

    shape = nuclei.shape
    halo = np.zeros(shape, bool)
    spindle = np.zeros(shape, bool)
    if not centres:
        return halo, spindle
    arr = np.asarray([c[:2] for c in centres])
    share = LACUNA_SHARE.get(int(day), float(np.interp(day, DAYS, [LACUNA_SHARE[d] for d in DAYS]))) * (0.75 if labeled else 1.0)
    ri = np.clip(np.rint(arr).astype(int), 0, np.array(shape) - 1)
    candidate = in_matrix[ri[:, 0], ri[:, 1]]
    wanted = candidate & (rng.random(len(centres)) < share)
    tree = cKDTree(arr)
    owner = np.zeros(shape, np.int32)  # which lacuna (1..) each halo pixel belongs to
    chosen = np.zeros(len(centres), bool)
    wall = 1.5 / px  # the matrix left between two lacunae, and between a lacuna and another cell

    def draw(k, group) -> bool:
        r, c = centres[k][:2]
        gap = rng.uniform(1.5, 3.5) / px
        big, ratio, turn = reach[k] + gap, rng.uniform(0.8, 1.0), rng.uniform(-np.pi, np.pi)
        t, off = rng.uniform(0, 2 * np.pi), rng.uniform(0, gap / 3)
        r0, c0 = r + off * np.sin(t), c + off * np.cos(t)
        rr, cc = _ellipse_mask(shape, r0, c0, big + wall, (big + wall) * ratio, turn)
        others = owner[rr, cc]
        cells = nuclei[rr, cc]
        if np.any((others != 0) & (others != group)) or np.any((cells != 0) & ~np.isin(cells, members[group])):
            return False
        rr, cc = _ellipse_mask(shape, r0, c0, big, big * ratio, turn)
        owner[rr, cc] = group
        chosen[k] = True
        return True

    members: dict = {}
    for i in np.flatnonzero(wanted).tolist():
        if chosen[i]:
            continue
        group = len(members) + 1
        # a touching neighbour shares the lacuna a third of the time (a chondron of two or more cells)
        partners = [
            j for j in tree.query_ball_point(arr[i], reach[i] * 2.5)
            if j != i and not chosen[j] and candidate[j] and np.hypot(*(arr[j] - arr[i])) < (reach[i] + reach[j]) * 1.15 and rng.random() < 0.35
        ]
        members[group] = [i + 1, *(j + 1 for j in partners)]
        if not draw(i, group):
            del members[group]
            continue
        for j in partners:
            if not draw(j, group):
                members[group].remove(j + 1)
    halo = owner > 0
    spindle_share = SPINDLE_SHARE.get(int(day), float(np.interp(day, DAYS, [SPINDLE_SHARE[d] for d in DAYS])))
    for k, (r, c, a, b, ang) in enumerate(centres):
        if (
            not chosen[k] and rel_depth[ri[k, 0], ri[k, 1]] < 0.5 and b / a < 0.85
            and (in_matrix[ri[k, 0], ri[k, 1]] or in_fibrous[ri[k, 0], ri[k, 1]]) and rng.random() < spindle_share
        ):
            rr, cc = _ellipse_mask(shape, r, c, a * rng.uniform(2.2, 3.0), b + rng.uniform(0.5, 1.0) / px, ang)
            spindle[rr, cc] = True
    return halo, spindle & ~halo


def make_section(params: SectionParams | None = None, **overrides) -> SyntheticSection:
    """Render one synthetic AB/VG section.

    Parameters
    ----------
    params : SectionParams, optional
    **overrides
        Fields of :class:`SectionParams` to replace.

    Returns
    -------
    SyntheticSection
        ``image`` is uint8 RGB; ``pellets`` uint16, ``classes`` uint8,
        ``nuclei`` uint32, ``proteoglycan_od`` float32, all (rows, cols).
    """
    p = params or SectionParams()
    if overrides:
        p = SectionParams(**{**p.__dict__, **overrides})
    rng = np.random.default_rng(p.seed)
    px = float(p.pixel_size_um)
    stains = jitter_stains(PRESETS["ab-vg"], p.hue_jitter_deg, rng)

    # ---- layout (µm) -> pixels
    diam_um = rng.uniform(*p.pellet_diameter_um, size=p.n_pellets)
    margin_um, gap_um = 80.0, 70.0
    width_um = diam_um.sum() * 1.15 + gap_um * (p.n_pellets - 1) + 2 * margin_um
    height_um = diam_um.max() * 1.15 + 2 * margin_um + rng.uniform(0, 60)
    shape = (int(round(height_um / px)), int(round(width_um / px)))
    pellets = np.zeros(shape, np.uint16)
    x_um = margin_um
    for k, d in enumerate(diam_um):
        cy = (height_um / 2 + rng.uniform(-0.05, 0.05) * (height_um - d * 1.15)) / px
        cx = (x_um + d * 1.15 / 2) / px
        mask = _pellet_mask(shape, (cy, cx), d / 2 / px, rng) & (pellets == 0)
        pellets[mask] = k + 1
        x_um += d * 1.15 + gap_um
    tissue = pellets > 0
    depth_um = ndi.distance_transform_edt(tissue) * px
    rel_depth = np.zeros(shape, np.float32)
    for k, d in enumerate(diam_um):
        sel = pellets == k + 1
        rel_depth[sel] = np.clip(depth_um[sel] / (d / 2), 0, 1)

    # ---- nuclei
    density = {7: 3200.0, 14: 2500.0, 28: 1900.0}.get(int(p.day), 2500.0) * rng.uniform(0.85, 1.15)
    if p.nuclei_model not in ("varied", "simple"):
        raise ValueError(f"nuclei_model must be 'varied' or 'simple', not {p.nuclei_model!r}")
    varied = p.nuclei_model == "varied"
    # the varied model draws from a stream of its own, so the simple model's sections stay as committed
    vrng = np.random.default_rng([p.seed, 19])
    centres = _place_nuclei(tissue, depth_um, px, density, rng, touching_p=0.2 if varied else 0.06, contact=varied)
    nuclei = np.zeros(shape, np.uint32)
    if varied:
        reach = []  # each nucleus's largest radius: the irregular outline reaches beyond the ellipse
        for idx, (r, c, a, b, ang) in enumerate(centres, start=1):
            amplitudes = vrng.uniform(0, 0.12, size=4)
            _draw_nucleus(nuclei, idx, r, c, a, b, ang, amplitudes, vrng.uniform(0, 2 * np.pi, size=4))
            reach.append(a * (1 + amplitudes.sum()))
        n_cells = len(centres)
        _place_rim_nuclei(nuclei, pellets, depth_um, px, vrng)
    else:
        for idx, (r, c, a, b, ang) in enumerate(centres, start=1):
            rr, cc = ellipse(r, c, max(a, 0.8), max(b, 0.8), shape=shape, rotation=ang)
            free = nuclei[rr, cc] == 0
            nuclei[rr[free], cc[free]] = idx
        n_cells = len(centres)
    nuclei[~tissue] = 0
    nuclei_mask = nuclei > 0
    if varied:
        # a cytoplasm ring of 0.8-2 µm around 40 % of the cells; the others' nuclei lie in the matrix itself
        n_all = int(nuclei.max())
        ring_um = np.where(vrng.random(n_all + 1) < 0.4, vrng.uniform(0.8, 2.0, n_all + 1), 0.0)
        ring_um[n_cells + 1 :] = 0.0  # the fibrous rim's flat nuclei sit in collagen
        dist, (ir, ic) = ndi.distance_transform_edt(~nuclei_mask, return_indices=True)
        cytoplasm = (dist * px <= ring_um[nuclei[ir, ic]]) & tissue & ~nuclei_mask
        del dist, ir, ic
    else:
        cytoplasm = (ndi.distance_transform_edt(~nuclei_mask) * px <= 2.0) & tissue & ~nuclei_mask

    # ---- iron granules (labeled pellets)
    iron = np.zeros(shape, bool)
    iron_od = np.zeros(shape, np.float32)
    if p.labeled:
        for k, (r, c, a, b, ang) in enumerate(centres):
            if varied:
                a = reach[k]
            if rng.random() > 0.8:
                continue
            for _ in range(rng.integers(1, 6)):
                radius_um = rng.uniform(0.3, 1.5)
                theta = rng.uniform(0, 2 * np.pi)
                dist = a + (radius_um + rng.uniform(0.8, 3.0)) / px
                gr, gc = r + dist * np.sin(theta), c + dist * np.cos(theta)
                rr, cc = disk((gr, gc), max(radius_um / px, 0.55), shape=shape)
                keep = tissue[rr, cc] & ~nuclei_mask[rr, cc]
                iron[rr[keep], cc[keep]] = True
                iron_od[rr[keep], cc[keep]] = rng.uniform(1.3, 2.0)

    # ---- collagen (acid fuchsin): fibrous rim capsule plus a few inner strands
    rim_um = rng.uniform(14.0, 28.0)
    rim = tissue & (depth_um < rim_um * (1 + 0.4 * _smooth_noise(shape, 20.0 / px, rng)))
    strands = tissue & (_smooth_noise(shape, 12.0 / px, rng) > 2.0)
    collagen_region = (rim | strands) & ~nuclei_mask
    fuchsin = np.where(collagen_region, rng.uniform(0.45, 0.6), 0.04 * tissue).astype(np.float32)
    fuchsin *= (1 + 0.1 * _smooth_noise(shape, 3.0 / px, rng)).astype(np.float32)
    # ---- proteoglycan (Alcian blue) region: smooth random field, core-biased
    target = proteoglycan_target(p.day, p.labeled, p.donor_offset) + rng.normal(0, 0.02)
    matrix = tissue & ~nuclei_mask & ~cytoplasm
    score = _smooth_noise(shape, 30.0 / px, rng) + 2.2 * rel_depth

    def pg_fields(matrix_, collagen_):
        """The soft proteoglycan field and region, thresholded so that the region is ``target`` of each pellet."""
        soft = np.zeros(shape, np.float32)
        region = np.zeros(shape, bool)
        for k in range(p.n_pellets):
            sel = pellets == k + 1
            vals = score[sel & matrix_ & ~collagen_]
            n_sel = sel.sum()
            if vals.size == 0:
                continue
            # threshold so that PG pixels are `target` of the pellet's pixels
            frac_of_matrix = np.clip(target * n_sel / max(vals.size, 1), 0, 1)
            thr = np.quantile(vals, 1 - frac_of_matrix)
            soft[sel] = 1 / (1 + np.exp(-(score[sel] - thr) * 12.0))
            region[sel] = score[sel] >= thr
        return soft, region

    ab_soft, pg_region = pg_fields(matrix, collagen_region)
    ab_level = {7: 0.42, 14: 0.55, 28: 0.70}.get(int(p.day), 0.55) * rng.uniform(0.9, 1.1)
    texture = 1 + 0.15 * _smooth_noise(shape, 4.0 / px, rng)

    # ---- lacunae (clear halos: no stain at all) and spindle cells' cytoplasm (picric only), carved out
    # of the matrix before the proteoglycan threshold is set, so the pellet keeps its target fraction
    halo = np.zeros(shape, bool)
    if varied and p.cartilage:
        halo, spindle = _cartilage_cells(
            centres[:n_cells], reach[:n_cells], nuclei, in_matrix=ab_soft > 0.5, in_fibrous=rim | strands, rel_depth=rel_depth,
            day=p.day, labeled=p.labeled, px=px, rng=np.random.default_rng([p.seed, 24]),
        )
        halo &= tissue & ~nuclei_mask
        spindle &= tissue & ~nuclei_mask
        cleared = halo | spindle
        fuchsin[cleared] = 0.03
        collagen_region &= ~cleared
        cytoplasm = (cytoplasm | spindle) & ~halo
        matrix &= ~cleared
        ab_soft, pg_region = pg_fields(matrix, collagen_region)

    ab_conc = (ab_level * ab_soft * texture * matrix).astype(np.float32)
    pg_region &= matrix & ~collagen_region

    # the fibrous capsule and strands hold little proteoglycan: Alcian blue fades to a quarter there
    capsule = ndi.gaussian_filter(collagen_region.astype(np.float32), 1.0 / px)
    ab_conc *= (1 - 0.75 * capsule).astype(np.float32)
    pg_region &= ab_conc >= 0.5 * ab_level

    # ---- picric acid: cytoplasm yellow, matrix pale yellow
    picric = np.where(cytoplasm, rng.uniform(0.28, 0.36), np.where(tissue, 0.14, 0.0)).astype(np.float32)
    picric[nuclei_mask] = 0.05
    picric[halo] = 0.02

    # ---- Weigert's hematoxylin in nuclei, with chromatin texture
    weigert = np.zeros(shape, np.float32)
    chromatin = 1 + 0.12 * _smooth_noise(shape, 0.8 / px, rng)
    weigert[nuclei_mask] = (rng.uniform(1.1, 1.4) * chromatin[nuclei_mask]).astype(np.float32)
    if varied:
        weigert[nuclei_mask] = _varied_weigert(nuclei, n_cells, px, vrng)[nuclei_mask]

    haze = (0.05 * tissue).astype(np.float32) if p.labeled else np.zeros(shape, np.float32)
    conc = {
        "alcian_blue": ab_conc,
        "acid_fuchsin": fuchsin,
        "picric_acid": picric,
        "weigert_hematoxylin": weigert,
        "iron": iron_od + haze,
    }
    od = np.zeros(shape + (3,), np.float32)
    for name, c in conc.items():
        od += c[..., None] * stains.vector(name).astype(np.float32)

    # ---- optics, illumination, sensor, compression
    sigma_px = p.blur_sigma_um / px
    if sigma_px > 0:
        intensity = 10.0 ** (-od)
        for ch in range(3):
            intensity[..., ch] = ndi.gaussian_filter(intensity[..., ch], sigma_px)
        od = -np.log10(np.clip(intensity, 1e-6, None))
    tint = np.asarray(p.background_rgb, np.float64) * rng.uniform(0.98, 1.0, size=3)
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    rr, cc = rr / shape[0] - 0.5, cc / shape[1] - 0.5
    g_angle = rng.uniform(0, 2 * np.pi)
    illum = 1 - p.illumination_variation * (
        0.6 * (rr**2 + cc**2) + 0.4 * (np.cos(g_angle) * rr + np.sin(g_angle) * cc + 0.5)
    )
    background = tint[None, None, :] * illum[..., None]
    image = od_to_rgb(od, background, dtype=np.float32)
    image += rng.normal(0, p.noise_sigma, size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if p.jpeg_quality:
        ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(p.jpeg_quality)])
        image = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])

    # ---- ground truth classes, priority iron > nuclei > proteoglycan > collagen > other tissue
    classes = np.zeros(shape, np.uint8)
    classes[tissue] = CLASS_CODES["other_tissue"]
    classes[collagen_region & tissue] = CLASS_CODES["collagen"]
    classes[pg_region] = CLASS_CODES["proteoglycan"]
    classes[nuclei_mask] = CLASS_CODES["nuclei"]
    classes[iron] = CLASS_CODES["iron"]
    # a cell's cytoplasm is its territory where stained matrix outlines it (in pale matrix no outline shows), and
    # where it shows as cytoplasm: in the fibrous capsule the collagen stain covers it (its class is collagen)
    outlined = within_distance(pg_region | (collagen_region & tissue), 3.0 / px)
    room = (cytoplasm & outlined & ~collagen_region) | halo
    territories = cell_territories(nuclei, room, max_distance_px=TRUTH_TERRITORY_UM / px)
    # the exact halos, with the nuclei that touch them as the pipeline assigns them (no size, enclosure or
    # shape test, and no blurred nucleus edge to bridge)
    exact = replace(
        CartilageConfig().params(), lacuna_min_area_um2=0.0, lacuna_max_area_um2=np.inf, lacuna_min_enclosure=0.0, lacuna_reach_um=TRUTH_TERRITORY_UM,
        lacuna_min_solidity=0.0, nucleus_gap_um=0.0,
    )
    lacunae = lacunae_from_clear(halo & ~iron, nuclei, tissue & ~room & ~nuclei_mask, pixel_size_um=px, params=exact)
    return SyntheticSection(
        image=image,
        pellets=pellets,
        classes=classes,
        nuclei=nuclei,
        proteoglycan_od=ab_conc,
        pixel_size_um=px,
        stains=stains,
        background_rgb=tint,
        params=p,
        lacunae=lacunae,
        territories=territories,
    )


def truth_table(section: SyntheticSection, *, iron_cell_distance_um: float = 5.0, cartilage=None) -> list[dict]:
    """Measure the ground truth with the pipeline's own measurement code.

    ``cartilage``: :class:`~pellet_analysis.params.CartilageParams` of the
    rounded-cell threshold, bands and patches (the config's defaults when None).
    """
    return measure_pellets(
        section.pellets,
        section.classes,
        section.nuclei,
        pixel_size_um=section.pixel_size_um,
        proteoglycan_od=section.proteoglycan_od,
        iron_cell_distance_um=iron_cell_distance_um,
        lacunae=section.lacunae,
        territories=section.territories,
        cartilage=cartilage if cartilage is not None else CartilageConfig().params(),
    )


def write_section(section: SyntheticSection, path, *, truth_dir=None) -> Path:
    """Write a section's image (TIFF with pixel size tags, PNG or JPEG by suffix) and, optionally, its truth.

    TIFF images are JPEG-compressed in tiles and carry the pixel size in
    their resolution tags (centimetre unit). Truth goes to ``truth_dir`` as
    ``<stem>_pellets.tif``, ``<stem>_classes.tif``, ``<stem>_nuclei.tif``.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        per_cm = 1e4 / section.pixel_size_um
        tifffile.imwrite(
            path,
            section.image,
            photometric="rgb",
            compression="jpeg",
            compressionargs={"level": 90},
            tile=(256, 256),
            resolution=(per_cm, per_cm),
            resolutionunit="CENTIMETER",
        )
    elif suffix in (".png", ".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if suffix != ".png" else []
        if not cv2.imwrite(str(path), section.image[..., ::-1], params):
            raise OSError(f"{path}: could not write image")
    else:
        raise ValueError(f"{path}: unsupported image suffix {suffix!r}")
    if truth_dir is not None:
        truth_dir = Path(truth_dir)
        truth_dir.mkdir(parents=True, exist_ok=True)
        for name in ("pellets", "classes", "nuclei"):
            tifffile.imwrite(truth_dir / f"{path.stem}_{name}.tif", getattr(section, name), compression="zlib")
    return path


def study_sections(
    *,
    donors=("P01", "P02", "P03"),
    days=DAYS,
    conditions=("unlabeled", "labeled"),
    pixel_size_um=1.0,
    pellet_diameter_um=(300.0, 440.0),
    max_pellets=3,
    hue_jitter_deg=3.0,
    seed=0,
    nuclei_model="simple",
):
    """Yield ``(stem, SyntheticSection)`` for every donor x condition x day, one section each.

    ``nuclei_model`` defaults to "simple", the model the committed demo study
    (images/) was rendered with, so that its truth matches those images.

    Stems follow ``{donor}_{condition}_d{day}_s1``. Donors differ by a random
    offset of their proteoglycan fraction; the same arguments give the same study.
    """
    rng = np.random.default_rng(seed)
    donor_offsets = {d: float(rng.normal(0, 0.03)) for d in donors}
    for donor in donors:
        for condition in conditions:
            for day in days:
                params = SectionParams(
                    day=int(day),
                    labeled=condition == "labeled",
                    n_pellets=int(rng.integers(1, max_pellets + 1)),
                    pixel_size_um=pixel_size_um,
                    pellet_diameter_um=pellet_diameter_um,
                    donor_offset=donor_offsets[donor],
                    hue_jitter_deg=hue_jitter_deg,
                    seed=int(rng.integers(2**31)),
                    nuclei_model=nuclei_model,
                )
                yield f"{donor}_{condition}_d{day}_s1", make_section(params)


def make_study(out_dir, *, suffix=".tif", truth_dir=None, progress=None, **study) -> list[Path]:
    """Write :func:`study_sections` as images (and optionally truth); returns the image paths."""
    out_dir = Path(out_dir)
    paths = []
    for stem, section in study_sections(**study):
        path = write_section(section, out_dir / f"{stem}{suffix}", truth_dir=truth_dir)
        paths.append(path)
        if progress is not None:
            progress(path)
    return paths
