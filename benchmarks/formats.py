"""Memory and time of reading each scanner format lazily: an 8192 x 8192 scan (201 MB of RGB) per format.

Each format's file is written by the tests' own writers (tests/slide_files.py);
a fresh process then opens it, computes the 1/32 plan image from the coarsest
level that allows it (CZI: block means of the full resolution, tile by tile)
and reads one 1024 x 1024 pellet window, as the whole-slide path does. It
reports the process's peak resident memory above what it held after its
imports (C libraries' buffers included), the tracemalloc peak (numpy
buffers), and the wall time of the reading::

    PYTHONPATH=. .venv/bin/python benchmarks/formats.py [--size 8192] [FORMAT ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, resource, sys, time, tracemalloc
import dask.array, zarr
from pellet_analysis.io import open_lazy, read_window
from pellet_analysis.wholeslide import _low_resolution
path = sys.argv[1]
open_lazy(path)  # the reader's own imports (OpenSlide, pylibCZIrw) are not what is measured
base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
t0 = time.perf_counter()
lazy = open_lazy(path)
small, factor = _low_resolution(lazy.levels, 32)
window = read_window(path, (slice(5000, 6024), slice(7000, 8024)))
seconds = time.perf_counter() - t0
_, traced = tracemalloc.get_traced_memory()
tracemalloc.stop()
rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb
print(json.dumps({"format": lazy.format, "levels": len(lazy.levels), "factor": factor, "seconds": seconds,
                  "traced_mb": traced / 1e6, "rss_above_imports_mb": rss_kb / 1e3, "pixel_size_um": lazy.pixel_size_um}))
"""


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from tests.slide_files import WRITERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("formats", nargs="*", default=list(WRITERS))
    parser.add_argument("--size", type=int, default=8192)
    args = parser.parse_args()
    tile = np.full((256, 256, 3), 215, np.uint8)
    tile[np.add.outer(np.arange(256) // 32, np.arange(256) // 32) % 2 == 0] = (150, 90, 160)
    full_mb = args.size**2 * 3 / 1e6
    print(f"{args.size} x {args.size} RGB: {full_mb:.0f} MB at full resolution")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in args.formats:
            levels = [((args.size >> k, args.size >> k), tile) for k in range(4)]
            path = WRITERS[suffix](Path(tmp) / f"scan{suffix}", levels, 0.5)
            done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if done.returncode:
                print(suffix, "failed:", done.stderr.strip().splitlines()[-1])
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{suffix:8s} {r['format']:18s} levels {r['levels']}  plan 1/{r['factor']}  {r['seconds']:.2f} s  "
                f"tracemalloc peak {r['traced_mb']:.1f} MB  RSS above imports {r['rss_above_imports_mb']:.1f} MB  "
                f"({100 * max(r['traced_mb'], r['rss_above_imports_mb']) / full_mb:.1f} % of full)  pixel {r['pixel_size_um']} µm"
            )
            path.unlink()


if __name__ == "__main__":
    main()
