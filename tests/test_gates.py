"""Input gates: inputs that are not stained sections fail with their own cause; one image's bug never stops a batch."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from pellet_analysis.config import RunConfig
from pellet_analysis.gates import section_problem
from pellet_analysis.io import read_image
from pellet_analysis.pipeline import run_batch
from pellet_analysis.synthetic import make_section, write_section

from .conftest import REAL_IMAGES

DEMO = Path(__file__).resolve().parents[1] / "images"


def _garbage(src: Path, good) -> dict:
    """The corpus of issue 20 beside one good section; file name -> expected cause."""
    rng = np.random.default_rng(0)
    rgb = good.image
    m = np.zeros((300, 300), np.uint8)
    m[100:200, 80:220] = 255
    signed = (rgb.astype(np.int16) - 128).astype(np.int8)
    with_nan = rgb.astype(np.float32) / 255
    with_nan[10:20, 10:20] = np.nan
    files = {
        "P1_labeled_d7_s2.tif": (np.zeros((300, 300, 3), np.uint8), "rgb", "too dark"),
        "P1_labeled_d7_s3.tif": (np.full((300, 300, 3), 40, np.uint8), "rgb", "too dark"),
        "P1_labeled_d7_s4.tif": (np.full((1, 1, 3), 120, np.uint8), "rgb", "1 x 1 px"),
        "P1_labeled_d7_s5.tif": (m, "minisblack", "mask or label image (2 grey levels)"),
        "P1_labeled_d7_s6.tif": (signed, "rgb", "signed integer pixels (int8)"),
        "P1_labeled_d7_s7.tif": (rng.integers(0, 256, rgb.shape, dtype=np.uint8), "rgb", "noise"),
        "P1_labeled_d7_s8.tif": (rgb[..., :2].copy(), "minisblack", "2 channels"),
        "P1_labeled_d7_s9.tif": (with_nan, "rgb", "NaN"),
        "P1_labeled_d7_s10.tif": (np.full((300, 400, 3), 238, np.uint8), "rgb", "no pellet section found"),
    }
    for name, (array, photometric, _) in files.items():
        tifffile.imwrite(src / name, array, photometric=photometric, planarconfig="contig" if array.ndim == 3 else None)
    return {name: cause for name, (_, _, cause) in files.items()}


def test_the_garbage_corpus_fails_with_its_own_causes_and_the_good_section_is_measured_as_alone(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = make_section(day=7, labeled=True, n_pellets=1, pixel_size_um=2.0, seed=5)
    write_section(good, src / "P1_labeled_d7_s1.tif")
    expected = _garbage(src, good)
    record = run_batch(RunConfig(input_dir=src, output_dir=tmp_path / "out", pixel_size_um=2.0, scheduler="synchronous"))
    failures = pd.read_csv(tmp_path / "out" / "failures.csv").set_index("image").reason
    table = pd.read_csv(tmp_path / "out" / "pellets.csv")
    for name, cause in expected.items():
        stem = Path(name).stem
        assert stem in failures.index and cause in failures[stem], (name, failures.get(stem))
        assert "\n" not in failures[stem]
    assert set(table.image) == {"P1_labeled_d7_s1"}
    (alone := tmp_path / "alone").mkdir()
    write_section(good, alone / "P1_labeled_d7_s1.tif")
    clean = run_batch(RunConfig(input_dir=alone, output_dir=tmp_path / "out-alone", pixel_size_um=2.0, scheduler="synchronous"))
    pd.testing.assert_frame_equal(record["table"].reset_index(drop=True), clean["table"].reset_index(drop=True))


def test_images_without_a_pixel_size_are_gated_once_while_the_batch_reads_their_nuclei(tmp_path, monkeypatch):
    """The batch's pixel size estimate reads and gates those images; their plans do not gate them again."""
    import pellet_analysis.tasks as tasks

    src = tmp_path / "in"
    src.mkdir()
    good = make_section(day=7, labeled=True, n_pellets=1, pixel_size_um=2.0, seed=5)
    for k in (1, 11):  # PNG: no pixel size in the file
        write_section(good, src / f"P1_labeled_d7_s{k}.png")
    expected = _garbage(src, good)
    gated = []

    def counted(rgb, *args, **kwargs):
        gated.append(1)
        return section_problem(rgb, *args, **kwargs)

    monkeypatch.setattr(tasks, "section_problem", counted)
    out = tmp_path / "out"
    record = run_batch(RunConfig(input_dir=src, output_dir=out, scheduler="synchronous"))
    failures = pd.read_csv(out / "failures.csv").set_index("image")["reason"]
    for name, cause in expected.items():
        assert cause in failures[Path(name).stem], (name, failures.get(Path(name).stem))
    assert sorted(record["table"].image) == ["P1_labeled_d7_s1", "P1_labeled_d7_s11"]
    assert set(record["table"].pixel_size_source) <= {"batch estimate", "estimated"}
    # as often as a batch given the pixel size gates them, in its plans alone: once per image its reader decodes
    pooled, gated[:] = len(gated), []
    run_batch(RunConfig(input_dir=src, output_dir=tmp_path / "given", pixel_size_um=2.0, scheduler="synchronous"))
    assert pooled == len(gated) and len(expected) - 3 <= pooled <= len(expected) + 2


