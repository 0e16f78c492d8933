"""The frozen parameter objects the array functions take.

Each class holds one config section's values under the same attribute names
(:class:`~pellet_analysis.config.PelletConfig` -> :class:`PelletParams`, ...),
built once per image or pellet by the section's ``params()`` method, plus the
tuning values a user does not set, named here with their units. The array
modules read ``params.<name>`` and import no config, so they run on plain
values, in a worker process or a script, without pydantic.

A field without a default mirrors a config field (``params()`` fails when a
config section gains a field its class lacks); a field with a default is a
tuning value of the algorithm, documented where it is defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["StainParams", "PelletParams", "ClassifyParams", "NucleiParams", "IronParams", "BernParams", "CartilageParams"]


@dataclass(frozen=True)
class StainParams:
    """The stain model: :class:`~pellet_analysis.config.StainConfig`'s fields."""

    preset: str
    background_rgb: Optional[tuple]
    flat_field: bool
    vectors: Optional[dict]
    estimate: Optional[str]
    estimate_max_angle_deg: float
    estimate_min_stained_um2: float


@dataclass(frozen=True)
class PelletParams:
    """Finding pellet sections: :class:`~pellet_analysis.config.PelletConfig`'s fields and the tuning values below.

    Attributes
    ----------
    illumination_tissue_fraction : float
        Fraction (0-1) of ``tissue_min_od`` above which a pixel of the
        low-resolution copy, smoothed, is left out of the white point: lower
        than the tissue threshold, so the pale edge of a section does not
        darken the glass.
    illumination_dilation_px : int
        Low-resolution pixels by which that tissue mask is grown before the
        white point is taken, so the blurred rim of tissue stays out too.
    white_percentile_full_frame : float
        Percentile (0-100) of the pale pixels taken as white when tissue
        nearly fills the frame and no surface can be fitted.
    topology_opening_um : float
        Radius (µm) of the opening that detaches pellets joined by a thread
        of tissue on the low-resolution copy (at least one pixel).
    grow_small_px : int
        Low-resolution pixels by which a pellet is grown before its edge is
        refined at full resolution: room for the edge to move outward.
    window_slack_px : int
        Full-resolution pixels added to a pellet window's margin beyond one
        low-resolution block and the filters' reach: the rounding of the
        block edges and of the kernel radii.
    """

    min_pellet_area_um2: float
    tissue_min_od: float
    tissue_fraction: float
    tissue_floor_od: float
    outline_smoothing_um: float
    smoothing_um: float
    edge_band_um: float
    rim_width_um: float
    fill_holes_max_um2: float
    full_frame_min_border_fraction: float
    max_working_px: int
    illumination_tissue_fraction: float = 0.7
    illumination_dilation_px: int = 3
    white_percentile_full_frame: float = 90.0
    topology_opening_um: float = 2.0
    grow_small_px: int = 2
    window_slack_px: int = 3


@dataclass(frozen=True)
class ClassifyParams:
    """Per-pixel classification: :class:`~pellet_analysis.config.ClassifyConfig`'s fields and the tuning value below.

    Attributes
    ----------
    fine_sigma_um : float
        Sigma (µm) of the fine Gaussian applied to the OD before the darkness
        and granule maps: it takes out pixel noise but not a granule. The
        tile overlap reads it from here too.
    """

    proteoglycan_min_od: float
    collagen_min_od: float
    smoothing_um: float
    nucleus_rim_um: float
    grey_reach_um: float
    fine_sigma_um: float = 0.4


@dataclass(frozen=True)
class NucleiParams:
    """Nucleus detection: :class:`~pellet_analysis.config.NucleiConfig`'s fields and the tuning values below.

    Attributes
    ----------
    min_area_fraction : float
        Fraction (0-1) of the disk of ``min_diameter_um`` that a dark object
        must cover to be a nucleus: the threshold cuts a nucleus inside its
        blurred edge, so its dark core is smaller than the nucleus.
    grow_um : float
        Distance (µm) by which a nucleus, cut inside its blurred edge, may
        grow to half its own darkness.
    dark_pale_ring_um : float
        Width (µm) of the ring around a Weigert nucleus candidate (faint, or
        dark for ``dark_matrix_excess``) whose matrix stain it is compared
        with (matrix between pale cytoplasm rings or clear lacunae holds more
        of it than its ring).
    """

    min_diameter_um: float
    max_diameter_um: float
    typical_diameter_um: float
    dark_min_od: float
    dark_otsu_fraction: float
    dark_outline_fraction: float
    dark_split_max_solidity: float
    dark_faint_min_solidity: float
    dark_split_min_fraction: float
    dark_split_min_depth_um: float
    dark_pale_fraction: float
    dark_pale_sigma_um: float
    dark_pale_gap_um: float
    dark_pale_min_solidity: float
    dark_pale_max_granule_fraction: float
    dark_pale_matrix_tolerance: float
    dark_matrix_excess: float | None
    relative_min_od: float
    stain_otsu_fraction: float
    stain_otsu_floor_od: float
    stain_pale_fraction: float
    stain_pale_min_solidity: float
    stain_min_od: float
    stain_seed_sigma_um: float
    stain_seed_h: float
    stain_outline_fraction: float
    stain_merge_min_solidity: float
    stain_merge_max_diameter_um: float
    min_area_fraction: float = 0.55
    grow_um: float = 1.0
    dark_pale_ring_um: float = 1.5


