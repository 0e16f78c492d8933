"""The four-image batch of tests/test_calibration.py (seeds 40-43) with either nucleus model, calibrated on its controls and not.

    PYTHONPATH=. python benchmarks/calibration_controls.py varied   # or: simple

Two unlabeled and two labeled pellets at 1 µm per pixel, one per image (the
labeled day-14 one a PNG, so its pixel size is estimated), written to a
temporary folder and run with ``iron.calibrate: off``, ``controls`` with the
pooled bound only, and ``controls`` (pooled and per-pellet bounds) at the
detector's default settings. Prints, per mode, the threshold and the controls'
iron-positive fraction before, predicted and after, and per image the measured
and true iron-positive cell fraction and the granule count (docs/iron.md).
"""

import sys
import tempfile
from pathlib import Path

from pellet_analysis.config import RunConfig
from pellet_analysis.measure import measure_pellets
from pellet_analysis.pipeline import run_batch
from pellet_analysis.synthetic import make_section, write_section

BATCH = [("unlabeled", 28, 40, ".tif"), ("unlabeled", 14, 41, ".tif"), ("labeled", 28, 42, ".tif"), ("labeled", 14, 43, ".png")]


def main(model: str) -> None:
    root = Path(tempfile.mkdtemp())
    truth = {}
    for condition, day, seed, suffix in BATCH:
        section = make_section(
            labeled=condition == "labeled", day=day, n_pellets=1, pixel_size_um=1.0, seed=seed, pellet_diameter_um=(300.0, 360.0), nuclei_model=model
        )
        stem = f"D1_{condition}_d{day}_s1"
        write_section(section, root / "in" / f"{stem}{suffix}")
        (row,) = measure_pellets(section.pellets, section.classes, section.nuclei, pixel_size_um=1.0)
        truth[stem] = row["iron_positive_cell_fraction"]
    # the pooled bound alone (before iron.calibrate_max_pellet_positive_fraction) and with each control pellet's bound
    modes = {"off": {"calibrate": "off"}, "controls-pooled": {"calibrate": "controls", "calibrate_max_pellet_positive_fraction": None}, "controls": {"calibrate": "controls"}}
    for mode, iron in modes.items():
        record = run_batch(RunConfig(input_dir=root / "in", output_dir=root / mode, scheduler="synchronous", iron=iron))
        cal = record["iron_calibration"]
        keys = ("positive_fraction_before", "positive_fraction_predicted", "positive_fraction_after", "pellet_positive_fraction_after_max")
        fractions = {k: round(cal[k], 4) for k in keys if k in cal}
        print(f"{model} {mode}: threshold {cal['granule_min_od']:.3f} {fractions}")
        table = record["table"].set_index("image")
        for stem, expected in truth.items():
            row = table.loc[stem]
            print(f"    {stem}: iron-positive {row['iron_positive_cell_fraction']:.3f} (truth {expected:.3f}), granules {int(row['iron_granule_count'])}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "varied")
