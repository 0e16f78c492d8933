"""Reader: a pellet-analysis run folder, or one of our label TIFFs; nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABEL_SUFFIXES = ("_pellets", "_classes", "_nuclei", "_lacunae")


def _is_run_folder(path: Path) -> bool:
    if not (path.is_dir() and (path / "run.json").is_file() and (path / "pellets.parquet").is_file()):
        return False
    try:
        return json.loads((path / "run.json").read_text(encoding="utf-8")).get("software") == "pellet-analysis"
    except (OSError, ValueError):
        return False


def _is_label_file(path: Path) -> bool:
    """One of ours: named <image>_<kind>[.corrected].tif inside a run's labels/ folder, or a 2-D integer TIFF."""
    name = path.name
    stem = name[: -len(".corrected.tif")] if name.endswith(".corrected.tif") else path.stem
    if path.suffix.lower() != ".tif" or not stem.endswith(LABEL_SUFFIXES):
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.ndim == 2 and np.dtype(page.dtype).kind == "u"
    except Exception:
        return False


def get_reader(path):
    """Return a reader for our run folders and label TIFFs, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if _is_run_folder(path):
        return read_run
    if path.is_file() and _is_label_file(path):
        return read_label_file
    return None


def read_run(path):
    """Open a run folder in the **Review pellets** widget, which shows its first pellet.

    The widget is the one place that puts a run's layers on the canvas, so
    File > Open Folder and the widget's own Open give the same single set of
    layers (the reader returns napari's "read, no layers" sentinel). Without a
    viewer (a script reading through npe2) the first pellet's layers are
    returned, its pellet as an outline.
    """
    import napari

    path = Path(path[0] if isinstance(path, list) else path)
    viewer = napari.current_viewer()
    if viewer is None:
        return _first_pellet_layers(path)
    _, widget = viewer.window.add_plugin_dock_widget("pellet-analysis", "Review pellets")
    widget.open_run(path, show_first=True)
    return [(None,)]


def _first_pellet_layers(path: Path) -> list:
    import pandas as pd
    from skimage.segmentation import find_boundaries

    from pellet_analysis.review import apply_review, pellet_crop

    from ._layers import pellet_layers

    table = apply_review(pd.read_parquet(path / "pellets.parquet"), path)
    if table.empty:
        return [(np.zeros((1, 1), np.uint16), {"name": "no pellets in this run"}, "labels")]
    row = table.iloc[0].to_dict()
    crop = pellet_crop(path, row["image"], int(row["pellet_id"]))
    layers = pellet_layers(crop, name=f"{row['image']} #{row['pellet_id']}", row=row)
    pellets = np.asarray(layers[3][0])
    layers[3] = (np.where(find_boundaries(pellets, mode="inner"), pellets, 0), layers[3][1], layers[3][2])
    for data, meta, kind in layers:
        meta.setdefault("metadata", {}).update({"pellet_analysis_run": str(path), "image": row["image"], "pellet_id": int(row["pellet_id"])})
    return layers


def read_label_file(path):
    """A label TIFF as a labels layer; a whole-slide label pyramid as a lazy multiscale layer."""
    import tifffile

    from pellet_analysis.io import tiff_pixel_size_um, zarr_levels

    path = Path(path[0] if isinstance(path, list) else path)
    with tifffile.TiffFile(path) as tif:
        px = tiff_pixel_size_um(tif) or 1.0
        levels = len(tif.series[0].levels)
        data = tif.asarray() if levels == 1 else None
    meta = {"name": path.stem, "scale": (px, px), "units": "µm"}
    if data is None:
        import dask.array as da

        data = [da.from_zarr(level) for level in zarr_levels(path)]  # napari reads only the tiles it shows
        meta["multiscale"] = True
    return [(data, meta, "labels")]
