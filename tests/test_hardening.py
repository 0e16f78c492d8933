"""Bad inputs, interrupted batches and a changed config: nothing finished is lost, nothing is mixed."""

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from pellet_analysis.config import RunConfig
from pellet_analysis.batch import RunFolderConflict, run_batch
from pellet_analysis.synthetic import make_section, write_section


def _bad_corpus(src: Path) -> dict:
    """Write the corpus; returns file name -> expected cause (None: must be processed)."""
    src.mkdir(parents=True, exist_ok=True)
    good = make_section(day=14, labeled=True, n_pellets=1, pixel_size_um=2.0, seed=81)
    rgb = good.image
    expected = {}

    write_section(good, src / "P1_labeled_d14_s1.tif")
    expected["P1_labeled_d14_s1.tif"] = None
    (src / "P1_labeled_d14_s2.tif").write_bytes(b"")
    expected["P1_labeled_d14_s2.tif"] = "empty file"
    data = (src / "P1_labeled_d14_s1.tif").read_bytes()
    (src / "P1_labeled_d14_s3.tif").write_bytes(data[: len(data) // 2])
    expected["P1_labeled_d14_s3.tif"] = "TIFF"
    (src / "P1_labeled_d14_s4.tif").write_text("station,temperature\nA,21\n")
    expected["P1_labeled_d14_s4.tif"] = "not a readable TIFF"
    tifffile.imwrite(src / "P1_labeled_d14_s5.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    expected["P1_labeled_d14_s5.tif"] = None  # 16-bit: handled
    tifffile.imwrite(src / "P1_labeled_d14_s6.tif", rgb.astype(np.float32) / 255, photometric="rgb")
    expected["P1_labeled_d14_s6.tif"] = None  # float 0-1: handled
    tifffile.imwrite(src / "P1_labeled_d14_s7.tif", np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), photometric="rgb", extrasamples=["unassalpha"])
    expected["P1_labeled_d14_s7.tif"] = None  # RGBA: handled
    cmyk = np.dstack([255 - rgb, np.zeros(rgb.shape[:2], np.uint8)])
    tifffile.imwrite(src / "P1_labeled_d14_s8.tif", cmyk, photometric="separated")
    expected["P1_labeled_d14_s8.tif"] = "CMYK"
    # palette: quantise to a 6 x 6 x 6 colour cube through a colormap
    levels = np.rint(rgb.astype(np.float32) / 51).astype(np.uint8)  # 0..5 per channel
    index = (levels[..., 0] * 36 + levels[..., 1] * 6 + levels[..., 2]).astype(np.uint8)
    cube = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3) * 51
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :216] = (cube.T * 257).astype(np.uint16)
    tifffile.imwrite(src / "P1_labeled_d14_s9.tif", index, photometric="palette", colormap=cmap)
    expected["P1_labeled_d14_s9.tif"] = None  # palette: handled
    tifffile.imwrite(src / "P1_labeled_d14_s14.tif", rgb.mean(axis=2).astype(np.uint8))
    expected["P1_labeled_d14_s14.tif"] = "no colour"  # greyscale: read, but no stain can be told apart
    huge = src / "P1_labeled_d14_s10.tif"
    tifffile.imwrite(huge, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(huge) as tif:
        offsets = [tif.pages[0].tags[n].valueoffset for n in ("ImageWidth", "ImageLength")]
    raw = bytearray(huge.read_bytes())
    for off in offsets:
        raw[off : off + 4] = struct.pack("<I", 10**6)
    huge.write_bytes(bytes(raw))
    expected["P1_labeled_d14_s10.tif"] = "exceeds the limit"
    blank = np.full((300, 400, 3), 238, np.uint8)
    tifffile.imwrite(src / "P1_labeled_d14_s11.tif", blank, photometric="rgb")
    expected["P1_labeled_d14_s11.tif"] = "no pellet section found"
    r, c = np.array(rgb.shape[:2]) // 2
    tifffile.imwrite(src / "P1_labeled_d14_s12.tif", rgb[r - 60 : r + 60, c - 60 : c + 60], photometric="rgb")
    expected["P1_labeled_d14_s12.tif"] = None  # all tissue: one pellet filling the image
    no_pg = make_section(day=7, labeled=False, n_pellets=1, pixel_size_um=2.0, seed=82)
    no_pg.image[...] = np.where((no_pg.classes == 2)[..., None], np.array([235, 225, 150], np.uint8), no_pg.image)
    write_section(no_pg, src / "P1_unlabeled_d7_s13.tif")
    expected["P1_unlabeled_d7_s13.tif"] = None
    write_section(good, src / "scan-0001.tif")
    expected["scan-0001.tif"] = "does not match pattern"
    return expected


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    expected = _bad_corpus(root / "in")
    config = root / "strict.yaml"
    config.write_text("require_metadata: true\n")
    done = subprocess.run(
        [sys.executable, "-m", "pellet_analysis", "run", str(config), "--input", str(root / "in"), "--output", str(root / "out"),
         "--pixel-size-um", "2.0", "--scheduler", "threads"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "COLUMNS": "300"},
    )
    return expected, root, done


def test_every_bad_input_is_one_failure_line_and_good_ones_finish(corpus_run):
    expected, root, done = corpus_run
    assert done.returncode == 0, done.stderr[-2000:]
    failures = pd.read_csv(root / "out" / "failures.csv").set_index("image").reason
    table = pd.read_csv(root / "out" / "pellets.csv")
    for name, cause in expected.items():
        stem = Path(name).stem
        if cause is None:
            assert stem not in failures.index, (name, failures.get(stem))
        else:
            assert stem in failures.index, name
            reason = failures[stem]
            assert cause in reason and "\n" not in reason, (name, reason)
            # the console names the file and the cause on one line
            assert any(name in line and cause in line for line in done.stderr.splitlines()), name
    assert {"P1_labeled_d14_s1", "P1_labeled_d14_s5", "P1_labeled_d14_s6", "P1_labeled_d14_s7", "P1_labeled_d14_s12", "P1_unlabeled_d7_s13"} <= set(table.image)


def test_handled_formats_measure_like_the_8_bit_original(corpus_run):
    _, root, _ = corpus_run
    table = pd.read_csv(root / "out" / "pellets.csv").set_index("image")
    ref = table.loc["P1_labeled_d14_s1"]
    for stem in ("P1_labeled_d14_s5", "P1_labeled_d14_s6", "P1_labeled_d14_s7"):
        row = table.loc[stem]
        assert row.area_um2 == pytest.approx(ref.area_um2, rel=0.01), stem
        assert row.proteoglycan_area_fraction == pytest.approx(ref.proteoglycan_area_fraction, abs=0.01), stem


def test_all_tissue_and_no_proteoglycan_give_valid_numbers(corpus_run):
    _, root, _ = corpus_run
    table = pd.read_csv(root / "out" / "pellets.csv").set_index("image")
    full = table.loc["P1_labeled_d14_s12"]
    assert full.area_um2 == pytest.approx(120 * 120 * 4.0, rel=0.02)  # the whole 120 x 120 px tile at 2 µm
    no_pg = table.loc["P1_unlabeled_d7_s13"]
    assert no_pg.proteoglycan_area_fraction < 0.02 and np.isfinite(no_pg.proteoglycan_mean_od)
    from pellet_analysis.measure import MEASUREMENT_COLUMNS

    assert np.isfinite(table[[c for c in MEASUREMENT_COLUMNS if c != "pellet_id"]].to_numpy(dtype=float)).all()


def test_require_metadata_makes_off_pattern_names_failures(tmp_path):
    src = tmp_path / "in"
    write_section(make_section(day=7, n_pellets=1, pixel_size_um=2.0, seed=83), src / "scan-0002.tif")
    run_batch(RunConfig(input_dir=src, output_dir=tmp_path / "out", require_metadata=True))
    reason = pd.read_csv(tmp_path / "out" / "failures.csv").set_index("image").reason["scan-0002"]
    assert "does not match pattern" in reason


def _study(src, n=6):
    for i in range(n):
        write_section(make_section(day=7 + 7 * (i % 2), labeled=bool(i % 2), n_pellets=1, pixel_size_um=1.0, seed=90 + i),
                      src / f"P{i}_{'labeled' if i % 2 else 'unlabeled'}_d{7 + 7 * (i % 2)}_s1.tif")


def test_sigkill_then_rerun_resumes_without_partial_files_or_recomputation(tmp_path):
    src = tmp_path / "in"
    _study(src)
    cmd = [sys.executable, "-m", "pellet_analysis", "run", "--input", str(src), "--output", str(tmp_path / "killed"), "--scheduler", "synchronous"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = tmp_path / "killed" / "parts"
    deadline = time.time() + 300
    while time.time() < deadline and not (parts.is_dir() and any(parts.glob("*.json"))):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in parts.glob("*.json"))
    assert 1 <= len(finished) < 6
    first_parts = {p: p.stat().st_mtime_ns for p in parts.glob("*.json")}

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"({len(finished)} finished earlier, not recomputed)" in " ".join(rerun.stderr.split())
    assert {p: p.stat().st_mtime_ns for p in first_parts} == first_parts  # not recomputed
    assert not list((tmp_path / "killed").rglob("*.part"))

    clean = subprocess.run([*cmd[:6], "--output", str(tmp_path / "clean"), "--scheduler", "synchronous"], capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0
    a = pd.read_parquet(tmp_path / "killed" / "pellets.parquet")
    b = pd.read_parquet(tmp_path / "clean" / "pellets.parquet")
    pd.testing.assert_frame_equal(a, b)
    for label in (tmp_path / "clean" / "labels").glob("*.tif"):
        assert np.array_equal(tifffile.imread(label), tifffile.imread(tmp_path / "killed" / "labels" / label.name))


def test_changed_config_refuses_to_mix_results(tmp_path):
    src = tmp_path / "in"
    _study(src, n=1)
    config = RunConfig(input_dir=src, output_dir=tmp_path / "out")
    run_batch(config)
    with pytest.raises(RunFolderConflict, match="different config"):
        run_batch(config.model_copy(update={"classify": config.classify.model_copy(update={"collagen_min_od": 0.3})}))
    # where and how the work runs is not a change of config
    run_batch(config.model_copy(update={"scheduler": "synchronous"}))
    done = subprocess.run([sys.executable, "-m", "pellet_analysis", "run", "--input", str(src), "--output", str(tmp_path / "out"), "--stains", "he"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "different config" in done.stderr and "new --output" in done.stderr


@pytest.mark.parametrize("grey", [238, 170, 128])
def test_blank_or_hazy_glass_is_never_a_pellet(grey):
    """Relative tissue thresholds must not invent tissue on glass: bright, hazy-grey or dim, with sensor noise and a gradient."""
    from pellet_analysis.gates import NotASectionError
    from pellet_analysis.pipeline import analyze_image
    from pellet_analysis.slide import plan_image

    rng = np.random.default_rng(grey)
    rows = np.linspace(0.0, 1.0, 400)[:, None, None]
    blank = grey * (1.0 - 0.03 * rows) + rng.normal(0.0, 1.5, (400, 500, 3))  # 3 % vignetting: OD 0.013
    blank = np.clip(np.round(blank), 0, 255).astype(np.uint8)
    config = RunConfig(stains={"preset": "safranin-o"})
    # the pellet finder itself, behind the input gate: no tissue on glass of any brightness
    assert plan_image(blank, pixel_size_um=1.0, config=config).windows == []
    try:
        found = analyze_image(blank, pixel_size_um=1.0, config=config)
    except NotASectionError:
        return
    assert found.rows == [], found.rows
