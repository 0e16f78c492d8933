"""The proteoglycan depth bands again from cached pellet maps, under other proteoglycan rules: seconds, not a validate run.

    PYTHONPATH=. python benchmarks/profile_rethreshold.py cache CACHE_DIR [--n 24] [--seed 1]
    PYTHONPATH=. python benchmarks/profile_rethreshold.py score CACHE_DIR

``cache`` renders the sections ``pellet-analysis validate --n N --seed S``
renders, analyses each as validate does and stores, per refined pellet
window, the proteoglycan map, the found mask and classes, and the truth's
pellet mask and classes (one pickle per section; about a validate run's time). ``score`` keeps the found
nuclei and iron, decides the proteoglycan pixels again under each rule of
:data:`RULES` and prints validate's band figures (25 µm bands of at least
625 µm², the found classes in the found bands), labeled and unlabeled, and the
pellet's proteoglycan area error. The cached classes are those of the code
that wrote the cache: cache with the rim set to 0
(``classify.nucleus_rim_um``) to compare rules against the rim's absence; the
rule ``threshold`` (the pellet's threshold, no rim) then gives back that
code's figures. Sections where validate does not pair every pellet are left out.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from _common import cache_score_parser
from iron_misses import pellet_windows
from pellet_analysis import classify
from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.morphology import binary_dilation_disk
from pellet_analysis.synthetic import make_section
from pellet_analysis.validate import validation_plan
from profile_bands import pellet_bands

PG, NUCLEI, IRON = CLASS_CODES["proteoglycan"], CLASS_CODES["nuclei"], CLASS_CODES["iron"]


def cache(folder: Path, n: int, seed: int, config: RunConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, params in enumerate(validation_plan(n, seed)):
        section = make_section(**params)
        found, pellets = pellet_windows(section, config)
        windows = []
        for box, seen in pellets:
            inside = np.asarray(seen["inside"], bool)
            result = classify.classify_maps(seen["maps"], inside, seen["stains"], **{**seen["kwargs"], "tile_px": None})
            ids, counts = np.unique(section.pellets[box][inside], return_counts=True)
            k = int(ids[ids > 0][np.argmax(counts[ids > 0])])
            windows.append({"pg": np.asarray(seen["maps"])[..., 1].copy(), "inside": inside, "classes": result.classes, "kwargs": seen["kwargs"],
                            "true_inside": section.pellets[box] == k, "true_classes": section.classes[box]})
        paired = int(found.pellets.max()) == int(section.pellets.max())
        with open(folder / f"section_{index:02d}.pkl", "wb") as f:
            pickle.dump({"params": params, "paired": paired, "windows": windows}, f, protocol=5)
        print(f"section {index}: {len(windows)} pellet(s), labeled {params['labeled']}, {params['pixel_size_um']} µm/px", flush=True)


def pellet_threshold(pg, inside, kwargs, *, quantile: float = 0.5, fraction: float = 0.5) -> float:
    """The pellet's proteoglycan threshold as :func:`classify.thresholds_from_histograms` sets it, at another quantile and fraction."""
    if quantile == 0.5 and fraction == 0.5:  # the classifier's own, from its histogram
        maps = np.stack([np.zeros_like(pg), pg], axis=-1)
        hist = classify.map_histograms(maps, inside)
        hist[: len(classify._SPOT_EDGES) - 1] = 0
        return classify.thresholds_from_histograms(hist, classify=kwargs["classify"], nuclei=kwargs["nuclei"]).proteoglycan
    floor = kwargs["classify"].proteoglycan_min_od
    above = pg[inside & (pg > floor)]
    return floor if above.size == 0 else max(floor, fraction * float(np.quantile(above, quantile)))


def rim_rule(rim_um: float, quantile: float = 0.5, fraction: float = 0.5):
    def rule(w, px):
        matrix = w["pg"] > pellet_threshold(w["pg"], w["inside"], w["kwargs"], quantile=quantile, fraction=fraction)
        return matrix & ~binary_dilation_disk(w["classes"] == NUCLEI, round(rim_um / px))
    return rule


def baseline_rule(w, px):
    """Half the median above the floor, measured from a baseline: the median of the pellet's pixels below the floor (the haze's leak)."""
    floor = w["kwargs"]["classify"].proteoglycan_min_od
    values = w["pg"][w["inside"]]
    above, below = values[values > floor], values[values <= floor]
    base = float(np.median(below)) if below.size else 0.0
    return w["pg"] > (floor if above.size == 0 else max(floor, base + 0.5 * (float(np.median(above)) - base)))


#: name -> rule (window, pixel size) -> proteoglycan pixels before nuclei and iron take theirs
RULES = {
    "threshold": rim_rule(0.0),
    "rim 0.5 um": rim_rule(0.5),
    "rim 0.75 um": rim_rule(0.75),
    "rim 1 um": rim_rule(1.0),
    "rim 1 px": lambda w, px: rim_rule(px)(w, px),
    "rim ceil(0.5 um)": lambda w, px: rim_rule(math.ceil(0.5 / px) * px)(w, px),
    "threshold at half the 60th percentile": rim_rule(0.0, quantile=0.6),
    "rim 0.5 um, half the 55th percentile": rim_rule(0.5, quantile=0.55),
    "half the median above a baseline": baseline_rule,
}


def score(folder: Path) -> pd.DataFrame:
    sections = []
    for path in sorted(folder.glob("section_*.pkl")):
        with open(path, "rb") as f:
            section = pickle.load(f)
        if section["paired"]:
            sections.append(section)
    rows = []
    for name, rule in RULES.items():
        bands, pellets = [], []
        for section in sections:
            params = section["params"]
            px = params["pixel_size_um"]
            for w in section["windows"]:
                classes = w["classes"].copy()
                open_ = w["inside"] & (classes != NUCLEI) & (classes != IRON)
                classes[open_ & (classes == PG)] = CLASS_CODES["other_tissue"]
                classes[open_ & rule(w, px)] = PG
                for band in pellet_bands(w["true_inside"], w["true_classes"], w["inside"], classes, pixel_size_um=px, band_um=25.0):
                    bands.append({"labeled": params["labeled"], "error_pp": band["error_pp"]})
                pellets.append(100 * abs((classes[w["inside"]] == PG).mean() - (w["true_classes"][w["true_inside"]] == PG).mean()))
        b = pd.DataFrame(bands)
        row = {"rule": name, "bands": len(b), "within_3pp": (b.error_pp.abs() <= 3).mean(), "max_abs_pp": b.error_pp.abs().max(), "mean_abs_pp": b.error_pp.abs().mean()}
        for labeled, part in b.groupby("labeled"):
            key = "labeled" if labeled else "unlabeled"
            row[f"within_3pp_{key}"] = (part.error_pp.abs() <= 3).mean()
            row[f"mean_pp_{key}"] = part.error_pp.mean()
        row["area_error_pp_mean_abs"], row["area_error_pp_max_abs"] = float(np.mean(pellets)), float(np.max(pellets))
        rows.append(row)
    return pd.DataFrame(rows).set_index("rule")


def main() -> None:
    parser = cache_score_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    if args.command == "cache":
        config = RunConfig()
        cache(args.folder, args.n, args.seed, config.model_copy(update={"classify": config.classify.model_copy(update={"nucleus_rim_um": 0.0})}))
        return
    pd.set_option("display.width", 250)
    print(score(args.folder).round(3).to_string())


if __name__ == "__main__":
    main()
