"""Render docs/figure_demo.png: one demo image, its classes and the overlay, side by side.

Run after `make demo`:  .venv/bin/python docs/make_figure.py [IMAGE_STEM]
"""

import sys
from pathlib import Path

import cv2
import numpy as np
import tifffile

from pellet_analysis.io import read_image
from pellet_analysis.overlay import class_colours, render_overlay

ROOT = Path(__file__).resolve().parents[1]


def main(stem: str = "P02_labeled_d28_s1") -> Path:
    run = ROOT / "outputs" / "demo"
    rgb, _ = read_image(ROOT / "images" / f"{stem}.tif")
    labels = {k: tifffile.imread(run / "labels" / f"{stem}_{k}.tif") for k in ("pellets", "classes", "nuclei")}
    rows, cols = np.nonzero(labels["pellets"] == 1)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = (slice(r0, r1), slice(c0, c1))
    panels = [
        rgb[crop],
        class_colours()[labels["classes"][crop]],
        render_overlay(rgb[crop], labels["classes"][crop], pellets=labels["pellets"][crop], nuclei=labels["nuclei"][crop]),
    ]
    gap = np.full((r1 - r0, 8, 3), 255, np.uint8)
    figure = np.hstack([panels[0], gap, panels[1], gap, panels[2]])
    out = ROOT / "docs" / "figure_demo.png"
    cv2.imwrite(str(out), figure[..., ::-1])
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
