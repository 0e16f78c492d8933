"""The output contract of a run, end to end, through the library and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from pellet_analysis.config import RunConfig
from pellet_analysis.io import sha256_file
from pellet_analysis.pipeline import TABLE_COLUMNS, run_batch
from pellet_analysis.synthetic import make_section, truth_table, write_section

from .conftest import dice

CONTRACT_COLUMNS = [
    "image", "pellet_id", "donor", "condition", "day", "area_um2", "centroid_row_px", "centroid_col_px",
    "circularity", "proteoglycan_area_fraction", "proteoglycan_mean_od", "collagen_area_fraction",
    "nuclei_count", "nuclei_density_per_mm2", "iron_area_fraction", "iron_granule_count",
    "iron_positive_cell_fraction", "excluded", "exclusion_reason",
]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A small folder: two TIFFs with pixel size tags, a PNG without, a corrupt file, an off-pattern name."""
    root = tmp_path_factory.mktemp("batch")
    src = root / "in"
    sections = {
        "P01_labeled_d14_s1.tif": make_section(day=14, labeled=True, n_pellets=2, pixel_size_um=0.8, seed=21),
        "P02_unlabeled_d28_s2.tif": make_section(day=28, labeled=False, n_pellets=1, pixel_size_um=1.0, seed=22),
        "P03_unlabeled_d7_s1.png": make_section(day=7, labeled=False, n_pellets=1, pixel_size_um=1.25, seed=23),
        "scan_0001.tif": make_section(day=7, labeled=True, n_pellets=1, pixel_size_um=1.0, seed=24),
    }
    for name, section in sections.items():
        write_section(section, src / name)
    (src / "P04_labeled_d7_s1.tif").write_bytes(b"II*\x00garbage that is not a tiff")
    (src / "notes.txt").write_text("not an image; ignored by extension")
    out = root / "out"
    config = RunConfig(input_dir=src, output_dir=out, pixel_size_um=1.25, scheduler="threads", n_workers=2)
    record = run_batch(config)
    return sections, config, record, src, out


