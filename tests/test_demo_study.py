"""The shipped demo study (images/) measured against the generator's truth for it."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pellet_analysis.config import load_config
from pellet_analysis.pipeline import run_batch
from pellet_analysis.synthetic import study_sections, truth_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    config = load_config(ROOT / "configs" / "default.yaml", input_dir=ROOT / "images", output_dir=tmp_path_factory.mktemp("demo"))
    record = run_batch(config)
    truth = pd.DataFrame([{"image": stem, **row} for stem, s in study_sections() for row in truth_table(s)])
    return record, truth


def test_demo_study_design(demo):
    record, _ = demo
    table = record["table"]
    assert record["n_failures"] == 0
    assert table.donor.nunique() >= 3
    assert set(table.condition) == {"labeled", "unlabeled"}
    assert set(table.day) == {7, 14, 28}


def test_demo_measurements_match_truth(demo):
    record, truth = demo
    merged = record["table"].merge(truth, on=["image", "pellet_id"], suffixes=("", "_true"), validate="one_to_one")
    assert len(merged) == len(truth) == len(record["table"])
    pg_err_pp = 100 * (merged.proteoglycan_area_fraction - merged.proteoglycan_area_fraction_true).abs()
    assert pg_err_pp.mean() <= 2.5 and pg_err_pp.max() <= 5.0
    area_rel = (merged.area_um2 / merged.area_um2_true - 1).abs()
    assert area_rel.max() <= 0.05
    nuc_rel = (merged.nuclei_count / merged.nuclei_count_true - 1).abs()
    assert nuc_rel.mean() <= 0.15


def test_demo_labeled_has_less_proteoglycan_each_day(demo):
    record, _ = demo
    means = record["table"].groupby(["day", "condition"]).proteoglycan_area_fraction.mean().unstack()
    assert (means["labeled"] < means["unlabeled"]).all(), means
    assert np.all(np.diff(means["unlabeled"].to_numpy()) > 0), means


def test_demo_controls_each_read_at_most_two_percent_iron_positive_cells_once_calibrated(demo):
    # configs/default.yaml calibrates the iron threshold on the unlabeled pellets (iron.calibrate: controls): pooled at
    # most 1 % and, per pellet, at most iron.calibrate_max_pellet_positive_fraction (2 %), the bound for the demo
    record, truth = demo
    cal = record["iron_calibration"]
    assert cal["calibrated"] and cal["max_pellet_positive_fraction"] == 0.02
    table = record["table"].merge(truth, on=["image", "pellet_id"], suffixes=("", "_true"), validate="one_to_one")
    controls, labeled = table[table.condition == "unlabeled"], table[table.condition == "labeled"]
    assert len(controls) == cal["n_control_pellets"] == 15
    assert controls.iron_positive_cell_fraction.max() <= 0.02, controls.iron_positive_cell_fraction.tolist()
    assert cal["pellet_positive_fraction_after_max"] == controls.iron_positive_cell_fraction.max()
    assert cal["positive_fraction_after"] <= 0.01
    # what the stricter threshold costs the labeled pellets (measured 0.577 found against 0.874 true; 0.631 with the
    # pooled bound alone): their cells stay far more often positive than the controls'
    found, true = labeled.iron_positive_cell_fraction, labeled.iron_positive_cell_fraction_true
    assert found.mean() >= 0.6 * true.mean() and found.min() >= 0.3, found.tolist()
