"""Where the labeled iron of ``validate``'s sections is lost: each true granule by the step that dropped it.

    PYTHONPATH=. python benchmarks/iron_misses.py [--n 24] [--seed 1] [--nuclei-model varied]

Renders the sections ``pellet-analysis validate --n N --seed S`` renders (the
same random parameters, in the same order), analyses each as validate does,
and re-classifies every labeled pellet's window in one block with the steps
of the iron detector recorded. Each true granule (an 8-connected object of
the generator's iron truth) counts, with its area, under the first step that
lost the pixel of its highest granule contrast:

- ``found``: some pixel of it is classified iron (its pixel coverage is printed apart);
- ``as_nucleus``: that pixel is in a nucleus;
- ``low_contrast``: its granule contrast is at most ``iron.granule_min_od``;
- ``nucleus_core``: it lies on the core of a dark object, left out of the colour test;
- ``colour``, ``neutral``: dropped by :func:`~pellet_analysis.classify.brown_objects` or the neutral-darkness test;
- ``rim_isolation_size``: dropped by the nucleus gap, the isolation or the size test;
- ``nucleus_body``: on a nucleus's body (``iron.nucleus_body_fraction``), or its gap once the nuclei are grown;
- ``far_from_nuclei``: dropped by ``iron.max_nucleus_distance_um``.

Prints per image the iron pixel F1 (pellet windows only, which hold every
iron pixel) and the shares of the true granule area, as in docs/accuracy.md.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

import cv2
import numpy as np

from pellet_analysis import classify, slide
from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.synthetic import make_section
from pellet_analysis.validate import validation_plan

IRON, NUCLEI = CLASS_CODES["iron"], CLASS_CODES["nuclei"]
STEPS = ("found", "as_nucleus", "low_contrast", "nucleus_core", "colour", "neutral", "rim_isolation_size", "nucleus_body", "far_from_nuclei")


@contextmanager
def recorded(module, names, calls):
    """Record (arguments, result) of each call of ``module``'s functions ``names`` into ``calls[name]``."""
    originals = {name: getattr(module, name) for name in names}

    def wrapper(name):
        def call(*args, **kwargs):
            result = originals[name](*args, **kwargs)
            calls.setdefault(name, []).append((args, result))
            return result

        return call

    for name in names:
        setattr(module, name, wrapper(name))
    try:
        yield calls
    finally:
        for name, f in originals.items():
            setattr(module, name, f)


def pellet_windows(image, config):
    """Analyse ``image``; each refined pellet's maps, inside, stains and settings, and its box in the image."""
    seen, pellets = {}, []

    def classify_maps(maps, inside, stains, **kwargs):
        seen.update(maps=np.asarray(maps), inside=inside, stains=stains, kwargs=kwargs)
        return original_maps(maps, inside, stains, **kwargs)

    def classify_window(*args, **kwargs):
        part = original_window(*args, **kwargs)
        if part is not None:
            pellets.append((part.box, dict(seen)))
        return part

    original_maps, original_window = slide.classify_maps, slide.classify_pellet_window
    slide.classify_maps, slide.classify_pellet_window = classify_maps, classify_window
    try:
        found = analyze_image(image.image, pixel_size_um=image.pixel_size_um, config=config)
    finally:
        slide.classify_maps, slide.classify_pellet_window = original_maps, original_window
    return found, pellets


def attribute(maps, inside, stains, kwargs, truth_classes) -> tuple[dict, dict]:
    """Counts (true, found, both pixels) and the true granule area per step of one pellet window."""
    calls = {}
    with recorded(classify, ("brown_objects", "_not_neutral", "_granules", "_grow_to_half_maximum"), calls):
        result = classify.classify_maps(maps, inside, stains, **{**kwargs, "tile_px": None})
    iron = kwargs["iron"]
    true = (truth_classes == IRON) & inside
    found = result.classes == IRON
    contrast = maps[..., 3]
    (candidates, *_), brown = calls["brown_objects"][0]
    neutral_kept = calls["_not_neutral"][0][1] if "_not_neutral" in calls else brown
    isolated = calls["_granules"][0][1]
    kept = calls["_grow_to_half_maximum"][-1][0][0] > 0  # the granules given to the growth: rim and body tests passed
    n, granules = cv2.connectedComponents(true.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    area = np.bincount(granules.ravel(), minlength=n)
    hit = np.bincount(granules[found & true], minlength=n) > 0
    flat = np.flatnonzero(true)
    peak_pixel = np.zeros(n, np.int64)
    order = flat[np.lexsort((contrast.ravel()[flat], granules.ravel()[flat]))]
    peak_pixel[granules.ravel()[order]] = order  # the last (highest contrast) pixel of each granule wins
    shares = dict.fromkeys(STEPS, 0)
    for k in range(1, n):
        p = np.unravel_index(peak_pixel[k], true.shape)
        step = next(
            name
            for name, lost in (
                ("found", hit[k]),
                ("as_nucleus", result.classes[p] == NUCLEI),
                ("low_contrast", contrast[p] <= iron.granule_min_od),
                ("nucleus_core", not candidates[p]),
                ("colour", not brown[p]),
                ("neutral", not neutral_kept[p]),
                ("rim_isolation_size", not isolated[p]),
                ("nucleus_body", not kept[p]),
                ("far_from_nuclei", True),
            )
            if lost
        )
        shares[step] += int(area[k])
    covered = hit[granules] & true
    counts = {"true": int(true.sum()), "found": int(found.sum()), "both": int((found & true).sum()),
              "in_found_granules": int(covered.sum()), "found_in_found_granules": int((covered & found).sum())}
    return counts, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nuclei-model", default="varied", choices=("varied", "simple"))
    args = parser.parse_args()
    config = RunConfig()
    totals, shares_all, f1s = {}, dict.fromkeys(STEPS, 0), []
    for index, params in enumerate(validation_plan(args.n, args.seed)):
        if not params["labeled"]:
            continue
        section = make_section(**params, nuclei_model=args.nuclei_model)
        _, pellets = pellet_windows(section, config)
        image = dict.fromkeys(("true", "found", "both"), 0)
        image_shares = dict.fromkeys(STEPS, 0)
        for box, seen in pellets:
            counts, shares = attribute(seen["maps"], seen["inside"], seen["stains"], seen["kwargs"], section.classes[box])
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
                image[key] = image.get(key, 0) + value
            for key, value in shares.items():
                image_shares[key] += value
                shares_all[key] += value
        f1 = 2 * image["both"] / max(1, image["true"] + image["found"])
        f1s.append(f1)
        granule_area = max(1, sum(image_shares.values()))
        print(
            f"section {index} ({params['pixel_size_um']} µm/px, blur {params['blur_sigma_um']:.2f} µm): iron F1 {f1:.3f} "
            + " ".join(f"{k} {v / granule_area:.2f}" for k, v in image_shares.items() if v),
            flush=True,
        )
    area = max(1, sum(shares_all.values()))
    print(f"labeled sections {len(f1s)}: mean iron pixel F1 {np.mean(f1s):.3f}")
    print("true granule area by step: " + ", ".join(f"{k} {v / area:.3f}" for k, v in shares_all.items()))
    print(
        f"pixels: recall {totals['both'] / max(1, totals['true']):.3f}, precision {totals['both'] / max(1, totals['found']):.3f}, "
        f"coverage of the granules found {totals['found_in_found_granules'] / max(1, totals['in_found_granules']):.3f}"
    )


if __name__ == "__main__":
    main()
