"""Edges a user hits on the command line: every one a single line naming the option, file or folder, and a non-zero exit."""

import os
import stat
import subprocess
import sys

import pytest

from pellet_analysis.io import atomic_write


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pellet_analysis", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _one_line(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_are_as_readable_as_the_umask_says(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        with atomic_write(tmp_path / "report.html", "w") as handle:
            handle.write("<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == mode


@pytest.mark.parametrize(
    "option, value, cause",
    [("--stains", "foo", "unknown stain preset 'foo'"), ("--pixel-size-um", "-1", "greater than 0"), ("--workers", "0", "greater than")],
)
def test_a_bad_option_is_named_as_the_option(tmp_path, option, value, cause):
    done = _cli("run", "--input", tmp_path, "--output", tmp_path / "out", option, value)
    line = _one_line(done)
    assert done.returncode == 2
    assert line.startswith(f"error: {option}: ") and cause in line, line
    assert "config" not in line and "Value error" not in line


def test_a_bad_key_in_a_config_file_still_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stains:\n  preset: foo\n")
    line = _one_line(done := _cli("run", bad, "--input", tmp_path))
    assert done.returncode == 2 and f"{bad}: stains.preset: unknown stain preset 'foo'" in line, line


def test_an_empty_input_folder_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here")
    line = _one_line(done := _cli("run", "--input", tmp_path / "in", "--output", tmp_path / "out"))
    assert done.returncode == 2 and "no images" in line and str(tmp_path / "in") in line
    assert not (tmp_path / "out").exists()


def test_an_output_path_that_is_a_file_is_one_line(tmp_path):
    from pellet_analysis.synthetic import make_section, write_section

    write_section(make_section(day=7, n_pellets=1, pixel_size_um=2.0, seed=3), tmp_path / "in" / "P1_labeled_d7_s1.tif")
    (tmp_path / "taken").write_text("a file")
    line = _one_line(done := _cli("run", "--input", tmp_path / "in", "--output", tmp_path / "taken"))
    assert done.returncode == 2 and "is an existing file" in line and str(tmp_path / "taken") in line
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_batch_leaves_the_callers_opencv_threads_and_environment_as_it_found_them(tmp_path):
    """Thread limits and hash seeds belong to the workers a run starts, not to the process that calls the library."""
    import cv2

    from pellet_analysis.config import RunConfig
    from pellet_analysis.pipeline import run_batch
    from pellet_analysis.synthetic import make_section, write_section

    write_section(make_section(day=7, n_pellets=1, pixel_size_um=2.0, seed=3), tmp_path / "in" / "P1_labeled_d7_s1.tif")
    before_threads, before_env = cv2.getNumThreads(), dict(os.environ)
    cv2.setNumThreads(3)
    try:
        for scheduler in ("threads", "synchronous"):
            record = run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / scheduler, scheduler=scheduler, n_workers=2))
            assert record["n_pellets"] == 1
            assert cv2.getNumThreads() == 3
        assert dict(os.environ) == before_env
    finally:
        cv2.setNumThreads(before_threads)


def test_opencv_threads_is_restored_only_when_the_last_concurrent_user_leaves():
    import threading

    import cv2

    from pellet_analysis.workers import opencv_threads

    before = cv2.getNumThreads()
    inside, release = threading.Event(), threading.Event()
    seen = []

    def other():
        with opencv_threads(1):
            inside.set()
            release.wait(10)
            seen.append(cv2.getNumThreads())

    worker = threading.Thread(target=other)
    worker.start()
    inside.wait(10)
    with opencv_threads(1):
        pass  # leaves first: the other computation still runs with one thread
    release.set()
    worker.join()
    assert seen == [1] and cv2.getNumThreads() == before
