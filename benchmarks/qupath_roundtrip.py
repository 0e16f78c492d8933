"""QuPath round trip: a run's GeoJSON given back as its annotations; how far the second run's pellets and classes are from the first's.

    pellet-analysis demo configs/default.yaml
    pellet-analysis run configs/default.yaml --annotations outputs/demo/geojson --output outputs/qupath-roundtrip
    python benchmarks/qupath_roundtrip.py outputs/demo outputs/qupath-roundtrip

Per image: pellet pixels that differ (of the first run's), those farther than
one pixel from the first run's pellet edge, and the class agreement on the
pixels both runs call pellet; over the table, the largest differences of the
measurements.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage as ndi


def compare(first: Path, second: Path) -> dict:
    images = sorted(p.name[: -len("_pellets.tif")] for p in (first / "labels").glob("*_pellets.tif"))
    differ = far = total = agree = both = 0
    for image in images:
        a, b = (tifffile.imread(run / "labels" / f"{image}_pellets.tif") for run in (first, second))
        ca, cb = (tifffile.imread(run / "labels" / f"{image}_classes.tif") for run in (first, second))
        mask = a > 0
        edge = (ndi.distance_transform_edt(mask) <= 1.5) | (ndi.distance_transform_edt(~mask) <= 1.5)
        wrong = a != b
        differ += int(wrong.sum())
        far += int((wrong & ~edge).sum())
        total += int(mask.sum())
        inside = (a > 0) & (b > 0)
        both += int(inside.sum())
        agree += int((ca[inside] == cb[inside]).sum())
    ta, tb = (pd.read_csv(run / "pellets.csv").sort_values(["image", "pellet_id"]).reset_index(drop=True) for run in (first, second))
    out = {
        "images": len(images),
        "pellets": (len(ta), len(tb)),
        "pellet_pixels_differing": differ / total,
        "differing_pixels_beyond_1px_of_edge": far,
        "class_agreement_inside": agree / both,
    }
    for col in ("area_um2", "proteoglycan_area_fraction", "collagen_area_fraction", "iron_area_fraction", "nuclei_count", "circularity"):
        diff = (ta[col] - tb[col]).abs()
        out[f"max_abs_diff_{col}"] = float(diff.max())
        if col == "area_um2":
            out["max_rel_diff_area"] = float((diff / ta[col]).max())
    return out


if __name__ == "__main__":
    for key, value in compare(Path(sys.argv[1]), Path(sys.argv[2])).items():
        print(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
