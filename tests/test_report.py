"""report.html of a small study, checked in a real browser (headless Chromium) and as files."""

import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pandas as pd
import pytest

from pellet_analysis.config import RunConfig
from pellet_analysis.pipeline import run_batch
from pellet_analysis.report import make_report
from pellet_analysis.synthetic import make_section, write_section

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    src = root / "in"
    seed = 50
    for donor in ("A", "B", "C"):
        for condition in ("labeled", "unlabeled"):
            for day in (7, 28):
                seed += 1
                section = make_section(day=day, labeled=condition == "labeled", n_pellets=1, pixel_size_um=2.0,
                                       pellet_diameter_um=(260, 300), seed=seed)
                write_section(section, src / f"{donor}_{condition}_d{day}_s1.tif")
    out = root / "run"
    run_batch(RunConfig(input_dir=src, output_dir=out))
    # a reviewer excluded one pellet: the report must leave it out and count it
    table = pd.read_parquet(out / "pellets.parquet")
    table.loc[0, ["excluded", "exclusion_reason"]] = [True, "fold"]
    table.to_parquet(out / "pellets.parquet", index=False)
    written = make_report(out)
    return out, table, written


def test_summary_and_statistics_files(study):
    out, table, written = study
    summary = pd.read_parquet(out / "summary.parquet")
    assert pd.read_csv(out / "summary.csv").shape == summary.shape
    assert set(summary.donor) == {"A", "B", "C"} and set(summary.day) == {7, 28}
    assert summary.n_pellets.sum() == len(table) - 1  # the excluded pellet is left out
    stats = pd.read_csv(out / "statistics.csv")
    assert {"metric", "comparison", "test", "n_donors", "estimate", "ci_low", "ci_high", "p_value", "p_holm", "note"} <= set(stats.columns)
    assert stats.n_donors.notna().all()
    paired = stats[stats.comparison == "labeled - unlabeled"]
    assert (paired.note.str.contains("Wilcoxon needs at least 6")).all()


def test_geojson_outlines_match_pellet_areas(study):
    out, table, _ = study
    stem = table.image.iloc[1]
    collection = json.loads((out / "geojson" / f"{stem}.geojson").read_text())
    feature = collection["features"][0]
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    x, y = ring[:, 0], ring[:, 1]
    area_px = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    row = table[(table.image == stem) & (table.pellet_id == 1)].iloc[0]
    assert area_px * row.pixel_size_um**2 == pytest.approx(row.area_um2, rel=0.03)
    assert feature["properties"]["measurements"]["proteoglycan_area_fraction"] == pytest.approx(row.proteoglycan_area_fraction)
    assert feature["properties"]["classification"]["name"] == "Pellet"


def _chromium(*args, html_path):
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args, html_path.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )


def test_report_in_a_real_browser(study, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run does) so the report is checked in a browser")
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    out, table, _ = study
    page = out / "report.html"
    # dump the DOM after the page has loaded and rendered (no network needed: everything is inline)
    done = _chromium("--virtual-time-budget=5000", "--dump-dom", html_path=page)
    assert done.returncode == 0, done.stderr[-500:]
    dom = done.stdout
    assert "Pellet study report" in dom
    counts = re.search(r"<p id=\"counts\">(.*?)</p>", dom).group(1)
    assert f"{len(table)} pellets" in counts and "1 excluded by review" in counts and "3 donors" in counts
    assert dom.count("<figure id=\"thumb-pellet-") == len(table)
    assert dom.count("src=\"data:image/jpeg;base64,") == len(table)
    assert "id=\"plots\"" in dom and "data:image/png;base64," in dom
    assert "Friedman" in dom and "p_holm" in dom and "Wilcoxon needs at least 6" in dom
    assert "alcian_blue" in dom and "pellet-analysis 0.1.0" in dom
    assert "http://" not in dom and "https://" not in dom  # self-contained
    # each table row links to its thumbnail and back
    first = f"pellet-{table.image.iloc[1]}-{table.pellet_id.iloc[1]}"
    assert f"href=\"#thumb-{first}\"" in dom and f"href=\"#{first}\"" in dom
    shot = tmp_path / "report.png"
    done = _chromium("--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}", html_path=page)
    assert done.returncode == 0 and shot.stat().st_size > 50_000
    import cv2

    pixels = cv2.imread(str(shot))
    assert pixels.std() > 20  # rendered plots and tables, not a blank page
