"""Reviewer corrections, exclusions and re-quantification (the core behind the napari widget)."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.pipeline import run_batch
from pellet_analysis.review import (
    apply_review, exclusions, label_path, read_log, requantify, save_corrections, set_exclusion,
)
from pellet_analysis.synthetic import make_section, write_section


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def run(tmp_path):
    src = tmp_path / "in"
    write_section(make_section(day=14, labeled=True, n_pellets=2, pixel_size_um=1.5, seed=61), src / "P1_labeled_d14_s1.tif")
    config = RunConfig(input_dir=src, output_dir=tmp_path / "run")
    record = run_batch(config)
    return config, tmp_path / "run", record["table"]


def _paint_block(run_dir, image, pellet_id, code):
    """Paint every non-nucleus, non-iron pixel of a 40x40 block inside the pellet with ``code``."""
    pellets = tifffile.imread(label_path(run_dir, image, "pellets"))
    classes = tifffile.imread(label_path(run_dir, image, "classes"))
    rows, cols = np.nonzero(pellets == pellet_id)
    r, c = int(np.median(rows)) - 20, int(np.median(cols)) - 20
    crop = classes[r : r + 40, c : c + 40].copy()
    target = (crop != code) & (crop != CLASS_CODES["nuclei"]) & (crop != CLASS_CODES["iron"]) & (pellets[r : r + 40, c : c + 40] == pellet_id)
    crop[target] = code
    return crop, (r, c), int(target.sum())


def test_save_writes_beside_automatic_labels_and_audits(run):
    _, run_dir, table = run
    image = "P1_labeled_d14_s1"
    automatic = label_path(run_dir, image, "classes")
    before = _digest(automatic)
    crop, origin, n_painted = _paint_block(run_dir, image, 1, CLASS_CODES["proteoglycan"])
    assert n_painted > 100
    record = save_corrections(run_dir, image, 1, {"classes": crop}, origin=origin, user="reviewer-a")
    assert _digest(automatic) == before  # the automatic labels are never overwritten
    corrected = tifffile.imread(label_path(run_dir, image, "classes", corrected=True))
    assert corrected.dtype == np.uint8 and (corrected != tifffile.imread(automatic)).sum() == n_painted
    log = read_log(run_dir)
    assert log[-1] == record
    assert record["who"] == "reviewer-a" and record["image"] == image and record["pellet_id"] == 1
    assert record["pixels_changed"]["classes"] == n_painted
    assert record["classes_changed"]["proteoglycan"]["gained"] == n_painted


def test_requantify_follows_the_painted_pixels(run):
    _, run_dir, table = run
    image = "P1_labeled_d14_s1"
    old = table[(table.image == image) & (table.pellet_id == 1)].iloc[0]
    crop, origin, n_painted = _paint_block(run_dir, image, 1, CLASS_CODES["proteoglycan"])
    save_corrections(run_dir, image, 1, {"classes": crop}, origin=origin)
    (new,) = requantify(run_dir, image, [1])
    pellet_px = old.area_um2 / old.pixel_size_um**2
    assert new["corrected"] is True
    assert new["proteoglycan_area_fraction"] == pytest.approx(old.proteoglycan_area_fraction + n_painted / pellet_px, abs=1e-9)
    assert new["area_um2"] == pytest.approx(old.area_um2)
    assert new["nuclei_count"] == old.nuclei_count
    # pellet 2 is unchanged but its image has corrections: re-quantified the same
    (other,) = requantify(run_dir, image, [2])
    assert other["proteoglycan_area_fraction"] == pytest.approx(table[table.pellet_id == 2].proteoglycan_area_fraction.iloc[0])
    # same stain concentration as the whole-image pipeline
    assert other["proteoglycan_mean_od"] == pytest.approx(table[table.pellet_id == 2].proteoglycan_mean_od.iloc[0], rel=1e-4)
    # the automatic measurement, as the report sets it beside the corrected one: the pipeline's own value
    (auto,) = requantify(run_dir, image, [1], automatic=True)
    assert auto["corrected"] is False
    assert auto["proteoglycan_area_fraction"] == pytest.approx(old.proteoglycan_area_fraction, abs=1e-9)


def test_exclusions_replay_and_need_a_reason(run):
    _, run_dir, table = run
    with pytest.raises(ValueError, match="reason"):
        set_exclusion(run_dir, "P1_labeled_d14_s1", 2, "  ")
    set_exclusion(run_dir, "P1_labeled_d14_s1", 2, "fold")
    set_exclusion(run_dir, "P1_labeled_d14_s1", 1, "out of focus")
    set_exclusion(run_dir, "P1_labeled_d14_s1", 1, excluded=False)
    assert exclusions(run_dir) == {("P1_labeled_d14_s1", 2): "fold"}
    reviewed = apply_review(table, run_dir)
    assert reviewed.set_index("pellet_id").loc[2, ["excluded", "exclusion_reason"]].tolist() == [True, "fold"]
    assert not reviewed.set_index("pellet_id").loc[1, "excluded"]


def test_rerun_keeps_corrections_exclusions_and_the_log(run):
    config, run_dir, table = run
    image = "P1_labeled_d14_s1"
    crop, origin, n_painted = _paint_block(run_dir, image, 1, CLASS_CODES["collagen"])
    save_corrections(run_dir, image, 1, {"classes": crop}, origin=origin)
    set_exclusion(run_dir, image, 2, "tear")
    corrected = label_path(run_dir, image, "classes", corrected=True)
    kept = {p: _digest(p) for p in (corrected, run_dir / "corrections.jsonl")}
    again = run_batch(config)
    assert {p: _digest(p) for p in kept} == kept  # reviewer data untouched by a new run
    rows = again["table"].set_index("pellet_id")
    assert bool(rows.loc[1, "corrected"]) and rows.loc[1, "collagen_area_fraction"] > table.set_index("pellet_id").loc[1, "collagen_area_fraction"]
    assert bool(rows.loc[2, "excluded"]) and rows.loc[2, "exclusion_reason"] == "tear"
    on_disk = pd.read_parquet(run_dir / "pellets.parquet").set_index("pellet_id")
    assert bool(on_disk.loc[2, "excluded"]) and bool(on_disk.loc[1, "corrected"])
    assert on_disk["pixel_size_source"].tolist() == ["file", "file"]  # re-quantified rows keep where their pixel size came from


def test_audit_log_is_append_only_json_lines(run):
    _, run_dir, _ = run
    for i in range(3):
        set_exclusion(run_dir, "P1_labeled_d14_s1", 1, f"reason {i}")
    lines = (run_dir / "corrections.jsonl").read_text().splitlines()
    assert [json.loads(l)["reason"] for l in lines] == ["reason 0", "reason 1", "reason 2"]
