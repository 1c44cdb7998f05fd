"""Tests for cellrefine.postprocess on hand-made probability maps and label stacks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cellrefine.postprocess import (
    PostprocessSettings,
    foreground_mask,
    probabilities_to_instances,
    probabilities_to_instances_3d,
    relabel_sequential,
    stitch_planes,
)

BACKGROUND_PIXEL = (0.9, 0.05, 0.05)
CELL_PIXEL = (0.05, 0.9, 0.05)
BOUNDARY_PIXEL = (0.05, 0.15, 0.8)


def probability_map(shape=(20, 30)):
    """(3, Y, X) probabilities, all background."""
    probabilities = np.empty((3,) + shape, np.float32)
    probabilities[:] = np.array(BACKGROUND_PIXEL, np.float32)[:, None, None]
    return probabilities


def paint(probabilities, window, pixel):
    probabilities[(slice(None),) + window] = np.array(pixel, np.float32)[:, None, None]


def test_two_blobs_separated_by_a_boundary_ridge():
    probabilities = probability_map()
    paint(probabilities, np.s_[5:15, 3:27], CELL_PIXEL)
    paint(probabilities, np.s_[5:15, 14:16], BOUNDARY_PIXEL)  # a 2-pixel ridge splits the region
    instances = probabilities_to_instances(probabilities)
    assert instances.dtype == np.uint32 and instances.shape == (20, 30)
    expected = np.zeros((20, 30), np.uint32)
    expected[5:15, 3:15] = 1  # each side floods its half of the ridge
    expected[5:15, 15:27] = 2
    np.testing.assert_array_equal(instances, expected)


def test_without_the_ridge_it_is_one_object():
    probabilities = probability_map()
    paint(probabilities, np.s_[5:15, 3:27], CELL_PIXEL)
    expected = np.zeros((20, 30), np.uint32)
    expected[5:15, 3:27] = 1
    np.testing.assert_array_equal(probabilities_to_instances(probabilities), expected)


def test_boundary_rim_belongs_to_the_object():
    # a cell core surrounded by a boundary rim: the watershed grows the seed over the rim
    probabilities = probability_map((12, 12))
    paint(probabilities, np.s_[2:10, 2:10], BOUNDARY_PIXEL)
    paint(probabilities, np.s_[4:8, 4:8], CELL_PIXEL)
    expected = np.zeros((12, 12), np.uint32)
    expected[2:10, 2:10] = 1
    np.testing.assert_array_equal(probabilities_to_instances(probabilities), expected)


def test_min_size_removes_small_objects():
    probabilities = probability_map()
    paint(probabilities, np.s_[2:12, 2:12], CELL_PIXEL)  # 100 pixels
    paint(probabilities, np.s_[15:18, 20:23], CELL_PIXEL)  # 9 pixels
    assert probabilities_to_instances(probabilities).max() == 1  # default min_size 15
    small_kept = probabilities_to_instances(probabilities, min_size=9)
    assert small_kept.max() == 2
    assert (small_kept == 2).sum() == 9
    assert probabilities_to_instances(probabilities, min_size=10).max() == 1
    assert probabilities_to_instances(probabilities, min_size=101).max() == 0
    # ids stay sequential after removal
    only_small = probability_map()
    paint(only_small, np.s_[2:4, 2:4], CELL_PIXEL)  # removed
    paint(only_small, np.s_[10:16, 10:16], CELL_PIXEL)
    np.testing.assert_array_equal(np.unique(probabilities_to_instances(only_small)), [0, 1])


def test_min_seed_size_drops_tiny_seeds():
    probabilities = probability_map()
    paint(probabilities, np.s_[2:12, 2:12], BOUNDARY_PIXEL)  # foreground, but no cell core...
    paint(probabilities, np.s_[6:7, 6:9], CELL_PIXEL)  # ...except a 3-pixel seed
    assert probabilities_to_instances(probabilities).max() == 0  # min_seed_size 4
    instances = probabilities_to_instances(probabilities, min_seed_size=3)
    assert instances.max() == 1 and (instances == 1).sum() == 100


def test_all_background():
    instances = probabilities_to_instances(probability_map((7, 9)))
    assert instances.dtype == np.uint32 and instances.shape == (7, 9)
    assert not instances.any()


def test_thresholds():
    probabilities = probability_map((10, 10))
    paint(probabilities, np.s_[2:8, 2:8], (0.3, 0.65, 0.05))
    assert probabilities_to_instances(probabilities).max() == 1
    assert probabilities_to_instances(probabilities, seed_threshold=0.7).max() == 0
    assert probabilities_to_instances(probabilities, foreground_threshold=0.75).max() == 0


def test_settings_object_and_overrides():
    probabilities = probability_map()
    paint(probabilities, np.s_[15:18, 20:23], CELL_PIXEL)  # 9 pixels
    settings = PostprocessSettings(min_size=5)
    assert probabilities_to_instances(probabilities, settings).max() == 1
    assert probabilities_to_instances(probabilities, settings, min_size=10).max() == 0
    assert settings.min_size == 5  # overrides do not change the settings object


def test_input_not_modified():
    probabilities = probability_map()
    paint(probabilities, np.s_[5:15, 3:27], CELL_PIXEL)
    original = probabilities.copy()
    probabilities_to_instances(probabilities)
    np.testing.assert_array_equal(probabilities, original)


@pytest.mark.parametrize("shape", [(2, 5, 5), (3, 5), (1, 3, 5, 5)])
def test_bad_probability_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(3, Y, X\), got " + repr(shape).replace("(", r"\(").replace(")", r"\)")):
        probabilities_to_instances(np.zeros(shape, np.float32))


def rimmed_cell(shape=(12, 12)):
    """A 4x4 cell core in an 8x8 boundary rim, background around."""
    probabilities = probability_map(shape)
    paint(probabilities, np.s_[2:10, 2:10], BOUNDARY_PIXEL)
    paint(probabilities, np.s_[4:8, 4:8], CELL_PIXEL)
    return probabilities


@pytest.mark.parametrize(("boundary_weight", "threshold", "side"), [(1.0, 0.5, 8), (0.5, 0.5, 8), (0.3, 0.5, 4), (0.0, 0.2, 4)])
def test_boundary_weight_moves_the_outline_into_the_rim(boundary_weight, threshold, side):
    # rim pixels: cell 0.15 + weight x boundary 0.8 -> 0.95 / 0.55 / 0.39 / 0.15; the core is 0.9 + weight x 0.05
    instances = probabilities_to_instances(rimmed_cell(), foreground_threshold=threshold, boundary_weight=boundary_weight)
    expected = np.zeros((12, 12), np.uint32)
    start = (12 - side) // 2
    expected[start : start + side, start : start + side] = 1
    np.testing.assert_array_equal(instances, expected)


def test_boundary_weight_one_is_the_background_rule_bit_for_bit():
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet((1, 1, 1), size=(2, 40, 50)).transpose(3, 0, 1, 2)  # (3, Z, Y, X), summing to 1
    for threshold in (0.3, 0.5, 0.7, 0.9):
        plane = probabilities[:, 0].astype(np.float32)
        np.testing.assert_array_equal(foreground_mask(plane, foreground_threshold=threshold), plane[0] < np.float32(1 - threshold))
        volume = probabilities.astype(np.float16)
        np.testing.assert_array_equal(foreground_mask(volume, foreground_threshold=threshold), volume[0] < np.float16(1 - threshold))


def test_boundary_weight_in_3d_matches_each_plane():
    volume = np.stack([rimmed_cell((12, 12))] * 3, axis=1).astype(np.float16)  # (3, 3, 12, 12): a 4x4x3 core in an 8x8 rim
    foreground = foreground_mask(volume, foreground_threshold=0.5, boundary_weight=0.3)
    assert foreground.shape == (3, 12, 12) and foreground.sum() == 3 * 16
    np.testing.assert_array_equal(foreground[1], foreground_mask(volume[:, 1], foreground_threshold=0.5, boundary_weight=0.3))
    instances = probabilities_to_instances_3d(volume, foreground_threshold=0.5, boundary_weight=0.3, min_size=1, min_seed_size=1)
    assert (instances == 1).sum() == 3 * 16 and instances.max() == 1


def test_foreground_mask_checks_its_input():
    with pytest.raises(ValueError, match=r"shape \(3, Y, X\)"):
        foreground_mask(np.zeros((2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="boundary_weight must be a number"):
        foreground_mask(rimmed_cell(), boundary_weight="0.3")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"foreground_threshold": 1.5}, "foreground_threshold must be in"),
        ({"seed_threshold": -0.1}, "seed_threshold must be in"),
        ({"min_size": -1}, "min_size must be a non-negative integer"),
        ({"min_seed_size": 2.5}, "min_seed_size must be a non-negative integer"),
        ({"boundary_weight": 1.5}, "boundary_weight must be in"),
    ],
)
def test_bad_settings(override, match):
    with pytest.raises(ValueError, match=match):
        probabilities_to_instances(probability_map((5, 5)), **override)
    with pytest.raises(ValueError, match=match):
        PostprocessSettings(**override).validate()


# ----------------------------------------------------------------------------- stitching


def test_object_over_three_planes_keeps_one_id():
    stack = np.zeros((3, 10, 20), np.int32)
    stack[0, 2:8, 2:8] = 5  # per-plane ids are arbitrary
    stack[1, 2:8, 3:9] = 2  # shifted by one pixel: IoU 30/42
    stack[2, 2:8, 4:10] = 7
    out = stitch_planes(stack)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, np.where(stack > 0, 1, 0))


def test_swapped_ids_are_followed_by_overlap():
    stack = np.zeros((2, 10, 20), np.int32)
    stack[0, 2:8, 2:8], stack[0, 2:8, 12:18] = 1, 2
    stack[1, 2:8, 2:8], stack[1, 2:8, 12:18] = 2, 1  # the same objects, ids swapped
    out = stitch_planes(stack)
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(np.unique(out), [0, 1, 2])


def test_split_object_continues_once():
    stack = np.zeros((2, 10, 20), np.int32)
    stack[0, 0:10, 0:20] = 1
    stack[1, 0:10, 0:10] = 1  # two halves, IoU 0.5 each with the parent
    stack[1, 0:10, 10:20] = 2
    out = stitch_planes(stack)
    assert (out[0] == 1).all()
    assert (out[1, :, :10] == 1).all()  # the first half continues the object
    assert (out[1, :, 10:] == 2).all()  # the second gets a new id


def test_best_match_wins():
    stack = np.zeros((2, 10, 30), np.int32)
    stack[0, 0:10, 0:10] = 1
    stack[1, 0:10, 0:4] = 1  # IoU 40/100 = 0.4
    stack[1, 0:10, 4:12] = 2  # IoU 60/120 = 0.5: the better match takes the id
    out = stitch_planes(stack)
    assert (out[1, :, 4:12] == 1).all()
    assert (out[1, :, 0:4] == 2).all()


def test_iou_below_threshold_gets_a_new_id():
    stack = np.zeros((2, 10, 20), np.int32)
    stack[0, 0:10, 0:10] = 1
    stack[1, 0:10, 7:17] = 1  # overlap 30, union 170: IoU 0.176
    out = stitch_planes(stack)
    assert (out[0, :, :10] == 1).all()
    assert (out[1, :, 7:17] == 2).all()
    linked = stitch_planes(stack, threshold=0.15)
    assert (linked[1, :, 7:17] == 1).all()


def test_ids_are_unique_over_the_stack():
    stack = np.zeros((4, 10, 30), np.int32)
    stack[0, 0:5, 0:5], stack[0, 0:5, 10:15] = 1, 2
    stack[1, 0:5, 10:15], stack[1, 6:10, 20:30] = 1, 2  # one continues, one is new
    stack[2, 6:10, 20:30] = 1
    stack[3, 0:5, 0:5] = 1  # reappears after a gap: a new object
    out = stitch_planes(stack)
    assert (out[0, 0:5, 0:5] == 1).all() and (out[0, 0:5, 10:15] == 2).all()
    assert (out[1, 0:5, 10:15] == 2).all() and (out[1, 6:10, 20:30] == 3).all()
    assert (out[2, 6:10, 20:30] == 3).all()
    assert (out[3, 0:5, 0:5] == 4).all()
    np.testing.assert_array_equal(np.unique(out), [0, 1, 2, 3, 4])


def test_stitch_empty_and_single_plane():
    assert not stitch_planes(np.zeros((3, 4, 4), np.int32)).any()
    single = np.zeros((1, 4, 4), np.int32)
    single[0, 1:3, 1:3] = 9
    np.testing.assert_array_equal(stitch_planes(single), np.where(single > 0, 1, 0))


def test_stitch_errors():
    with pytest.raises(ValueError, match=r"\(Z, Y, X\) stack, got shape \(4, 4\)"):
        stitch_planes(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="stitch threshold must be in"):
        stitch_planes(np.zeros((2, 4, 4), np.int32), threshold=0)


# ----------------------------------------------------------------------------- relabelling


def test_relabel_sequential():
    labels = np.array([[0, 5, 5], [9, 0, 2]], np.int64)
    original = labels.copy()
    out, n = relabel_sequential(labels)
    assert out.dtype == np.uint32 and n == 3
    np.testing.assert_array_equal(out, [[0, 2, 2], [3, 0, 1]])
    np.testing.assert_array_equal(labels, original)
    shifted, n = relabel_sequential(labels, offset=10)
    np.testing.assert_array_equal(shifted, [[0, 11, 11], [12, 0, 10]])


def test_relabel_sequential_empty():
    out, n = relabel_sequential(np.zeros((3, 3), np.uint16))
    assert n == 0 and not out.any() and out.dtype == np.uint32
    out, n = relabel_sequential(np.zeros((0, 3), np.uint16))
    assert n == 0 and out.shape == (0, 3)


def test_settings_reject_what_stitch_planes_rejects():
    with pytest.raises(ValueError, match="stitch_threshold"):
        PostprocessSettings(stitch_threshold=0).validate()


def test_relabel_sequential_huge_ids_need_no_table_over_the_id_range():
    labels = np.array([[0, 2**31 - 1, 5], [2**62, 0, 5]], np.int64)
    out, n = relabel_sequential(labels)
    np.testing.assert_array_equal(out, [[0, 2, 1], [3, 0, 1]])
    assert n == 3 and out.dtype == np.uint32
    no_background, n = relabel_sequential(np.array([[7, 2**40], [7, 7]], np.uint64), offset=4)
    np.testing.assert_array_equal(no_background, [[4, 5], [4, 4]])
    assert n == 2


def test_relabel_sequential_bool_and_errors():
    out, n = relabel_sequential(np.array([[True, False], [True, True]]))
    np.testing.assert_array_equal(out, [[1, 0], [1, 1]])
    assert n == 1
    with pytest.raises(TypeError, match="integer label image, got dtype float64"):
        relabel_sequential(np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-negative .* got minimum -3"):
        relabel_sequential(np.array([[0, -3]]))


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.uint8, np.int32, np.uint32, np.int64, np.uint64]),
        st.tuples(st.integers(0, 6), st.integers(1, 6)),
        elements=st.integers(0, 200),
    ),
    st.sampled_from([0, 10**6, 2**31 - 200]),
    st.integers(1, 5),
)
def test_relabel_sequential_keeps_the_order_of_any_ids(labels, shift, offset):
    labels = np.where(labels > 0, labels.astype(np.uint64) + shift, 0).astype(np.uint64 if shift else labels.dtype)
    out, n = relabel_sequential(labels, offset=offset)
    ids = np.unique(labels[labels > 0])
    assert n == len(ids) and out.dtype == np.uint32 and out.shape == labels.shape
    expected = np.where(labels > 0, np.searchsorted(ids, labels) + offset, 0)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        ({"foreground": 0.5}, TypeError, r"unknown post-processing setting 'foreground' \(did you mean 'foreground_threshold'\?\)"),
        ({"seed_threshold": "high"}, TypeError, "seed_threshold must be a number, got 'high' of type str"),
        ({"min_seed_size": None}, TypeError, "min_seed_size must be a number, got None"),
        ({"min_size": float("nan")}, ValueError, "min_size must be a non-negative integer, got nan"),
    ],
)
def test_settings_from_a_dict_name_the_bad_key(values, error, match):
    with pytest.raises(error, match=match):
        probabilities_to_instances(probability_map((5, 5)), **values)
    with pytest.raises(error, match=match):
        PostprocessSettings(**values).validate()
