"""Typed run configuration, read from YAML.

One pydantic model holds every setting of a run; each value carries its unit
in its name (``_um``, ``_um2``, ``_px``, ``_od``) or in its description.
Invalid files raise :class:`ConfigError` with one line naming the key.
"""

from __future__ import annotations

import warnings

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .params import BernParams, CartilageParams, ClassifyParams, IronParams, NucleiParams, PelletParams, StainParams

__all__ = [
    "ConfigError",
    "StainConfig",
    "PelletConfig",
    "ClassifyConfig",
    "NucleiConfig",
    "IronConfig",
    "BernConfig",
    "RunConfig",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration file or value is invalid (message names the key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Section(_Strict):
    """A config section the array functions read through a frozen parameter object (:mod:`pellet_analysis.params`)."""

    params_class: ClassVar[type]

    def params(self):
        """This section's values as its frozen parameter object, under the same names; lists become tuples."""
        names = {f.name for f in dataclasses.fields(self.params_class)}
        missing = set(type(self).model_fields) - names
        if missing:
            raise TypeError(f"{self.params_class.__name__} lacks the config fields {sorted(missing)}")
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return self.params_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class StainConfig(_Section):
    """Stain model settings."""

    params_class: ClassVar[type] = StainParams

    preset: str = Field(
        "ab-vg",
        description="Name of the stain preset (see pellet_analysis.stains.PRESETS).",
    )
    background_rgb: Optional[tuple[float, float, float]] = Field(
        None,
        description="Background (white point) intensity I0 per RGB channel, in the "
        "image's own intensity units (0-255 for 8-bit). None: estimated per image.",
    )
    flat_field: bool = Field(
        True,
        description="Correct uneven illumination with a smooth background surface "
        "fitted to the background pixels (ignored when background_rgb is given).",
    )
    vectors: Optional[dict[str, tuple[float, float, float]]] = Field(
        None,
        description="Stain OD vectors (R, G, B) replacing the preset's, by stain name, e.g. a lab's "
        "QuPath vectors {alcian_blue: [0.892, 0.396, 0.219]}; normalised to unit length.",
    )
    estimate: Optional[Literal["off", "auto"]] = Field(
        None,
        description="auto: estimate the stain vectors from each image's pellet pixels (Macenko for two "
        "stains, sparse NMF from the preset for more) and use them when plausible, else the preset; "
        "off: always the preset (or vectors). None: auto for stain sets without a matrix stain (he, h-dab), "
        "whose scans differ most between labs, unless vectors are given; off otherwise. "
        "The choice and reason are written to run.json.",
    )
    estimate_max_angle_deg: float = Field(
        30.0,
        gt=0,
        le=90,
        description="An estimated stain vector further than this from its preset vector (degrees) is rejected "
        "(the eosin of HistomicsTK's Easy1 H&E lies 27° from the preset's).",
    )
    estimate_min_stained_um2: float = Field(
        5000.0, ge=0, description="Estimation needs at least this pellet area with OD above 0.15 (µm²)."
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from .stains import PRESETS

        if value not in PRESETS:
            raise ValueError(
                f"unknown stain preset {value!r}; choose one of {', '.join(sorted(PRESETS))}"
            )
        return value

    @field_validator("background_rgb")
    @classmethod
    def _positive_background(cls, value):
        if value is not None and min(value) <= 0:
            raise ValueError("background intensities must be > 0")
        return value

    @model_validator(mode="after")
    def _known_stain_vectors(self):
        from .stains import configured_stains

        for name, vector in (self.vectors or {}).items():
            if min(vector) < 0 or max(vector) <= 0:
                raise ValueError(f"vectors: {name}: must be non-negative and not all zero")
        configured_stains(self.params())  # names a stain the preset lacks -> ValueError
        return self


class PelletConfig(_Section):
    """Finding pellet sections."""

    params_class: ClassVar[type] = PelletParams

    min_pellet_area_um2: float = Field(
        20_000.0, gt=0, description="Smallest tissue object kept as a pellet section (µm²)."
    )
    tissue_min_od: float = Field(
        0.05,
        gt=0,
        description="Optical density (largest channel OD, smoothed) always counted as tissue; a paler section's "
        "threshold is tissue_fraction of its own median tissue OD, never below tissue_floor_od. A section whose "
        "median tissue OD is below this value keeps it as its threshold (faint tissue is not told from uneven glass).",
    )
    tissue_fraction: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Fraction (0-1) of the section's median tissue OD (the tissue side of Otsu's split of the image) "
        "above which a pixel is tissue, when that is below tissue_min_od: a paler stain keeps the same outline.",
    )
    tissue_floor_od: float = Field(
        0.01,
        gt=0,
        description="Lowest tissue threshold (OD) however pale the section: a guard against glass noise.",
    )
    outline_smoothing_um: float = Field(
        20.0,
        ge=0,
        description="Radius (µm) of the closing and opening that smooth a pellet's outline at tissue scale: gaps "
        "narrower than twice this between cells at the edge are bridged, fringes thinner than that are trimmed, "
        "so the outline follows the tissue edge, not every cell. 0 keeps the thresholded edge.",
    )
    smoothing_um: float = Field(
        1.0, ge=0, description="Gaussian sigma applied before tissue thresholding (µm)."
    )
    edge_band_um: float = Field(
        4.0,
        ge=0,
        description="Within this distance of the background (µm) the pellet edge is placed at half "
        "the local tissue level, correcting the outward shift of a blurred edge.",
    )
    rim_width_um: float = Field(
        50.0, gt=0, description="Width of the pellet's outer rim (µm) for the core/rim proteoglycan fractions."
    )
    fill_holes_max_um2: float = Field(
        50_000.0,
        ge=0,
        description="Holes in a pellet smaller than this are filled (µm²); larger holes "
        "(e.g. a lumen) stay out of the pellet.",
    )
    full_frame_min_border_fraction: float = Field(
        0.6,
        gt=0,
        le=1,
        description="When at least this fraction (0-1) of the image's border pixels is tissue, the tissue fills "
        "the image (a field of view inside a section, e.g. an H&E tile) and the whole image is analysed as one "
        "region, whatever its area; a pellet on glass has background all round.",
    )
    max_working_px: int = Field(
        1500,
        gt=64,
        description="Pellet detection runs on a copy downscaled so its longer side is at "
        "most this many pixels (px); masks are mapped back to full resolution.",
    )


class ClassifyConfig(_Section):
    """Per-pixel classification of pellet tissue."""

    params_class: ClassVar[type] = ClassifyParams

    proteoglycan_min_od: float = Field(
        0.15, gt=0, description="Alcian blue concentration (OD units) above which a pixel is proteoglycan."
    )
    collagen_min_od: float = Field(
        0.15, gt=0, description="Van Gieson (acid fuchsin) concentration (OD) above which a pixel is collagen."
    )
    smoothing_um: float = Field(
        0.5, ge=0, description="Gaussian sigma applied to stain concentrations before thresholding (µm)."
    )
    nucleus_rim_um: float = Field(
        0.5,
        ge=0,
        description=(
            "Width (µm) of the rim around each found nucleus that is never proteoglycan, in stain sets whose nuclei are "
            "found by darkness (ab-vg): the nucleus's blurred outer edge and the cell's cytoplasm, where the matrix's "
            "Alcian blue reads only through the blur. Rounded to whole pixels (0 at 1 µm per pixel)."
        ),
    )
    grey_reach_um: float = Field(
        2.0,
        ge=0,
        description=(
            "Distance (µm) from a found nucleus or iron granule within which the grey of the dark spots stays out of "
            "the Alcian blue that decides proteoglycan (ab-vg): there it is the blurred nucleus or granule. Farther "
            "out a dark spot is matrix between paler cells (Alcian blue under picric yellow absorbs in every "
            "channel) and keeps its Alcian blue. Rounded to whole pixels."
        ),
    )


class NucleiConfig(_Section):
    """Nuclei (Weigert's hematoxylin) instances."""

    params_class: ClassVar[type] = NucleiParams

    min_diameter_um: float = Field(5.0, gt=0, description="Smallest nucleus diameter (µm).")
    max_diameter_um: float = Field(18.0, gt=0, description="Largest nucleus diameter (µm).")
    typical_diameter_um: float = Field(
        8.0,
        gt=0,
        description="Typical nucleus length (µm): the major axis of the median nucleus (a round one's diameter), used only "
        "to estimate an unknown pixel size.",
    )
    dark_min_od: float = Field(
        0.3,
        gt=0,
        description="Lowest local darkness of a nucleus pixel: the OD of the least-absorbed channel "
        "above the surrounding matrix (white top-hat); the threshold used is the larger of this "
        "and Otsu's within the pellets.",
    )
    dark_otsu_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description="For nuclei found by their darkness with iron in the stain set (ab-vg): the threshold is this "
        "fraction of the pellet's nuclear level (Otsu's threshold of the darkness, never below dark_min_od), so "
        "faint nuclei are found beside dark ones (0.65 and below let dense Alcian-blue matrix between pale cytoplasm "
        "rings join the nuclei on the demo sections).",
    )
    dark_pale_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="For ab-vg: faint nuclei are the objects above this fraction of the pellet's nuclear level (Otsu's "
        "threshold of the darkness, never below dark_min_od), on the darkness smoothed by dark_pale_sigma_um, that lie "
        "clear of the nuclei found at the nucleus threshold (by dark_pale_gap_um), are at least dark_pale_min_solidity "
        "convex and fit within max_diameter_um; equal to dark_otsu_fraction turns this off.",
    )
    dark_pale_sigma_um: float = Field(
        1.0,
        ge=0,
        description="For ab-vg: Gaussian sigma (µm) of the darkness in which faint nuclei are sought, so that their "
        "granular chromatin does not break them into granule-sized pieces.",
    )
    dark_pale_gap_um: float = Field(
        1.0,
        gt=0,
        description="For ab-vg: faint nuclei are sought this far (µm) from the nuclei found already, outside their blurred halo.",
    )
    dark_pale_min_solidity: float = Field(
        0.8, gt=0, le=1, description="For ab-vg: smallest solidity (pixels over their convex hull's) of a faint nucleus."
    )
    dark_pale_max_granule_fraction: float = Field(
        1.0,
        gt=0,
        description="For ab-vg: an object holding a pixel whose granule contrast (the map iron.granule_min_od cuts) "
        "exceeds this fraction of the pellet's nuclear level is not a faint nucleus: iron granules are far darker than "
        "the chromatin of a faint nucleus, and their blurred halo would otherwise read as one.",
    )
    dark_pale_matrix_tolerance: float = Field(
        0.1,
        ge=0,
        description="For ab-vg: a faint nucleus holds no more Alcian blue than the tissue 1.5 µm around it, give or take "
        "this fraction of the pellet's proteoglycan threshold: a nucleus displaces the matrix, while dense matrix between "
        "pale cytoplasm rings (a dark spot of the least-absorbed channel too) holds more than the rings.",
    )
    dark_matrix_excess: float | None = Field(
        0.3,
        ge=0,
        description="For ab-vg: a dark object whose Alcian blue (with the dark spots' grey taken out) exceeds the tissue's "
        "dark_pale_ring_um around it by more, per OD of darkness it adds over that tissue, than the nuclear stain's own "
        "reading (0.21 for the preset's Weigert vector) plus this is matrix, not a nucleus: dense Alcian blue between clear "
        "lacunae is as dark as a nucleus but adds Alcian blue. null turns this off.",
    )
    dark_outline_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="For ab-vg: after the watershed (seeded and flooded on darkness plus distance, with the stain_seed_* "
        "and stain_merge_* settings), each nucleus keeps only its pixels at least this fraction of its own median "
        "darkness (holes filled), so a dark nucleus is not outlined at the faint nuclei's threshold; 0 keeps them all.",
    )

    dark_split_max_solidity: float = Field(
        0.9,
        ge=0,
        le=1,
        description="For ab-vg: a nucleus less convex than this (pixels over its convex hull's) after the watershed is "
        "cut along the straight line between two notches of its outline (dark_split_min_depth_um deep), when each part is "
        "more convex than the whole: two touching nuclei the darkness left whole (two tangent disks: 0.88); 0 turns this off.",
    )

    dark_split_min_fraction: float = Field(
        1.0,
        ge=0,
        description="For ab-vg: only nuclei whose median darkness reaches this fraction of the pellet's nuclear level "
        "(see dark_pale_fraction) are cut by dark_split_max_solidity: dense matrix between clear lacunae is a fainter, "
        "concave dark object that such cuts would break into nucleus-sized pieces. Also the level below which "
        "dark_faint_min_solidity drops concave objects (that drop runs even when dark_split_max_solidity is 0).",
    )

    dark_faint_min_solidity: float = Field(
        0.85,
        ge=0,
        le=1,
        description="For ab-vg: a nucleus fainter than dark_split_min_fraction of the pellet's nuclear level must be at "
        "least this convex: dense matrix between clear lacunae is fainter than a nucleus and concave; 0 keeps them all.",
    )

    dark_split_min_depth_um: float = Field(
        0.5,
        gt=0,
        description="For ab-vg: smallest depth (µm, and at least one pixel) below the convex hull of a notch of a nucleus's "
        "outline between which dark_split_max_solidity cuts it.",
    )

    relative_min_od: float = Field(
        0.03,
        gt=0,
        description="For a nuclear stain separated by colour deconvolution beside matrix stains (safranin-o's "
        "hematoxylin, alcian-nfr's nuclear fast red): the nucleus threshold is Otsu's of the pellet's own stain "
        "excess (white top-hat), never below this guard (OD) against noise on faint sections.",
    )
    stain_otsu_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="For a nuclear stain separated by colour deconvolution with no matrix stain (he, h-dab), the "
        "threshold on its local excess (white top-hat) is this fraction of Otsu's within the region. On real H&E "
        "the cytoplasm holds hematoxylin too: below Otsu's level it joins the nuclei (pale nuclei are taken at "
        "stain_pale_fraction instead).",
    )
    stain_otsu_floor_od: float = Field(
        0.05,
        ge=0,
        description="For a deconvolved nuclear stain with no matrix stain (he, h-dab): pixels whose local excess "
        "(white top-hat, OD) is below this are left out of Otsu's threshold, so that glass or a lumen filling "
        "part of a tile does not lower it.",
    )
    stain_pale_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="For a deconvolved nuclear stain with no matrix stain (he, h-dab): objects above this fraction of "
        "Otsu's level but below the nucleus threshold (stain_otsu_fraction) are pale nuclei when they hold no darker "
        "nucleus, are at least stain_pale_min_solidity convex and fit within max_diameter_um; equal to "
        "stain_otsu_fraction turns this off.",
    )
    stain_pale_min_solidity: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Smallest solidity (pixels over their convex hull's) of a pale nucleus (see stain_pale_fraction).",
    )
    stain_min_od: float = Field(
        0.15,
        gt=0,
        description="Lowest threshold (OD) of a deconvolved nuclear stain's local excess (see stain_otsu_fraction).",
    )
    stain_seed_sigma_um: float = Field(
        0.8,
        gt=0,
        description="For a deconvolved nuclear stain with no matrix stain (he, h-dab): Gaussian sigma of the stain "
        "whose sum with the distance to the mask's edge seeds and floods the watershed that splits touching nuclei.",
    )
    stain_seed_h: float = Field(
        0.15,
        gt=0,
        description="Height by which a seed of that watershed must stand above the saddle to its neighbour, in units "
        "of the sum (smoothed stain over the region's Otsu level, plus distance over the typical radius, clipped at 1).",
    )
    stain_outline_fraction: float = Field(
        0.8,
        ge=0,
        le=1,
        description="For a deconvolved nuclear stain with no matrix stain (he, h-dab): each nucleus keeps only its "
        "pixels at least this fraction of its own median stain (holes filled), so crowded nuclei do not share the "
        "faintly stained gaps between them; 0 keeps the whole watershed region.",
    )
    stain_merge_min_solidity: float = Field(
        0.9,
        gt=0,
        description="For a deconvolved nuclear stain with no matrix stain (he, h-dab): two touching nuclei are "
        "merged when their union is at least this convex (pixels over its convex hull's; two equal tangent disks: "
        "0.88) and no larger than stain_merge_max_diameter_um; above 1 nothing merges.",
    )
    stain_merge_max_diameter_um: float = Field(
        10.4,
        gt=0,
        description="Largest equivalent diameter (µm) of two touching nuclei merged into one (see stain_merge_min_solidity).",
    )

    @field_validator("max_diameter_um")
    @classmethod
    def _ordered(cls, value, info):
        low = info.data.get("min_diameter_um")
        if low is not None and value <= low:
            raise ValueError("must be larger than nuclei.min_diameter_um")
        return value


