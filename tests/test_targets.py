"""Tests for cellrefine.targets with hand-made label images and exact expected outputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cellrefine.targets import BACKGROUND, BOUNDARY, CELL, border_weight_map, class_weight_map, instances_to_semantic


def two_touching_squares():
    """Two 7x7 squares side by side (columns 1..7 and 8..14) in a 9x16 image."""
    labels = np.zeros((9, 16), np.int32)
    labels[1:8, 1:8] = 1
    labels[1:8, 8:15] = 2
    return labels


def test_class_constants():
    assert (BACKGROUND, CELL, BOUNDARY) == (0, 1, 2)


def test_docstring_example_width_1():
    labels = np.zeros((5, 8), int)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 2, 2, 2, 2, 2, 2, 0],
            [0, 2, 1, 2, 2, 1, 2, 0],
            [0, 2, 2, 2, 2, 2, 2, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    out = instances_to_semantic(labels, boundary_width=1)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_touching_squares_width_1():
    labels = two_touching_squares()
    expected = np.zeros(labels.shape, np.uint8)
    expected[labels > 0] = BOUNDARY
    expected[2:7, 2:7] = CELL
    expected[2:7, 9:14] = CELL
    out = instances_to_semantic(labels, boundary_width=1)
    np.testing.assert_array_equal(out, expected)
    # the contact line is boundary on both sides
    assert (out[1:8, 7] == BOUNDARY).all() and (out[1:8, 8] == BOUNDARY).all()


def test_touching_squares_width_2():
    labels = two_touching_squares()
    expected = np.zeros(labels.shape, np.uint8)
    expected[labels > 0] = BOUNDARY
    expected[3:6, 3:6] = CELL
    expected[3:6, 10:13] = CELL
    out = instances_to_semantic(labels, boundary_width=2)
    np.testing.assert_array_equal(out, expected)
    assert (out[1:8, 6:10] == BOUNDARY).all()  # two pixels on each side of the contact


def test_default_width_is_2():
    labels = two_touching_squares()
    np.testing.assert_array_equal(instances_to_semantic(labels), instances_to_semantic(labels, boundary_width=2))


def test_ids_need_not_be_consecutive_and_dtype_free():
    labels = two_touching_squares()
    relabelled = np.where(labels == 1, 70000, np.where(labels == 2, 3, 0)).astype(np.uint32)
    np.testing.assert_array_equal(instances_to_semantic(relabelled, 1), instances_to_semantic(labels, 1))
    np.testing.assert_array_equal(instances_to_semantic(labels.astype(np.uint8), 1), instances_to_semantic(labels, 1))


def test_image_border_is_not_a_boundary():
    labels = np.ones((4, 5), np.int32)  # one object filling the image
    np.testing.assert_array_equal(instances_to_semantic(labels, 1), np.full((4, 5), CELL, np.uint8))


def test_bool_mask_is_one_object():
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    expected = np.zeros((5, 5), np.uint8)
    expected[1:4, 1:4] = BOUNDARY
    expected[2, 2] = CELL
    np.testing.assert_array_equal(instances_to_semantic(mask, 1), expected)


def test_empty_image():
    out = instances_to_semantic(np.zeros((6, 7), np.uint16))
    assert out.dtype == np.uint8 and out.shape == (6, 7)
    assert not out.any()


@pytest.mark.parametrize(
    ("labels", "width", "error", "match"),
    [
        (np.zeros((3, 4, 5), int), 1, ValueError, r"2D label image .* shape \(3, 4, 5\)"),
        (np.zeros((4, 5), float), 1, TypeError, "integer label image"),
        (-np.ones((4, 5), int), 1, ValueError, "non-negative"),
        (np.zeros((4, 5), int), 0, ValueError, "positive integer"),
        (np.zeros((4, 5), int), 1.5, ValueError, "positive integer"),
        (np.zeros((4, 5), int), True, ValueError, "positive integer, got True"),
    ],
)
def test_instances_to_semantic_errors(labels, width, error, match):
    with pytest.raises(error, match=match):
        instances_to_semantic(labels, width)


def two_bars_with_gap():
    """Two 10x8 rectangles with a 3-pixel gap between them (columns 10, 11, 12)."""
    labels = np.zeros((20, 23), np.int32)
    labels[5:15, 2:10] = 1
    labels[5:15, 13:21] = 2
    return labels


def test_border_weight_maximum_in_gap():
    labels = two_bars_with_gap()
    w0, sigma = 10.0, 5.0
    weights = border_weight_map(labels, w0=w0, sigma=sigma)
    assert weights.dtype == np.float32 and weights.shape == labels.shape
    # in the gap d1 + d2 = 4 (e.g. 2 + 2 in column 11, 1 + 3 in columns 10 and 12)
    expected = w0 * np.exp(-(4.0**2) / (2 * sigma**2))
    assert expected == pytest.approx(7.2614904)
    np.testing.assert_allclose(weights[5:15, 10:13], expected, rtol=1e-6)
    assert weights.max() == pytest.approx(expected, rel=1e-6)
    # the maximum is reached only in the gap
    rows, cols = np.nonzero(np.isclose(weights, weights.max(), rtol=1e-6))
    assert set(cols.tolist()) == {10, 11, 12} and set(rows.tolist()) == set(range(5, 15))


def test_border_weight_zero_inside_objects():
    labels = two_bars_with_gap()
    weights = border_weight_map(labels)
    assert (weights[labels > 0] == 0).all()
    assert (weights[labels == 0] > 0).any()


def test_border_weight_just_outside_gap():
    labels = two_bars_with_gap()
    weights = border_weight_map(labels, w0=10.0, sigma=5.0)
    # above the gap centre (row 4, column 11): nearest pixels (5, 9) and (5, 13), each sqrt(5) away
    expected = 10.0 * np.exp(-((2 * np.sqrt(5)) ** 2) / 50)
    assert weights[4, 11] == pytest.approx(expected, rel=1e-5)


def test_border_weight_small_far_from_objects():
    labels = np.zeros((20, 80), np.int32)
    labels[5:15, 2:10] = 1
    labels[5:15, 13:21] = 2
    w0, sigma = 10.0, 5.0
    weights = border_weight_map(labels, w0=w0, sigma=sigma)
    assert (weights[:, 40:] == 0).all()  # beyond the 3-sigma window of both objects
    assert (weights[:, 30:] < 1e-3 * w0).all()


def test_border_weight_single_object_is_zero():
    labels = np.zeros((20, 20), np.int32)
    labels[5:10, 5:10] = 1
    assert not border_weight_map(labels).any()


def test_border_weight_empty():
    weights = border_weight_map(np.zeros((6, 6), np.int32))
    assert weights.dtype == np.float32 and not weights.any()


def test_border_weight_scales_with_w0():
    labels = two_bars_with_gap()
    np.testing.assert_allclose(border_weight_map(labels, w0=3.0), 0.3 * border_weight_map(labels, w0=10.0), rtol=1e-6)


def test_class_weight_map_inverse_frequency():
    semantic = np.array([[0, 0, 0, 0, 0], [0, 1, 1, 1, 2]], np.uint8)  # 6 bg, 3 cell, 1 boundary
    weights = class_weight_map(semantic)
    assert weights.dtype == np.float32
    expected = np.array([10 / 18, 10 / 9, 10 / 3], np.float32)[semantic]
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    # each present class gets the same total weight
    totals = [weights[semantic == k].sum() for k in range(3)]
    np.testing.assert_allclose(totals, [10 / 3] * 3, rtol=1e-6)


def test_class_weight_map_clips():
    semantic = np.zeros((10, 100), np.uint8)
    semantic[0, 0] = 2  # 1 boundary pixel in 1000: 1000 / (2 * 1) = 500 -> 10
    weights = class_weight_map(semantic)
    assert weights[0, 0] == pytest.approx(10.0)
    assert weights[5, 5] == pytest.approx(1000 / (2 * 999))


def test_class_weight_map_mask_zero_outside():
    semantic = np.array([[0, 0, 1, 1], [0, 2, 1, 1]], np.uint8)
    mask = np.array([[True, True, False, False], [True, True, True, False]])
    weights = class_weight_map(semantic, mask)
    assert (weights[~mask] == 0).all()
    # inside the mask: 3 bg, 1 cell, 1 boundary among 5 pixels
    np.testing.assert_allclose(weights[0, :2], 5 / 9, rtol=1e-6)
    assert weights[1, 1] == pytest.approx(5 / 3)
    assert weights[1, 2] == pytest.approx(5 / 3)


def test_class_weight_map_empty_mask():
    semantic = np.ones((3, 3), np.uint8)
    weights = class_weight_map(semantic, np.zeros((3, 3), bool))
    assert not weights.any()


def test_border_weight_mask_equals_unmasked_map_on_mask_and_zero_elsewhere():
    # three squares: two with a 4-px gap on the left, one far away on the right
    labels = np.zeros((40, 120), np.int32)
    labels[10:20, 5:15] = 1
    labels[10:20, 19:29] = 2
    labels[10:20, 95:105] = 3
    full = border_weight_map(labels)
    mask = np.zeros(labels.shape, bool)
    mask[:, :40] = True
    masked = border_weight_map(labels, mask=mask)
    np.testing.assert_array_equal(masked[mask], full[mask])
    assert (masked[~mask] == 0).all()
    assert masked[15, 16] > 5  # the gap keeps its weight
    with pytest.raises(ValueError, match="mask must have the shape"):
        border_weight_map(labels, mask=mask[:, :10])


# ----------------------------------------------------------------------------- any id values


def test_border_weight_with_an_id_of_two_to_the_31():
    # find_objects runs over relabelled ids 1..n: an id of 2**31 - 1 costs what 2 does (no 2**31-entry list)
    labels = two_bars_with_gap().astype(np.int64)
    huge = np.where(labels == 2, 2**31 - 1, labels)
    np.testing.assert_array_equal(border_weight_map(huge), border_weight_map(labels))
    np.testing.assert_array_equal(instances_to_semantic(huge), instances_to_semantic(labels))


def test_border_weight_of_a_bool_mask_is_that_of_one_object():
    labels = two_bars_with_gap()
    np.testing.assert_array_equal(border_weight_map(labels > 0), border_weight_map((labels > 0).astype(np.uint8)))
    assert not border_weight_map(labels > 0).any()  # one object: no second nearest object anywhere


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(np.int64, st.tuples(st.integers(3, 10), st.integers(3, 10)), elements=st.integers(0, 4)),
    st.lists(st.integers(1, 2**40), min_size=4, max_size=4, unique=True),
)
def test_targets_depend_only_on_which_pixels_share_an_id(labels, new_ids):
    # any injective map of the ids (large, unordered) gives the same targets and weights
    mapping = np.array([0, *new_ids], np.int64)
    renamed = mapping[labels]
    np.testing.assert_array_equal(instances_to_semantic(renamed, 1), instances_to_semantic(labels, 1))
    np.testing.assert_allclose(border_weight_map(renamed, sigma=2.0), border_weight_map(labels, sigma=2.0), rtol=1e-6)
