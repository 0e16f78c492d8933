"""Dense sections: images that are mostly pellet, measured as marginal throughput side by side.

Run by hand (not in the test suite)::

    python benchmarks/dense.py --sizes 2048 4096 8192 --n 2 --repeats 3 --work /tmp/pellet-dense

It writes (once; reused while their parameters match) ``2 * n`` synthetic AB/VG
sections per image side at 0.5 µm per pixel, JPEG-compressed tiled TIFFs, each
one pellet whose ground truth covers at least half of the image (printed per
image), then measures in one run:

(a) marginal throughput, in megapixels per second: the time for ``2 n``
    images minus the time for ``n``, so that start-up (imports, worker
    processes, the fork server) cancels, of

    - ``pellet-analysis run`` as a fresh process, with the threads and the
      processes scheduler, one and two workers each, the pixel size given;
    - a scikit-image workflow a user writes today, written here and run as a
      fresh single process: read the image, colour deconvolution
      (``skimage.color.separate_stains`` with an AB/VG stain matrix), Otsu
      thresholds of tissue and of Alcian blue, a distance-transform
      watershed of the hematoxylin-dark nuclei, ``regionprops`` and a table
      written per image;

    every setting run ``--repeats`` times, the settings alternating within
    each repeat (and the order of ``n`` and ``2 n`` too), each run after
    ``--pause-s`` of rest; the median of the per-repeat differences counts.
    Beside the wall time, the CPU time of each run's process tree (the
    command's own from ``wait4``, its worker processes' as last sampled) and
    the machine's load average as it started: on a shared machine the wall
    time of two workers says little, their CPU time still does.
    The iron calibration on the control images is off by default
    (``--calibrate controls`` runs it as a batch does): it classifies the
    controls in a step of its own before the other images, so a batch of
    one control and one labelled image runs one image at a time whatever
    the workers, and the batch of ``2 n`` two at a time; its marginal time
    on two workers measured that step, not the images;
(b) the peak resident memory of each run: the sum over the process and its
    children, sampled every 50 ms (``_common.PeakMemory``);
(c) two workers against one, processes scheduler, from the marginal times;
(d) where the time of one image goes: the pipeline's own step functions
    timed in a fresh process on the first image of each side, one thread
    (as a worker runs), each moment charged to the innermost step running
    (:class:`StageClock`), grouped into the stages read, white point,
    pellets, separation, pixel classes, nuclei, iron, lacunae, cell
    territories, depth profiles, measurements, label assembly and writing;
    what no step covers is "other". The first pass
    warms the process up; the second is reported.

Results are printed as Markdown tables and saved as ``dense-results.json`` in
``--work``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _common import timed  # benchmarks/ is the script's folder, first on sys.path

PIXEL_SIZE_UM = 0.5
#: Pellet diameter over the image side: the pellet (ellipses of axis ratio 0.8-1 with a wavy
#: edge) then covers 0.58-0.59 of the image and stays inside it.
DIAMETER_FRACTION = 0.86
DAYS = (28, 14, 7)
IMAGES_VERSION = 1


# ---------------------------------------------------------------------------- the images


def dense_section(size_px: int, seed: int, *, day: int, labeled: bool):
    """A synthetic section of ``size_px`` x ``size_px`` whose one pellet fills most of it.

    The generator lays a pellet out with a margin of 80 µm and 15 % of its
    diameter around it; the image is cropped to ``size_px`` around the
    pellet's bounding box. Should the pellet not fit, the diameter shrinks by
    3 % until it does (no pellet pixel is ever cut off).
    """
    from pellet_analysis.synthetic import make_section

    fraction = DIAMETER_FRACTION
    while True:
        diameter_um = fraction * size_px * PIXEL_SIZE_UM
        section = make_section(
            day=day, labeled=labeled, n_pellets=1, pixel_size_um=PIXEL_SIZE_UM, pellet_diameter_um=(diameter_um, diameter_um), seed=seed
        )
        rows, cols = np.nonzero(section.pellets)
        r0 = (int(rows.min()) + int(rows.max()) + 1 - size_px) // 2
        c0 = (int(cols.min()) + int(cols.max()) + 1 - size_px) // 2
        fits = (
            r0 >= 0 and c0 >= 0 and r0 <= rows.min() and c0 <= cols.min()
            and r0 + size_px <= section.image.shape[0] and c0 + size_px <= section.image.shape[1]
            and rows.max() < r0 + size_px and cols.max() < c0 + size_px
        )
        if fits:
            crop = (slice(r0, r0 + size_px), slice(c0, c0 + size_px))
            return dataclasses.replace(
                section,
                image=np.ascontiguousarray(section.image[crop]),
                pellets=section.pellets[crop],
                classes=section.classes[crop],
                nuclei=section.nuclei[crop],
                proteoglycan_od=section.proteoglycan_od[crop],
            )
        fraction *= 0.97


def write_images(folder: Path, size_px: int, count: int, seed: int = 0) -> list[dict]:
    """Write (or reuse) ``count`` dense sections of side ``size_px``; each image's path, pellet coverage and truth counts."""
    from pellet_analysis.synthetic import write_section

    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    for k in range(count):
        day, labeled = DAYS[k % len(DAYS)], bool(k % 2)
        path = folder / f"D{k + 1}_{'labeled' if labeled else 'unlabeled'}_d{day}_s1.tif"
        params = {"size_px": size_px, "seed": seed + k, "day": day, "labeled": labeled, "pixel_size_um": PIXEL_SIZE_UM,
                  "diameter_fraction": DIAMETER_FRACTION, "version": IMAGES_VERSION}
        stamp = path.with_suffix(".json")
        if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("params") == params:
            infos.append(json.loads(stamp.read_text()))
            continue
        t0 = time.perf_counter()
        section = dense_section(size_px, seed + k, day=day, labeled=labeled)
        write_section(section, path)
        info = {
            "path": str(path),
            "params": params,
            "coverage": float(np.count_nonzero(section.pellets)) / section.pellets.size,
            "n_pellets": int(section.pellets.max()),
            "truth_nuclei": int(np.unique(section.nuclei[section.nuclei > 0]).size),
            "write_s": round(time.perf_counter() - t0, 1),
        }
        stamp.write_text(json.dumps(info))
        infos.append(info)
    return infos


