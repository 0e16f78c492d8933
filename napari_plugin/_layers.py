"""Layer data tuples for a pellet (shared by the reader, the sample and the widget)."""

from __future__ import annotations

import numpy as np

from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.overlay import CLASS_COLOURS


def class_colormap() -> dict:
    """Label value -> RGBA for the classes layer (background transparent)."""
    colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for name, code in CLASS_CODES.items():
        if code:
            colours[code] = tuple(c / 255 for c in CLASS_COLOURS[name]) + (1.0,)
    return colours


def class_features(classes):
    import pandas as pd

    counts = np.bincount(np.asarray(classes).ravel(), minlength=max(CLASS_CODES.values()) + 1)
    inside = counts[1:].sum()
    names = {code: name for name, code in CLASS_CODES.items()}
    return pd.DataFrame(
        {
            "index": list(range(len(counts))),
            "class": [names.get(i, str(i)) for i in range(len(counts))],
            "pixels": counts,
            "fraction_of_tissue": [c / inside if i and inside else 0.0 for i, c in enumerate(counts)],
        }
    )


def pellet_layers(crop: dict, *, name: str = "", row: dict | None = None) -> list[tuple]:
    """napari LayerData tuples: section image, classes, nuclei, pellet outline and lacunae (physical units, µm).

    The lacunae layer (each clear halo with the nuclei it holds) comes last and
    is left out for a crop without lacunae (a run made before they were measured).
    """
    from napari.utils.colormaps import DirectLabelColormap

    px = crop["pixel_size_um"]
    scale = (px, px)
    translate = (crop["origin"][0] * px, crop["origin"][1] * px)
    common = {"scale": scale, "translate": translate, "units": "µm"}
    prefix = f"{name} " if name else ""
    pellet_features = None
    if row is not None:
        import pandas as pd

        pellet_features = pd.DataFrame([{"index": int(row["pellet_id"]), **row}])
    return [
        (crop["rgb"], {"name": f"{prefix}section", "rgb": True, **common}, "image"),
        (crop["classes"], {"name": f"{prefix}classes", "colormap": DirectLabelColormap(color_dict=class_colormap()),
                           "opacity": 0.5, "features": class_features(crop["classes"]), **common}, "labels"),
        (crop["nuclei"], {"name": f"{prefix}nuclei", "opacity": 0.6, **common}, "labels"),
        (crop["pellets"], {"name": f"{prefix}pellet", "opacity": 0.4,
                           **({"features": pellet_features} if pellet_features is not None else {}), **common}, "labels"),
    ] + ([(crop["lacunae"], {"name": f"{prefix}lacunae", "opacity": 0.5, **common}, "labels")] if "lacunae" in crop else [])
