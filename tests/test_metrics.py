"""Tests for cellrefine.metrics with hand-computed expected values."""

import numpy as np
import pytest

from cellrefine.metrics import DEFAULT_THRESHOLDS, aggregate, match_instances, object_scores, pixel_iou

MATCH_KEYS = {
    "threshold",
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "n_true",
    "n_pred",
    "mean_matched_iou",
}


def random_squares(rng, shape=(64, 64), n=6, size=8):
    """Non-overlapping squares on a grid of cells, randomly placed within their cell, ids 1..n."""
    labels = np.zeros(shape, np.int32)
    cells = [(r, c) for r in range(0, shape[0] - size, 2 * size) for c in range(0, shape[1] - size, 2 * size)]
    for k, i in enumerate(rng.choice(len(cells), size=n, replace=False), start=1):
        r, c = cells[i]
        dr, dc = rng.integers(0, size, 2)
        labels[r + dr : r + dr + size, c + dc : c + dc + size] = k
    return labels


def shifted_pair():
    """Two 10x10 squares overlapping in a 10x5 region: IoU = 50 / 150 = 1/3."""
    truth = np.zeros((30, 30), np.int32)
    pred = np.zeros((30, 30), np.int32)
    truth[0:10, 0:10] = 1
    pred[0:10, 5:15] = 1
    return truth, pred


def merge_pair():
    """True objects of 24 and 8 px side by side; one 32 px prediction covers both (IoU 0.75 and 0.25)."""
    truth = np.zeros((6, 10), np.int32)
    truth[1:5, 1:7] = 1
    truth[1:5, 7:9] = 2
    pred = np.zeros((6, 10), np.int32)
    pred[1:5, 1:9] = 3
    return truth, pred


def test_default_thresholds():
    assert DEFAULT_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def test_identical_labelings_score_one_everywhere():
    rng = np.random.default_rng(0)
    truth = random_squares(rng)
    # same objects, ids permuted and made non-consecutive
    new_ids = np.concatenate([[0], rng.permutation(np.arange(1, 7)) * 17 + 3])
    pred = new_ids[truth]
    s = object_scores(truth, pred)
    assert s["n_true"] == s["n_pred"] == 6
    assert s["f1"] == [1.0] * 9
    assert s["ap"] == [1.0] * 9
    assert s["tp"] == [6] * 9 and s["fp"] == [0] * 9 and s["fn"] == [0] * 9
    assert s["mean_f1"] == s["mean_ap"] == 1.0
    assert s["merges"] == s["splits"] == 0
    m = match_instances(truth, pred, threshold=1.0)
    assert set(m) == MATCH_KEYS
    assert m["tp"] == 6 and m["mean_matched_iou"] == 1.0


def test_shifted_square_iou_one_third():
    truth, pred = shifted_pair()
    low = match_instances(truth, pred, threshold=0.3)
    assert (low["tp"], low["fp"], low["fn"]) == (1, 0, 0)
    assert low["f1"] == low["precision"] == low["recall"] == low["accuracy"] == 1.0
    assert low["mean_matched_iou"] == pytest.approx(1 / 3)
    high = match_instances(truth, pred, threshold=0.5)
    assert (high["tp"], high["fp"], high["fn"]) == (0, 1, 1)
    assert high["f1"] == high["precision"] == high["recall"] == high["accuracy"] == 0.0
    assert high["mean_matched_iou"] == 0.0
    assert high["threshold"] == 0.5 and high["n_true"] == high["n_pred"] == 1
    # IoU 1/3 is just above 0.333 and just below 0.334
    assert match_instances(truth, pred, threshold=0.333)["tp"] == 1
    assert match_instances(truth, pred, threshold=0.334)["tp"] == 0