def test_an_exception_inside_one_image_is_its_failure_row_and_the_batch_goes_on(tmp_path, monkeypatch):
    import pellet_analysis.tasks as tasks

    src = tmp_path / "in"
    src.mkdir()
    for k, seed in enumerate((21, 22, 23), start=1):
        write_section(make_section(day=7, n_pellets=1, pixel_size_um=2.0, seed=seed), src / f"P{k}_labeled_d7_s1.tif")
    real = tasks.classify_pellet_window
    calls = []

    def flaky(rgb_window, *args, **kwargs):  # the second pellet of the batch (one pellet per image) raises
        calls.append(1)
        if len(calls) == 2:
            raise IndexError("index 7 is out of bounds for axis 0 with size 7")
        return real(rgb_window, *args, **kwargs)

    monkeypatch.setattr(tasks, "classify_pellet_window", flaky)
    out = tmp_path / "out"
    record = run_batch(RunConfig(input_dir=src, output_dir=out, pixel_size_um=2.0, scheduler="synchronous"))
    failures = pd.read_csv(out / "failures.csv")
    assert len(failures) == 1
    stem, reason = failures.iloc[0]["image"], failures.iloc[0]["reason"]
    assert reason.startswith("pellet 1: IndexError: index 7 is out of bounds") and "\n" not in reason
    assert "raise IndexError" in (out / "logs" / f"{stem}.traceback.txt").read_text()
    assert sorted(pd.read_csv(out / "pellets.csv").image.unique()) == sorted({"P1_labeled_d7_s1", "P2_labeled_d7_s1", "P3_labeled_d7_s1"} - {stem})
    assert (out / "run.json").is_file() and record["n_failures"] == 1
    assert not (out / "parts" / f"{stem}.pellets").exists()  # the failed image's scratch is removed too


@pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="../shared/real-images is not here")
def test_every_real_scan_and_demo_section_passes_the_gates():
    files = [p for p in REAL_IMAGES.iterdir() if p.suffix in (".tif", ".jpg", ".png") and "mask" not in p.name]
    files += [p for p in (REAL_IMAGES / "monuseg2018_test").glob("*.tif") if not p.stem.endswith("_labels")]
    files += sorted(DEMO.glob("*.tif"))
    assert len(files) >= 30
    problems = {p.name: section_problem(read_image(p)[0]) for p in files}
    assert {name: why for name, why in problems.items() if why is not None} == {}


def test_a_16_bit_scan_with_12_bit_data_is_judged_on_its_own_scale():
    section = make_section(day=7, n_pellets=1, pixel_size_um=2.0, seed=5)
    twelve_bit = (section.image.astype(np.uint16) * 16)  # 0..4080 in a 16-bit array
    assert section_problem(twelve_bit) is None
    assert "too dark" in section_problem((section.image.astype(np.uint16) * 2))  # 0..510 of 4095: a dark frame
