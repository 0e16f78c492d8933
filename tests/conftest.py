"""Shared fixtures: synthetic sections with exact ground truth, made once per session."""

from pathlib import Path

import numpy as np
import pytest

from pellet_analysis.config import RunConfig
from pellet_analysis.synthetic import make_section

REAL_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "real-images"

# (day, labeled, n_pellets, pixel_size_um, seed): a spread of days, conditions, counts and scales
CASES = [
    (7, False, 1, 1.0, 11),
    (14, True, 2, 1.0, 12),
    (28, False, 3, 0.8, 13),
    (28, True, 1, 0.5, 14),
    (14, False, 2, 0.6, 15),
    (7, True, 3, 1.0, 16),
]


@pytest.fixture(scope="session")
def config():
    return RunConfig()


@pytest.fixture(scope="session")
def sections():
    """Synthetic sections with stain hues drifted by up to 5 degrees, JPEG quality 80, the simple nuclei model.

    The varied model (irregular, touching, faint and dark nuclei) is scored in tests/test_iron_controls.py.
    """
    return [
        make_section(
            day=day, labeled=labeled, n_pellets=n, pixel_size_um=px, seed=seed,
            hue_jitter_deg=5.0, jpeg_quality=80, pellet_diameter_um=(260.0, 420.0), nuclei_model="simple",
        )
        for day, labeled, n, px, seed in CASES
    ]


@pytest.fixture(scope="session")
def analyses(sections, config):
    from pellet_analysis.pipeline import analyze_image

    return [analyze_image(s.image, pixel_size_um=s.pixel_size_um, config=config) for s in sections]


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total
