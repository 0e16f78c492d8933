"""Whole-slide benchmark: a 40,000 x 40,000 JPEG pyramidal TIFF with six pellets, measured side by side.

Run by hand (not in the test suite)::

    python benchmarks/wholeslide.py --size 40000 --work /tmp/pellet-bench
    python benchmarks/wholeslide.py --size 40000 --also-size 20000 --work /tmp/pellet-bench

It writes the slide once (reused when its parameters match), then measures in
one run:

(a) stain separation: ``pellet_analysis.stains.separate_stains`` against
    ``skimage.color.separate_stains`` on the same pixels (the six pellets'
    windows), with the largest difference in OD;
(b) end to end: ``pellet-analysis run`` on the slide (a fresh process,
    pellets found, classified, measured, pyramidal labels written) against a
    Fiji-like baseline written here (scikit-image colour deconvolution and an
    Otsu threshold, % area of Alcian blue, reading the slide tile band by tile
    band because the whole slide in float64 would need 38 GB), both in
    megapixels of slide per second;
(c) peak resident memory of each run: the sum over the process and its
    children, sampled every 50 ms (the children found anew every second);
    with each run's machine-wide user and system CPU time (/proc/stat,
    worker processes included);
(d) one against two dask worker processes.

The pipeline runs ``--repeats`` times per setting (one and two workers
alternating) and the median time is reported with every run's time and the
largest peak memory: on the 2-core machine of docs/performance.md the same run
varied by a fifth. Each run starts after ``--pause-s`` seconds of rest, so
that every run starts from the same state rather than from what the run
before it left: on the benchmark's virtual machines memory that a process
has just freed is cheap to touch again, but after a few seconds of rest a
fresh 500 MB array took 0.8-1.2 s to fill against 0.08-0.15 s (docs/performance.md, Memory).
Stain separation is the best of 15.

Results are printed as a Markdown table and saved as JSON beside the slide.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _common import timed  # benchmarks/ is the script's folder, first on sys.path

PIXEL_SIZE_UM = 0.5
BACKGROUND_RGB = (242, 238, 232)
TILE = 512


# ---------------------------------------------------------------------------- the slide


def _pellet_images(n_pellets: int, seed: int):
    """Synthetic AB/VG pellet sections (1.3-1.5 mm across at 0.5 µm per pixel), alternately iron-labeled."""
    from pellet_analysis.synthetic import make_section

    return [
        make_section(
            day=(7, 14, 28)[k % 3], labeled=bool(k % 2), n_pellets=1, pixel_size_um=PIXEL_SIZE_UM, seed=seed + k,
            pellet_diameter_um=(1300.0, 1500.0), jpeg_quality=None, illumination_variation=0.0, background_rgb=BACKGROUND_RGB,
        ).image
        for k in range(n_pellets)
    ]


def _places(size: int, images) -> list:
    """Top-left corners spreading the pellets over the slide in a 3 x 2 grid."""
    cols, rows = 3, math.ceil(len(images) / 3)
    out = []
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        cr = int((r + 0.5) * size / rows - image.shape[0] / 2)
        cc = int((c + 0.5) * size / cols - image.shape[1] / 2)
        out.append((max(0, cr), max(0, cc)))
    return out


def _slide_tiles(shape, stride: int, images, places, noise):
    """Tiles of one pyramid level: background with a fixed noise pattern, the pellets pasted (block means per level)."""
    import cv2

    scaled = [
        cv2.resize(im, (max(1, im.shape[1] // stride), max(1, im.shape[0] // stride)), interpolation=cv2.INTER_AREA) if stride > 1 else im
        for im in images
    ]
    spots = [(r // stride, c // stride) for r, c in places]
    for r0 in range(0, shape[0], TILE):
        for c0 in range(0, shape[1], TILE):
            tile = noise.copy()
            for im, (pr, pc) in zip(scaled, spots):
                rr0, rr1 = max(r0, pr), min(r0 + TILE, pr + im.shape[0])
                cc0, cc1 = max(c0, pc), min(c0 + TILE, pc + im.shape[1])
                if rr0 < rr1 and cc0 < cc1:
                    tile[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = im[rr0 - pr : rr1 - pr, cc0 - pc : cc1 - pc]
            yield tile


def write_slide(path: Path, size: int, n_pellets: int = 6, seed: int = 0) -> dict:
    """Write a size x size JPEG-compressed (quality 90) pyramidal TIFF holding ``n_pellets`` pellets, tile by tile."""
    import tifffile

    meta = {"size": size, "n_pellets": n_pellets, "seed": seed, "pixel_size_um": PIXEL_SIZE_UM, "tile": TILE, "version": 2}
    stamp = path.with_suffix(".json")
    if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == meta:
        return meta
    images = _pellet_images(n_pellets, seed)
    places = _places(size, images)
    rng = np.random.default_rng(seed)
    noise = np.clip(np.array(BACKGROUND_RGB, np.float32) + rng.normal(0, 2.0, (TILE, TILE, 3)), 0, 255).astype(np.uint8)
    strides = [1]
    while size // strides[-1] > 2048:
        strides.append(strides[-1] * 2)
    t0 = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level, stride in enumerate(strides):
            shape = (-(-size // stride), -(-size // stride), 3)
            extra = {"subifds": len(strides) - 1} if level == 0 else {"subfiletype": 1}
            tif.write(
                _slide_tiles(shape, stride, images, places, noise), shape=shape, dtype=np.uint8, tile=(TILE, TILE),
                photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                resolution=(1e4 / (PIXEL_SIZE_UM * stride),) * 2, resolutionunit="CENTIMETER", **extra,
            )
    meta["write_s"] = round(time.perf_counter() - t0, 1)
    meta["pellet_windows"] = [[r, c, im.shape[0], im.shape[1]] for (r, c), im in zip(places, images)]
    stamp.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("write_s", "pellet_windows")}))
    path.with_suffix(".windows.json").write_text(json.dumps(meta["pellet_windows"]))
    return meta


# ---------------------------------------------------------------------------- measuring


def run_pipeline(slide: Path, work: Path, workers: int) -> dict:
    """`pellet-analysis run` on the slide alone, in a fresh process and a fresh output folder."""
    import shutil

    inp = work / f"in-{slide.stem}"
    inp.mkdir(parents=True, exist_ok=True)
    link = inp / "D1_labeled_d14_s1.tif"
    if not link.exists():
        link.symlink_to(slide.resolve())
    out = work / f"out-{slide.stem}-{workers}w"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pellet_analysis", "run", "--input", str(inp), "--output", str(out), "--scheduler", "processes", "--workers", str(workers)]
    result = timed(cmd)
    table = json.loads((out / "run.json").read_text())
    result["n_pellets"] = table["n_pellets"]
    result["n_failures"] = table["n_failures"]
    return result


BASELINE = r"""
import sys, numpy as np, tifffile, zarr
from skimage.color import separate_stains
from skimage.filters import threshold_otsu
from pellet_analysis.stains import get_preset
st = get_preset("ab-vg")
V = np.stack([st.vector(n) for n in ("alcian_blue", "acid_fuchsin", "picric_acid")])
inverse = np.linalg.inv(V / np.linalg.norm(V, axis=1, keepdims=True))
level = zarr.open(tifffile.imread(sys.argv[1], aszarr=True), mode="r")["0"]
band = 4096
edges = np.linspace(0.0, 1.0, 1025)
hist = np.zeros(1024, np.int64)
for r in range(0, level.shape[0], band):
    rgb = level[r:r + band]
    blue = separate_stains(rgb, inverse)[..., 0]          # Fiji: Colour Deconvolution, Alcian blue channel
    hist += np.histogram(np.clip(blue, 0, 1), edges)[0]
