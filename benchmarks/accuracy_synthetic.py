"""Accuracy of the pipeline on held-out synthetic AB/VG sections (run by hand).

Sections vary in pixel size (0.4-1.0 µm), day, labeling, 1-3 pellets, stain hue drift (6°),
JPEG quality (70-95), noise, tinted uneven background; seeds differ from the test suite's.

    .venv/bin/python benchmarks/accuracy_synthetic.py [N_IMAGES] [SEED]
"""

import sys

import numpy as np
import pandas as pd

from pellet_analysis.config import RunConfig
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.synthetic import make_section, truth_table


def evaluate(n_images: int = 24, seed: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    config = RunConfig()
    rows = []
    for i in range(n_images):
        px = float(rng.choice([0.4, 0.6, 0.8, 1.0]))
        section = make_section(
            day=int(rng.choice([7, 14, 28])), labeled=bool(rng.integers(2)), n_pellets=int(rng.integers(1, 4)),
            pixel_size_um=px, hue_jitter_deg=6.0, jpeg_quality=int(rng.integers(70, 96)),
            noise_sigma=float(rng.uniform(1, 4)), illumination_variation=float(rng.uniform(0.02, 0.15)),
            background_rgb=tuple(rng.uniform(220, 250, 3)), pellet_diameter_um=(250, 450), seed=int(rng.integers(1e9)),
        )
        found = analyze_image(section.image, pixel_size_um=px, config=config)
        truth = truth_table(section)
        p, g = found.pellets > 0, section.pellets > 0
        image_dice = 2 * (p & g).sum() / (p.sum() + g.sum())
        for r, t in zip(found.rows, truth):
            rows.append({
                "image": i, "pixel_size_um": px, "day": section.params.day, "labeled": section.params.labeled,
                "pellets_found": len(found.rows), "pellets_true": len(truth), "pellet_dice": image_dice,
                "pg_error_pp": 100 * (r["proteoglycan_area_fraction"] - t["proteoglycan_area_fraction"]),
                "collagen_error_pp": 100 * (r["collagen_area_fraction"] - t["collagen_area_fraction"]),
                "nuclei_count_error": (r["nuclei_count"] - t["nuclei_count"]) / max(t["nuclei_count"], 1),
                "iron_error_pp": 100 * (r["iron_area_fraction"] - t["iron_area_fraction"]),
            })
        print(f"image {i + 1}/{n_images} done", file=sys.stderr)
    return pd.DataFrame(rows)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    table = evaluate(n, seed)
    per_image = table.groupby("image").first()
    print(f"images {n}, pellets {len(table)}")
    print(f"pellets found = true in every image: {bool((per_image.pellets_found == per_image.pellets_true).all())}")
    print(f"pellet Dice: min {per_image.pellet_dice.min():.4f}, mean {per_image.pellet_dice.mean():.4f}")
    print(f"proteoglycan area fraction |error|: mean {table.pg_error_pp.abs().mean():.2f} pp, max {table.pg_error_pp.abs().max():.2f} pp")
    print(f"collagen area fraction |error|: mean {table.collagen_error_pp.abs().mean():.2f} pp")
    print(f"nuclei count |error|: mean {100 * table.nuclei_count_error.abs().mean():.1f} %, max {100 * table.nuclei_count_error.abs().max():.1f} %")
    print(f"iron area fraction |error|: mean {table.iron_error_pp.abs().mean():.3f} pp, max {table.iron_error_pp.abs().max():.3f} pp")
