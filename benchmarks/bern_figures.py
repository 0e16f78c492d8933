"""The Bern-like score figures of docs/bern.md and docs/accuracy.md: the real Safranin-O pellet's zones, and the generator by day.

    PYTHONPATH=. .venv/bin/python benchmarks/bern_figures.py [--pixel-size-um 0.6]

The real scan is read in place from ../shared/real-images (Power et al. 2021, CC-BY-4.0); its rim is the
outer 50 um of the depth profile, its core everything deeper than 150 um (as in tests/test_bern.py).
The synthetic sections: two pellets per day and condition, seed 60 + day, 0.75 um per pixel.
"""

import argparse
from pathlib import Path

import numpy as np

from pellet_analysis.bern import BERN_CATEGORIES, BERN_CONTINUOUS_COLUMNS, BERN_GRADE_COLUMNS, bern_scores, cell_spacing_um, chondrocyte_fraction, zone_row
from pellet_analysis.config import BernConfig, RunConfig
from pellet_analysis.io import read_image
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.synthetic import make_section, truth_table

P = BernConfig().params()


def _line(name: str, row: dict) -> str:
    scores = bern_scores(row, P)
    grades = " / ".join(f"{scores[c]} ({scores[c + '_continuous']:.2f})" for c in BERN_CATEGORIES)
    return (f"{name}: stain / matrix / morphology {grades}, total {scores['bern_score']} ({scores['bern_score_continuous']:.2f}); "
            f"PG {row['proteoglycan_area_fraction']:.3f}, OD {row['proteoglycan_mean_od']:.3f}, "
            f"band / patch CV {row.get('stain_band_cv', float('nan')):.2f} / {row.get('stain_patch_cv', float('nan')):.2f}, "
            f"{row['nuclei_density_per_mm2']:.0f} nuclei/mm2 ({cell_spacing_um(row['nuclei_density_per_mm2']) / P.cell_diameter_um:.2f} cell diameters), "
            f"rounded {row['rounded_cell_fraction']:.2f}, in lacunae {row['lacuna_cell_fraction']:.2f} "
            f"(chondrocyte-like {chondrocyte_fraction(row['rounded_cell_fraction'], row['lacuna_cell_fraction']):.2f})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pixel-size-um", type=float, default=0.6, help="pixel size of the real pellet (um)")
    parser.add_argument("--no-generator", action="store_true")
    args = parser.parse_args()
    rgb, _ = read_image(Path(__file__).resolve().parents[2] / "shared" / "real-images" / "mbs_pellet_whole_section.tif")
    (row,) = analyze_image(rgb[..., :3], pixel_size_um=args.pixel_size_um, config=RunConfig(stains={"preset": "safranin-o"})).rows
    print(f"mbs_pellet_whole_section.tif at {args.pixel_size_um} um per pixel, {row['nuclei_count']} nuclei")
    print(_line("  rim 0-50 um", zone_row(row["depth_profile"], 0.0, 50.0)))
    print(_line("  between 50 and 150 um", zone_row(row["depth_profile"], 50.0, 150.0)))
    print(_line("  core > 150 um", zone_row(row["depth_profile"], 150.0)))
    print(_line("  whole section", row))
    if args.no_generator:
        return
    differences, equal = [], np.zeros(4, np.int64)
    for day in (7, 14, 28):
        for labeled in (False, True):
            s = make_section(day=day, labeled=labeled, seed=60 + day, pixel_size_um=0.75, pellet_diameter_um=(320, 400), n_pellets=2)
            for i, (found, truth) in enumerate(zip(analyze_image(s.image, pixel_size_um=0.75, config=RunConfig()).rows, truth_table(s)), start=1):
                print(_line(f"day {day} {'labeled' if labeled else 'unlabeled'} pellet {i}", found))
                a, b = bern_scores(found, P), bern_scores(truth, P)
                differences.append([a[c] - b[c] for c in BERN_CONTINUOUS_COLUMNS])
                equal += [a[c] == b[c] for c in BERN_GRADE_COLUMNS]
    differences = np.abs(np.array(differences))
    print(f"found against truth over {len(differences)} pellets, continuous stain / matrix / morphology / total: mean abs "
          + " / ".join(f"{v:.3f}" for v in differences.mean(axis=0)) + ", max abs " + " / ".join(f"{v:.3f}" for v in differences.max(axis=0))
          + "; integer grades equal in " + " / ".join(str(int(v)) for v in equal))


if __name__ == "__main__":
    main()
