"""Are two run folders' results the same? Tables, GeoJSON and JSON byte for byte, label images pixel for pixel.

Run by hand to check that a speed-up changed no number, e.g. the demo images on
a commit before and after (the earlier one from ``git archive`` on ``PYTHONPATH``)::

    PYTHONPATH=/tmp/before python -m pellet_analysis run --input images --output /tmp/before-out
    PYTHONPATH=. python -m pellet_analysis run --input images --output /tmp/after-out
    python benchmarks/compare_runs.py /tmp/before-out /tmp/after-out

run.json (times, dates) and the scratch folder ``parts/`` are left out.
Exits with status 1 when a file differs or is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def differences(before: Path, after: Path) -> tuple[int, list[str]]:
    """How many files of ``before`` were compared, and what differs in ``after``."""
    import pandas as pd
    import tifffile

    found, n = [], 0
    for path in sorted(before.rglob("*")):
        relative = path.relative_to(before)
        if path.is_dir() or relative.parts[0] == "parts" or relative.name == "run.json":
            continue
        n += 1
        other = after / relative
        if not other.is_file():
            found.append(f"missing: {relative}")
        elif path.suffix in (".tif", ".tiff"):
            a, b = tifffile.imread(path), tifffile.imread(other)
            if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
                found.append(f"pixels differ: {relative}")
        elif path.suffix == ".parquet":  # its metadata holds the writer's version
            if not pd.read_parquet(path).equals(pd.read_parquet(other)):
                found.append(f"table differs: {relative}")
        elif path.read_bytes() != other.read_bytes():
            found.append(f"bytes differ: {relative}")
    return n, found


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit(__doc__)
    n, found = differences(Path(argv[0]), Path(argv[1]))
    print("\n".join(found + [f"{n} files compared, {len(found)} differ"]))
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
