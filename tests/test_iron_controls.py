"""Iron without false positives, and nuclei of the varied generator (issue 19).

Targets of the issue that do not hold yet are asserted at the level measured, with the
issue's target in the comment (docs/accuracy.md, "AB/VG nuclei and iron beyond our generator").
"""

import glob
from pathlib import Path

import numpy as np
import pytest

from pellet_analysis.classify import brown_objects
from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.metrics import instance_f1, pixel_f1
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.stains import PRESETS
from pellet_analysis.synthetic import make_section, truth_table

from .conftest import REAL_IMAGES

IMAGES = Path(__file__).resolve().parents[1] / "images"


def test_brown_objects_keep_iron_and_leave_weigert_fuchsin_and_picric_alone():
    stains = PRESETS["ab-vg"]
    colour = np.zeros((20, 80, 3), np.float32)
    candidates = np.zeros((20, 80), bool)
    names = ["iron", "weigert_hematoxylin", "acid_fuchsin", "picric_acid"]
    for k, name in enumerate(names):
        colour[8:12, 20 * k + 8 : 20 * k + 12] = 0.4 * stains.vector(name)
        candidates[8:12, 20 * k + 8 : 20 * k + 12] = True
    kept = brown_objects(candidates, colour, min_blue_green=0.9, min_red_blue=0.3)
    assert [bool(kept[10, 20 * k + 10]) for k in range(4)] == [True, False, False, False]


def test_brown_objects_reject_the_colour_of_the_sections_own_nuclei():
    """The relative test: a granule must be nearer in colour to iron than to the pellet's nuclei."""
    stains = PRESETS["ab-vg"]
    iron = stains.vector("iron")
    colour = np.zeros((10, 40, 3), np.float32)
    candidates = np.zeros((10, 40), bool)
    colour[4:7, 4:7] = 0.5 * iron  # iron itself
    colour[4:7, 24:27] = 0.5 * (0.8 * iron + 0.2 * stains.vector("acid_fuchsin"))  # a granule on red collagen, JPEG-smeared
    candidates[4:7, 4:7] = candidates[4:7, 24:27] = True
    weigert = stains.vector("weigert_hematoxylin")
    kept = brown_objects(candidates, colour, min_blue_green=0, min_red_blue=0, iron_colour=iron, nucleus_colour=weigert)
    assert kept[5, 5] and kept[5, 25]
    # nuclei that look like iron (Weigert's under picric yellow, as on the real picrosirius tile): nothing passes
    kept = brown_objects(candidates, colour, min_blue_green=0, min_red_blue=0, iron_colour=iron, nucleus_colour=iron)
    assert not kept.any()
    # a granule of the nuclei's own colour is not iron, even where it is brown by the absolute ratios
    colour[4:7, 4:7] = 0.5 * weigert
    kept = brown_objects(candidates, colour, min_blue_green=0, min_red_blue=0, iron_colour=iron, nucleus_colour=weigert)
    assert not kept[5, 5] and kept[5, 25]


def test_granule_threshold_is_monotone():
    """The one knob a batch calibration tunes: a higher iron.granule_min_od never finds more iron."""
    section = make_section(day=14, labeled=True, n_pellets=1, pixel_size_um=1.0, seed=12, pellet_diameter_um=(260.0, 280.0))
    found = []
    for knob in (0.12, 0.2, 0.3, 0.45):
        config = RunConfig(iron={"granule_min_od": knob})
        result = analyze_image(section.image, pixel_size_um=1.0, config=config)
        found.append(int((result.classes == CLASS_CODES["iron"]).sum()))
    assert found == sorted(found, reverse=True) and found[0] > found[-1], found


@pytest.fixture(scope="module")
def varied():
    """Varied-model sections: an unlabeled day-28 and a labeled day-7 one, at 0.5 and 1 µm.

    Without lacunae (``cartilage=False``): the sections these nucleus and iron figures were set on;
    with them the day-28 section's F1 reads 0.734 (lacunae and spindle cells: accuracy.md, issue 24).
    """
    out = []
    for day, labeled, px, seed in [(28, False, 0.5, 31), (7, True, 1.0, 32), (14, False, 1.0, 33)]:
        s = make_section(day=day, labeled=labeled, n_pellets=1, pixel_size_um=px, seed=seed, hue_jitter_deg=5.0,
                         jpeg_quality=80, pellet_diameter_um=(260.0, 300.0), cartilage=False)
        out.append((s, analyze_image(s.image, pixel_size_um=px, config=RunConfig())))
    return out