class IronConfig(_Section):
    """Iron granules of iron-sucrose labeled cells."""

    params_class: ClassVar[type] = IronParams

    min_od: float = Field(
        0.3,
        gt=0,
        description="Ignored, so that configs that set it still load: granules are found on their own "
        "contrast (granule_min_od), on which faint nuclei do not show, not on their OD.",
    )
    granule_min_od: float = Field(
        0.2,
        gt=0,
        description="Lowest granule contrast of an iron granule pixel: the mean green and blue OD above "
        "its surroundings (white top-hat of a disk as wide as the largest granule).",
    )
    min_blue_green_ratio: float = Field(
        0.9,
        ge=0,
        description="Colour of an iron granule (a connected object of granule contrast, averaged over it): its blue "
        "granule-scale contrast at least this times its green. Brown iron absorbs blue most (the ab-vg vector: 1.26 "
        "times green); Weigert's near-neutral black (0.81) and acid fuchsin (0.57) do not pass. JPEG chroma and the "
        "stains' drift spread granules' ratios (at 1.0 a tenth of the iron of synthetic labeled sections is missed).",
    )
    min_red_blue_ratio: float = Field(
        0.3,
        ge=0,
        description="Colour of an iron granule: its red granule-scale contrast at least this times its blue. Iron is "
        "dark in red too (the ab-vg vector: 0.56); picric yellow (0.04) and red fibres on it (picrosirius on a real "
        "tile: about 0.2) are not.",
    )
    colour_margin_deg: float | None = Field(
        None,
        description="Optional colour test relative to the section's own nuclei (off: null): the angle (degrees) between "
        "its granule-scale colour (red, green, blue contrast averaged over the object) and the pellet's nuclear "
        "colour (the same contrast summed over its pixels darker than the nucleus threshold) must exceed its angle "
        "to the iron stain's vector by more than this. 0: nearer to iron than to the nuclei; negative values keep "
        "more (and more false) granules, positive fewer. Where the nuclei are the colour of iron (Weigert's under "
        "picric yellow on a real picrosirius tile) nothing passes; but the nuclei's granule-scale colour also lies "
        "within 3-5 degrees of iron on some synthetic sections at 1 µm per pixel, which then lose most of their iron "
        "(docs/iron.md).",
    )
    max_neutral_ratio: float | None = Field(
        1.4,
        gt=0,
        description="Largest neutral darkness of an iron granule: the peak of the nuclei's darkness map over the object (the "
        "least-absorbed channel's OD above the matrix, a nucleus-scale top-hat) over its peak granule contrast (mean green "
        "and blue OD, a granule-scale top-hat). Brown iron absorbs red about half as much as blue, so its darkness stays "
        "below its green-blue contrast (the ab-vg vector: 0.62); a small nucleus of near-neutral Weigert's black is as "
        "dark in its least-absorbed channel as in green and blue, and the nucleus-scale top-hat sees all of it where the "
        "granule-scale one sees only its centre, so its ratio is about 1 or more. Both maps are of the same object: the "
        "ratio does not change with the strength of the stain. Lower values drop more small nuclei and more iron mixed "
        "with a nucleus's blur. null: off.",
    )
    nucleus_body_fraction: float | None = Field(
        0.5,
        gt=0,
        description="A granule candidate joined to a nucleus (within nucleus_body_um of it) by pixels at least this "
        "fraction of the nucleus's own median darkness is part of that nucleus (chromatin of a nucleus found only in "
        "part, or of a faint nucleus touching a dark one), not iron. The fraction is of each nucleus's own level, so it "
        "holds for pale and dark stains alike; a granule beside a nucleus is parted from it by paler matrix. null: off.",
    )
    nucleus_body_um: float = Field(
        3.0, gt=0, description="How far (µm) from a nucleus its body is followed for nucleus_body_fraction."
    )
    max_nucleus_distance_um: float | None = Field(
        10.0,
        gt=0,
        description="Iron of labeled cells lies in their cytoplasm: a granule with no pixel within this distance (µm) of a "
        "nucleus is not counted (dark fibre knots of a collagen network, far from any cell, pass the colour and form "
        "tests). At least cell_distance_um, so the iron-positive cell fraction is unchanged by it; iron of cells whose "
        "nucleus lies outside the section and farther than this from every other nucleus is lost from the area and "
        "granule count. null: off.",
    )
    max_granule_diameter_um: float = Field(
        3.5, gt=0, description="Largest granule (equivalent diameter, µm); clusters up to three times its area are kept."
    )
    nucleus_gap_um: float = Field(
        0.6, ge=0, description="Dark pixels this close to a nucleus (µm) are its blurred edge, not iron."
    )
    cell_distance_um: float = Field(
        5.0, ge=0, description="A cell is iron-positive when an iron pixel lies within this distance (µm) of a pixel of its nucleus."
    )
    calibrate: Literal["controls", "off"] = Field(
        "controls",
        description="controls: when the batch holds control pellets (condition in control_conditions, from the file "
        "name or the sample sheet), granule_min_od is raised until at most calibrate_max_positive_fraction of their "
        "cells, and calibrate_max_pellet_positive_fraction of any one control pellet's, are iron-positive, and every pellet of the batch is classified with that threshold (never below "
        "granule_min_od); recorded in run.json and the report. off: granule_min_od as configured.",
    )
    control_conditions: list[str] = Field(
        ["unlabeled"], description="Conditions (case ignored) of the pellets that hold no iron: the calibration's controls."
    )
    calibrate_max_positive_fraction: float = Field(
        0.01, ge=0, le=1, description="Largest iron-positive cell fraction (0-1) the calibrated threshold leaves in the controls."
    )
    calibrate_max_pellet_positive_fraction: float | None = Field(
        0.02,
        ge=0,
        le=1,
        description="Largest iron-positive cell fraction (0-1) the calibrated threshold leaves in any one control pellet (never fewer than one of its cells), "
        "besides the pooled bound calibrate_max_positive_fraction (which alone can leave the one or two controls that hold "
        "most of the false iron well above it); null: the pooled bound only.",
    )

    @model_validator(mode="after")
    def _granules_reach_the_cells_they_mark(self):
        if self.max_nucleus_distance_um is not None and self.max_nucleus_distance_um < self.cell_distance_um:
            raise ValueError("iron.max_nucleus_distance_um must be at least iron.cell_distance_um (else iron that makes a cell positive is dropped)")
        return self

    @field_validator("calibrate", mode="before")
    @classmethod
    def _calibrate_off(cls, value):
        # YAML 1.1 reads an unquoted `off` as false
        return "off" if value is False else value