def test_non_consecutive_ids_and_mixed_dtypes():
    truth = np.zeros((10, 20), np.uint16)
    truth[0:4, 0:4] = 5
    truth[5:9, 10:14] = 1000
    pred = np.zeros((10, 20), np.int64)
    pred[0:4, 0:4] = 3  # exact
    pred[5:9, 12:16] = 7  # 8 px overlap of 16 + 16 -> IoU 8/24 = 1/3
    pred[0:2, 17:19] = 2**40  # false positive
    m = match_instances(truth, pred, threshold=0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 2, 1)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 / 5)
    assert m["accuracy"] == pytest.approx(1 / 4)
    m = match_instances(truth, pred, threshold=0.3)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 0)
    assert m["mean_matched_iou"] == pytest.approx((1 + 1 / 3) / 2)


def test_merge():
    truth, pred = merge_pair()
    s = object_scores(truth, pred)
    assert (s["merges"], s["splits"]) == (1, 0)
    assert (s["n_true"], s["n_pred"]) == (2, 1)
    # thresholds 0.5 .. 0.75 match the 24 px object (IoU exactly 0.75 counts); 0.8 .. 0.9 match nothing
    assert s["tp"] == [1] * 6 + [0] * 3
    assert s["fp"] == [0] * 6 + [1] * 3
    assert s["fn"] == [1] * 6 + [2] * 3
    assert s["precision"] == [1.0] * 6 + [0.0] * 3
    assert s["recall"] == [0.5] * 6 + [0.0] * 3
    assert s["f1"] == pytest.approx([2 / 3] * 6 + [0.0] * 3)
    assert s["ap"] == pytest.approx([1 / 2] * 6 + [0.0] * 3)
    assert s["mean_f1"] == pytest.approx(4 / 9)
    assert s["mean_ap"] == pytest.approx(1 / 3)
    # at 0.25 both pairs are candidates for the same prediction: one match, the better one
    m = match_instances(truth, pred, threshold=0.25)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)
    assert m["mean_matched_iou"] == 0.75


def test_split():
    pred, truth = merge_pair()  # roles swapped: one true object cut in two predictions
    s = object_scores(truth, pred, thresholds=(0.5, 0.8))
    assert (s["merges"], s["splits"]) == (0, 1)
    assert s["tp"] == [1, 0] and s["fp"] == [1, 2] and s["fn"] == [0, 1]
    assert s["precision"] == [0.5, 0.0]
    assert s["recall"] == [1.0, 0.0]
    assert s["f1"] == pytest.approx([2 / 3, 0.0])
    assert s["ap"] == pytest.approx([1 / 2, 0.0])
    assert s["mean_f1"] == pytest.approx(1 / 3)


def test_half_area_is_not_enough_for_merge():
    truth = np.zeros((4, 8), np.int32)
    truth[0:2, 0:4] = 1
    truth[2:4, 0:4] = 2
    pred = np.zeros((4, 8), np.int32)
    pred[0:4, 0:2] = 1  # exactly half of each true object: not "more than half"
    pred[0:4, 2:4] = 2
    s = object_scores(truth, pred, thresholds=(0.5,))
    assert (s["merges"], s["splits"]) == (0, 0)


def test_optimal_assignment_beats_greedy_at_low_threshold():
    # 1D images: T1 = [0, 10), T2 = [10, 20); P2 = [0, 4), P1 = [4, 14)
    truth = np.array([1] * 10 + [2] * 10)
    pred = np.array([2] * 4 + [1] * 10 + [0] * 6)
    # IoU(T1, P1) = 6/14, IoU(T1, P2) = 4/10, IoU(T2, P1) = 4/16
    m = match_instances(truth, pred, threshold=0.25)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)  # greedy on IoU would find only T1-P1
    assert m["mean_matched_iou"] == pytest.approx((0.4 + 0.25) / 2)
    m = match_instances(truth, pred, threshold=0.3)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)
    assert m["mean_matched_iou"] == pytest.approx(6 / 14)
    s = object_scores(truth, pred, thresholds=(0.25,))
    assert (s["merges"], s["splits"]) == (0, 1)  # P2 (4/4) and P1 (6/10) lie mostly inside T1