def test_varied_nuclei(varied):
    # issue target: count error <= 10 % and F1 >= 0.85 over validate --n 24 --seed 1. These small pellets are
    # looser: a larger share of them is rim, whose small flat and round nuclei are missed
    for s, found in varied:
        truth = truth_table(s)[0]
        assert abs(found.rows[0]["nuclei_count"] - truth["nuclei_count"]) / truth["nuclei_count"] <= 0.2
        assert instance_f1(found.nuclei, s.nuclei)["f1"] >= 0.76


def test_varied_unlabeled_pellets_hold_almost_no_iron_positive_cells(varied):
    for s, found in varied:
        row = found.rows[0]
        if s.params.labeled:
            assert row["iron_positive_cell_fraction"] > 0.3
            # issue target: labeled iron pixel F1 >= 0.8 (not reached on the varied model, see docs)
            assert pixel_f1(found.classes == CLASS_CODES["iron"], s.classes == CLASS_CODES["iron"]) >= 0.6
        else:
            # issue target <= 0.02; looser here: small rim nuclei and the chromatin of faint nuclei touching a
            # dark one still give a few granules
            assert row["iron_positive_cell_fraction"] <= 0.09, row
            assert row["iron_granule_count"] <= 14, row


@pytest.mark.skipif(not glob.glob(str(IMAGES / "*unlabeled*.tif")), reason="the demo images are not here")
def test_demo_unlabeled_pellets_read_few_iron_positive_cells():
    from pellet_analysis.io import read_image

    fractions = []
    for path in sorted(IMAGES.glob("*unlabeled*.tif")):
        rgb, px = read_image(path)
        found = analyze_image(rgb, pixel_size_um=px or 1.0, config=RunConfig())
        fractions += [row["iron_positive_cell_fraction"] for row in found.rows]
    fractions = np.array(fractions)
    # issue target: each <= 0.02; the max is looser (dense Alcian blue pinched between two pale cytoplasm rings
    # reads as a granule)
    assert fractions.max() <= 0.06, fractions
    assert np.mean(fractions) <= 0.018, fractions


@pytest.mark.skipif(not (REAL_IMAGES / "psr_liver_tile02.jpg").is_file(), reason="../shared/real-images is not here")
def test_picrosirius_liver_tile_has_little_iron_and_its_collagen_agrees():
    import cv2

    from pellet_analysis.io import read_image

    rgb, _ = read_image(REAL_IMAGES / "psr_liver_tile02.jpg")
    found = analyze_image(rgb, pixel_size_um=1.0124, config=RunConfig())  # liverquant's README: 1.0124 µm per pixel
    tissue = found.pellets > 0
    assert tissue.mean() > 0.95  # the tile is tissue to its edges: whole tile and tissue are the same pixels
    iron = (found.classes == CLASS_CODES["iron"]) & tissue
    # issue target: <= 0.5 %; looser here (dark red fibre knots and small dark nuclei remain)
    assert iron.sum() / tissue.sum() <= 0.02
    reference = cv2.imread(str(REAL_IMAGES / "psr_liver_tile02_mask_liverquant.jpg"), cv2.IMREAD_GRAYSCALE) >= 128
    assert pixel_f1((found.classes == CLASS_CODES["collagen"]) & tissue, reference & tissue) >= 0.8
    # the optional colour test relative to the section's own nuclei (iron.colour_margin_deg: 0, the absolute ratios
    # off): this tile's small dark nuclei are the colour of iron under picric yellow and are dropped. Measured 0.58 %
    # (issue target 0.5 %); off by default, as it also drops iron on synthetic sections whose nuclei read near iron
    relative = analyze_image(
        rgb, pixel_size_um=1.0124, config=RunConfig(iron={"colour_margin_deg": 0.0, "min_blue_green_ratio": 0.0, "min_red_blue_ratio": 0.0})
    )
    relative_iron = (relative.classes == CLASS_CODES["iron"]) & tissue
    assert relative_iron.sum() / tissue.sum() <= 0.007 and relative_iron.sum() < 0.5 * iron.sum()
    assert pixel_f1((relative.classes == CLASS_CODES["collagen"]) & tissue, reference & tissue) >= 0.8
