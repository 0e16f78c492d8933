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
    # to the bit, as float32: a drop-in for ``ndi.distance_transform_edt(mask).astype(np.float32)``
    np.testing.assert_array_equal(fast.distance_transform(mask), ndi.distance_transform_edt(mask).astype(np.float32))
    sparse = np.random.default_rng(7).random((400, 500)) > 0.0005  # long distances, many equally near pairs
    np.testing.assert_array_equal(fast.distance_transform(sparse), ndi.distance_transform_edt(sparse).astype(np.float32))


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


@pytest.mark.parametrize("h", [0.3, 1.0, 2.5])
def test_h_maxima_of_a_quantised_distance_map_equal_the_float_one(mask, h):
    levels = fast.quantised_distance(mask)
    assert levels.dtype == np.uint16
    np.testing.assert_allclose(levels / fast.DISTANCE_STEPS_PER_PX, fast.distance_transform(mask), atol=0.5 / fast.DISTANCE_STEPS_PER_PX + 1e-6)
    np.testing.assert_array_equal(fast.h_maxima(levels, h * fast.DISTANCE_STEPS_PER_PX), fast.h_maxima(fast.distance_transform(mask), h))


def test_median_by_label_of_negative_and_positive_values_equals_scipy(mask):
    labels, n = ndi.label(mask)
    values = np.random.default_rng(4).normal(size=mask.shape).astype(np.float32)
    expected = ndi.median(values, labels, np.arange(1, n + 1))
    np.testing.assert_allclose(fast.median_by_label(values, labels, n)[1:], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("radius", [3, 9, 15])
def test_white_tophat_with_a_decomposed_disk_equals_skimage(radius):
    rng = np.random.default_rng(5)
    image = ndi.gaussian_filter(rng.random((180, 210)), 2).astype(np.float32) * 3 - 0.5
    footprint = skm.disk(radius, decomposition="sequence")
    expected = np.maximum(image - skm.opening(image, footprint), 0)  # scikit-image's own decomposed opening
    ours = fast.white_tophat_disk(image, radius)
    assert ours.min() >= 0
    np.testing.assert_allclose(ours, expected, atol=1.01e-4)  # the 16-bit steps of 1e-4
    exact = fast.white_tophat_disk(image, radius, decompose=False)
    # the decomposed disk removes the same scale: it differs from the elliptic one only at a few edges
    assert np.mean(np.abs(ours - exact) > 0.05) < 0.02


@pytest.mark.parametrize("connectivity", [4, 8])
def test_remove_small_objects_equals_skimage(mask, connectivity):
    expected = skm.remove_small_objects(mask, max_size=59, connectivity=1 if connectivity == 4 else 2)
    np.testing.assert_array_equal(fast.remove_small_objects(mask, 60, connectivity=connectivity), expected)


@pytest.mark.parametrize("distance_px", [0.5, 1.0, 2.9, 10.0, 12.5, 30.2])
def test_within_distance_equals_a_threshold_of_the_distance_transform(distance_px):
    seeds = np.random.default_rng(6).random((150, 170)) < 0.002
    expected = ndi.distance_transform_edt(~seeds) <= distance_px
    np.testing.assert_array_equal(fast.within_distance(seeds, distance_px), expected)


def test_expansion_lists_the_pixels_expand_labels_adds(mask):
    labels, _ = ndi.label(mask)
    rows, cols, values = fast.expansion(labels, 2)
    grown = fast.expand_labels(labels, 2)
    added = (grown != 0) & (labels == 0)
    assert added.sum() == rows.size > 0
    np.testing.assert_array_equal(grown[rows, cols], values)


def _first_label_by_offset(labels, distance):
    """Brute force: each background pixel's label at the first offset, nearest first then by (row, column) offset."""
    offsets = sorted((float(np.hypot(dr, dc)), dr, dc) for dr in range(-distance, distance + 1) for dc in range(-distance, distance + 1)
                     if 0 < np.hypot(dr, dc) <= distance)
    out = np.zeros_like(labels)
    for r, c in zip(*np.nonzero(labels == 0)):
        for _, dr, dc in offsets:
            if 0 <= r - dr < labels.shape[0] and 0 <= c - dc < labels.shape[1] and labels[r - dr, c - dc]:
                out[r, c] = labels[r - dr, c - dc]
                break
    return out


@pytest.mark.parametrize("distance", [1, 2, 3, 6, 11])
def test_expansion_takes_the_label_at_the_first_offset_in_order(distance):
    rng = np.random.default_rng(distance)
    # single-pixel labels on a grid with many equally near pairs, and blobs touching the border
    labels = np.where(rng.random((48, 57)) < 0.02, rng.integers(1, 9, (48, 57)), 0).astype(np.int32)
    labels[:5, :7] = 9
    rows, cols, values = fast.expansion(labels, distance)
    got = np.zeros_like(labels)
    got[rows, cols] = values
    assert np.unique(rows * labels.shape[1] + cols).size == rows.size  # each pixel once
    expected = _first_label_by_offset(labels, distance)
    assert expected.any()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("distance", [2, 3])
def test_expansion_of_an_image_without_background_adds_nothing(distance):
    rows, cols, values = fast.expansion(np.full((5, 6), 4, np.int32), distance)
    assert rows.size == cols.size == values.size == 0 and values.dtype == np.int32


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_crofton_perimeter_equals_skimage(mask, fraction):
    from skimage.measure import perimeter_crofton

    from pellet_analysis.measure import perimeter_crofton as ours

    speckle = np.random.default_rng(7).random((61, 47)) < fraction
    for image in (mask, speckle, np.ones((1, 1), bool)):
        assert ours(image) == pytest.approx(perimeter_crofton(image, directions=4), rel=1e-12)
