"""Nuclei and pixel size on real images: MoNuSeg H&E tiles and Alcian-blue valve sections (read from
../shared, never copied here), and ``pellet-analysis validate --real`` on a made-up folder."""

import json

import numpy as np
import pytest
import tifffile

from pellet_analysis.cli import main
from pellet_analysis.config import RunConfig
from pellet_analysis.io import read_image
from pellet_analysis.scale import nucleus_sizes_px, pool_pixel_sizes_um
from pellet_analysis.stains import configured_stains
from pellet_analysis.synthetic_he import make_he_tile
from pellet_analysis.validate import real_image_pairs, validate_real, xml_pixel_size_um

from .conftest import REAL_IMAGES

MONUSEG = REAL_IMAGES / "monuseg2018_test"
VALVES = ("ab_valve_KI_POST_493-13.tif", "ab_valve_KI_ANT_510-4.tif")
VALVE_PIXEL_SIZE_UM = 0.912  # the source's


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    """Two synthetic H&E tiles written as a real labelled folder: TIFF, ``_labels.tif`` and an XML with the pixel size for one."""
    folder = tmp_path_factory.mktemp("real")
    for k, (seed, px) in enumerate([(3, 0.25), (5, 0.28)]):
        tile = make_he_tile(seed=seed, size_px=256, pixel_size_um=px)
        tifffile.imwrite(folder / f"tile{k}.tif", tile.image)
        tifffile.imwrite(folder / f"tile{k}_labels.tif", tile.nuclei.astype(np.uint16))
    (folder / "tile0.xml").write_text('<Annotations MicronsPerPixel="0.250000"><Annotation/></Annotations>')
    (folder / "notes.tif").write_bytes(b"")  # no labels: not scored
    return folder


def test_validate_real_scores_every_image_with_labels(labelled_folder, tmp_path):
    assert [p.name for p, _ in real_image_pairs(labelled_folder)] == ["tile0.tif", "tile1.tif"]
    assert xml_pixel_size_um(labelled_folder / "tile0.xml") == 0.25 and xml_pixel_size_um(labelled_folder / "tile1.xml") is None
    result = validate_real(labelled_folder, output_dir=tmp_path)
    images = result["images"].set_index("image")
    assert images.loc["tile0", "pixel_size_source"] == "xml" and images.loc["tile0", "pixel_size_um"] == 0.25
    assert images.loc["tile1", "pixel_size_source"] == "estimated"  # neither XML nor a pixel size in the TIFF
    for k in (0, 1):
        truth = tifffile.imread(labelled_folder / f"tile{k}_labels.tif")
        assert images.loc[f"tile{k}", "n_true"] == np.unique(truth[truth > 0]).size
    assert (images.f1 > 0.5).all(), images
    assert result["summary"]["nuclei_instance_f1_mean"] == pytest.approx(images.f1.mean())
    written = json.loads((tmp_path / "validation_real.json").read_text())
    assert written["images"] == 2 and (tmp_path / "validation_real_images.csv").is_file()


def test_validate_real_command_prints_the_table_and_the_mean(labelled_folder, tmp_path, capsys):
    assert main(["validate", "--real", str(labelled_folder), "--no-pixel-size", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tile0" in out and "tile1" in out and "mean F1" in out and "n_predicted" in out
    table = (tmp_path / "validation_real_images.csv").read_text()
    assert table.count("estimated") == 2  # --no-pixel-size: the XML is ignored
    assert main(["validate", "--real", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(not MONUSEG.is_dir(), reason="../shared/real-images/monuseg2018_test is not here")
def test_monuseg_nuclei_f1_with_the_xml_pixel_size():
    result = validate_real(MONUSEG)
    images, summary = result["images"], result["summary"]
    print(images.to_string(), summary)
    assert len(images) == 14 and (images.pixel_size_source == "xml").all()
    assert summary["nuclei_instance_f1_mean"] >= 0.75


@pytest.mark.skipif(not MONUSEG.is_dir(), reason="../shared/real-images/monuseg2018_test is not here")
def test_monuseg_nuclei_f1_and_pixel_size_estimated_by_the_tool():
    result = validate_real(MONUSEG, use_pixel_size=False)
    images, summary = result["images"], result["summary"]
    print(images.to_string(), summary)
    assert (images.pixel_size_source == "estimated").all()
    truth_px = np.array([xml_pixel_size_um(MONUSEG / f"{stem}.xml") for stem in images.image])
    assert np.abs(images.pixel_size_um / truth_px - 1).max() <= 0.15  # the batch estimate: one scan's tiles
    assert summary["nuclei_instance_f1_mean"] >= 0.70


@pytest.mark.skipif(not all((REAL_IMAGES / v).is_file() for v in VALVES), reason="the valve images are not in ../shared")
def test_valve_pixel_sizes_estimated_from_the_nuclei_within_15_percent():
    stains = configured_stains(RunConfig(stains={"preset": "alcian-nfr"}).stains.params())
    sizes = {name: nucleus_sizes_px(read_image(REAL_IMAGES / name)[0], stains) for name in VALVES}
    for name, choice in pool_pixel_sizes_um(sizes).items():
        assert choice.source == "estimated from nuclei", (name, choice)
        assert choice.pixel_size_um == pytest.approx(VALVE_PIXEL_SIZE_UM, rel=0.15), (name, choice)
