"""Pixel size estimated from the nuclei when neither the file nor the config gives one."""

import json

import cv2
import numpy as np
import pytest

from pellet_analysis.config import RunConfig
from pellet_analysis.pipeline import run_batch
from pellet_analysis.scale import estimate_pixel_size_um
from pellet_analysis.stains import get_preset
from pellet_analysis.synthetic import make_section

from .conftest import REAL_IMAGES


@pytest.mark.parametrize("px", [0.25, 0.5, 1.0])
def test_estimate_is_within_15_percent_on_synthetic_sections(px):
    section = make_section(labeled=False, pixel_size_um=px, n_pellets=1, seed=4, pellet_diameter_um=(250.0, 300.0))
    estimate = estimate_pixel_size_um(section.image, get_preset("ab-vg"))
    assert estimate == pytest.approx(px, rel=0.15)


def test_no_estimate_without_nuclei():
    blank = np.full((300, 300, 3), 240, np.uint8)
    assert estimate_pixel_size_um(blank, get_preset("he")) is None


def test_run_estimates_only_when_the_pixel_size_is_unknown(tmp_path):
    section = make_section(labeled=False, pixel_size_um=0.5, n_pellets=1, seed=9, pellet_diameter_um=(250.0, 300.0), jpeg_quality=None)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "P1_unlabeled_d14_s1.png"), section.image[..., ::-1])  # PNG: no pixel size
    record = run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "auto"))
    image = record["images"]["P1_unlabeled_d14_s1"]
    assert image["pixel_size_source"] == "estimated from nuclei" and image["pixel_size_um"] == pytest.approx(0.5, rel=0.15)
    assert any("estimated" in w for w in image["warnings"])
    given = run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "given", pixel_size_um=0.7))
    assert given["images"]["P1_unlabeled_d14_s1"]["pixel_size_um"] == 0.7  # a pixel size in the config is used as given
    assert not any("pixel size" in w for w in given["images"]["P1_unlabeled_d14_s1"]["warnings"])
    run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "off", estimate_pixel_size=False))
    off = json.loads((tmp_path / "off" / "run.json").read_text())["images"]["P1_unlabeled_d14_s1"]
    assert off["pixel_size_source"] == "config" and off["pixel_size_um"] == 1.0
    assert any("used the default 1 µm" in w and "estimate_pixel_size is off" in w for w in off["warnings"])


def test_a_tile_too_sparse_to_estimate_says_it_used_the_default(tmp_path):
    # pale tissue with three small dark dots: no whole nucleus to measure
    tile = np.full((256, 256, 3), (225, 170, 205), np.uint8)
    for r, c in ((60, 60), (128, 190), (200, 90)):
        cv2.circle(tile, (c, r), 2, (60, 40, 110), -1)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "tile.png"), tile[..., ::-1])
    record = run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out", stains={"preset": "he"}))
    image = record["images"]["tile"]
    assert image["pixel_size_source"] == "config"
    assert any("too few whole nuclei to estimate it: used the default 1 µm" in w for w in image["warnings"]), image["warnings"]


@pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="../shared/real-images is not here")
def test_estimate_on_the_alcian_blue_valve_is_near_its_recorded_pixel_size():
    from pellet_analysis.io import read_image

    rgb, _ = read_image(REAL_IMAGES / "ab_valve_KI_POST_493-13.tif")
    assert estimate_pixel_size_um(rgb, get_preset("alcian-nfr")) == pytest.approx(0.912, rel=0.25)  # SOURCES.tsv: 0.912 µm