def input_folder(work: Path, size_px: int, images: list[dict]) -> Path:
    """A folder holding links to exactly ``images`` (the pipeline runs on folders)."""
    folder = work / f"in-{size_px}-{len(images)}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for info in images:
        source = Path(info["path"])
        (folder / source.name).symlink_to(source.resolve())
    return folder


# ---------------------------------------------------------------------------- the two programs


def run_pipeline(folder: Path, out: Path, scheduler: str, workers: int, config: Path | None = None) -> dict:
    """`pellet-analysis run` on a folder, as a fresh process writing into a fresh folder (with the YAML ``config``, if given)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pellet_analysis", "run", "--input", str(folder), "--output", str(out),
        "--scheduler", scheduler, "--workers", str(workers), "--pixel-size-um", str(PIXEL_SIZE_UM),
    ] + ([str(config)] if config is not None else [])
    result = timed(cmd)
    result["cpu_s"] = result["cpu_command_s"] + result["cpu_descendants_s"]  # the run's process tree
    record = json.loads((out / "run.json").read_text())
    result["n_pellets"] = record["n_pellets"]
    result["n_failures"] = record["n_failures"]
    with open(out / "pellets.csv", encoding="utf-8") as table:
        header = table.readline().rstrip("\n").split(",")
        column = header.index("nuclei_count")
        result["nuclei"] = sum(int(line.split(",")[column]) for line in table if line.strip())
    return result


SKIMAGE_WORKFLOW = r'''
"""Per image: scikit-image colour deconvolution, Otsu, distance-transform watershed of the nuclei, regionprops, a table."""
import json, sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import color, feature, filters, io, measure, morphology, segmentation

args = json.loads(sys.argv[1])
px = args["pixel_size_um"]
stains_from_rgb = np.linalg.inv(np.array(args["rgb_from_stains"]))  # rows: Alcian blue, Weigert's hematoxylin, acid fuchsin
out = Path(args["out"])
out.mkdir(parents=True, exist_ok=True)
total = 0
for path in args["images"]:
    rgb = io.imread(path)
    stains = color.separate_stains(rgb, stains_from_rgb)
    blue, hematoxylin = stains[..., 0], stains[..., 1]
    grey = color.rgb2gray(rgb)
    tissue = grey < filters.threshold_otsu(grey)
    tissue = morphology.remove_small_objects(ndi.binary_fill_holes(tissue), int(100 / px ** 2) * 100)
    alcian = tissue & (blue > filters.threshold_otsu(blue[tissue]))
    nuclei = tissue & (hematoxylin > filters.threshold_otsu(hematoxylin[tissue]))
    nuclei = morphology.remove_small_objects(nuclei, int(10 / px ** 2))
    distance = ndi.distance_transform_edt(nuclei)
    peaks = feature.peak_local_max(distance, min_distance=max(1, round(2.5 / px)), labels=measure.label(nuclei))
    markers = np.zeros(distance.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=nuclei)
    cells = pd.DataFrame(measure.regionprops_table(
        labels, intensity_image=hematoxylin, properties=("label", "area", "centroid", "eccentricity", "intensity_mean")))
    pellets = measure.label(tissue)
    table = pd.DataFrame(measure.regionprops_table(pellets, properties=("label", "area", "centroid")))
    table["area_um2"] = table["area"] * px ** 2
    table["alcian_blue_percent"] = 100 * ndi.sum(alcian, pellets, table["label"]) / table["area"]
    table["nuclei_count"] = [np.unique(labels[(pellets == k) & (labels > 0)]).size for k in table["label"]]
    table.to_csv(out / (Path(path).stem + "_pellets.csv"), index=False)
    cells.to_csv(out / (Path(path).stem + "_nuclei.csv"), index=False)
    total += int(table["nuclei_count"].sum())
print("nuclei", total)
'''


def skimage_matrix() -> list:
    """Unit stain vectors (rows) of Alcian blue, Weigert's hematoxylin and acid fuchsin: the user's rgb_from_stains."""
    from pellet_analysis.stains import get_preset

    preset = get_preset("ab-vg")
    vectors = np.stack([preset.vector(name) for name in ("alcian_blue", "weigert_hematoxylin", "acid_fuchsin")])
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist()


def run_skimage(images: list[dict], out: Path, matrix: list) -> dict:
    """The scikit-image workflow on ``images``, as a fresh single process."""
    shutil.rmtree(out, ignore_errors=True)
    args = {"images": [info["path"] for info in images], "out": str(out), "pixel_size_um": PIXEL_SIZE_UM, "rgb_from_stains": matrix}
    result = timed([sys.executable, "-c", SKIMAGE_WORKFLOW, json.dumps(args)])
    result["cpu_s"] = result["cpu_command_s"] + result["cpu_descendants_s"]
    result["nuclei"] = int(result["output"].strip().splitlines()[-1].split()[-1])
    return result


# ---------------------------------------------------------------------------- where the time goes

#: Stage -> the pipeline's step functions charged to it ("module:qualified name"). A moment
#: spent in several (one calls another) is charged to the innermost.
STAGES = {
    "read": ["pellet_analysis.io:read_image"],
    "input checks": ["pellet_analysis.gates:section_problem", "pellet_analysis.gates:check_section"],
    "white point": ["pellet_analysis.pellets:block_mean", "pellet_analysis.pellets:illumination_from_small"],
    "pellets": ["pellet_analysis.pellets:pellet_topology", "pellet_analysis.pellets:refine_pellet"],
    "separation": [
        "pellet_analysis.pellets:Illumination.od",
        "pellet_analysis.stains:choose_stains",
        "pellet_analysis.classify:stain_concentrations",
    ],
    "pixel classes": [
        "pellet_analysis.classify:pellet_maps",
        "pellet_analysis.classify:pixel_maps",
        "pellet_analysis.classify:map_histograms",
        "pellet_analysis.classify:thresholds_from_histograms",
        "pellet_analysis.classify:classify_maps",
        "pellet_analysis.classify:classify_objects",
    ],
    "nuclei": [
        "pellet_analysis.classify:dark_spots",
        "pellet_analysis.classify:_compact_objects",
        "pellet_analysis.classify:split_nuclei",
        "pellet_analysis.classify:split_nuclei_by_stain",
        "pellet_analysis.classify:_trim_below_fraction_of_median",
        "pellet_analysis.classify:merge_convex_pairs",
        "pellet_analysis.classify:_grow_to_half_maximum",
        "pellet_analysis.classify:_raster_numbered",
    ],
    "iron": ["pellet_analysis.classify:granule_contrast", "pellet_analysis.classify:_granules"],
    "lacunae": [
        "pellet_analysis.lacunae:find_lacunae",
        "pellet_analysis.lacunae:open_and_clear",
        "pellet_analysis.lacunae:lacunae_from_clear",
    ],
    # the territories the measurements grow; the lacunae's own halos (cell_territories called in lacunae.py) stay lacunae
    "cell territories": ["pellet_analysis.territories:cell_territories@pellet_analysis.slide"],
    "depth profiles": [
        "pellet_analysis.measure:depth_map",
        "pellet_analysis.profiles:cell_features",
        "pellet_analysis.profiles:pellet_cartilage",
    ],
    "measurements": ["pellet_analysis.slide:measure_pellet_classes", "pellet_analysis.measure:measure_pellets"],
    "label assembly": ["pellet_analysis.tasks:number_task", "pellet_analysis.tasks:paste_labels"],
    "writing": [
        "pellet_analysis.io:write_label_tiff",
        "pellet_analysis.io:write_json",
        "pellet_analysis.geojson:pellet_geometry",
        "pellet_analysis.records:pellet_boxes",
    ],
}

#: Notes printed under the stage table: where a function serves two stages, it is charged to one.
STAGE_NOTES = (
    "pixel classes holds what pixel_maps, classify_maps and classify_objects do themselves: the fine blur "
    "that darkness and granule contrast share, the stacking of the maps, the thresholds and the class codes; "
    "nuclei holds _grow_to_half_maximum for granules too (classify_objects calls it for both); "
    "label assembly is numbering the pellets and pasting their arrays into the image's label images; "
    "lacunae holds the growth of their halos (a cell_territories call of their own), cell territories the "
    "territories the measurements grow; depth profiles holds the pellet's depth map, which gives the rim "
    "fractions too"
)


#: Clocks of the stage profile: wall time, or CPU time of the (one) thread running the steps.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


class StageClock:
    """Exclusive time of named functions, charged to the innermost one running in each thread.

    Every thread keeps its own stack of running steps, so a step run in a
    helper thread is charged its own time there (with the wall clock, steps
    of two threads that overlap are both counted: their sum may exceed the
    whole call's time).

    Each function is replaced by a timing wrapper wherever the package holds a
    reference to it (every ``pellet_analysis`` module that imported it by
    name, or its class for a method), and put back by :meth:`restore`.
    """

    def __init__(self, targets, clock=time.perf_counter):
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._local = threading.local()  # .stack: the thread's running steps
        self._lock = threading.Lock()
        self._patched: list[tuple[object, str, object]] = []
        for target in targets:
            self._patch(target)

    def _wrap(self, target: str, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            stack = self._local.__dict__.setdefault("stack", [])
            frame = [self.clock(), 0.0]  # start, time spent in the wrapped functions it called
            stack.append(frame)
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = self.clock() - frame[0]
                stack.pop()
                with self._lock:
                    self.seconds[target] = self.seconds.get(target, 0.0) + elapsed - frame[1]
                    self.calls[target] = self.calls.get(target, 0) + 1
                if stack:
                    stack[-1][1] += elapsed

        return wrapper

    def _patch(self, target: str):
        # "module:qualified name", or "module:name@holder": only the reference the module holder holds
        # (so one function called from two stages is charged to the stage of one caller)
        target_name, _, holder_name = target.partition("@")
        module_name, qualname = target_name.split(":")
        owner = importlib.import_module(module_name)
        *path, name = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        function = getattr(owner, name, None)
        if function is None:  # a step an older tree does not have (the profile also times earlier commits)
            return
        wrapper = self._wrap(target, function)
        if holder_name:
            holders = [importlib.import_module(holder_name)]
        elif path:
            holders = [owner]
        else:
            holders = [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "pellet_analysis"]
        for holder in holders:
            for attribute, value in list(vars(holder).items()):
                if value is function:
                    self._patched.append((holder, attribute, value))
                    setattr(holder, attribute, wrapper)

    def restore(self):
        for holder, attribute, value in reversed(self._patched):
            setattr(holder, attribute, value)
        self._patched.clear()


def stage_profile(image: Path, work: Path, clock_name: str = "wall") -> dict:
    """Where the time of one image goes in its tasks (``run_image``), one OpenCV thread, after a warm-up pass (run in a fresh process)."""
    from pellet_analysis.config import RunConfig
    from pellet_analysis.records import ImageJob
    from pellet_analysis.tasks import run_image
    from pellet_analysis.workers import opencv_threads

    config = RunConfig(input_dir=image.parent, output_dir=work, pixel_size_um=PIXEL_SIZE_UM, scheduler="synchronous", n_workers=1)
    out = work / "stages"
    with opencv_threads(1):
        shutil.rmtree(out, ignore_errors=True)
        run_image(ImageJob(image), config, out)  # warm-up: first-use imports, code and allocator paths
        shutil.rmtree(out, ignore_errors=True)
        clock = StageClock([t for targets in STAGES.values() for t in targets], CLOCKS[clock_name])
        try:
            t0 = clock.clock()
            summary = run_image(ImageJob(image), config, out)
            total = clock.clock() - t0
        finally:
            clock.restore()
    if not summary.ok:
        raise RuntimeError(f"{image}: {summary.reason}")
    stages = {stage: sum(clock.seconds.get(t, 0.0) for t in targets) for stage, targets in STAGES.items()}
    stages["other"] = total - sum(stages.values())
    return {"image": str(image), "clock": clock_name, "seconds": total, "stages_s": stages, "functions_s": clock.seconds, "calls": clock.calls}


def run_stage_profile(image: Path, work: Path, clock: str = "wall") -> dict:
    """:func:`stage_profile` in a fresh process, with one BLAS thread as the pipeline's workers have."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--stages-of", str(image), "--work", str(work), "--stage-clock", clock]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"stage profile of {image} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the run


SETTINGS = [("threads", 1), ("threads", 2), ("processes", 1), ("processes", 2), ("skimage", 1)]


def _label(setting) -> str:
    kind, workers = setting
    if kind == "skimage":
        return "scikit-image workflow, one process"
    return f"pellet-analysis run, {kind}, {workers} worker{'s' if workers > 1 else ''}"


def measure_size(size_px: int, args, matrix) -> dict:
    """Every setting on ``n`` and ``2 n`` images of one side, alternating, ``args.repeats`` times; then the stage profile."""
    images = write_images(args.work / f"images-{size_px}", size_px, 2 * args.n)
    for info in images:
        print(f"  {Path(info['path']).name}: pellet covers {100 * info['coverage']:.1f} % of the image, "
              f"{info['truth_nuclei']} nuclei in truth ({info.get('write_s', '?')} s to write)", flush=True)
    folders = {count: input_folder(args.work, size_px, images[:count]) for count in (args.n, 2 * args.n)}
    config = None
    if args.calibrate == "off":
        config = args.work / "calibrate-off.yaml"
        config.write_text('iron:\n  calibrate: "off"\n')
    mpx = size_px * size_px / 1e6
    runs = {setting: {count: [] for count in folders} for setting in SETTINGS}
    for repeat in range(args.repeats):
        order = SETTINGS[repeat % len(SETTINGS):] + SETTINGS[: repeat % len(SETTINGS)]
        counts = sorted(folders, reverse=bool(repeat % 2))
        for setting in order:
            for count in counts:
                time.sleep(args.pause_s)
                load = round(os.getloadavg()[0], 2)  # the machine is shared: what else ran, as the run started
                kind, workers = setting
                out = args.work / f"out-{size_px}-{kind}-{workers}w-{count}"
                if kind == "skimage":
                    run = run_skimage(images[:count], out, matrix)
                else:
                    run = run_pipeline(folders[count], out, kind, workers, config)
                run.pop("output")
                run["load_average"] = load
                runs[setting][count].append(run)
                print(f"  repeat {repeat + 1}, {_label(setting)}, {count} image(s): {run['seconds']:.2f} s, CPU {run['cpu_s']:.2f} s, "
                      f"peak {run['peak_rss_gib']:.2f} GiB" + (f", {run['n_failures']} failure(s)" if run.get("n_failures") else ""), flush=True)
    entry = {"megapixels_per_image": mpx, "images": images, "settings": {}}
    n = args.n
    for setting, by_count in runs.items():
        marginal = [b["seconds"] - a["seconds"] for a, b in zip(by_count[n], by_count[2 * n])]
        marginal_cpu = [b["cpu_s"] - a["cpu_s"] for a, b in zip(by_count[n], by_count[2 * n])]
        median = statistics.median(marginal)
        entry["settings"][_label(setting)] = {
            "seconds_n": [round(r["seconds"], 3) for r in by_count[n]],
            "seconds_2n": [round(r["seconds"], 3) for r in by_count[2 * n]],
            "cpu_s_n": [round(r["cpu_s"], 3) for r in by_count[n]],
            "cpu_s_2n": [round(r["cpu_s"], 3) for r in by_count[2 * n]],
            "marginal_s_all": [round(x, 3) for x in marginal],
            "marginal_s": median,
            "marginal_cpu_s": statistics.median(marginal_cpu),
            "load_average": [r["load_average"] for r in by_count[n] + by_count[2 * n]],
            "megapixels_per_s": n * mpx / median if median > 0 else float("nan"),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in by_count[n] + by_count[2 * n]),
            "nuclei_2n": by_count[2 * n][0]["nuclei"],
            "failures": max(r.get("n_failures", 0) for r in by_count[n] + by_count[2 * n]),
        }
    settings = entry["settings"]
    entry["truth_nuclei_2n"] = sum(info["truth_nuclei"] for info in images)
    for kind in ("threads", "processes"):
        one, two = settings[_label((kind, 1))], settings[_label((kind, 2))]
        entry[f"two_vs_one_workers_{kind}"] = one["marginal_s"] / two["marginal_s"] if two["marginal_s"] > 0 else float("nan")
    base = settings[_label(("skimage", 1))]["marginal_s"]
    for label, result in settings.items():
        result["vs_skimage"] = base / result["marginal_s"] if result["marginal_s"] > 0 else float("nan")
    print(f"  stage profile of {Path(images[0]['path']).name}", flush=True)
    entry["stages"] = run_stage_profile(Path(images[0]["path"]), args.work, args.stage_clock)
    return entry


