"""Re-classify ``validate``'s pellet windows from cached maps: the iron and nuclei figures in a minute, not twenty.

    PYTHONPATH=. python benchmarks/iron_reclassify.py cache CACHE_DIR [--n 24] [--seed 1] [--nuclei-model varied]
    PYTHONPATH=. python benchmarks/iron_reclassify.py score CACHE_DIR [--nuclei-model varied] [--sections 0,2,16] [--iron JSON] [--nuclei JSON]

``cache`` renders the sections ``pellet-analysis validate --n N --seed S``
renders (the same random parameters, in the same order), analyses each as
validate does and stores every refined pellet's maps, mask, settings and the
generator's truth in its window (one pickle per section, a few MB to a few
hundred; the file names carry the nuclei model, so both models may share a
folder). ``score`` classifies each window of the given nuclei model's cache
again in one block with the current classifier, and settings of ``iron`` /
``nuclei`` replaced from JSON (``--iron '{"granule_min_od": 0.25}'``), and
prints validate's iron figures: labeled iron pixel F1 (mean over images),
the labeled pellets' iron-positive cell fraction found and true (means over
pellet windows: the labeling efficiency's bias) and how the truly positive
cells were read (found positive, negative, no nucleus found; the classes of
the true iron beside the negative ones), the unlabeled pellets' iron-positive cell fraction (mean, max) and granule
count (max), true iron read as nuclei (mean over labeled images); and a
per-window nuclei instance F1 and count error (mean over pellet windows,
where validate's are per image: close, not equal). With the settings
unchanged the iron figures are validate's (at 70010e2, varied: F1 0.6596,
unlabeled 0.0141 / 0.0677, granules 24, iron read as nuclei 0.122;
per-window nuclei F1 0.854, count error 5.5 %). A figure without any
window to measure prints as null. Only the object step is re-run: a
change to :func:`~pellet_analysis.classify.pixel_maps` needs a new cache.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from _common import cache_score_parser
from iron_misses import pellet_windows
from pellet_analysis import classify
from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.measure import measure_pellets
from pellet_analysis.metrics import instance_f1
from pellet_analysis.morphology import within_distance
from pellet_analysis.synthetic import make_section
from pellet_analysis.validate import validation_plan

IRON, NUCLEI = CLASS_CODES["iron"], CLASS_CODES["nuclei"]


def cache(folder: Path, n: int, seed: int, nuclei_model: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = RunConfig()
    for index, params in enumerate(validation_plan(n, seed)):
        section = make_section(**params, nuclei_model=nuclei_model)
        _, pellets = pellet_windows(section, config)
        windows = [
            {"maps": seen["maps"], "inside": seen["inside"], "stains": seen["stains"], "kwargs": seen["kwargs"],
             "classes": section.classes[box], "nuclei": section.nuclei[box]}
            for box, seen in pellets
        ]
        with open(folder / f"{nuclei_model}_{index:02d}.pkl", "wb") as f:
            pickle.dump({"params": params, "windows": windows}, f, protocol=5)
        print(f"section {index}: {len(windows)} pellet(s), labeled {params['labeled']}, {params['pixel_size_um']} µm/px", flush=True)


def score(folder: Path, nuclei_model: str, sections, iron: dict, nuclei: dict) -> dict:
    f1s, as_nuclei, unlabeled, granules, nuclei_f1, count_error = [], [], [], [], [], []
    labeled_found, labeled_true = [], []
    cells = {"found_positive": 0, "found_negative": 0, "no_found_nucleus": 0}
    negative_iron_classes = np.zeros(len(CLASS_CODES), np.int64)
    for path in sorted(folder.glob(f"{nuclei_model}_*.pkl")):
        index = int(path.stem.rsplit("_", 1)[1])
        if sections is not None and index not in sections:
            continue
        with open(path, "rb") as f:
            section = pickle.load(f)
        params, both, true_n, found_n, true_as_nuclei = section["params"], 0, 0, 0, 0
        for w in section["windows"]:
            kwargs = {**w["kwargs"], "tile_px": None}
            kwargs["iron"] = dataclasses.replace(kwargs["iron"], **iron)
            kwargs["nuclei"] = dataclasses.replace(kwargs["nuclei"], **nuclei)
            result = classify.classify_maps(w["maps"], w["inside"], w["stains"], **kwargs)
            inside = np.asarray(w["inside"], bool)
            true, found = (w["classes"] == IRON) & inside, result.classes == IRON
            both, true_n, found_n = both + int((true & found).sum()), true_n + int(true.sum()), found_n + int(found.sum())
            true_as_nuclei += int((true & (result.classes == NUCLEI)).sum())
            (row,) = measure_pellets(inside.astype(np.int32), result.classes, result.nuclei, pixel_size_um=params["pixel_size_um"],
                                     iron_cell_distance_um=kwargs["iron"].cell_distance_um)
            truth_nuclei = np.where(inside, w["nuclei"], 0)
            nuclei_f1.append(instance_f1(np.where(inside, result.nuclei, 0), truth_nuclei)["f1"])
            n_true = len(np.unique(truth_nuclei)) - 1
            count_error.append(abs(row["nuclei_count"] - n_true) / max(1, n_true))
            if params["labeled"]:
                (truth_row,) = measure_pellets(inside.astype(np.int32), np.where(inside, w["classes"], 0), truth_nuclei,
                                               pixel_size_um=params["pixel_size_um"], iron_cell_distance_um=kwargs["iron"].cell_distance_um)
                labeled_found.append(row["iron_positive_cell_fraction"])
                labeled_true.append(truth_row["iron_positive_cell_fraction"])
                _positive_cells(truth_nuclei, true, np.where(inside, result.nuclei, 0), result.classes, params["pixel_size_um"],
                                kwargs["iron"].cell_distance_um, cells, negative_iron_classes)
            else:
                unlabeled.append(row["iron_positive_cell_fraction"])
                granules.append(row["iron_granule_count"])
        if params["labeled"]:
            f1s.append(2 * both / max(1, true_n + found_n))
            as_nuclei.append(true_as_nuclei / max(1, true_n))
    return {
        "labeled_iron_pixel_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "unlabeled_iron_positive_mean": float(np.mean(unlabeled)) if unlabeled else float("nan"),
        "unlabeled_iron_positive_max": float(np.max(unlabeled)) if unlabeled else float("nan"),
        "unlabeled_granules_max": int(np.max(granules)) if granules else 0,
        "iron_as_nuclei": float(np.mean(as_nuclei)) if as_nuclei else float("nan"),
        # the labeling efficiency's bias: found minus true iron-positive cell fraction of the labeled pellets
        "labeled_iron_positive_found_mean": float(np.mean(labeled_found)) if labeled_found else float("nan"),
        "labeled_iron_positive_true_mean": float(np.mean(labeled_true)) if labeled_true else float("nan"),
        **{f"labeled_true_positive_cells_{k}": v for k, v in cells.items()},
        # the classes the true iron within the cell distance of the found-negative cells was read as (pixels)
        **{f"negative_cells_iron_read_as_{name}": int(negative_iron_classes[code]) for name, code in CLASS_CODES.items()},
        "nuclei_f1": float(np.mean(nuclei_f1)) if nuclei_f1 else float("nan"),
        "nuclei_count_error": float(np.mean(count_error)) if count_error else float("nan"),
    }


def _positive_cells(truth_nuclei, true_iron, found_nuclei, found_classes, pixel_size_um, distance_um, cells, classes) -> None:
    """Count the truly iron-positive cells of one window by what was found of them (in place).

    A true nucleus with true iron within ``distance_um`` is found positive or
    negative by the found nucleus under most of its pixels (the measure's
    rule on found iron), or has no found nucleus when found nuclei cover less
    than half of it; the found classes of the true iron near each
    found-negative cell are added to ``classes``.
    """
    distance_px = distance_um / pixel_size_um
    near_true, near_found = within_distance(true_iron, distance_px), within_distance(found_classes == IRON, distance_px)
    found_positive = np.zeros(int(found_nuclei.max()) + 1, bool)
    found_positive[np.unique(found_nuclei[near_found & (found_nuclei > 0)])] = True
    for sl, label in zip(ndi.find_objects(truth_nuclei), range(1, int(truth_nuclei.max()) + 1)):
        if sl is None:
            continue
        own = truth_nuclei[sl] == label
        if not near_true[sl][own].any():
            continue
        under = found_nuclei[sl][own]
        under = under[under > 0]
        if under.size < 0.5 * own.sum():
            cells["no_found_nucleus"] += 1
        elif found_positive[np.bincount(under).argmax()]:
            cells["found_positive"] += 1
        else:
            cells["found_negative"] += 1
            # the nucleus's box widened beyond the distance holds every pixel within it
            margin = int(np.ceil(distance_px)) + 1
            box = tuple(slice(max(0, s.start - margin), s.stop + margin) for s in sl)
            zone = truth_nuclei[box] == label
            zone = within_distance(zone, distance_px) & true_iron[box]
            classes += np.bincount(found_classes[box][zone], minlength=classes.size)[: classes.size]


def main() -> None:
    parser = cache_score_parser(__doc__.splitlines()[0])
    parser.add_argument("--nuclei-model", default="varied", choices=("varied", "simple"))
    parser.add_argument("--sections", default=None, help="comma-separated section numbers (default: every cached one)")
    parser.add_argument("--iron", default="{}", help="JSON of iron settings to replace")
    parser.add_argument("--nuclei", default="{}", help="JSON of nuclei settings to replace")
    args = parser.parse_args()
    if args.command == "cache":
        cache(args.folder, args.n, args.seed, args.nuclei_model)
        return
    sections = None if args.sections is None else {int(s) for s in args.sections.split(",")}
    figures = score(args.folder, args.nuclei_model, sections, json.loads(args.iron), json.loads(args.nuclei))
    # NaN (no window to measure) is not JSON: null
    print(json.dumps({k: None if np.isnan(v) else round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