class BernConfig(_Section):
    """Thresholds of the automated Bern-like score (Grogan et al. 2006); docs/bern.md derives each from the grade descriptions.

    Each category is continuous, piecewise linear between its thresholds (it equals the integer grade at each),
    and the integer grade is its floor.
    """

    params_class: ClassVar[type] = BernParams

    stain_fraction_thresholds: tuple[float, float, float] = Field(
        (0.10, 0.30, 0.55),
        description="Proteoglycan area fractions (0-1) at which the stain's amount reaches grades 1, 2 and 3 (0 at no stain).",
    )
    stain_weak_od: float = Field(
        0.2, gt=0, description="Mean proteoglycan OD at which the stain is no longer weak: the darkness reading is 1 at OD 0, 2 here."
    )
    stain_dark_od: float = Field(0.4, gt=0, description="Mean proteoglycan OD at which the stain is dark: the darkness reading reaches 3.")
    stain_even_cv: float = Field(
        0.25, ge=0,
        description="Coefficient of variation of the proteoglycan area fraction over depth bands and over patches (the larger) "
        "at or below which the stain is even: the uniformity reading is 3.",
    )
    stain_moderate_cv: float = Field(
        0.5, gt=0, description="That coefficient of variation at which the stain is moderately even: the uniformity reading is 2."
    )
    stain_uneven_cv: float = Field(
        1.0, gt=0, description="That coefficient of variation at and above which the stain is uneven: the uniformity reading is 1."
    )
    cell_diameter_um: float = Field(
        9.5, gt=0,
        description="Diameter (µm) of a cell as a section shows it (a 12 µm cell cut at random: pi/4 x 12): the unit of the cell "
        "spacing the matrix category reads.",
    )
    matrix_spacing_cells_thresholds: tuple[float, float, float] = Field(
        (1.25, 1.75, 2.25),
        description="Mean cell spacing (1 / sqrt(nuclei density), in cell diameters) at which the matrix category reaches 1, 2 "
        "and 3 (0 at one diameter: cells touching).",
    )
    morphology_chondrocyte_fraction_thresholds: tuple[float, float] = Field(
        (0.3, 0.5),
        description="Share of chondrocyte-like cells (mean of the rounded and in-lacuna fractions, 0-1) at which the morphology "
        "category reaches 2 (mixed) and 3 (mostly rounded); 1 at none, with cells.",
    )

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, values):
        # a config or run.json written before the score read lacunae and cell territories still loads; its old
        # thresholds measured other quantities (nuclei roundness, nearest-neighbour distance, pixel OD spread)
        retired = [k for k in _RETIRED_BERN_KEYS if isinstance(values, dict) and k in values]
        if retired:
            warnings.warn(f"bern.{', bern.'.join(retired)}: retired (the score no longer reads what they measured; docs/bern.md): ignored", UserWarning, stacklevel=2)
            values = {k: v for k, v in values.items() if k not in _RETIRED_BERN_KEYS}
        return values

    @field_validator("stain_fraction_thresholds", "matrix_spacing_cells_thresholds", "morphology_chondrocyte_fraction_thresholds")
    @classmethod
    def _ascending(cls, value):
        if any(b <= a for a, b in zip(value, value[1:])) or min(value) <= 0:
            raise ValueError("thresholds must be strictly ascending positive numbers")
        return value

    @model_validator(mode="after")
    def _knots_ascend(self):
        if not self.stain_weak_od < self.stain_dark_od:
            raise ValueError("bern.stain_weak_od must be below bern.stain_dark_od")
        if not self.stain_even_cv < self.stain_moderate_cv < self.stain_uneven_cv:
            raise ValueError("bern.stain_even_cv < bern.stain_moderate_cv < bern.stain_uneven_cv must hold")
        if not self.matrix_spacing_cells_thresholds[0] > 1.0:
            raise ValueError("bern.matrix_spacing_cells_thresholds must start above 1 cell diameter (the matrix category is 0 there)")
        return self