def _figure(value: float, spec: str, unit: str = "") -> str:
    """A figure formatted with its unit, or n/a when there is none (nan: a marginal time at or below 0)."""
    return "n/a" if value != value else f"{value:{spec}}{unit}"


def markdown(results: dict) -> str:
    """The results as Markdown tables."""
    lines = []
    for size, entry in results["sizes"].items():
        coverage = [info["coverage"] for info in entry["images"]]
        lines += [
            f"### {size} x {size} px ({entry['megapixels_per_image']:.1f} MP per image), pellet coverage "
            f"{100 * min(coverage):.0f}-{100 * max(coverage):.0f} %, n = {results['n']}, {results['repeats']} repeat(s)",
            "",
            "| | t(n) s | t(2n) s | marginal s (median) | marginal CPU s | CPU / wall (2n) | MPix/s | vs scikit-image | peak GiB | nuclei (2n images) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, r in entry["settings"].items():
            lines.append(
                f"| {label} | {statistics.median(r['seconds_n']):.2f} | {statistics.median(r['seconds_2n']):.2f} | {r['marginal_s']:.2f} "
                f"| {r.get('marginal_cpu_s', float('nan')):.2f} | {statistics.median(c / w for c, w in zip(r.get('cpu_s_2n', [math.nan]), r['seconds_2n'])):.2f} "
                f"| {_figure(r['megapixels_per_s'], '.1f')} | {_figure(r['vs_skimage'], '.2f', 'x')} | {r['peak_rss_gib']:.2f} | {r['nuclei_2n']} |"
            )
        loads = [x for r in entry["settings"].values() for x in r.get("load_average", [])]
        lines += [
            "",
            f"Nuclei in truth (2n images): {entry['truth_nuclei_2n']}. Two workers vs one (marginal wall time): "
            f"threads {_figure(entry.get('two_vs_one_workers_threads', float('nan')), '.2f', 'x')}, "
            f"processes {_figure(entry['two_vs_one_workers_processes'], '.2f', 'x')}. "
            + (f"Load average of the machine before the runs: {min(loads):.1f}-{max(loads):.1f} (on {os.cpu_count()} CPUs). " if loads else "")
            + f"Iron calibration on the controls: {results.get('calibrate', 'controls')}. CPU / wall: the cores the run's processes "
            "had on average; where other sessions keep the machine busy it stays near the share the kernel gives the "
            "benchmark's session (one autogroup), however many workers run.",
            "",
        ]
        if any(r["marginal_s"] <= 0 for r in entry["settings"].values()):
            lines += ["A marginal time at or below 0 (n/a): the runs varied more than n images take; raise --n or the size.", ""]
        stages = entry["stages"]
        lines += [f"Stages of {Path(stages['image']).name}, one thread, {stages['seconds']:.2f} s ({stages.get('clock', 'wall')} time):", "", "| stage | s | % |", "|---|---|---|"]
        for stage, seconds in stages["stages_s"].items():
            lines.append(f"| {stage} | {seconds:.3f} | {100 * seconds / stages['seconds']:.1f} |")
        top = sorted(stages["functions_s"].items(), key=lambda kv: -kv[1])[:8]
        lines += ["", "Largest steps (exclusive s, calls): " + ", ".join(
            f"{name.split(':')[1]} {seconds:.3f} ({stages['calls'][name]})" for name, seconds in top), ""]
    lines.append(STAGE_NOTES + ".")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192], help="image sides (px, default 2048 4096 8192)")
    parser.add_argument("--n", type=int, default=2, help="images in the smaller batch; the larger has twice as many (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every setting and batch; the median difference counts (default 3)")
    parser.add_argument("--pause-s", type=float, default=5.0, dest="pause_s", help="seconds of rest before each run (default 5)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pellet-dense"), help="folder for images and outputs")
    parser.add_argument("--calibrate", choices=["off", "controls"], default="off",
                        help="iron calibration on the control (unlabeled) images: off (default), or as configured (controls); see the module's notes")
    parser.add_argument("--stage-clock", choices=sorted(CLOCKS), default="wall", dest="stage_clock",
                        help="what the stage profile charges: wall time, or the thread's CPU time (steadier on a shared machine; default wall)")
    parser.add_argument("--stages-of", type=Path, dest="stages_of", help=argparse.SUPPRESS)  # the stage profile's own process
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stages_of is not None:
        print(json.dumps(stage_profile(args.stages_of, args.work, args.stage_clock)))
        return
    import cv2

    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "numpy": np.__version__, "opencv": cv2.__version__},
        "n": args.n, "repeats": args.repeats, "pause_s": args.pause_s, "pixel_size_um": PIXEL_SIZE_UM, "calibrate": args.calibrate, "sizes": {},
    }
    matrix = skimage_matrix()
    for size_px in args.sizes:
        print(f"{size_px} x {size_px} px:", flush=True)
        results["sizes"][str(size_px)] = measure_size(size_px, args, matrix)
    (args.work / "dense-results.json").write_text(json.dumps(results, indent=2))
    print()
    print(markdown(results))
    print(f"\nresults: {args.work / 'dense-results.json'}")


if __name__ == "__main__":
    main()
