"""Re-quantify time of one 2,000 x 2,000 pixel pellet after a correction (run by hand).

Writes a synthetic section with one pellet about 2,000 px across, runs the pipeline on it,
paints a correction, then times `review.requantify` (median of 5) side by side with the
baseline of re-running the whole image through the pipeline.

    .venv/bin/python benchmarks/requantify_speed.py
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from pellet_analysis.config import RunConfig
from pellet_analysis.io import read_image
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.pipeline import analyze_image, run_batch
from pellet_analysis.review import label_path, requantify, save_corrections
from pellet_analysis.synthetic import make_section, write_section


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        section = make_section(day=28, labeled=True, n_pellets=1, pixel_size_um=0.5, pellet_diameter_um=(1000, 1000), seed=3)
        write_section(section, tmp / "in" / "P1_labeled_d28_s1.tif")
        config = RunConfig(input_dir=tmp / "in", output_dir=tmp / "run")
        run_batch(config)
        image = "P1_labeled_d28_s1"
        pellets = tifffile.imread(label_path(tmp / "run", image, "pellets"))
        rows, cols = np.nonzero(pellets == 1)
        size = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        classes = tifffile.imread(label_path(tmp / "run", image, "classes"))
        crop = classes[1000:1100, 1000:1100].copy()
        crop[crop == CLASS_CODES["other_tissue"]] = CLASS_CODES["proteoglycan"]
        save_corrections(tmp / "run", image, 1, {"classes": crop}, origin=(1000, 1000))
        rgb, _ = read_image(tmp / "in" / f"{image}.tif")
        timings = []
        for _ in range(5):
            t0 = time.perf_counter()
            requantify(tmp / "run", image, [1])
            timings.append(time.perf_counter() - t0)
        baseline = []
        for _ in range(2):
            t0 = time.perf_counter()
            analyze_image(rgb, pixel_size_um=0.5, config=config)
            baseline.append(time.perf_counter() - t0)
        print(f"image {rgb.shape[1]} x {rgb.shape[0]} px, pellet {size[1]} x {size[0]} px")
        print(f"re-quantify (reads the image and labels, measures the pellet): median {statistics.median(timings):.3f} s over 5")
        print(f"baseline, the whole pipeline on the image in memory: median {statistics.median(baseline):.3f} s over 2")


if __name__ == "__main__":
    main()
