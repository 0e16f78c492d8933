"""Render docs/calibration.png: the demo's per-cell iron levels by condition and the thresholds.

    .venv/bin/python docs/make_calibration_figure.py [IMAGES_DIR] [OUTPUT_PNG]

Every image of ``images/`` is classified at the configured granule threshold
(:func:`pellet_analysis.tasks.control_iron_levels`, what a run does for its
controls); each cell's level is the highest threshold at which it would still
be iron-positive. Left: the levels of unlabeled and labeled cells, with the
configured and the calibrated threshold (calibrated on the unlabeled ones, as
``iron.calibrate: controls`` does: pooled and per control pellet). Right: each pellet's iron-positive cell
fraction as measured by two runs of the images, ``iron.calibrate: off`` and
``controls``.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from pellet_analysis.calibrate import is_control
from pellet_analysis.iron_calibration import calibrate_iron
from pellet_analysis.config import load_config
from pellet_analysis.metadata import parse_name
from pellet_analysis.batch import list_images, run_batch
from pellet_analysis.tasks import control_iron_levels

ROOT = Path(__file__).resolve().parents[1]


def main(images=ROOT / "images", output=ROOT / "docs" / "calibration.png") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = load_config(ROOT / "configs" / "default.yaml")
    levels = {True: [], False: []}  # control or not
    control_results = []
    for path in list_images(images, config.extensions):
        control = is_control((parse_name(path.stem, config.filename_pattern) or {}).get("condition"), config.iron.control_conditions)
        result = control_iron_levels(path, config)
        levels[control].append(result.levels)
        if control:
            control_results.append(result)
    fixed = config.iron.granule_min_od
    controls = np.concatenate(levels[True])
    calibrated = calibrate_iron(control_results, config)["granule_min_od"]  # pooled 1 % and each control pellet's bound, as a run
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    bins = np.linspace(0, max(1.0, float(np.percentile(np.concatenate(levels[False]), 99))), 60)
    for control, colour, name in ((True, "#2166ac", "unlabeled (controls)"), (False, "#b35806", "labeled")):
        values = np.concatenate(levels[control])
        left.hist(values, bins=bins, color=colour, alpha=0.55, label=f"{name}: {values.size} cells", density=True)
    left.axvline(fixed, color="gray", linestyle="--", label=f"configured granule_min_od {fixed:.2f}")
    left.axvline(calibrated, color="black", label=f"calibrated {calibrated:.3f}")
    left.set_xlabel("cell's iron level: highest granule threshold leaving it iron-positive")
    left.set_ylabel("density")
    left.legend(fontsize=8)
    left.set_title("Per-cell iron levels, demo images", fontsize=10)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            mode: run_batch(config.model_copy(update={"input_dir": Path(images), "output_dir": Path(tmp) / mode, "iron": config.iron.model_copy(update={"calibrate": mode})}))
            for mode in ("off", "controls")
        }
    assert runs["controls"]["iron_calibration"]["granule_min_od"] == calibrated
    before, after = (runs[mode]["table"].set_index(["image", "pellet_id"]) for mode in ("off", "controls"))
    for key, row in before.iterrows():
        colour = "#2166ac" if is_control(row["condition"], config.iron.control_conditions) else "#b35806"
        right.plot([0, 1], [row["iron_positive_cell_fraction"], after.loc[key, "iron_positive_cell_fraction"]], color=colour, marker="o", alpha=0.7)
    right.set_xticks([0, 1])
    right.set_xticklabels([f"configured {fixed:.2f}", f"calibrated {calibrated:.3f}"])
    right.set_ylabel("iron-positive cell fraction (measured)")
    right.axhline(0.01, color="gray", linewidth=0.8, linestyle=":")
    if config.iron.calibrate_max_pellet_positive_fraction is not None:
        right.axhline(config.iron.calibrate_max_pellet_positive_fraction, color="#2166ac", linewidth=0.8, linestyle=":")
    right.set_title("One line per pellet: unlabeled blue, labeled brown", fontsize=10)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
    print(f"controls {controls.size} cells, threshold {fixed} -> {calibrated:.4f}; {output}")
    return Path(output)


if __name__ == "__main__":
    main(*sys.argv[1:3])
