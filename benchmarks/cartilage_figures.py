"""The lacuna, rounded-cell and depth-profile figures of docs/accuracy.md (issue 24): three synthetic sections against their truth, and the real Safranin-O pellet.

    PYTHONPATH=. .venv/bin/python benchmarks/cartilage_figures.py

The synthetic sections are those of tests/test_cartilage.py (``found_and_truth``); the real scan is read in place
from ../shared/real-images (Power et al. 2021, CC-BY-4.0), at 0.6 um per pixel as in tests/test_real_images.py.
"""
from pathlib import Path
import numpy as np
from pellet_analysis.synthetic import make_section, truth_table
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.config import RunConfig
from pellet_analysis.io import read_image
for day, labeled, px in ((14, False, 0.5), (28, False, 0.5), (28, True, 0.75)):
    s = make_section(day=day, labeled=labeled, seed=40 + day, pixel_size_um=px, pellet_diameter_um=(320, 400))
    f = analyze_image(s.image, pixel_size_um=px, config=RunConfig()).rows[0]; t = truth_table(s)[0]
    e = [100*(a["proteoglycan_area_fraction"]-b["proteoglycan_area_fraction"]) for a,b in zip(f["depth_profile"], t["depth_profile"])]
    print(f"day {day} labeled {labeled} {px} um/px: lacunae {t['lacuna_count']}/{f['lacuna_count']}, cells in lacunae {t['lacuna_cell_fraction']:.3f}/{f['lacuna_cell_fraction']:.3f}, "
          f"mean area {t['lacuna_mean_area_um2']:.0f}/{f['lacuna_mean_area_um2']:.0f}, chondrons {t['chondron_count']}/{f['chondron_count']}, rounded {t['rounded_cell_fraction']:.3f}/{f['rounded_cell_fraction']:.3f}, "
          f"PG band error mean/max {np.mean(np.abs(e)):.2f}/{np.max(np.abs(e)):.2f} pp over {len(e)} bands")
rgb,_ = read_image(Path(__file__).resolve().parents[2] / 'shared' / 'real-images' / 'mbs_pellet_whole_section.tif')
r = analyze_image(rgb[..., :3], pixel_size_um=0.6, config=RunConfig(stains={"preset": "safranin-o"})).rows[0]
print({k: round(r[k], 3) for k in ("nuclei_count","lacuna_count","lacuna_cell_fraction","lacuna_mean_area_um2","chondron_count","rounded_cell_fraction","rounded_cell_fraction_core","rounded_cell_fraction_rim","lacuna_density_core_per_mm2","lacuna_density_rim_per_mm2","stain_band_cv","stain_patch_cv")})
print("PG by band", [round(b["proteoglycan_area_fraction"], 3) for b in r["depth_profile"]])
print("lacuna cell fraction by band", [round(b["lacuna_cell_fraction"], 3) for b in r["depth_profile"]])
print("rounded by band", [round(b["rounded_cell_fraction"], 3) for b in r["depth_profile"]])
