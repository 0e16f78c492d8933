"""The 24 sections of `pellet-analysis validate --n 24 --seed 1` as one batch, with iron.calibrate off and controls.

    PYTHONPATH=. python benchmarks/calibration_validation.py WORK_DIR

Writes the sections as TIFFs with their pixel size (zlib, lossless) and file names
``V<i>_<labeled|unlabeled>_d<day>_s1.tif`` into WORK_DIR/in, runs both modes and
prints, per mode: the threshold, the controls' pooled iron-positive cell fraction,
the unlabeled pellets' largest and mean fraction and granule count, and the
labeled images' iron pixel F1 against the truth and iron-positive fraction.
"""

import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.measure import measure_pellets
from pellet_analysis.metrics import pixel_f1
from pellet_analysis.pipeline import run_batch
from pellet_analysis.synthetic import make_section
from pellet_analysis.validate import validation_plan


def main(root: Path) -> None:
    sections = {}
    for i, params in enumerate(validation_plan(24, 1, hue_jitter_deg=6.0)):
        section = make_section(**params)
        stem = f"V{i:02d}_{'labeled' if params['labeled'] else 'unlabeled'}_d{params['day']}_s1"
        sections[stem] = section
        path = root / "in" / f"{stem}.tif"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            per_cm = 1e4 / section.pixel_size_um
            tifffile.imwrite(path, section.image, photometric="rgb", compression="zlib", resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    for mode in ("controls", "off"):
        started = time.time()
        record = run_batch(RunConfig(input_dir=root / "in", output_dir=root / mode, iron={"calibrate": mode}))
        table, calibration = record["table"], record["iron_calibration"]
        f1, truth_positive = [], []
        for stem, section in sections.items():
            if "_labeled_" in stem:
                classes = tifffile.imread(root / mode / "labels" / f"{stem}_classes.tif")
                f1.append(pixel_f1(classes == CLASS_CODES["iron"], section.classes == CLASS_CODES["iron"]))
                rows = measure_pellets(section.pellets, section.classes, section.nuclei, pixel_size_um=section.pixel_size_um)
                truth_positive += [r["iron_positive_cell_fraction"] for r in rows]
        labeled, unlabeled = table[table.condition == "labeled"], table[table.condition == "unlabeled"]
        print(
            f"{mode}: {time.time() - started:.0f} s, threshold {calibration['granule_min_od']:.4f}, "
            f"controls' pooled iron-positive fraction {calibration.get('positive_fraction_after'):.4f} "
            f"(at the configured threshold {calibration.get('positive_fraction_before', calibration.get('positive_fraction_after')):.4f}); "
            f"unlabeled pellets: max {unlabeled.iron_positive_cell_fraction.max():.4f}, mean {unlabeled.iron_positive_cell_fraction.mean():.4f}, "
            f"granules {unlabeled.iron_granule_count.mean():.1f}; labeled: iron pixel F1 mean {np.mean(f1):.4f} (min {np.min(f1):.4f}), "
            f"iron-positive mean {labeled.iron_positive_cell_fraction.mean():.4f} (truth {np.mean(truth_positive):.4f})",
            flush=True,
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
