import numpy as np

from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.synthetic import make_section, proteoglycan_target, truth_table


def test_ground_truth_is_consistent(sections):
    for s in sections:
        assert s.image.dtype == np.uint8 and s.image.shape == s.pellets.shape + (3,)
        assert s.pellets.dtype == np.uint16 and s.classes.dtype == np.uint8 and s.nuclei.dtype == np.uint32
        inside = s.pellets > 0
        assert np.array_equal(s.classes > 0, inside)  # every pellet pixel has a class, none outside
        assert not s.nuclei[~inside].any()
        assert np.array_equal(s.nuclei > 0, s.classes == CLASS_CODES["nuclei"])
        assert s.pellets.max() == s.params.n_pellets
        if not s.params.labeled:
            assert not (s.classes == CLASS_CODES["iron"]).any()
        else:
            assert (s.classes == CLASS_CODES["iron"]).sum() > 100


def test_same_seed_same_section():
    a = make_section(seed=5, n_pellets=2, day=7)
    b = make_section(seed=5, n_pellets=2, day=7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.classes, b.classes)


def test_biology_proteoglycan_rises_with_day_and_is_lower_when_labeled():
    fractions = {}
    for day in (7, 14, 28):
        for labeled in (False, True):
            s = make_section(day=day, labeled=labeled, seed=day, pixel_size_um=1.5, pellet_diameter_um=(300, 300))
            fractions[day, labeled] = np.mean([r["proteoglycan_area_fraction"] for r in truth_table(s)])
    for labeled in (False, True):
        assert fractions[7, labeled] < fractions[14, labeled] < fractions[28, labeled]
    for day in (7, 14, 28):
        assert fractions[day, True] < fractions[day, False]
        assert abs(fractions[day, False] - proteoglycan_target(day, False)) < 0.06


def test_geometry_is_in_micrometres():
    coarse = make_section(seed=3, pixel_size_um=1.0, n_pellets=1, pellet_diameter_um=(300, 300))
    fine = make_section(seed=3, pixel_size_um=0.5, n_pellets=1, pellet_diameter_um=(300, 300))
    a = truth_table(coarse)[0]["area_um2"]
    b = truth_table(fine)[0]["area_um2"]
    assert abs(a - b) / a < 0.02
    assert abs(a - np.pi * 150**2) / a < 0.15