#: Keys of the ``bern`` section before it read lacunae and cell territories (dropped when an old run's config is read).
_RETIRED_BERN_KEYS = ("matrix_nn_distance_um_thresholds", "morphology_roundness_thresholds", "stain_max_cv")


class CartilageConfig(_Section):
    """Lacunae, cell territories and roundness, and depth profiles from the pellet surface inward (docs/bern.md).

    Clear and open pixels are judged against the stained matrix around them (a
    Gaussian-weighted mean within ``neighbourhood_um``), not against OD constants.
    """

    params_class: ClassVar[type] = CartilageParams

    neighbourhood_um: float = Field(
        15.0, gt=0, description="Gaussian sigma (µm) of the local matrix level that open and clear pixels are judged against."
    )
    clear_fraction: float = Field(
        0.5, gt=0, le=1,
        description="A pixel is clear (a lacuna's halo) when its largest colour-channel OD is below this fraction of the local level in the stained "
        "matrix (and its matrix stain is pale): colourless, where a cytoplasm holds a counterstain.",
    )
    open_fraction: float = Field(
        0.35, gt=0, le=1,
        description="A pixel is open (cytoplasm or lacuna, not matrix) when its matrix stain (proteoglycan plus collagen) is below "
        "this fraction of the local matrix level.",
    )
    lacuna_min_area_um2: float = Field(4.0, ge=0, description="Smallest clear region (µm², nuclei not counted) that is a lacuna.")
    lacuna_max_area_um2: float = Field(
        1500.0, gt=0, description="Largest clear region (µm²) that is a lacuna; larger ones are tears or lumina."
    )
    lacuna_min_enclosure: float = Field(
        0.5, ge=0, le=1, description="Share (0-1) of the ring around a clear region that must be stained matrix for it to be a lacuna."
    )
    lacuna_reach_um: float = Field(
        10.0, gt=0, description="Farthest (µm) a lacuna's clear halo reaches from its nucleus; clear matrix beyond it is a pale zone, not a lacuna."
    )
    lacuna_min_solidity: float = Field(
        0.7, ge=0, le=1,
        description="Smallest solidity (area over convex hull, 0-1) of a lacuna: the gaps between a fibrous capsule's fibres are ragged.",
    )
    nucleus_contact_fraction: float = Field(
        0.25, ge=0, le=1,
        description="Share (0-1) of the one-pixel ring around a nucleus that a clear region must hold for the nucleus to sit in it.",
    )
    lacuna_max_channel_ratio: float = Field(
        0.45, gt=0,
        description="A lacuna is empty: in its clearest pixels (the quantile CartilageParams.lacuna_clear_quantile) the OD of every colour channel is below this fraction of "
        "the same channel's level in the stained matrix around it, each level at least CartilageParams.channel_floor_fraction of the strongest "
        "(a yellow cytoplasm absorbs more than the matrix in one channel).",
    )
    lacuna_max_absorbance_ratio: float = Field(
        0.4, gt=0,
        description="A lacuna is empty: in its clearest pixels (as above) their total absorbance (OD summed over the channels) is below this fraction "
        "of the tissue's around it (unstained matrix beside a dark capsule is pale against the capsule, not against its own tissue).",
    )
    territory_max_um: float = Field(
        12.0, gt=0, description="Farthest (µm) a cell's territory reaches from its nucleus into open (non-matrix) pixels."
    )
    territory_min_width_um: float = Field(
        3.0, ge=0,
        description="Open pixels narrower than about this (µm; the nuclei counted as open, so a thin cytoplasm ring stays) are no cell's territory: "
        "opened with a disk of round(width / 2) pixels' radius, which removes strips up to twice that radius wide (at 3 µm: 3 µm at 0.5 µm/px, 4 µm at 1 µm/px); "
        "spurs and fringes of the matrix stain's noise would make round cells read elongated. 0 keeps every open pixel.",
    )
    rounded_min_axis_ratio: float = Field(
        0.6, gt=0, le=1,
        description="A cell is rounded (chondrocyte-like) when its territory's minor/major axis ratio reaches this; spindle below.",
    )
    profile_band_um: float = Field(25.0, gt=0, description="Width (µm) of the depth bands of profiles.csv, from the pellet surface inward.")
    uniformity_patch_um: float = Field(
        100.0, gt=0, description="Side (µm) of the square patches over which stain uniformity (stain_patch_cv) is measured."
    )


