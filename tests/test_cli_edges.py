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