def test_contract_files_exist(batch):
    _, _, _, _, out = batch
    for name in ("pellets.csv", "pellets.parquet", "failures.csv", "run.json"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.part"))


def test_table_columns_types_and_metadata(batch):
    sections, _, _, _, out = batch
    csv = pd.read_csv(out / "pellets.csv")
    parquet = pd.read_parquet(out / "pellets.parquet")
    assert list(parquet.columns) == TABLE_COLUMNS
    assert set(CONTRACT_COLUMNS) <= set(csv.columns)
    assert len(csv) == len(parquet) == 2 + 1 + 1 + 1
    assert parquet["pellet_id"].dtype == np.int64 and parquet["excluded"].dtype == bool
    assert not parquet["excluded"].any()
    row = parquet[parquet.image == "P01_labeled_d14_s1"].iloc[0]
    assert (row.donor, row.condition, row.day, row.section) == ("P01", "labeled", 14, "1")
    odd = parquet[parquet.image == "scan_0001"].iloc[0]
    assert pd.isna(odd.donor) and pd.isna(odd.day)  # off-pattern name: processed, metadata empty
    numeric = parquet.select_dtypes("number").drop(columns=["day"])
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()


def test_label_images_match_input_and_table(batch):
    sections, _, _, _, out = batch
    table = pd.read_parquet(out / "pellets.parquet")
    for name, section in sections.items():
        stem = Path(name).stem
        pellets = tifffile.imread(out / "labels" / f"{stem}_pellets.tif")
        classes = tifffile.imread(out / "labels" / f"{stem}_classes.tif")
        nuclei = tifffile.imread(out / "labels" / f"{stem}_nuclei.tif")
        assert pellets.dtype == np.uint16 and classes.dtype == np.uint8 and nuclei.dtype == np.uint32
        assert pellets.shape == classes.shape == nuclei.shape == section.image.shape[:2]
        assert set(np.unique(classes)) <= {0, 1, 2, 3, 4, 5}
        assert np.array_equal(classes > 0, pellets > 0)
        rows = table[table.image == stem]
        assert sorted(rows.pellet_id) == sorted(set(np.unique(pellets)) - {0})
        for _, row in rows.iterrows():
            assert row.area_um2 == pytest.approx((pellets == row.pellet_id).sum() * row.pixel_size_um**2)
        assert dice(pellets > 0, section.pellets > 0) > 0.95


def test_pixel_size_from_file_else_config(batch):
    sections, _, record, _, _ = batch
    table = record["table"]
    assert table[table.image == "P01_labeled_d14_s1"].pixel_size_um.iloc[0] == pytest.approx(0.8)
    assert record["images"]["P01_labeled_d14_s1"]["pixel_size_source"] == "file"
    assert record["images"]["P03_unlabeled_d7_s1"]["pixel_size_source"] == "config"
    truth = truth_table(sections["P03_unlabeled_d7_s1.png"])[0]
    got = table[table.image == "P03_unlabeled_d7_s1"].iloc[0]
    assert got.area_um2 == pytest.approx(truth["area_um2"], rel=0.03)


def test_corrupt_file_is_one_failure_row_and_the_rest_finish(batch):
    _, _, record, _, out = batch
    failures = pd.read_csv(out / "failures.csv")
    assert list(failures.columns) == ["image", "reason"]
    assert failures.image.tolist() == ["P04_labeled_d7_s1"]
    assert "TIFF" in failures.reason.iloc[0] and "\n" not in failures.reason.iloc[0]
    assert record["n_images"] == 5 and record["n_failures"] == 1


def test_run_json_records_config_stains_background_hashes_timings(batch):
    _, config, _, src, out = batch
    run = json.loads((out / "run.json").read_text())
    assert run["version"] and run["config"]["stains"]["preset"] == "ab-vg"
    image = run["images"]["P01_labeled_d14_s1"]
    assert image["sha256"] == sha256_file(src / "P01_labeled_d14_s1.tif")
    assert set(image["stains"]["stains"]) == {"alcian_blue", "acid_fuchsin", "picric_acid", "weigert_hematoxylin", "iron"}
    assert len(image["background"]["background_rgb"]) == 3 and 200 < image["background"]["background_rgb"][0] <= 255
    assert image["timings_s"]["plan"] > 0 and sum(image["timings_s"]["pellets"]) > 0  # one per pellet


def test_each_image_record_reads_back_from_its_part_and_from_run_json(batch):
    """The records own their JSON: a part decodes to the record run.json holds for the image, failures included."""
    from pellet_analysis.records import ImageFailure, ImageSummary, decode_image

    _, _, record, _, out = batch
    run = json.loads((out / "run.json").read_text())
    kinds = {}
    for image, entry in run["images"].items():
        decoded = decode_image(entry, image)
        kinds[image] = type(decoded)
        assert json.dumps(decoded.to_json(rows=False), sort_keys=True) == json.dumps({"image": image, **entry}, sort_keys=True)
        if isinstance(decoded, ImageSummary):
            part = decode_image(json.loads((out / "parts" / f"{image}.json").read_text()))
            assert part.to_json(rows=False) == decoded.to_json(rows=False)
            assert [r["pellet_id"] for r in part.rows] == list(range(1, len(part.rows) + 1))
            assert not (out / "parts" / f"{image}.pellets").exists()  # its scratch (pixels, pellet arrays) is removed
    assert kinds == {
        "P01_labeled_d14_s1": ImageSummary, "P02_unlabeled_d28_s2": ImageSummary, "P03_unlabeled_d7_s1": ImageSummary,
        "scan_0001": ImageSummary, "P04_labeled_d7_s1": ImageFailure,
    }


def test_processes_scheduler_gives_the_same_table(batch, tmp_path):
    _, config, record, _, _ = batch
    again = run_batch(config.model_copy(update={"output_dir": tmp_path / "p", "scheduler": "processes"}))
    pd.testing.assert_frame_equal(again["table"], record["table"])


def test_a_pool_started_ahead_is_used_and_left_running(batch, tmp_path):
    from pellet_analysis.workers import process_pool

    _, config, record, _, _ = batch
    before = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    pool = process_pool(2)
    try:
        # one BLAS/OpenMP thread in each worker unless the user chose otherwise; this process's environment untouched
        for name, value in before.items():
            assert pool.submit(os.getenv, name).result() == (value if value is not None else "1")
        assert {name: os.environ.get(name) for name in before} == before
        again = run_batch(config.model_copy(update={"output_dir": tmp_path / "w", "scheduler": "processes"}), pool=pool)
        pd.testing.assert_frame_equal(again["table"], record["table"])
        worker_pids = {pool.submit(os.getpid).result() for _ in range(4)}  # still running, its two workers
        assert len(worker_pids) <= 2 and os.getpid() not in worker_pids
    finally:
        pool.shutdown()


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_costliest_ready_tasks_run_first(scheduler):
    """Longest processing time first: a slide's largest pellet never starts last while a worker idles."""
    import threading

    import dask

    from pellet_analysis.scheduling import compute as _compute

    ran, lock = [], threading.Lock()

    def work(name):
        with lock:
            ran.append(name)
        return {"name": name}

    names = ("small", "large", "medium", "hash", "no-cost")
    tasks = [dask.delayed(work, pure=False)(n, dask_key_name=n) for n in names]
    costs = {"small": 8_100_000, "large": 10_600_000, "medium": 9_700_000, "hash": 1}
    done = _compute(tasks, RunConfig(scheduler=scheduler, n_workers=1), lambda r: None, costs=costs)
    assert [d["name"] for d in done] == list(names)  # results in the order given
    assert ran == ["large", "medium", "small", "hash", "no-cost"]


def test_a_batch_writes_each_image_when_its_own_pellets_are_done(tmp_path):
    """A batch killed midway keeps the images it finished: each image's summary is written before the
    next image's pellets are classified, not in a burst after every pellet of the batch."""
    from dask.callbacks import Callback

    src = tmp_path / "in"
    for i in range(3):
        write_section(make_section(day=7, n_pellets=1, pixel_size_um=1.0, seed=60 + i), src / f"D{i}_unlabeled_d7_s1.png")
    started = []
    with Callback(pretask=lambda key, dsk, state: started.append(str(key))):
        run_batch(RunConfig(input_dir=src, output_dir=tmp_path / "out", pixel_size_um=1.0, scheduler="synchronous"))
    pellets = [i for i, key in enumerate(started) if key.startswith("pellet-")]
    written = [i for i, key in enumerate(started) if key.startswith("image-")]
    assert len(pellets) == len(written) == 3
    assert written[0] < pellets[1] and written[1] < pellets[2], started


@pytest.mark.parametrize("scheduler", ["processes", "threads", "synchronous"])
def test_local_schedulers_never_import_distributed(tmp_path, scheduler):
    """Dask resolves a scheduler's name by looking for a dask.distributed client, which imports distributed
    (0.16 s before the first task is sent): local runs pass Dask the scheduler function instead."""
    src = tmp_path / "in"
    write_section(make_section(day=7, n_pellets=1, pixel_size_um=1.0, seed=32), src / "D1_unlabeled_d7_s1.png")
    code = (
        "import sys\n"
        "from pellet_analysis.config import RunConfig\n"
        "from pellet_analysis.pipeline import run_batch\n"
        f"record = run_batch(RunConfig(input_dir={str(src)!r}, output_dir={str(tmp_path / 'out')!r}, pixel_size_um=1.0, scheduler={scheduler!r}, n_workers=2))\n"
        "print(record['n_pellets'], 'distributed' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "False"]


def test_the_fork_server_exits_without_teardown_once_its_output_is_flushed(tmp_path):
    """The workers' fork server ends when the command does. Its exit handler skips the interpreter's teardown
    (0.17 s, during which whoever read the command's output waited for the server to let go of it), after
    flushing what the server wrote."""
    marker = tmp_path / "teardown-ran"
    code = (
        "import atexit, pathlib, sys\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).touch)\n"  # would run in an ordinary exit
        "import pellet_analysis._server_exit\n"
        "sys.stdout.write('written, not flushed')\n"
        "raise SystemExit\n"  # how the server leaves its loop when its last client is gone
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "written, not flushed", "")
    assert not marker.exists()


def test_cli_run_with_overrides_and_help(tmp_path):
    src = tmp_path / "in"
    write_section(make_section(day=7, n_pellets=1, pixel_size_um=1.0, seed=31), src / "D1_unlabeled_d7_s1.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pellet_analysis", "run", "--input", str(src), "--output", str(out), "--pixel-size-um", "0.5", "--stains", "ab-vg", "--scheduler", "synchronous"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "pellets.csv")
    assert table.pixel_size_um.tolist() == [0.5]
    assert "1 pellet(s)" in done.stderr
    for verb in ("run", "demo", "synth"):
        helped = subprocess.run([sys.executable, "-m", "pellet_analysis", verb, "--help"], capture_output=True, text=True)
        assert helped.returncode == 0 and "usage" in helped.stdout


@pytest.mark.parametrize("extra", [[], ["--scheduler", "processes"]], ids=["default", "processes"])
def test_cli_bad_config_is_one_line_and_exit_2(tmp_path, extra):
    # a path long enough that a console wrapping at 80 columns would split it
    folder = tmp_path / ("a_long_folder_name_" * 4)
    folder.mkdir()
    bad = folder / "bad.yaml"
    bad.write_text("pellets:\n  min_pellet_area_um2: -1\n")
    # with --scheduler processes the workers' server starts before the config is read: the same one line, and no hang
    done = subprocess.run([sys.executable, "-m", "pellet_analysis", "run", str(bad), *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pellets.min_pellet_area_um2" in lines[0] and str(bad) in lines[0]


def test_cli_synth_writes_named_study_with_truth(tmp_path):
    out = tmp_path / "study"
    done = subprocess.run(
        [sys.executable, "-m", "pellet_analysis", "synth", str(out), "--donors", "1", "--days", "7", "--pixel-size-um", "2", "--truth"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("*.tif")) == ["P01_labeled_d7_s1.tif", "P01_unlabeled_d7_s1.tif"]
    assert (out / "truth" / "P01_labeled_d7_s1_classes.tif").is_file()


def test_screen_resolution_tags_are_not_taken_as_pixel_size(tmp_path):
    src = tmp_path / "in"
    section = make_section(day=7, n_pellets=1, pixel_size_um=1.0, seed=33)
    src.mkdir()
    tifffile.imwrite(src / "P1_labeled_d7_s1.tif", section.image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    record = run_batch(RunConfig(input_dir=src, output_dir=tmp_path / "out", pixel_size_um=1.0))
    image = record["images"]["P1_labeled_d7_s1"]
    assert image["pixel_size_source"] == "config" and image["pixel_size_um"] == 1.0
    assert [w for w in image["warnings"] if "pixel size" in w] == ["the file's pixel size 352.8 µm is a screen resolution tag, not a scan's: ignored; used 1 µm from the config"]


def test_distributed_scheduler_with_a_local_cluster_of_two_processes(batch, tmp_path):
    """scheduler: tcp://host:port sends the images to a dask.distributed cluster; same table as threads."""
    from distributed import LocalCluster

    _, config, record, _, _ = batch
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert len(cluster.workers) == 2
        seen = []
        again = run_batch(
            config.model_copy(update={"output_dir": tmp_path / "d", "scheduler": cluster.scheduler_address}),
            progress=seen.append,
        )
    pd.testing.assert_frame_equal(again["table"], record["table"])
    assert len(seen) == 5  # progress reported for every image, failures included
