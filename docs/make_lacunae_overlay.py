"""Write docs/lacunae_overlay.png: lacunae found on the real Safranin-O pellet (core and fibrous rim) and on a synthetic section against its truth.

    PYTHONPATH=. .venv/bin/python docs/make_lacunae_overlay.py

Top: two 180 x 180 px details of the real scan at full resolution (0.6 µm per pixel assumed), the
proteoglycan-rich core and the fast-green fibrous rim, each lacuna outlined in black. Bottom: a
synthetic day-28 AB/VG section (0.5 µm per pixel), the lacunae found outlined in magenta just
outside their edge and the generator's true lacunae in green just inside theirs, beside the same
crop without outlines. Every crop is enlarged twice. The scan is Power et al., Osteoarthritis Cartilage 2021 (doi
10.1016/j.joca.2020.12.018), CC-BY-4.0, from Lopo358/AutomatedMBS (Whole_slide_image.tif); it is read
in place, never copied into the repository.
"""

from pathlib import Path

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from pellet_analysis.config import RunConfig
from pellet_analysis.io import read_image
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.synthetic import make_section

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "shared" / "real-images" / "mbs_pellet_whole_section.tif"


def _outlined(rgb, labels, colour) -> np.ndarray:
    out = rgb.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def _enlarged(tile, side_px: int) -> np.ndarray:
    return cv2.resize(tile, (side_px, side_px), interpolation=cv2.INTER_NEAREST)


def main(side_px: int = 360) -> Path:
    rgb = read_image(SOURCE)[0][..., :3]
    found = analyze_image(rgb, pixel_size_um=0.6, config=RunConfig(stains={"preset": "safranin-o"}))
    real = _outlined(rgb, found.lacunae, (0, 0, 0))
    core = _enlarged(real[430:610, 590:770], side_px)
    rim = _enlarged(real[50:230, 280:460], side_px)
    section = make_section(day=28, seed=68, pixel_size_um=0.5, pellet_diameter_um=(320, 400))
    synthetic = analyze_image(section.image, pixel_size_um=0.5, config=RunConfig())
    both = section.image.copy()
    both[find_boundaries(section.lacunae, mode="inner")] = (0, 170, 0)  # truth: just inside its edge
    both[find_boundaries(synthetic.lacunae, mode="outer") & (synthetic.lacunae == 0)] = (255, 0, 255)  # found: just outside its edge
    r0, c0 = both.shape[0] // 2 - 180, both.shape[1] // 2 - 180
    synth = _enlarged(both[r0 : r0 + 180, c0 : c0 + 180], side_px)
    rows = np.vstack([np.hstack([core, rim]), np.hstack([synth, _enlarged(section.image[r0 : r0 + 180, c0 : c0 + 180], side_px)])])
    out = HERE / "lacunae_overlay.png"
    cv2.imwrite(str(out), rows[..., ::-1])
    return out


if __name__ == "__main__":
    print(main())
