"""Validation of label images and the sparse IoU table and one-to-one matching behind :mod:`cellrefine.metrics`.

The IoU of all overlapping pairs is computed once from a sparse contingency
table (``np.unique`` over the paired labels of the overlapping pixels), so the
cost is ``O(N log N)`` in the number of pixels whatever the number of objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "COUNT_KEYS",
    "check_labels",
    "check_label_pair",
    "check_threshold",
    "check_thresholds",
    "Overlap",
    "object_table",
    "overlap_table",
    "match_pairs",
    "match_at",
    "ratio",
    "scores_from_counts",
    "merges_and_splits",
]

#: The count keys of a matching result.
COUNT_KEYS = ("tp", "fp", "fn")


# --------------------------------------------------------------------------- validation


def check_labels(array, name: str) -> np.ndarray:
    """Return ``array`` as a non-negative integer ndarray, or raise a clear error."""
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be an integer label image, got complex dtype {array.dtype}; pass the real labels.")
    if kind not in "biuf":
        raise TypeError(f"{name} must be an integer label image, got dtype {array.dtype}; use labels.astype(np.uint32).")
    if array.ndim < 1:
        raise ValueError(f"{name} must be an image with at least one dimension, got a scalar.")
    if kind == "b":
        return array.astype(np.uint8)
    if kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values; a label image must hold whole numbers (0 = background).")
        if not np.array_equal(array, np.round(array)):
            raise ValueError(
                f"{name} is a float array with non-integer values; a label image must hold whole numbers "
                "(0 = background). Label a probability map first (e.g. threshold it and use skimage.measure.label)."
            )
        if array.size and np.abs(array).max() >= 2**53:
            raise ValueError(f"{name} holds labels too large to be represented exactly as floats; pass an integer array.")
        array = array.astype(np.int64)
    if kind in "if" and array.size and array.min() < 0:
        raise ValueError(f"{name} must be non-negative (0 = background, positive ids = objects), got minimum {array.min()}.")
    return array


def check_label_pair(truth, prediction, names=("truth", "prediction")) -> tuple[np.ndarray, np.ndarray]:
    """:func:`check_labels` for two label images that must have the same shape; ``names`` go into the messages."""
    truth = check_labels(truth, names[0])
    prediction = check_labels(prediction, names[1])
    if truth.shape != prediction.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {truth.shape} and {prediction.shape}; "
            "compare images of the same field of view (crop or resize one first)."
        )
    return truth, prediction


def check_threshold(threshold) -> float:
    """An IoU threshold as a float in [0, 1], or TypeError/ValueError."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, Real):
        raise TypeError(f"threshold must be a real number in [0, 1], got {threshold!r} of type {type(threshold).__name__}.")
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (an IoU), got {threshold}.")
    return threshold


def check_thresholds(thresholds) -> list[float]:
    """A number or a non-empty sequence of IoU thresholds as a list of floats in [0, 1]."""
    if isinstance(thresholds, Real):
        thresholds = [thresholds]
    values = nonempty_list(
        thresholds,
        f"thresholds must be a sequence of numbers in [0, 1], got {thresholds!r}.",
        "thresholds must contain at least one IoU threshold, e.g. (0.5, 0.75).",
    )
    return [check_threshold(t) for t in values]


def nonempty_list(values, type_message: str, empty_message: str) -> list:
    """``list(values)``; TypeError(``type_message``) when not iterable, ValueError(``empty_message``) when empty."""
    try:
        items = list(values)
    except TypeError:
        raise TypeError(type_message) from None
    if not items:
        raise ValueError(empty_message)
    return items


# --------------------------------------------------------------------------- overlap table


@dataclass(frozen=True)
class Overlap:
    """Sparse IoU table between the objects of two label images.

    ``rows[k]``, ``cols[k]`` index ``true_ids`` / ``pred_ids`` for the k-th
    overlapping pair; ``inter[k]`` is its intersection in pixels, ``iou[k]`` its IoU.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    inter: np.ndarray
    iou: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)


def object_table(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object ids (background excluded, increasing), their areas, and each pixel's object index (-1 for background).

    Linear time (a ``bincount`` and a lookup table) when the ids are at most a
    few times the number of pixels, else a sort (``np.unique``).
    """
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if flat.dtype.kind in "iu" and top <= 4 * flat.size + 1024:
        counts = np.bincount(flat, minlength=1)
        ids = np.flatnonzero(counts)
        lookup = np.full(counts.size, -1, np.int64)
        lookup[ids] = np.arange(ids.size)
        inverse = lookup[flat]
        if ids.size and ids[0] == 0:
            return ids[1:], counts[ids[1:]], inverse - 1
        return ids, counts[ids], inverse
    ids, inverse, area = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1).astype(np.int64, copy=False)
    if ids.size and ids[0] == 0:
        return ids[1:], area[1:], inverse - 1
    return ids, area, inverse


