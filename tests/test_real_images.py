"""Real scans from ../shared/real-images (read in place, never copied); skipped when absent."""

import numpy as np
import pytest

from pellet_analysis.config import RunConfig
from pellet_analysis.io import read_image
from pellet_analysis.pipeline import analyze_image

from .conftest import REAL_IMAGES

pytestmark = pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="../shared/real-images is not here")


def test_safranin_o_pellet_is_one_pellet_with_a_proteoglycan_rich_core():
    rgb, _ = read_image(REAL_IMAGES / "mbs_pellet_whole_section.tif")
    # the file's resolution tag says 72 dpi; the pellet is about 2 mm across: 2 µm per pixel
    found = analyze_image(rgb, pixel_size_um=2.0, config=RunConfig(stains={"preset": "safranin-o"}))
    assert len(found.rows) == 1
    row = found.rows[0]
    assert 0.1 < row["proteoglycan_area_fraction"] < 0.6
    assert 0 <= row["bern_score"] <= 9 and row["nuclei_count"] > 300
    # proteoglycan (Safranin O) lies in the core: compare the inner half of the radius with the rest
    from scipy import ndimage as ndi

    depth = ndi.distance_transform_edt(found.pellets > 0)
    inner = depth > 0.5 * depth.max()
    outer = (found.pellets > 0) & ~inner
    pg = found.classes == 2
    assert pg[inner].mean() > 2 * pg[outer].mean()
