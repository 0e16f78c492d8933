"""Automated Bern-like score (after Grogan et al., Tissue Eng 2006) from measured quantities.

The Bern score grades three categories 0-3 by eye; docs/bern.md gives the
published grade descriptions and how each rule and threshold follows from them.
Each category here is a continuous value 0-3, piecewise linear between its
thresholds, so that it equals the integer grade at each threshold and the
integer grade is its floor:

- ``bern_stain`` (uniformity and darkness of the proteoglycan stain): the
  smallest of three readings: the proteoglycan area fraction (how much is
  stained), the mean proteoglycan OD (how dark) and the coefficient of
  variation of the proteoglycan area fraction over depth bands and patches
  (how even). Iron and nuclei are already out of the proteoglycan class, so
  iron labeling does not darken it.
- ``bern_matrix`` (distance between cells / amount of matrix): the mean
  spacing of the cells, ``1 / sqrt(nuclei density)``, in cell diameters.
- ``bern_morphology`` (condensed, spindle, mixed or rounded cells): the
  share of chondrocyte-like cells, the mean of the rounded-cell fraction
  (cell territories) and the fraction of cells in a lacuna.

``bern_score`` is the sum of the integer categories (0-9) and
``bern_score_continuous`` that of the continuous ones. The study statistics
average the continuous columns; the integer ones are the reader's.
Thresholds are in :class:`~pellet_analysis.params.BernParams` (the ``bern``
section of the config).
"""

from __future__ import annotations

import numpy as np

from .params import BernParams
from .profiles import coefficient_of_variation

__all__ = [
    "BERN_CATEGORIES",
    "BERN_COLUMNS",
    "BERN_CONTINUOUS_COLUMNS",
    "BERN_GRADE_COLUMNS",
    "bern_scores",
    "cell_spacing_um",
    "chondrocyte_fraction",
    "grade",
    "ramp",
    "zone_row",
]

#: The three categories, in the Bern score's order.
BERN_CATEGORIES = ["bern_stain", "bern_matrix", "bern_morphology"]
#: Integer grades (0-3 each, their sum 0-9), for the reader.
BERN_GRADE_COLUMNS = [*BERN_CATEGORIES, "bern_score"]
#: Continuous grades (0-3 each, their sum 0-9), for statistics.
BERN_CONTINUOUS_COLUMNS = [f"{c}_continuous" for c in BERN_GRADE_COLUMNS]
#: All Bern columns of the pellet table, in order.
BERN_COLUMNS = BERN_GRADE_COLUMNS + BERN_CONTINUOUS_COLUMNS


def ramp(value, knots, grades) -> float:
    """Piecewise-linear grade of ``value`` through the points (``knots``, ``grades``), clamped at both ends.

    Parameters
    ----------
    value : float
    knots : sequence of float
        Ascending measurement values.
    grades : sequence of float
        The grade at each knot (ascending or descending).

    Returns
    -------
    float
        ``grades[i]`` exactly at ``knots[i]``; NaN when ``value`` is NaN or None.
    """
    if value is None or not np.isfinite(value):
        return float("nan")
    return float(np.interp(float(value), np.asarray(knots, dtype=np.float64), np.asarray(grades, dtype=np.float64)))


def grade(continuous: float) -> int:
    """The integer grade of a continuous one: its floor (NaN counts as 0)."""
    if continuous is None or not np.isfinite(continuous):
        return 0
    # a grade reached exactly at a threshold must not fall to the grade below through rounding
    return int(np.floor(continuous + 1e-9))


def cell_spacing_um(nuclei_density_per_mm2: float) -> float:
    """Mean centre-to-centre spacing (µm) of cells at a density (per mm²): ``1000 / sqrt(density)``; inf at 0 or below, NaN when not measured."""
    if nuclei_density_per_mm2 is None or np.isnan(nuclei_density_per_mm2):
        return float("nan")
    if nuclei_density_per_mm2 <= 0:
        return float("inf")
    return 1000.0 / float(np.sqrt(nuclei_density_per_mm2))


