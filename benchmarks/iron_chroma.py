"""False iron of one ``validate`` section under JPEG with and without chroma subsampling, and what it lies on.

    PYTHONPATH=. python benchmarks/iron_chroma.py [--index 16] [--seed 1] [--pixel-size-um P]

Renders section ``--index`` of ``pellet-analysis validate --seed S`` (the same
random parameters, drawn in the same order) without JPEG, then encodes it at
the section's own JPEG quality with 4:2:0 chroma subsampling (what the
generator does: OpenCV's default), with 4:4:4 (full-resolution colour) and
not at all, and analyses each as validate does. Prints, per encoding, each
pellet's iron-positive cell fraction and granule count (and the iron pixel
F1 of a labeled section). For the 4:2:0 image it also sorts the found iron
objects (8-connected) by the truth under most of their pixels: a small true
nucleus (at most ``SMALL_NUCLEUS_UM2``: the generator's dark rim nuclei), a
larger true nucleus (a faint nucleus's chromatin) or no nucleus, and gives
each pellet's iron-positive cell fraction with each kind of object removed.
``--pixel-size-um`` renders the section at another pixel size (its other
parameters unchanged).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.measure import measure_pellets
from pellet_analysis.metrics import pixel_f1
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.synthetic import make_section
from pellet_analysis.validate import validation_plan

IRON = CLASS_CODES["iron"]
#: The generator's rim nuclei are at most 2.2 µm round or 5 x 1.6 µm flat (semi-axes): about 25 µm².
SMALL_NUCLEUS_UM2 = 25.0
ENCODINGS = {"none": None, "4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}


def encoded(image, quality: int, sampling) -> np.ndarray:
    """``image`` (RGB uint8) through JPEG at ``quality`` with the chroma ``sampling`` (an OpenCV flag; None: unchanged)."""
    if sampling is None:
        return image
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def positive_fractions(found, classes, pixel_size_um: float, config: RunConfig) -> list[float]:
    """Each found pellet's iron-positive cell fraction with the found nuclei and ``classes``."""
    rows = measure_pellets(found.pellets, classes, found.nuclei, pixel_size_um=pixel_size_um, iron_cell_distance_um=config.iron.cell_distance_um)
    return [round(r["iron_positive_cell_fraction"], 4) for r in rows]


def iron_kinds(found_classes, truth_nuclei, pixel_size_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Found iron objects (8-connected labels) and each one's kind: 0 no nucleus, 1 larger nucleus, 2 small nucleus."""
    n, objects = cv2.connectedComponents((found_classes == IRON).view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    area_um2 = np.bincount(truth_nuclei.ravel()) * pixel_size_um**2
    kinds = np.zeros(n, np.int64)
    for k in range(1, n):
        under = truth_nuclei[objects == k]
        on = under[under > 0]
        if 2 * on.size >= under.size:
            kinds[k] = 2 if area_um2[np.bincount(on).argmax()] <= SMALL_NUCLEUS_UM2 else 1
    return objects, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pixel-size-um", type=float, default=None)
    args = parser.parse_args()
    params = validation_plan(args.index + 1, args.seed)[args.index]
    if args.pixel_size_um is not None:
        params["pixel_size_um"] = args.pixel_size_um
    section = make_section(**{**params, "jpeg_quality": None}, nuclei_model="varied")
    px, config = section.pixel_size_um, RunConfig()
    print(f"section {args.index}: {px} µm/px, labeled {params['labeled']}, blur {params['blur_sigma_um']:.2f} µm, JPEG quality {params['jpeg_quality']}")
    for name, sampling in ENCODINGS.items():
        found = analyze_image(encoded(section.image, params["jpeg_quality"], sampling), pixel_size_um=px, config=config)
        iron_f1 = f", iron pixel F1 {pixel_f1(found.classes == IRON, section.classes == IRON):.3f}" if params["labeled"] else ""
        print(f"{name}: iron-positive cell fraction {positive_fractions(found, found.classes, px, config)}, "
              f"granules {[r['iron_granule_count'] for r in found.rows]}{iron_f1}")
        if name != "4:2:0":
            continue
        objects, kinds = iron_kinds(found.classes, section.nuclei, px)
        counts = np.bincount(kinds[1:], minlength=3)
        print(f"  found iron objects: {counts[2]} on a small true nucleus (<= {SMALL_NUCLEUS_UM2:g} µm²), {counts[1]} on a larger one, {counts[0]} on none")
        for label, drop in (("small nuclei", [2]), ("larger nuclei", [1]), ("no nucleus", [0]), ("both nuclei", [1, 2])):
            gone = np.isin(kinds, drop)
            gone[0] = False
            classes = np.where(gone[objects], CLASS_CODES["other_tissue"], found.classes)
            print(f"  without the objects on {label}: {positive_fractions(found, classes, px, config)}")


if __name__ == "__main__":
    main()
