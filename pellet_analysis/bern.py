"""Automated Bern-like score (after Grogan et al., Tissue Eng 2006) from measured quantities.

The Bern score grades three categories 0-3 by eye. Here each comes from measurements
taken with iron and nuclei already removed from the proteoglycan class, so iron
labeling does not darken the stain score:

- ``bern_stain`` (uniformity and darkness of the proteoglycan stain): proteoglycan
  area fraction against three thresholds; at most 1 when the mean proteoglycan OD is
  weak; one less when the stain is uneven (high coefficient of variation of its OD).
- ``bern_matrix`` (distance between cells / amount of matrix): mean nearest-neighbour
  distance between nuclei against three thresholds.
- ``bern_morphology`` (rounded chondrocyte-like versus spindle-shaped cells): mean
  minor/major axis ratio of the nuclei against three thresholds.

``bern_score`` is their sum (0-9). Thresholds are in :class:`~pellet_analysis.params.BernParams`
(the ``bern`` section of the config).
"""

from __future__ import annotations

import numpy as np

from .params import BernParams

__all__ = ["BERN_COLUMNS", "bern_scores"]

BERN_COLUMNS = ["bern_stain", "bern_matrix", "bern_morphology", "bern_score"]


def _steps(value: float, thresholds) -> int:
    """Number of ascending thresholds ``value`` reaches (0-3); NaN counts as 0."""
    if value is None or not np.isfinite(value):
        return 0
    return int(np.searchsorted(np.asarray(thresholds, dtype=float), value, side="right"))


def bern_scores(row: dict, params: BernParams) -> dict:
    """The three Bern-like categories and their sum for one pellet's measurements.

    Parameters
    ----------
    row : dict
        Needs ``proteoglycan_area_fraction``, ``proteoglycan_mean_od``,
        ``proteoglycan_od_sd``, ``nuclei_nn_distance_um``, ``nuclei_roundness``
        and ``nuclei_count``.
    params : BernParams

    Returns
    -------
    dict
        ``bern_stain``, ``bern_matrix``, ``bern_morphology`` (0-3 each), ``bern_score`` (0-9).
    """
    stain = _steps(row["proteoglycan_area_fraction"], params.stain_fraction_thresholds)
    mean_od = row["proteoglycan_mean_od"]
    if stain > 1 and mean_od < params.stain_weak_od:
        stain = 1
    if stain > 0 and mean_od > 0 and row["proteoglycan_od_sd"] / mean_od > params.stain_max_cv:
        stain -= 1
    if row["nuclei_count"] >= 2:
        matrix = _steps(row["nuclei_nn_distance_um"], params.matrix_nn_distance_um_thresholds)
    else:
        matrix = 0
    morphology = _steps(row["nuclei_roundness"], params.morphology_roundness_thresholds) if row["nuclei_count"] else 0
    return {
        "bern_stain": stain,
        "bern_matrix": matrix,
        "bern_morphology": morphology,
        "bern_score": stain + matrix + morphology,
    }