def test_both_empty():
    empty = np.zeros((8, 8), np.uint8)
    m = match_instances(empty, empty.copy())
    assert (m["tp"], m["fp"], m["fn"], m["n_true"], m["n_pred"]) == (0, 0, 0, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == m["accuracy"] == 1.0
    s = object_scores(empty, empty)
    assert s["f1"] == [1.0] * 9 and s["mean_f1"] == 1.0 and s["mean_ap"] == 1.0
    assert (s["merges"], s["splits"]) == (0, 0)


def test_empty_versus_objects():
    empty = np.zeros((8, 8), np.int32)
    full = np.zeros((8, 8), np.int32)
    full[0:2, 0:2] = 1
    full[4:6, 4:6] = 9
    m = match_instances(empty, full)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 0)
    assert m["precision"] == m["recall"] == m["f1"] == m["accuracy"] == m["mean_matched_iou"] == 0.0
    m = match_instances(full, empty)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 2)
    assert m["precision"] == m["recall"] == m["f1"] == m["accuracy"] == 0.0
    s = object_scores(full, empty)
    assert s["mean_f1"] == 0.0 and s["fn"] == [2] * 9


def test_bool_and_integral_float_inputs():
    truth, pred = shifted_pair()
    expected = match_instances(truth, pred, threshold=0.3)
    assert match_instances(truth.astype(bool), pred.astype(bool), threshold=0.3) == expected
    assert match_instances(truth.astype(np.float32), pred.astype(np.float64), threshold=0.3) == expected


def test_3d_labels():
    truth = np.zeros((4, 6, 6), np.int32)
    truth[0:2, 0:3, 0:3] = 1
    pred = np.zeros((4, 6, 6), np.int32)
    pred[0:4, 0:3, 0:3] = 4  # 18 of 36 voxels shared -> IoU 0.5
    assert match_instances(truth, pred, threshold=0.5)["tp"] == 1
    assert match_instances(truth, pred, threshold=0.51)["tp"] == 0


def test_inputs_not_modified():
    truth, pred = merge_pair()
    t0, p0 = truth.copy(), pred.copy()
    object_scores(truth, pred)
    match_instances(truth, pred, threshold=0.1)
    pixel_iou(np.minimum(truth, 2), np.minimum(pred, 2))
    np.testing.assert_array_equal(truth, t0)
    np.testing.assert_array_equal(pred, p0)


def test_pixel_iou_known_values_and_mask():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    np.testing.assert_allclose(pixel_iou(truth, pred), [2 / 4, 2 / 3, 2 / 3])
    iou4 = pixel_iou(truth, pred, n_classes=4)
    np.testing.assert_allclose(iou4[:3], [2 / 4, 2 / 3, 2 / 3])
    assert np.isnan(iou4[3])
    mask = np.array([[True] * 4, [False] * 4])
    iou = pixel_iou(truth, pred, mask=mask)
    np.testing.assert_allclose(iou[:2], [1 / 2, 2 / 3])
    assert np.isnan(iou[2])
    assert iou.shape == (3,) and iou.dtype == np.float64


def test_pixel_iou_bad_inputs():
    truth = np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match="n_classes"):
        pixel_iou(truth, np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="same shape"):
        pixel_iou(truth, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="boolean"):
        pixel_iou(truth, truth, mask=np.ones((1, 3), int))
    with pytest.raises(ValueError, match="mask"):
        pixel_iou(truth, truth, mask=np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="positive"):
        pixel_iou(truth, truth, n_classes=0)


