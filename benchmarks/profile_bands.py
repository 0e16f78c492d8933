"""Where the proteoglycan depth profile misses the truth: every 25 µm band of ``validate``'s sections, by cause.

    PYTHONPATH=. python benchmarks/profile_bands.py [--n 24] [--seed 1] [--over 3]

Renders the sections ``pellet-analysis validate --n N --seed S`` renders (the
same random parameters, in the same order) and analyses each as validate does.
For every band a pellet's truth holds (bands smaller than a square of the
band's width left out, as in validate's band figures) it gives the found minus
true proteoglycan area fraction (pp) and splits it:

- ``classes_only``: the found classes in the truth's band (the classification's share);
- ``outline_only``: the truth's classes in the found band (the outline's share);
- ``extra_<class>`` / ``miss_<class>``: the band's pixels (pp of the band) the found
  classes call proteoglycan where the truth has ``<class>``, and the truth's
  proteoglycan the found classes call ``<class>``.

Prints the mean error and the share within ``--over`` pp by labeled, day, pixel
size, band and true fraction, and the bands that miss by more, as in docs/accuracy.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.measure import depth_map
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.profiles import band_index
from pellet_analysis.synthetic import make_section
from pellet_analysis.validate import validation_plan

PG = CLASS_CODES["proteoglycan"]
NAMES = {code: name for name, code in CLASS_CODES.items()}


def pellet_bands(t_in, t_cls, f_in, f_cls, *, pixel_size_um: float, band_um: float) -> list[dict]:
    """The band rows of one pellet: truth mask and classes beside found mask and classes (same box)."""
    f_band = np.where(f_in, band_index(depth_map(f_in, pixel_size_um=pixel_size_um), band_um), -1)
    t_band = np.where(t_in, band_index(depth_map(t_in, pixel_size_um=pixel_size_um), band_um), -1)
    rows = []
    for b in range(int(t_band.max()) + 1):
        ts, fs = t_band == b, f_band == b
        area_um2 = float(ts.sum()) * pixel_size_um**2
        if area_um2 < band_um**2 or not fs.any():
            continue
        t_frac, f_frac = (t_cls[ts] == PG).mean(), (f_cls[fs] == PG).mean()
        row = {"band": b, "area_um2": area_um2, "true_pct": 100 * t_frac, "found_pct": 100 * f_frac, "error_pp": 100 * (f_frac - t_frac),
               "classes_only_pp": 100 * ((f_cls[ts] == PG).mean() - t_frac), "outline_only_pp": 100 * ((t_cls[fs] == PG).mean() - t_frac)}
        t, f = t_cls[ts], f_cls[ts]
        for code in np.unique(t[(f == PG) & (t != PG)]):
            row[f"extra_{NAMES[int(code)]}"] = 100 * np.count_nonzero((f == PG) & (t == code)) / ts.sum()
        for code in np.unique(f[(t == PG) & (f != PG)]):
            row[f"miss_{NAMES[int(code)]}"] = 100 * np.count_nonzero((t == PG) & (f == code)) / ts.sum()
        rows.append(row)
    return rows


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--over", type=float, default=3.0)
    args = parser.parse_args(argv)
    config = RunConfig()
    band_um = config.cartilage.profile_band_um
    rows = []
    for i, params in enumerate(validation_plan(args.n, args.seed)):
        section = make_section(**params)
        found = analyze_image(section.image, pixel_size_um=section.pixel_size_um, config=config)
        n = int(section.pellets.max())
        if int(found.pellets.max()) != n:  # validate pairs pellets only when every one was found
            continue
        for k in range(1, n + 1):
            both = (section.pellets == k) | (found.pellets == k)
            rr, cc = np.nonzero(both)
            box = slice(rr.min(), rr.max() + 1), slice(cc.min(), cc.max() + 1)
            for row in pellet_bands(section.pellets[box] == k, section.classes[box], found.pellets[box] == k, found.classes[box],
                                    pixel_size_um=section.pixel_size_um, band_um=band_um):
                rows.append({"section": i, "pellet": k, "day": params["day"], "labeled": params["labeled"], "pixel_size_um": params["pixel_size_um"], **row})
    bands = pd.DataFrame(rows).fillna(0.0)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    over = args.over

    def figures(err):
        return pd.Series({"bands": len(err), "mean_pp": err.mean(), "mean_abs_pp": err.abs().mean(), "max_abs_pp": err.abs().max(), f"within_{over:g}pp": (err.abs() <= over).mean()})

    print(f"{len(bands)} bands: error {figures(bands.error_pp).round(3).to_dict()}")
    print(f"classification only (found classes, truth's bands): {figures(bands.classes_only_pp).round(3).to_dict()}")
    print(f"outline only (truth's classes, found bands): {figures(bands.outline_only_pp).round(3).to_dict()}")
    bands["true_pct_bin"] = pd.cut(bands.true_pct, [-1, 5, 20, 40, 60, 80, 101])
    for key in ("labeled", "day", "pixel_size_um", "band", "true_pct_bin"):
        print(bands.groupby(key, observed=True).error_pp.apply(figures).unstack().round(2).to_string(), "\n")
    parts = [c for c in bands.columns if c.startswith(("extra_", "miss_"))]
    print("pp of the band, by labeled:")
    print(bands.groupby("labeled")[parts].mean().round(2).to_string(), "\n")
    print(f"bands over {over:g} pp:")
    print(bands[bands.error_pp.abs() > over].drop(columns="true_pct_bin").round(2).to_string())
    return bands


if __name__ == "__main__":
    main()