centres = 0.5 * (edges[1:] + edges[:-1])
t = threshold_otsu(hist=(hist, centres))               # Fiji: Auto Threshold, Otsu
print("otsu", t, "area_percent", 100.0 * hist[centres > t].sum() / hist.sum())
"""


def run_baseline(slide: Path) -> dict:
    """The Fiji-like baseline in a fresh single process."""
    return timed([sys.executable, "-c", BASELINE, str(slide)])


def stain_separation(slide: Path, repeats: int = 15) -> dict:
    """Ours against skimage.color.separate_stains on the pellets' windows (same pixels, same matrix)."""
    from skimage.color import separate_stains as skimage_separate

    from pellet_analysis.io import read_window
    from pellet_analysis.stains import get_preset, separate_stains

    windows = json.loads(slide.with_suffix(".windows.json").read_text())
    pixels = [read_window(slide, (slice(r, r + h), slice(c, c + w))) for r, c, h, w in windows[:3]]
    st = get_preset("ab-vg")
    vectors = np.stack([st.vector(n) for n in ("alcian_blue", "acid_fuchsin", "picric_acid")])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    inverse = np.linalg.inv(vectors)
    n_px = sum(p.shape[0] * p.shape[1] for p in pixels)

    def best(f):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = [f(p) for p in pixels]
            times.append(time.perf_counter() - t0)
        return min(times), out

    t_sk, ref = best(lambda p: skimage_separate(p, inverse))
    t_ours, ours = best(lambda p: separate_stains(p, vectors, 255.0))
    # skimage: concentrations of ln(I/255)/ln(1e-6), clipped at 0; ours: log10 OD (same stain matrix)
    to_ours = -math.log(1e-6) / math.log(10)
    diff = max(float(np.abs(np.maximum(o, 0) - r * to_ours)[(p > 0).all(-1)].max()) for o, r, p in zip(ours, ref, pixels))
    return {"megapixels": n_px / 1e6, "skimage_s": t_sk, "ours_s": t_ours, "speedup": t_sk / t_ours, "max_abs_diff_od": diff}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=40000, help="slide side (px, default 40000)")
    parser.add_argument("--also-size", type=int, nargs="*", default=[], help="further slide sides for the memory-growth check")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pellet-bench"), help="folder for slides and outputs")
    parser.add_argument("--skip-baseline", action="store_true", help="leave out the (slow) baseline")
    parser.add_argument("--repeats", type=int, default=5, help="runs of the pipeline per setting; the median is reported (default 5)")
    parser.add_argument("--pause-s", type=float, default=5.0, dest="pause_s", help="seconds of rest before each pipeline run (default 5)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}
    sizes = [args.size, *args.also_size]
    for size in sizes:
        slide = args.work / f"slide{size}.tif"
        meta = write_slide(slide, size)
        print(f"slide {size} x {size}: {slide} ({slide.stat().st_size / 2**20:.0f} MiB)", meta.get("write_s", "reused"), flush=True)
        mpx = size * size / 1e6
        entry = {"megapixels": mpx}
        if size == args.size:
            entry["stain_separation"] = stain_separation(slide)
            print("stain separation", entry["stain_separation"], flush=True)
        # the machine's speed drifts by a fifth between runs: one and two workers alternate, the median counts
        counts = (1, 2) if size == args.size else (2,)
        runs = {w: [] for w in counts}
        for _ in range(args.repeats):
            for workers in counts:
                time.sleep(args.pause_s)
                run = run_pipeline(slide, args.work, workers)
                run["megapixels_per_s"] = mpx / run["seconds"]
                runs[workers].append({k: v for k, v in run.items() if k != "output"})
                print(f"pipeline {workers} worker(s)", runs[workers][-1], flush=True)
        for workers, done in runs.items():
            seconds = sorted(r["seconds"] for r in done)
            entry[f"pipeline_{workers}w"] = {
                "seconds": float(np.median(seconds)),
                "seconds_all": [round(x, 2) for x in (r["seconds"] for r in done)],
                "megapixels_per_s": mpx / float(np.median(seconds)),
                "peak_rss_gib": max(r["peak_rss_gib"] for r in done),
                "peak_rss_gib_all": [round(r["peak_rss_gib"], 3) for r in done],
                "cpu_user_s_all": [r["cpu_user_s"] for r in done],
                "cpu_system_s_all": [r["cpu_system_s"] for r in done],
                "n_pellets": done[0]["n_pellets"],
                "n_failures": max(r["n_failures"] for r in done),
            }
        if len(counts) == 2:
            entry["two_vs_one_workers"] = entry["pipeline_1w"]["seconds"] / entry["pipeline_2w"]["seconds"]
            entry["two_vs_one_workers_per_pair"] = [round(a["seconds"] / b["seconds"], 3) for a, b in zip(runs[1], runs[2])]
        if size == args.size and not args.skip_baseline:
            base = run_baseline(slide)
            base["megapixels_per_s"] = mpx / base["seconds"]
            entry["baseline"] = {k: v for k, v in base.items() if k != "output"}
            entry["baseline"]["result"] = base["output"].strip().splitlines()[-1]
            print("baseline", entry["baseline"], flush=True)
            entry["pipeline_2w_vs_baseline"] = base["seconds"] / entry["pipeline_2w"]["seconds"]
        results[str(size)] = entry
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
