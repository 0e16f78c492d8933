"""Per-image stain estimation (stains.choose_stains): recovery on rendered sections, fallback to the preset."""

import numpy as np
import pytest

from pellet_analysis.config import StainConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.stains import PRESETS, angles_deg, choose_stains, od_to_rgb, rgb_to_od
from pellet_analysis.synthetic import jitter_stains, make_section

AUTO = StainConfig(estimate="auto").params()


@pytest.fixture(scope="module")
def section():
    return make_section(day=28, labeled=False, n_pellets=1, pixel_size_um=1.0, seed=5, hue_jitter_deg=8.0)


def render(section, stains, concentrations, *, seed=0):
    """An 8-bit image of ``stains`` (rows) at ``concentrations`` (one map per stain) with sensor noise."""
    od = sum(c[..., None] * v for c, v in zip(concentrations, stains.vectors))
    rng = np.random.default_rng(seed)
    rgb = od_to_rgb(od, 240.0, dtype=np.float64) + rng.normal(0, 1.5, od.shape)
    return rgb_to_od(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), 240.0)


def maps(section):
    """Stain concentrations on the section's layout: its Alcian blue, a collagen rim, its nuclei."""
    nuclei = (section.classes == CLASS_CODES["nuclei"]).astype(np.float32)
    collagen = (section.classes == CLASS_CODES["collagen"]) * np.float32(0.5)
    return section.proteoglycan_od, collagen, nuclei


def test_macenko_recovers_rotated_two_stain_vectors(section):
    preset = PRESETS["alcian-nfr"]
    truth = jitter_stains(preset, 8.0, np.random.default_rng(3))
    ab, _, nuclei = maps(section)
    od = render(section, truth, [ab, 0.8 * nuclei])
    chosen, info = choose_stains(od, section.pellets > 0, preset, AUTO, pixel_size_um=1.0)
    assert info["source"] == "estimated-macenko"
    before, after = angles_deg(preset.vectors, truth.vectors), angles_deg(chosen.vectors, truth.vectors)
    assert before.min() > 4.0 and after.max() < 2.0, (before, after)


def test_nmf_recovers_rotated_three_stain_vectors(section):
    preset = PRESETS["safranin-o"]
    truth = jitter_stains(preset, 8.0, np.random.default_rng(4))
    od = render(section, truth, maps(section))
    chosen, info = choose_stains(od, section.pellets > 0, preset, AUTO, pixel_size_um=1.0)
    assert info["source"] == "estimated-nmf"
    before, after = angles_deg(preset.vectors, truth.vectors), angles_deg(chosen.vectors, truth.vectors)
    assert before.min() > 4.0 and after.max() < 3.0, (before, after)
    assert set(info["angles_deg"]) == set(preset.stains)


def test_falls_back_to_the_preset_on_a_near_blank_image(section):
    preset = PRESETS["alcian-nfr"]
    od = render(section, preset, [0.02 * (section.pellets > 0), 0.0 * section.proteoglycan_od])
    chosen, info = choose_stains(od, section.pellets > 0, preset, AUTO, pixel_size_um=1.0)
    assert chosen is preset and info["source"] == "preset" and "stained" in info["reason"]


def test_falls_back_to_the_preset_on_a_single_stain_image(section):
    preset = PRESETS["alcian-nfr"]
    ab, _, _ = maps(section)
    od = render(section, preset, [ab + 0.3 * (section.pellets > 0), 0.0 * ab])
    chosen, info = choose_stains(od, section.pellets > 0, preset, AUTO, pixel_size_um=1.0)
    assert chosen is preset and info["source"] == "preset"
    assert "nuclear_fast_red" in info["reason"] and info["angles_deg"]["nuclear_fast_red"] > 20


def test_estimation_off_keeps_the_configured_vectors(section):
    preset = PRESETS["alcian-nfr"]
    chosen, info = choose_stains(np.zeros((4, 4, 3), np.float32), np.ones((4, 4), bool), preset, StainConfig().params(), pixel_size_um=1.0)
    assert chosen is preset and info == {"source": "preset", "reason": "stains.estimate is off"}


def test_estimation_is_on_by_default_only_for_sets_without_a_matrix_stain():
    from pellet_analysis.stains import estimate_mode, get_preset

    default = StainConfig().params()
    assert estimate_mode(get_preset("he"), default) == estimate_mode(get_preset("h-dab"), default) == "auto"
    assert estimate_mode(get_preset("ab-vg"), default) == estimate_mode(get_preset("safranin-o"), default) == "off"
    assert estimate_mode(get_preset("he"), StainConfig(preset="he", vectors={"hematoxylin": (0.65, 0.70, 0.29)}).params()) == "off"  # a lab's own vectors stand
    assert estimate_mode(get_preset("he"), StainConfig(estimate="off").params()) == "off"
    assert estimate_mode(get_preset("ab-vg"), StainConfig(estimate="auto").params()) == "auto"


def test_he_run_by_default_takes_a_drifted_tiles_own_vectors(tmp_path):
    import cv2
    import json

    from pellet_analysis.config import RunConfig
    from pellet_analysis.pipeline import run_batch
    from pellet_analysis.synthetic_he import make_he_tile

    tile = make_he_tile(seed=4, size_px=512, pixel_size_um=0.25, hue_jitter_deg=12.0)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "tile.png"), tile.image[..., ::-1])
    run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out", stains={"preset": "he"}, pixel_size_um=0.25))
    (info,) = json.loads((tmp_path / "out" / "run.json").read_text())["images"]["tile"]["stains_source"]
    assert info["source"] == "estimated-macenko", info
    names = list(PRESETS["he"].stains[:2])
    estimated = np.array([info["vectors"][n] for n in names])
    truth, preset = tile.stains.vectors[:2], PRESETS["he"].vectors[:2]
    # the drifted hematoxylin and eosin are found nearer their true directions than the preset lies
    # (seen: 1.0 and 1.5 degrees off, the preset 6.5 and 11.8)
    assert (angles_deg(estimated, truth) < 0.5 * angles_deg(preset, truth)).all(), (angles_deg(estimated, truth), angles_deg(preset, truth))
