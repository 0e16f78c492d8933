"""The independent AB/VG renderer (benchmarks/foreign_sections.py): its truth, and the pipeline's figures on two of its sections.

The bounds are loose around what ``--n 2 --seed 1`` gives (docs/accuracy.md,
"Sections from an independent renderer"): Dice 0.988, nuclei F1 0.93,
labeled iron pixel F1 0.40, unlabeled iron-positive max 0.005; and a day-14 section's proteoglycan.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("foreign_sections", ROOT / "benchmarks" / "foreign_sections.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["foreign_sections"] = module
    spec.loader.exec_module(module)
    return module


fs = _load()


@pytest.fixture(scope="module")
def sections():
    return fs.render_batch(2, seed=1)


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    return fs.main(["--n", "2", "--seed", "1", "--output", str(tmp_path_factory.mktemp("foreign"))])


def test_iron_only_in_labeled_sections(sections):
    labeled, unlabeled = sections
    assert labeled.labeled and not unlabeled.labeled
    assert len(labeled.granule_diameters_um) > 100 and labeled.iron.sum() > 100
    assert unlabeled.granule_diameters_um == [] and not unlabeled.iron.any()
    assert not (unlabeled.classes == fs.IRON).any()


def test_truth_lies_in_the_pellets(sections):
    for s in sections:
        inside = s.pellets > 0
        assert not (s.nuclei[~inside]).any() and not s.iron[~inside].any()
        assert np.array_equal(s.classes > 0, inside)
        present = set(np.unique(s.nuclei).tolist()) - {0}
        assert present == set(s.nucleus_kind) and len(present) > 100
        assert set(s.nucleus_kind.values()) == set(fs.NUCLEUS_KINDS)
        # iron is drawn over nuclei; every other nucleus pixel is of the nucleus class
        assert np.array_equal(s.classes == fs.IRON, s.iron)
        assert np.array_equal(s.classes == fs.NUCLEUS, (s.nuclei > 0) & ~s.iron)


def test_truth_table_counts_match_the_labels(sections):
    for s in sections:
        rows = fs.truth_table(s)
        assert len(rows) == s.pellets.max()
        assert sum(r["nuclei_count"] for r in rows) == len(s.nucleus_kind)
        positive = [r["iron_positive_cell_fraction"] for r in rows]
        assert (min(positive) > 0.5) if s.labeled else (max(positive) == 0.0)


def test_iron_positive_is_within_the_cell_distance():
    nuclei = np.zeros((40, 40), np.int32)
    nuclei[10:14, 5:9] = 1
    nuclei[10:14, 30:34] = 2
    iron = np.zeros((40, 40), bool)
    iron[12, 13] = True  # 5 px from nucleus 1's last column, 17 from nucleus 2
    assert fs.iron_positive(nuclei, iron, 1.0) == {1}
    assert fs.iron_positive(nuclei, iron, 0.9) == {1}  # 4.5 µm
    assert fs.iron_positive(nuclei, iron, 1.1) == set()  # 5.5 µm
    assert fs.iron_positive(nuclei, iron, 0.3) == {1}  # nucleus 2: 17 px, 5.1 µm
    assert fs.iron_positive(nuclei, iron, 0.29) == {1, 2}  # 4.93 µm


def test_scores_on_two_sections(scores):
    s = scores["summary"]
    assert s["pellets_true"] == s["pellets_found"] == s["pellets_matched"] == 4
    assert s["dice_min"] >= 0.95
    assert s["nuclei_f1"] >= 0.8
    assert s["nuclei_count_error_pct"]["mean_abs"] <= 20
    assert 0.2 <= s["labeled_iron_pixel_f1"] <= 0.7
    assert s["labeled_positive_found_mean"] >= 0.2
    assert s["unlabeled_positive_max"] <= 0.05
    assert s["unlabeled_granules_max"] <= 10
    assert s["collagen_error"]["max_abs_pp"] <= 10
    assert s["proteoglycan_error"]["max_abs_pp"] <= 10


def test_day_14_matrix_under_picric_yellow_reads_as_proteoglycan():
    # section 3 of seed 1: unlabeled, day 14, Alcian blue under picric yellow between cells 11-26 µm apart. With the
    # dark spots' grey taken out of every pixel its proteoglycan read about 27 pp low (docs/accuracy.md, "The grey of
    # matrix between cells"); given back away from the nuclei found, within a few pp.
    from pellet_analysis.config import RunConfig
    from pellet_analysis.labels import CLASS_CODES
    from pellet_analysis.pipeline import analyze_image

    plan = fs.section_plan(3, 1)
    assert plan["day"] == 14 and not plan["labeled"]
    s = fs.render_section(plan["name"], labeled=plan["labeled"], day=plan["day"], seed=plan["seed"], max_side_px=1200)
    found = analyze_image(s.rgb, pixel_size_um=s.pixel_size_um, config=RunConfig())
    truth = fs.truth_table(s)
    assert truth and min(t["proteoglycan_area_fraction"] for t in truth) > 0.15  # enough matrix to miss
    for t in truth:
        pellet = s.pellets == t["pellet"]
        read = float(np.mean(found.classes[pellet] == CLASS_CODES["proteoglycan"]))
        assert abs(read - t["proteoglycan_area_fraction"]) <= 0.08, (t, read)


def test_day_28_matrix_between_lacunae_is_not_counted_as_nuclei():
    # section 5 of seed 1: unlabeled, day 28, most round cells in clear lacunae. The dense Alcian blue left between
    # the lacunae is as dark in the least-absorbed channel as a nucleus; counted as nuclei it read 101 and 90 nuclei
    # where the pellets hold 64 and 76 (+58 %, +18 %). It adds Alcian blue over the tissue around it, a nucleus
    # does not (nuclei.dark_matrix_excess): within 20 % per pellet.
    from pellet_analysis.config import RunConfig
    from pellet_analysis.metrics import instance_f1
    from pellet_analysis.pipeline import analyze_image

    plan = fs.section_plan(5, 1)
    assert plan["day"] == 28 and not plan["labeled"]
    s = fs.render_section(plan["name"], labeled=plan["labeled"], day=plan["day"], seed=plan["seed"], max_side_px=1200)
    found = analyze_image(s.rgb, pixel_size_um=s.pixel_size_um, config=RunConfig())
    truth = {t["pellet"]: t["nuclei_count"] for t in fs.truth_table(s)}
    assert len(truth) == len(found.rows) == 2
    for row in found.rows:  # each found pellet against the true pellet under most of it
        true_count = truth[int(np.bincount(s.pellets[found.pellets == row["pellet_id"]]).argmax())]
        assert abs(row["nuclei_count"] - true_count) <= 0.2 * true_count, (row["nuclei_count"], true_count)
    assert instance_f1(found.nuclei, s.nuclei)["f1"] >= 0.85
