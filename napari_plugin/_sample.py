"""Sample data: a synthetic AB/VG pellet made locally by the generator (nothing downloaded)."""

from __future__ import annotations


def synthetic_pellet():
    from napari.utils.colormaps import DirectLabelColormap

    from pellet_analysis.synthetic import make_section

    from ._layers import class_colormap

    section = make_section(day=14, labeled=True, n_pellets=1, pixel_size_um=1.0, seed=7)
    scale = (section.pixel_size_um, section.pixel_size_um)
    return [
        (section.image, {"name": "synthetic section", "rgb": True, "scale": scale, "units": "µm"}, "image"),
        (section.classes, {"name": "true classes", "colormap": DirectLabelColormap(color_dict=class_colormap()), "opacity": 0.5, "scale": scale, "units": "µm"}, "labels"),
        (section.nuclei, {"name": "true nuclei", "opacity": 0.6, "scale": scale, "units": "µm"}, "labels"),
    ]