@dataclass(frozen=True)
class IronParams:
    """Iron granules and their calibration: :class:`~pellet_analysis.config.IronConfig`'s fields and the tuning values below.

    Attributes
    ----------
    nucleus_core_um : float
        Distance (µm) by which the nuclei are eroded to their cores; granule
        candidates on a core are left out of the colour test, so a granule
        beside a nucleus is not averaged with the nucleus's chromatin.
    grow_um : float
        Distance (µm) by which a granule may grow to half its own contrast.
    """

    min_od: float
    granule_min_od: float
    min_blue_green_ratio: float
    min_red_blue_ratio: float
    colour_margin_deg: float | None
    max_neutral_ratio: float | None
    nucleus_body_fraction: float | None
    nucleus_body_um: float
    max_nucleus_distance_um: float | None
    max_granule_diameter_um: float
    nucleus_gap_um: float
    cell_distance_um: float
    calibrate: str
    control_conditions: tuple
    calibrate_max_positive_fraction: float
    calibrate_max_pellet_positive_fraction: float | None
    nucleus_core_um: float = 1.0
    grow_um: float = 0.5


@dataclass(frozen=True)
class BernParams:
    """Thresholds of the Bern-like score: :class:`~pellet_analysis.config.BernConfig`'s fields."""

    stain_fraction_thresholds: tuple
    stain_weak_od: float
    stain_dark_od: float
    stain_even_cv: float
    stain_moderate_cv: float
    stain_uneven_cv: float
    cell_diameter_um: float
    matrix_spacing_cells_thresholds: tuple
    morphology_chondrocyte_fraction_thresholds: tuple


@dataclass(frozen=True)
class CartilageParams:
    """Lacunae, cell territories and depth profiles: :class:`~pellet_analysis.config.CartilageConfig`'s fields and the tuning values below.

    Attributes
    ----------
    stained_fraction : float
        Fraction (0-1) of the local mean matrix stain above which a pixel is
        taken as stained matrix when the local level of the stained matrix
        itself is measured (a first pass that keeps cells and lacunae out of it).
    pale_fraction : float
        Fraction (0-1) of the local matrix level below which a pixel's
        matrix stain is pale: a clear pixel must be pale, and a lacuna's
        ring must not be (Safranin O leaves a faint tint in lacunae, so
        this is looser than ``clear_fraction``).
    lacuna_ring_um : float
        Width (µm) of the ring around a clear region whose pixels must be
        stained matrix for it to be a lacuna.
    min_stained_share : float
        Share (0-1) of the tissue around a pixel (Gaussian of ``share_sigma_um``)
        that must be stained matrix for it to be open: at the edge of a pale
        zone the matrix level is high but the pale matrix is no cell's.
    share_sigma_um : float
        Gaussian sigma (µm) of that share: a few cell diameters.
    nucleus_gap_um : float
        Width (µm) of a nucleus's blurred edge, between it and a clear halo:
        contact with the halo is read on the ring just past it, and a
        nucleus in a halo claims it.
    lacuna_clear_quantile : float
        Quantile (0-1) of a lacuna's clear pixels at which its emptiness is
        read (:func:`~pellet_analysis.lacunae.emptiness`): its clearest part,
        past the blurred edge that every halo has.
    channel_floor_fraction : float
        Fraction (0-1) of the stained matrix's strongest channel level below
        which a channel's level is not taken: a channel the matrix hardly
        absorbs in would call any faint tint there unclear.
    split_min_solidity : float
        Smallest solidity (0-1) of one cell's halo cut from a ragged group of
        touching halos (which is no lacuna as a whole): two crowded lacunae
        joined through a blurred wall come apart round, a fibrous capsule's
        network of clear gaps cut at its cells does not.
    min_level_fraction : float
        Fraction (0-1) of the pellet's strong matrix stain (its 90th
        percentile over the tissue) that the local matrix level must reach
        for anything there to be open: in unstained matrix a cell's outline
        does not show, and noise would.
    """

    neighbourhood_um: float
    clear_fraction: float
    open_fraction: float
    lacuna_min_area_um2: float
    lacuna_max_area_um2: float
    lacuna_min_enclosure: float
    lacuna_reach_um: float
    lacuna_min_solidity: float
    nucleus_contact_fraction: float
    territory_max_um: float
    territory_min_width_um: float
    rounded_min_axis_ratio: float
    profile_band_um: float
    uniformity_patch_um: float
    lacuna_max_channel_ratio: float
    lacuna_max_absorbance_ratio: float
    lacuna_clear_quantile: float = 0.2
    channel_floor_fraction: float = 0.25
    split_min_solidity: float = 0.85
    stained_fraction: float = 0.5
    pale_fraction: float = 0.5
    lacuna_ring_um: float = 1.0
    min_level_fraction: float = 0.3
    nucleus_gap_um: float = 1.5
    min_stained_share: float = 0.5
    share_sigma_um: float = 8.0