def test_aggregate_sums_counts_over_images():
    truth1, pred1 = shifted_pair()  # 1 object, IoU 1/3
    truth2 = np.zeros((10, 10), np.int32)
    truth2[0:3, 0:3] = 1
    truth2[5:8, 5:8] = 2
    truth2[0:2, 7:9] = 3
    pred2 = truth2 * 10  # 3 perfect objects
    pred2[0:2, 7:9] = 0  # ... minus one missed
    thresholds = (0.3, 0.5)
    s1 = object_scores(truth1, pred1, thresholds)
    s2 = object_scores(truth2, pred2, thresholds)
    assert s2["tp"] == [2, 2] and s2["fn"] == [1, 1]
    agg = aggregate([s1, s2])
    assert agg["thresholds"] == [0.3, 0.5]
    assert agg["tp"] == [3, 2] and agg["fp"] == [0, 1] and agg["fn"] == [1, 2]
    assert agg["precision"] == pytest.approx([1.0, 2 / 3])
    assert agg["recall"] == pytest.approx([3 / 4, 2 / 4])
    assert agg["f1"] == pytest.approx([6 / 7, 4 / 7])
    assert agg["ap"] == pytest.approx([3 / 4, 2 / 5])
    assert agg["mean_f1"] == pytest.approx(5 / 7)
    assert agg["mean_ap"] == pytest.approx((3 / 4 + 2 / 5) / 2)
    assert (agg["n_true"], agg["n_pred"], agg["n_images"]) == (4, 3, 2)
    assert (agg["merges"], agg["splits"]) == (0, 0)


def test_aggregate_merges_splits_and_empty_images():
    truth, pred = merge_pair()
    empty = np.zeros((3, 3), np.int32)
    agg = aggregate([object_scores(truth, pred), object_scores(pred, truth), object_scores(empty, empty)])
    assert (agg["merges"], agg["splits"]) == (1, 1)
    assert agg["tp"][0] == 2 and agg["fp"][0] == 1 and agg["fn"][0] == 1
    only_empty = aggregate([object_scores(empty, empty)])
    assert only_empty["f1"] == [1.0] * 9 and only_empty["mean_ap"] == 1.0


def test_aggregate_bad_inputs():
    truth, pred = shifted_pair()
    with pytest.raises(ValueError, match="empty"):
        aggregate([])
    with pytest.raises(TypeError, match="list"):
        aggregate(object_scores(truth, pred))
    with pytest.raises(ValueError, match="thresholds"):
        aggregate([object_scores(truth, pred, (0.5,)), object_scores(truth, pred, (0.7,))])
    with pytest.raises(ValueError, match="lacks"):
        aggregate([{"thresholds": [0.5]}])


@pytest.mark.parametrize(
    "truth, pred, error, match",
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), ValueError, "same shape"),
        (np.zeros((4, 4)), np.full((4, 4), 0.5), ValueError, "non-integer"),
        (np.zeros((4, 4), complex), np.zeros((4, 4), int), TypeError, "complex"),
        (np.zeros((4, 4), int), np.full((4, 4), np.nan), ValueError, "NaN"),
        (np.full((4, 4), -1), np.zeros((4, 4), int), ValueError, "non-negative"),
        (np.array([["a"]]), np.zeros((1, 1), int), TypeError, "integer label image"),
        (np.int64(3), np.int64(3), ValueError, "dimension"),
    ],
)
def test_bad_label_inputs_raise(truth, pred, error, match):
    with pytest.raises(error, match=match):
        match_instances(truth, pred)
    with pytest.raises(error, match=match):
        object_scores(truth, pred)


def test_bad_thresholds_raise():
    truth, pred = shifted_pair()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        match_instances(truth, pred, threshold=1.5)
    with pytest.raises(TypeError, match="real number"):
        match_instances(truth, pred, threshold="0.5")
    with pytest.raises(ValueError, match="at least one"):
        object_scores(truth, pred, thresholds=())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        object_scores(truth, pred, thresholds=(0.5, -0.1))


# ----------------------------------------------------------------------------- correction_scores


