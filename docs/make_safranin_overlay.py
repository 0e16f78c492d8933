"""Write docs/safranin_o_overlay.png: the real Safranin-O pellet (../shared/real-images) and our classes over it.

    PYTHONPATH=. .venv/bin/python docs/make_safranin_overlay.py

The scan is Power et al., Osteoarthritis Cartilage 2021 (doi 10.1016/j.joca.2020.12.018), CC-BY-4.0,
from Lopo358/AutomatedMBS (Whole_slide_image.tif); it is read in place, never copied into the repository.
"""

from pathlib import Path

import cv2
import numpy as np

from pellet_analysis.config import RunConfig
from pellet_analysis.io import read_image
from pellet_analysis.overlay import render_overlay
from pellet_analysis.pipeline import analyze_image

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "shared" / "real-images" / "mbs_pellet_whole_section.tif"


def main(pixel_size_um: float = 0.6, width_px: int = 640) -> Path:
    rgb = read_image(SOURCE)[0][..., :3]
    found = analyze_image(rgb, pixel_size_um=pixel_size_um, config=RunConfig(stains={"preset": "safranin-o"}))
    overlay = render_overlay(rgb, found.classes, pellets=found.pellets, nuclei=found.nuclei)
    # the whole section beside it, then a 300 x 300 px detail of capsule and core at full resolution
    both = np.hstack([rgb, overlay])
    scale = width_px / both.shape[1]
    small = cv2.resize(both, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    r, c = 420, 120
    detail = np.hstack([rgb[r : r + 300, c : c + 600], overlay[r : r + 300, c : c + 600]])
    detail = cv2.resize(detail, (small.shape[1], round(detail.shape[0] * small.shape[1] / detail.shape[1])), interpolation=cv2.INTER_AREA)
    out = HERE / "safranin_o_overlay.png"
    cv2.imwrite(str(out), np.vstack([small, detail])[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    row = found.rows[0]
    print(f"{out.name}: area {row['area_um2']:.0f} µm², circularity {row['circularity']:.3f}, nuclei {row['nuclei_count']}, "
          f"collagen {row['collagen_area_fraction']:.3f}, touches_border {row['touches_border']}")
    return out


if __name__ == "__main__":
    main()
