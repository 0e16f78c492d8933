"""The OpenCV morphology equals the scikit-image / SciPy operations it replaces."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import morphology as skm
from skimage.segmentation import expand_labels as sk_expand_labels

from pellet_analysis import morphology as fast


@pytest.fixture(scope="module")
def mask():
    rng = np.random.default_rng(1)
    return ndi.gaussian_filter(rng.random((300, 350)), 4) > 0.52  # blobs, many touching, some at the border


def test_distance_transform_equals_scipy(mask):
    np.testing.assert_allclose(fast.distance_transform(mask), ndi.distance_transform_edt(mask), atol=1e-4)


@pytest.mark.parametrize("radius", [1, 2, 5])
def test_opening_and_dilation_with_a_disk_equal_scipy(mask, radius):
    np.testing.assert_array_equal(fast.binary_opening_disk(mask, radius), ndi.binary_opening(mask, structure=skm.disk(radius)))
    np.testing.assert_array_equal(fast.binary_dilation_disk(mask, radius), ndi.binary_dilation(mask, structure=skm.disk(radius)))


@pytest.mark.parametrize("h", [0.3, 1.0, 2.5])
def test_h_maxima_of_a_distance_map_equal_skimage(mask, h):
    dist = fast.distance_transform(mask)
    expected = skm.h_maxima(dist, h) > 0
    assert expected.sum() > 50
    np.testing.assert_array_equal(fast.h_maxima(dist, h), expected)


def test_median_by_label_equals_scipy(mask):
    labels, n = ndi.label(mask)
    values = np.random.default_rng(2).random(mask.shape).astype(np.float32)
    expected = ndi.median(values, labels, np.arange(1, n + 1))
    np.testing.assert_allclose(fast.median_by_label(values, labels, n)[1:], expected, rtol=1e-6)


def test_expand_labels_reaches_what_skimage_reaches_and_ignores_label_numbers(mask):
    labels, n = ndi.label(mask)
    ours, theirs = fast.expand_labels(labels, 3), sk_expand_labels(labels, 3)
    np.testing.assert_array_equal(ours > 0, theirs > 0)
    assert (ours != theirs).mean() < 0.002  # only ties between equally near labels may differ
    # renumbering the labels renumbers the result and changes nothing else (tiles number objects differently)
    perm = np.concatenate([[0], np.random.default_rng(3).permutation(n) + 1])
    np.testing.assert_array_equal(fast.expand_labels(perm[labels], 3), perm[ours])


def test_fill_holes_equals_scipy(mask):
    holes = mask.copy()
    holes[100:140, 100:140] = True
    holes[110:120, 110:120] = False  # a hole
    np.testing.assert_array_equal(fast.fill_holes(holes), ndi.binary_fill_holes(holes))
    np.testing.assert_array_equal(fast.fill_holes(~mask), ndi.binary_fill_holes(~mask))
