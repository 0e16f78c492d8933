"""Writer: a labels layer as a compressed label TIFF with its pixel size (µm)."""

from __future__ import annotations

import numpy as np


def write_labels(path: str, data, attributes: dict) -> list[str]:
    from pellet_analysis.io import write_label_tiff

    data = np.asarray(data)
    if data.min() < 0:
        raise ValueError("labels must be non-negative")
    dtype = np.uint8 if data.max() < 2**8 else np.uint16 if data.max() < 2**16 else np.uint32
    scale = attributes.get("scale") or (1.0, 1.0)
    write_label_tiff(path, data.astype(dtype), pixel_size_um=float(scale[-1]))
    return [path]