def corrected_scene():
    """A parent segmentation and its correction on the left half (reviewed), hand-checked.

    Parent: 1 (kept by the user), 2 (a false object the user erased), 3 and 4
    (unreviewed, right half). The user painted 5 (a missed object).
    """
    parent = np.zeros((20, 40), np.int32)
    parent[1:6, 1:6] = 1
    parent[1:6, 10:15] = 2
    parent[1:6, 25:30] = 3
    parent[10:15, 25:30] = 4
    corrected = parent.copy()
    corrected[parent == 2] = 0
    corrected[10:15, 1:6] = 5
    reviewed = np.zeros(parent.shape, bool)
    reviewed[:, :20] = True
    return parent, corrected, reviewed


def test_correction_scores_counts_each_kind_of_object():
    from cellrefine.metrics import correction_scores

    parent, corrected, reviewed = corrected_scene()
    perfect = correction_scores(parent, corrected, reviewed, corrected)
    assert perfect == {
        "corrected": 2,
        "corrected_right": 2,
        "painted": 1,
        "painted_right": 1,
        "erased": 1,
        "erased_gone": 1,
        "confirmed": 1,
        "confirmed_kept": 1,
        "unreviewed": 2,
        "unreviewed_kept": 2,
    }
    unchanged = correction_scores(parent, corrected, reviewed, parent)
    assert (unchanged["corrected_right"], unchanged["confirmed_kept"], unchanged["unreviewed_kept"]) == (0, 1, 2)
    # the new model drops object 1, forgets unreviewed 4 and brings back the erased one as a smaller blob
    new = corrected.copy()
    new[parent == 1] = 0
    new[parent == 4] = 0
    new[1:5, 10:14] = 9  # IoU 16/25 with the erased object: not gone
    worse = correction_scores(parent, corrected, reviewed, new)
    assert (worse["painted_right"], worse["erased_gone"], worse["confirmed_kept"], worse["unreviewed_kept"]) == (1, 0, 0, 1)
    # a remnant under half of an erased object's area with IoU < 0.5 counts as gone; more than half does not
    small = corrected.copy()
    small[1:3, 10:14] = 9  # 8 of 25 pixels
    assert correction_scores(parent, corrected, reviewed, small)["erased_gone"] == 1
    split = corrected.copy()
    split[1:6, 10:12] = 8  # two pieces, each IoU 0.4, 20 of 25 pixels foreground
    split[1:6, 12:14] = 9
    assert correction_scores(parent, corrected, reviewed, split)["erased_gone"] == 0


def test_correction_scores_without_mask_and_errors():
    from cellrefine.metrics import correction_scores

    parent, corrected, reviewed = corrected_scene()
    everything = correction_scores(parent, corrected, None, corrected)
    assert everything["unreviewed"] == 0 and everything["confirmed"] == 3 and everything["corrected"] == 2
    with pytest.raises(TypeError, match="reviewed_mask must be a boolean"):
        correction_scores(parent, corrected, reviewed.astype(int), corrected)
    with pytest.raises(ValueError, match="new_instances must have the shape"):
        correction_scores(parent, corrected, reviewed, corrected[:, :10])
    with pytest.raises(ValueError, match="same shape"):
        correction_scores(parent, corrected[:, :10], reviewed, corrected)
    with pytest.raises(ValueError, match="threshold"):
        correction_scores(parent, corrected, reviewed, corrected, threshold=1.5)


def test_object_table_fast_path_matches_sorting_path():
    from cellrefine.metrics.matching import object_table

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, (30, 30)) * 3
    ids, area, index = object_table(labels)  # bincount path (small ids)
    big_ids, big_area, big_index = object_table(labels.astype(np.int64) * 10**9)  # sorting path
    np.testing.assert_array_equal(ids * 10**9, big_ids)
    np.testing.assert_array_equal(area, big_area)
    np.testing.assert_array_equal(index, big_index)
    assert (index[labels.ravel() == 0] == -1).all()