def overlap_table(truth: np.ndarray, prediction: np.ndarray) -> Overlap:
    """The :class:`Overlap` table of two checked label images of the same shape."""
    true_ids, true_area, t_idx = object_table(truth)
    pred_ids, pred_area, p_idx = object_table(prediction)
    both = (t_idx >= 0) & (p_idx >= 0)
    n_codes = max(true_ids.size, 1) * max(pred_ids.size, 1)
    codes = t_idx[both] * max(pred_ids.size, 1) + p_idx[both]
    if n_codes <= 4 * codes.size + 1024:
        counts = np.bincount(codes, minlength=n_codes)
        codes = np.flatnonzero(counts)
        inter = counts[codes]
    else:
        codes, inter = np.unique(codes, return_counts=True)
    rows, cols = np.divmod(codes, max(pred_ids.size, 1))
    union = true_area[rows] + pred_area[cols] - inter
    iou = inter / union if inter.size else np.zeros(0)
    return Overlap(true_ids, pred_ids, true_area, pred_area, rows, cols, inter, iou.astype(np.float64))


# --------------------------------------------------------------------------- matching


def match_pairs(ov: Overlap, threshold: float) -> np.ndarray:
    """Indices (into the overlap table) of an optimal one-to-one matching at ``threshold``.

    Candidate pairs have ``IoU >= threshold`` (and overlap). When no object
    takes part in two candidate pairs (always true for ``threshold > 0.5``,
    since an object can have IoU > 0.5 with at most one other) every candidate
    is a match. Otherwise each connected group of conflicting candidates is
    solved with :func:`scipy.optimize.linear_sum_assignment`, maximising first
    the number of matches and then their summed IoU.
    """
    cand = np.flatnonzero(ov.iou >= threshold)
    if cand.size == 0:
        return cand
    rows, cols = ov.rows[cand], ov.cols[cand]
    if np.unique(rows).size == rows.size and np.unique(cols).size == cols.size:
        return cand
    n = ov.n_true + ov.n_pred
    graph = coo_matrix((np.ones(cand.size), (rows, ov.n_true + cols)), shape=(n, n))
    _, node_comp = connected_components(graph, directed=False)
    edge_comp = node_comp[rows]
    order = np.argsort(edge_comp, kind="stable")
    splits = np.flatnonzero(np.diff(edge_comp[order])) + 1
    matched = []
    for group in np.split(order, splits):
        if group.size == 1:
            matched.append(cand[group])
            continue
        r_ids, r = np.unique(rows[group], return_inverse=True)
        c_ids, c = np.unique(cols[group], return_inverse=True)
        # 1 per match dominates: the IoU bonus of any matching sums to < 1.
        weight = np.zeros((r_ids.size, c_ids.size))
        weight[r, c] = 1.0 + ov.iou[cand[group]] / (2.0 * min(r_ids.size, c_ids.size))
        lookup = np.full((r_ids.size, c_ids.size), -1, dtype=np.int64)
        lookup[r, c] = cand[group]
        ri, ci = linear_sum_assignment(weight, maximize=True)
        keep = weight[ri, ci] > 0
        matched.append(lookup[ri[keep], ci[keep]])
    return np.sort(np.concatenate(matched))


def ratio(num: float, den: float, both_empty: bool) -> float:
    """``num / den``; when ``den`` is 0: 1.0 if both images are empty, else 0.0."""
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def scores_from_counts(tp: int, fp: int, fn: int, both_empty: bool) -> dict:
    """``precision``, ``recall``, ``f1`` and ``accuracy`` from match counts."""
    return {
        "precision": ratio(tp, tp + fp, both_empty),
        "recall": ratio(tp, tp + fn, both_empty),
        "f1": ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "accuracy": ratio(tp, tp + fp + fn, both_empty),
    }


def match_at(ov: Overlap, threshold: float) -> dict:
    """The result dict of :func:`cellrefine.metrics.match_instances` for one threshold."""
    matched = match_pairs(ov, threshold)
    tp = int(matched.size)
    fp, fn = ov.n_pred - tp, ov.n_true - tp
    both_empty = ov.n_true == 0 and ov.n_pred == 0
    result = {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn}
    result.update(scores_from_counts(tp, fp, fn, both_empty))
    result["n_true"], result["n_pred"] = ov.n_true, ov.n_pred
    if tp:
        result["mean_matched_iou"] = float(ov.iou[matched].mean())
    else:
        result["mean_matched_iou"] = 1.0 if both_empty else 0.0
    return result


def merges_and_splits(ov: Overlap) -> tuple[int, int]:
    """``(merges, splits)`` as defined in :func:`cellrefine.metrics.object_scores`."""
    # A true object lies "mostly inside" a predicted one when more than half of its area is there;
    # each true object can be mostly inside at most one predicted object (and vice versa).
    true_inside = ov.inter * 2 > ov.true_area[ov.rows]
    pred_inside = ov.inter * 2 > ov.pred_area[ov.cols]
    per_pred = np.bincount(ov.cols[true_inside], minlength=ov.n_pred)
    per_true = np.bincount(ov.rows[pred_inside], minlength=ov.n_true)
    return int(np.count_nonzero(per_pred >= 2)), int(np.count_nonzero(per_true >= 2))