class RunConfig(_Strict):
    """Everything a run needs."""

    input_dir: Path = Field(Path("images"), description="Folder of input images.")
    output_dir: Path = Field(Path("outputs/run"), description="Folder the run writes into.")
    pixel_size_um: float = Field(
        1.0,
        gt=0,
        description="Pixel size (µm per pixel) for images whose files carry none "
        "(PNG, JPEG, TIFF without resolution tags).",
    )
    estimate_pixel_size: bool = Field(
        True,
        description="When neither the file nor the config (or --pixel-size-um) gives a pixel size, "
        "estimate it from the nuclei (their median taken as nuclei.typical_diameter_um long) "
        "instead of assuming pixel_size_um; the run records the estimate and warns.",
    )
    batch_pixel_size_max_ratio: float = Field(
        1.0,
        ge=1.0,
        description="With estimate_pixel_size, the nuclei of all the batch's images without a pixel size are taken "
        "together (tiles of one scan share a pixel size, and a small tile holds few nuclei); each such image is "
        "measured at that batch estimate, unless its own estimate lies within this factor of it "
        "(1: always the batch's; e.g. 1.5 keeps images' own estimates that are near it).",
    )
    force_pixel_size: bool = Field(
        False, description="Use pixel_size_um even when the file carries a pixel size."
    )
    filename_pattern: str = Field(
        "{donor}_{condition}_d{day}_s{section}",
        description="Pattern of the file stem giving study metadata; fields in braces.",
    )
    require_metadata: bool = Field(
        False,
        description="When true, an image whose name does not match filename_pattern is a failure; "
        "otherwise it is processed with empty metadata.",
    )
    extensions: list[str] = Field(
        [
            ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".btf", ".svs", ".ndpi", ".scn", ".qptiff", ".bif",
            ".mrxs", ".vmu", ".svslide", ".czi", ".vsi",
        ],
        description="File endings read as images. Scanner formats (.svs .ndpi .scn .qptiff .bif through tifffile; "
        ".mrxs .vms .vmu .svslide .dcm through OpenSlide and .czi through pylibCZIrw, both in the slides extra) "
        "are read window by window; .vsi is listed to say it cannot be read (export it as OME-TIFF). "
        ".vms and .dcm are not listed by default: a VMS slide's JPEG files and a DICOM slide's other files lie beside it.",
    )
    scheduler: str = Field(
        "threads",
        description="threads | processes | synchronous | tcp://host:port (a dask.distributed scheduler).",
    )
    n_workers: Optional[int] = Field(
        None, ge=1, description="Local workers (threads or processes); None: one per core."
    )
    tile_px: Optional[int] = Field(
        4096,
        ge=128,
        description="Pellets wider or taller than this (px) are processed in tiles of this size with "
        "overlaps derived from the filters and the largest nucleus (same result as one block, less "
        "memory); None: each pellet in one block.",
    )
    whole_slide_min_px: int = Field(
        100_000_000,
        ge=1,
        description="Images with at least this many pixels (or with pyramid levels) are read lazily, "
        "tile by tile, their pellets processed as separate tasks, and their label images written as "
        "tiled pyramidal OME-TIFF.",
    )
    stains: StainConfig = StainConfig()
    pellets: PelletConfig = PelletConfig()
    classify: ClassifyConfig = ClassifyConfig()
    nuclei: NucleiConfig = NucleiConfig()
    iron: IronConfig = IronConfig()
    bern: BernConfig = BernConfig()
    cartilage: CartilageConfig = CartilageConfig()
    sample_sheet: Optional[Path] = Field(
        None,
        description="CSV or Excel workbook (.xlsx/.xlsm: its first sheet, the header its first non-empty row) "
        "with columns image, donor, condition, day (optional section, notes) giving study "
        "metadata instead of file names; image paths are relative to input_dir.",
    )
    annotations_dir: Optional[Path] = Field(
        None,
        description="Folder of QuPath GeoJSON exports, one per image (<image stem>.geojson or .json, coordinates in "
        "full-resolution pixels): their annotated outlines are the pellets, classified and measured inside those "
        "outlines, instead of the pellets the finder would find. An image without a file there is run with the "
        "finder (a warning says so). None: every image's pellets are found.",
    )
    annotations_pellet_class: str = Field(
        "Pellet",
        min_length=1,
        description="QuPath classification name (case-insensitive, also as part of a derived class such as "
        "'Pellet: Positive') of the annotations that are pellets; when no annotation of an image has it, all its "
        "Polygon/MultiPolygon annotations are. Also the classification written on the pellets of geojson/<image>.geojson.",
    )

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        if value in ("threads", "processes", "synchronous") or value.startswith("tcp://"):
            return value
        raise ValueError("must be threads, processes, synchronous or tcp://host:port")

    @field_validator("filename_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        from .metadata import compile_pattern

        compile_pattern(value)
        return value

    @field_validator("extensions")
    @classmethod
    def _extensions(cls, value: list[str]) -> list[str]:
        return [v.lower() if v.startswith(".") else "." + v.lower() for v in value]


def _format_error(error: ValidationError, source: str, options: dict | None = None) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    # pydantic prefixes the messages of custom validators with their kind; the user needs only the cause
    msg = msg.removeprefix("Value error, ")
    more = len(error.errors()) - 1
    tail = f" (+{more} more)" if more else ""
    if options and key in options:  # the value came from the command line, not from the file
        return f"{options[key]}: {msg}{tail}"
    return f"{source}: {key}: {msg}{tail}"


def build_config(data: dict | None = None, *, source: str = "config", options: dict | None = None) -> RunConfig:
    """Validate a mapping into a :class:`RunConfig`.

    Parameters
    ----------
    data : dict, optional
    source : str, keyword-only
        What the mapping was read from (a file name), named in errors.
    options : dict, optional, keyword-only
        Dotted key -> the command-line option that set it; an error in
        such a key names the option instead of ``source``.

    Raises
    ------
    ConfigError
        One line: the source (or option), the dotted key and the cause.
    """
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(_format_error(error, source, options)) from None


def load_config(path: str | Path | None = None, *, options: dict | None = None, **overrides) -> RunConfig:
    """Read a YAML config (``yaml.safe_load``) and apply dotted-key overrides.

    Parameters
    ----------
    path : str or Path, optional
        YAML file; None gives the defaults.
    options : dict, optional, keyword-only
        Override key (``stains__preset``) -> the command-line option that
        gave it (``--stains``): errors in that value name the option.
    **overrides
        Values replacing those in the file; keys may be dotted with ``__``
        (``stains__preset="he"``). None values are ignored.

    Returns
    -------
    RunConfig
    """
    data: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where} invalid YAML ({getattr(error, 'problem', error)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys to values")
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {'.'.join(parts[:-1])}: must be a mapping")
        node[parts[-1]] = value
    given = {key.replace("__", "."): flag for key, flag in (options or {}).items() if overrides.get(key) is not None}
    return build_config(data, source=source, options=given)