def chondrocyte_fraction(rounded_cell_fraction: float, lacuna_cell_fraction: float) -> float:
    """Share (0-1) of chondrocyte-like cells: the mean of the rounded-cell and in-lacuna fractions (NaN ones left out).

    A rounded territory alone over-counts (a spindle cell cut across, or
    cells packed in a fibrous rim, read round); a lacuna alone under-counts
    (a halo missed or cut out of the plane): the mean sits between them.
    NaN when neither is measured.
    """
    values = [float(v) for v in (rounded_cell_fraction, lacuna_cell_fraction) if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _stain(row: dict, params: BernParams) -> float:
    fraction = row.get("proteoglycan_area_fraction")
    t1, t2, t3 = params.stain_fraction_thresholds
    amount = ramp(fraction, (0.0, t1, t2, t3), (0, 1, 2, 3))
    if not np.isfinite(amount):
        return 0.0
    readings = [amount]
    if amount > 0:
        # any stain at all is at least weak (1); the OD lifts it to moderate (2) and dark (3)
        readings.append(ramp(row.get("proteoglycan_mean_od"), (0.0, params.stain_weak_od, params.stain_dark_od), (1, 2, 3)))
        cvs = [row.get(k) for k in ("stain_band_cv", "stain_patch_cv")]
        cvs = [float(v) for v in cvs if v is not None and np.isfinite(v)]
        if cvs:  # uneven over bands or over patches: the larger spread
            readings.append(ramp(max(cvs), (params.stain_even_cv, params.stain_moderate_cv, params.stain_uneven_cv), (3, 2, 1)))
    return float(min(r for r in readings if np.isfinite(r)))


def _matrix(row: dict, params: BernParams) -> float:
    if (row.get("nuclei_count") or 0) < 2:
        return 0.0
    spacing_cells = cell_spacing_um(row.get("nuclei_density_per_mm2")) / params.cell_diameter_um
    t1, t2, t3 = params.matrix_spacing_cells_thresholds
    value = ramp(spacing_cells, (1.0, t1, t2, t3), (0, 1, 2, 3))  # np.interp: inf -> 3; NaN (density not measured) -> NaN
    return value if np.isfinite(value) else 0.0


def _morphology(row: dict, params: BernParams) -> float:
    if not row.get("nuclei_count", 0):
        return 0.0
    mixed, mostly = params.morphology_chondrocyte_fraction_thresholds
    value = ramp(chondrocyte_fraction(row.get("rounded_cell_fraction"), row.get("lacuna_cell_fraction")), (0.0, mixed, mostly), (1, 2, 3))
    return value if np.isfinite(value) else 0.0


def bern_scores(row: dict, params: BernParams) -> dict:
    """The three Bern-like categories, integer and continuous, and their sums for one pellet's measurements.

    Parameters
    ----------
    row : dict
        Reads ``proteoglycan_area_fraction``, ``proteoglycan_mean_od``,
        ``stain_band_cv``, ``stain_patch_cv`` (either may be NaN or absent:
        the stain's spread is then not graded), ``nuclei_count``,
        ``nuclei_density_per_mm2``, ``rounded_cell_fraction`` and
        ``lacuna_cell_fraction`` (NaN or absent: left out of the
        chondrocyte-like share).
    params : BernParams

    Returns
    -------
    dict
        :data:`BERN_GRADE_COLUMNS` (int: 0-3 each, ``bern_score`` 0-9) and
        :data:`BERN_CONTINUOUS_COLUMNS` (float, same ranges). Fewer than two
        nuclei give a matrix category of 0, none a morphology of 0 (no cells
        to grade).
    """
    continuous = {"bern_stain": _stain(row, params), "bern_matrix": _matrix(row, params), "bern_morphology": _morphology(row, params)}
    grades = {k: grade(v) for k, v in continuous.items()}
    return {
        **grades,
        "bern_score": sum(grades.values()),
        **{f"{k}_continuous": float(v) for k, v in continuous.items()},
        "bern_score_continuous": float(sum(continuous.values())),
    }


def zone_row(profile, from_um: float, to_um: float = float("inf")) -> dict:
    """The measurements :func:`bern_scores` reads, for the depth bands of one pellet's profile between two depths.

    Parameters
    ----------
    profile : list of dict
        One pellet's depth profile (``depth_profile`` of its row, or its rows
        of profiles.csv): :data:`~pellet_analysis.profiles.PROFILE_COLUMNS`.
    from_um, to_um : float
        Depths (µm from the surface): the bands lying wholly between them.

    Returns
    -------
    dict
        Area-weighted proteoglycan fraction, mean OD weighted by proteoglycan
        area, nuclei count and density, cell-weighted rounded and in-lacuna
        fractions, and ``stain_band_cv`` over the zone's bands
        (``stain_patch_cv`` NaN). Empty zone: zero area, fraction, OD, count
        and density; NaN rounded and in-lacuna fractions and band CV.
    """
    bands = [b for b in profile if b["depth_from_um"] >= from_um and b["depth_to_um"] <= to_um]
    area = np.array([b["area_um2"] for b in bands], dtype=np.float64)
    pg = np.array([b["proteoglycan_area_fraction"] for b in bands], dtype=np.float64)
    od = np.array([b["proteoglycan_mean_od"] for b in bands], dtype=np.float64)
    cells = np.array([b["nuclei_count"] for b in bands], dtype=np.float64)
    rounded = np.array([b["rounded_cell_fraction"] for b in bands], dtype=np.float64)
    in_lacuna = np.array([b["lacuna_cell_fraction"] for b in bands], dtype=np.float64)
    total, n_cells, pg_area = float(area.sum()), float(cells.sum()), float((pg * area).sum())
    band_cv = coefficient_of_variation(pg[area > 0])
    return {
        "area_um2": total,
        "proteoglycan_area_fraction": pg_area / total if total > 0 else 0.0,
        "proteoglycan_mean_od": float((od * pg * area).sum()) / pg_area if pg_area > 0 else 0.0,
        "nuclei_count": int(n_cells),
        "nuclei_density_per_mm2": n_cells / (total / 1e6) if total > 0 else 0.0,
        "rounded_cell_fraction": float((rounded * cells).sum()) / n_cells if n_cells > 0 else float("nan"),
        "lacuna_cell_fraction": float((in_lacuna * cells).sum()) / n_cells if n_cells > 0 else float("nan"),
        "stain_band_cv": band_cv,
        "stain_patch_cv": float("nan"),
    }
