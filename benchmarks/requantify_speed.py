"""Re-quantify time of one 2,000 x 2,000 pixel pellet after a correction (run by hand).

Writes a synthetic section with one pellet about 2,000 px across, runs the pipeline on it,
paints a correction, then times `review.requantify` (median of 5) side by side with the
baseline of re-running the whole image through the pipeline.

    .venv/bin/python benchmarks/requantify_speed.py [--stages] [--against TREE] [--rounds N]

With ``--against TREE`` (a checkout or ``git archive`` of another commit), the
two trees' ``requantify`` alternate in this one process, ``--rounds`` calls
each (default 10), on the same run folder: TREE's package is imported under
another name (its imports are relative), so the machine's load and state move
both alike. Printed: the median and least wall time and process CPU time of
each (on a shared machine the CPU time is what compares).

With ``--stages``, where the time of one re-quantify goes: each moment (wall
time, and the running thread's CPU time apart) charged to the innermost of
the steps in :data:`REQUANTIFY_STEPS` running in its thread (dense.py's
StageClock), median of five calls. The proteoglycan OD (image read, OD, dark
spots, concentrations) runs in a thread of its own beside the label steps, so
the steps' wall times add up to more than the call's; the total CPU is the
process's (every thread, OpenCV's and the codecs' too), "other" what no step's
own thread time covers.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from pellet_analysis.config import RunConfig
from pellet_analysis.io import read_image
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.pipeline import analyze_image, run_batch
from pellet_analysis.review import label_path, requantify, save_corrections
from pellet_analysis.synthetic import make_section, write_section


#: The steps of a re-quantify timed apart with --stages ("module:qualified name", as dense.STAGES).
REQUANTIFY_STEPS = [
    "pellet_analysis.review:_run_record",
    "pellet_analysis.review:_pellet_boxes",
    "pellet_analysis.review:_proteoglycan_od",
    "pellet_analysis.io:read_image",
    "pellet_analysis.pellets:Illumination.od",
    "pellet_analysis.classify:dark_spots",
    "pellet_analysis.classify:stain_concentrations",
    "pellet_analysis.classify:stain_maps",
    "pellet_analysis.review:load_label_window",
    "pellet_analysis.measure:measure_pellets",
    "pellet_analysis.measure:within_distance",
    "pellet_analysis.measure:outline_polygon",
    "pellet_analysis.measure:depth_map",
    "pellet_analysis.profiles:cell_features",
    "pellet_analysis.profiles:pellet_cartilage",
    "pellet_analysis.bern:bern_scores",
]


def step_profile(run_dir, image: str, calls: int = 5) -> dict:
    """Median over ``calls`` re-quantifies of each step's exclusive wall and thread CPU time (s), and of the whole call (CPU: the process's)."""
    from dense import StageClock

    wall, cpu = {}, {}
    for _ in range(calls):
        clocks = {name: StageClock(REQUANTIFY_STEPS, clock) for name, clock in (("wall", time.perf_counter), ("cpu", time.thread_time))}
        # the two clocks wrap each step twice: the inner wrapper's own time is charged to the outer's step, negligibly
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            requantify(run_dir, image, [1])
        finally:
            for clock in reversed(list(clocks.values())):
                clock.restore()
        for store, clock, total in ((wall, clocks["wall"], time.perf_counter() - t0), (cpu, clocks["cpu"], time.process_time() - c0)):
            for step in REQUANTIFY_STEPS:
                store.setdefault(step, []).append(clock.seconds.get(step, 0.0))
            store.setdefault("other", []).append(total - sum(clock.seconds.values()))
            store.setdefault("total", []).append(total)
    return {step: (statistics.median(wall[step]), statistics.median(cpu[step])) for step in wall}


def against(run_dir, image: str, tree, rounds: int = 10) -> dict:
    """Wall and process CPU times (s) of ``rounds`` re-quantifies by this tree and by ``tree``, alternating in one process."""
    import importlib
    import shutil
    import sys

    import pellet_analysis.review as this

    folder = Path(tempfile.mkdtemp())
    shutil.copytree(Path(tree) / "pellet_analysis", folder / "pellet_analysis_against")
    sys.path.insert(0, str(folder))
    try:
        trees = {"this tree": this, str(tree): importlib.import_module("pellet_analysis_against.review")}
        times = {name: [] for name in trees}
        for module in trees.values():  # warm-up: first-use imports and allocator paths
            module.requantify(run_dir, image, [1])
        for k in range(rounds):
            for name in (list(trees) if k % 2 == 0 else list(trees)[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                trees[name].requantify(run_dir, image, [1])
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    finally:
        sys.path.remove(str(folder))
        shutil.rmtree(folder, ignore_errors=True)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", action="store_true", help="also where the time of one re-quantify goes")
    parser.add_argument("--against", type=Path, help="a checkout of another commit: alternate its requantify with this tree's in one process")
    parser.add_argument("--rounds", type=int, default=10, help="calls of each tree with --against (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        section = make_section(day=28, labeled=True, n_pellets=1, pixel_size_um=0.5, pellet_diameter_um=(1000, 1000), seed=3)
        write_section(section, tmp / "in" / "P1_labeled_d28_s1.tif")
        config = RunConfig(input_dir=tmp / "in", output_dir=tmp / "run")
        run_batch(config)
        image = "P1_labeled_d28_s1"
        pellets = tifffile.imread(label_path(tmp / "run", image, "pellets"))
        rows, cols = np.nonzero(pellets == 1)
        size = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        classes = tifffile.imread(label_path(tmp / "run", image, "classes"))
        crop = classes[1000:1100, 1000:1100].copy()
        crop[crop == CLASS_CODES["other_tissue"]] = CLASS_CODES["proteoglycan"]
        save_corrections(tmp / "run", image, 1, {"classes": crop}, origin=(1000, 1000))
        rgb, _ = read_image(tmp / "in" / f"{image}.tif")
        timings = []
        for _ in range(5):
            t0 = time.perf_counter()
            requantify(tmp / "run", image, [1])
            timings.append(time.perf_counter() - t0)
        baseline = []
        for _ in range(2):
            t0 = time.perf_counter()
            analyze_image(rgb, pixel_size_um=0.5, config=config)
            baseline.append(time.perf_counter() - t0)
        print(f"image {rgb.shape[1]} x {rgb.shape[0]} px, pellet {size[1]} x {size[0]} px")
        print(f"re-quantify (reads the image and labels, measures the pellet): median {statistics.median(timings):.3f} s over 5")
        print(f"baseline, the whole pipeline on the image in memory: median {statistics.median(baseline):.3f} s over 2")
        if args.against:
            print(f"\nalternating in one process, {args.rounds} calls each (load average {os.getloadavg()[0]:.1f} at the end):")
            for name, runs in against(tmp / "run", image, args.against, args.rounds).items():
                wall_s, cpu_s = [w for w, _ in runs], [c for _, c in runs]
                print(f"  {name}: wall median {statistics.median(wall_s):.3f} s (least {min(wall_s):.3f}), "
                      f"process CPU median {statistics.median(cpu_s):.3f} s (least {min(cpu_s):.3f})")
        if args.stages:
            print("\n| step | wall s | CPU s (its thread; total: the process) |\n|---|---|---|")
            for step, (wall_s, cpu_s) in step_profile(tmp / "run", image).items():
                print(f"| {step.split(':')[-1]} | {wall_s:.3f} | {cpu_s:.3f} |")


if __name__ == "__main__":
    main()
