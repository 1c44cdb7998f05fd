"""Segmentation quality metrics for instance and semantic label images.

Instance metrics follow the DSB2018 / StarDist convention: a true and a
predicted object are a *match* at threshold ``t`` when their intersection over
union (IoU) is at least ``t``, objects are matched one-to-one, and

* ``tp`` = matched pairs, ``fp`` = unmatched predicted objects,
  ``fn`` = unmatched true objects;
* ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
  ``f1 = 2 tp / (2 tp + fp + fn)``;
* ``accuracy = tp / (tp + fp + fn)``, the "average precision" (AP) reported
  by the DSB2018 challenge and StarDist (called ``ap`` in
  :func:`object_scores`).

When both images contain no object every score is 1.0 (a perfect answer);
when only one is empty the undefined ratios are 0.0.

The IoU of all overlapping pairs is computed once from a sparse contingency
table (``np.unique`` over the paired labels of the overlapping pixels), so the
cost is ``O(N log N)`` in the number of pixels whatever the number of objects.

Label images may have any integer dtype (or bool, or a float dtype holding
whole numbers), any number of dimensions, and non-consecutive ids; 0 is
background. Inputs are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["match_instances", "object_scores", "pixel_iou", "aggregate", "DEFAULT_THRESHOLDS"]

#: IoU thresholds used by :func:`object_scores` by default: 0.5, 0.55, ..., 0.9.
DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 0.9 + 1e-9, 0.05), 2))

_COUNT_KEYS = ("tp", "fp", "fn")


# --------------------------------------------------------------------------- validation


def _check_labels(array, name: str) -> np.ndarray:
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


def _check_pair(truth, prediction, names=("truth", "prediction")) -> tuple[np.ndarray, np.ndarray]:
    truth = _check_labels(truth, names[0])
    prediction = _check_labels(prediction, names[1])
    if truth.shape != prediction.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {truth.shape} and {prediction.shape}; "
            "compare images of the same field of view (crop or resize one first)."
        )
    return truth, prediction


def _check_threshold(threshold) -> float:
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, Real):
        raise TypeError(f"threshold must be a real number in [0, 1], got {threshold!r} of type {type(threshold).__name__}.")
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (an IoU), got {threshold}.")
    return threshold


def _check_thresholds(thresholds) -> list[float]:
    if isinstance(thresholds, Real):
        thresholds = [thresholds]
    try:
        values = list(thresholds)
    except TypeError:
        raise TypeError(f"thresholds must be a sequence of numbers in [0, 1], got {thresholds!r}.") from None
    if not values:
        raise ValueError("thresholds must contain at least one IoU threshold, e.g. (0.5, 0.75).")
    return [_check_threshold(t) for t in values]


# --------------------------------------------------------------------------- overlap table


@dataclass(frozen=True)
class _Overlap:
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


def _objects(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object ids (background excluded), their areas, and each pixel's object index (-1 for background)."""
    flat = labels.ravel()
    ids, inverse, area = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1).astype(np.int64, copy=False)
    if ids.size and ids[0] == 0:
        return ids[1:], area[1:], inverse - 1
    return ids, area, inverse


def _overlap(truth: np.ndarray, prediction: np.ndarray) -> _Overlap:
    true_ids, true_area, t_idx = _objects(truth)
    pred_ids, pred_area, p_idx = _objects(prediction)
    both = (t_idx >= 0) & (p_idx >= 0)
    codes = t_idx[both] * max(pred_ids.size, 1) + p_idx[both]
    codes, inter = np.unique(codes, return_counts=True)
    rows, cols = np.divmod(codes, max(pred_ids.size, 1))
    union = true_area[rows] + pred_area[cols] - inter
    iou = inter / union if inter.size else np.zeros(0)
    return _Overlap(true_ids, pred_ids, true_area, pred_area, rows, cols, inter, iou.astype(np.float64))


# --------------------------------------------------------------------------- matching


def _match(ov: _Overlap, threshold: float) -> np.ndarray:
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


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def _scores_from_counts(tp: int, fp: int, fn: int, both_empty: bool) -> dict:
    return {
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "accuracy": _ratio(tp, tp + fp + fn, both_empty),
    }


def _match_at(ov: _Overlap, threshold: float) -> dict:
    matched = _match(ov, threshold)
    tp = int(matched.size)
    fp, fn = ov.n_pred - tp, ov.n_true - tp
    both_empty = ov.n_true == 0 and ov.n_pred == 0
    result = {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn}
    result.update(_scores_from_counts(tp, fp, fn, both_empty))
    result["n_true"], result["n_pred"] = ov.n_true, ov.n_pred
    if tp:
        result["mean_matched_iou"] = float(ov.iou[matched].mean())
    else:
        result["mean_matched_iou"] = 1.0 if both_empty else 0.0
    return result


def _merges_splits(ov: _Overlap) -> tuple[int, int]:
    # A true object lies "mostly inside" a predicted one when more than half of its area is there;
    # each true object can be mostly inside at most one predicted object (and vice versa).
    true_inside = ov.inter * 2 > ov.true_area[ov.rows]
    pred_inside = ov.inter * 2 > ov.pred_area[ov.cols]
    per_pred = np.bincount(ov.cols[true_inside], minlength=ov.n_pred)
    per_true = np.bincount(ov.rows[pred_inside], minlength=ov.n_true)
    return int(np.count_nonzero(per_pred >= 2)), int(np.count_nonzero(per_true >= 2))


# --------------------------------------------------------------------------- public API


def match_instances(truth, prediction, threshold: float = 0.5) -> dict:
    """Match true and predicted objects one-to-one by IoU and score the result.

    Parameters
    ----------
    truth, prediction : array-like of int, same shape
        Instance label images of any dimension (2D, 3D, ...): 0 is background
        and each object has its own positive id. Ids need not be consecutive
        and the two images need not share ids. Any integer dtype or bool is
        accepted, as is a float array holding whole numbers.
    threshold : float, optional
        Minimum IoU, in [0, 1], for a pair to count as a match (``IoU >=
        threshold``). Default 0.5.

    Returns
    -------
    scores : dict
        ``threshold``; ``tp``, ``fp``, ``fn`` (int counts); ``precision``,
        ``recall``, ``f1``, ``accuracy`` (``tp / (tp + fp + fn)``, the AP of
        DSB2018 / StarDist); ``n_true``, ``n_pred`` (object counts);
        ``mean_matched_iou`` (mean IoU of the matched pairs, 0.0 when nothing
        matched). When both images are empty every score is 1.0; when only one
        is empty the undefined ratios are 0.0.

    Raises
    ------
    TypeError
        If an image is complex or not numeric, or ``threshold`` is not a number.
    ValueError
        If the shapes differ, a float image holds non-integer values, labels
        are negative, or ``threshold`` is outside [0, 1].

    Notes
    -----
    For ``threshold > 0.5`` a pair with IoU above the threshold is unique for
    both of its objects, so every such pair is a match. For lower thresholds
    (and at exactly 0.5, where ties are possible) conflicting candidates are
    resolved with :func:`scipy.optimize.linear_sum_assignment`, which
    maximises the number of matches and, among those, the summed IoU.

    Examples
    --------
    >>> truth = np.zeros((20, 20), int); truth[0:10, 0:10] = 1
    >>> pred = np.zeros((20, 20), int); pred[0:10, 5:15] = 7
    >>> match_instances(truth, pred, threshold=0.3)["tp"]
    1
    >>> match_instances(truth, pred, threshold=0.5)["tp"]
    0
    """
    truth, prediction = _check_pair(truth, prediction)
    threshold = _check_threshold(threshold)
    return _match_at(_overlap(truth, prediction), threshold)


def object_scores(truth, prediction, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Object-level scores over a range of IoU thresholds, plus merge and split counts.

    The IoU table is computed once and matched at each threshold as in
    :func:`match_instances`.

    Parameters
    ----------
    truth, prediction : array-like of int, same shape
        Instance label images (0 = background), see :func:`match_instances`.
    thresholds : sequence of float, optional
        IoU thresholds in [0, 1]. Default ``(0.5, 0.55, ..., 0.9)``.

    Returns
    -------
    scores : dict
        ``thresholds`` and, one value per threshold, ``tp``, ``fp``, ``fn``
        (lists of int) and ``precision``, ``recall``, ``f1``, ``ap`` (lists of
        float; ``ap`` is ``tp / (tp + fp + fn)``); ``mean_f1`` and ``mean_ap``
        (their means over the thresholds); ``merges``, ``splits``,
        ``n_true``, ``n_pred`` (int).

    Notes
    -----
    An object lies *mostly inside* another when more than half of its own
    area (in pixels) is in it.

    * A predicted object is a **merge** when two or more true objects lie
      mostly inside it; ``merges`` counts such predicted objects.
    * A true object is **split** when two or more predicted objects lie
      mostly inside it; ``splits`` counts such true objects.

    These counts do not depend on the IoU threshold.

    Raises
    ------
    TypeError, ValueError
        For invalid images or thresholds, see :func:`match_instances`.
    """
    truth, prediction = _check_pair(truth, prediction)
    thresholds = _check_thresholds(thresholds)
    ov = _overlap(truth, prediction)
    per = [_match_at(ov, t) for t in thresholds]
    merges, splits = _merges_splits(ov)
    result = {"thresholds": thresholds}
    for key in _COUNT_KEYS + ("precision", "recall", "f1"):
        result[key] = [r[key] for r in per]
    result["ap"] = [r["accuracy"] for r in per]
    result["mean_f1"] = float(np.mean(result["f1"]))
    result["mean_ap"] = float(np.mean(result["ap"]))
    result.update(merges=merges, splits=splits, n_true=ov.n_true, n_pred=ov.n_pred)
    return result


def pixel_iou(truth_semantic, predicted_semantic, n_classes: int = 3, mask=None) -> np.ndarray:
    """Per-class intersection over union of two semantic class maps.

    Parameters
    ----------
    truth_semantic, predicted_semantic : array-like of int, same shape
        Class maps with values in ``0 .. n_classes - 1`` (e.g. 0 background,
        1 cell, 2 boundary).
    n_classes : int, optional
        Number of classes. Default 3.
    mask : array-like of bool, optional
        Same shape as the maps; only pixels where it is True are counted.

    Returns
    -------
    iou : (n_classes,) float64 ndarray
        IoU of each class; NaN for a class absent from both maps (within the
        mask).

    Raises
    ------
    TypeError
        If a map is not an integer array, ``n_classes`` is not an integer, or
        ``mask`` is not boolean.
    ValueError
        If shapes differ, or a map holds a value outside ``0 .. n_classes - 1``.

    Examples
    --------
    >>> pixel_iou([[0, 1, 1]], [[0, 0, 1]], n_classes=2)
    array([0.5, 0.5])
    """
    if isinstance(n_classes, (bool, np.bool_)) or not isinstance(n_classes, Integral):
        raise TypeError(f"n_classes must be a positive integer, got {n_classes!r}.")
    n_classes = int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes}.")
    truth, pred = _check_pair(truth_semantic, predicted_semantic, ("truth_semantic", "predicted_semantic"))
    for name, arr in (("truth_semantic", truth), ("predicted_semantic", pred)):
        if arr.size and arr.max() >= n_classes:
            raise ValueError(
                f"{name} holds class {arr.max()} but n_classes={n_classes}; values must be in 0..{n_classes - 1} "
                "(raise n_classes if the map has more classes)."
            )
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype.kind != "b":
            raise TypeError(f"mask must be a boolean array, got dtype {mask.dtype}; use mask.astype(bool).")
        if mask.shape != truth.shape:
            raise ValueError(f"mask must have the shape of the class maps {truth.shape}, got {mask.shape}.")
        truth, pred = truth[mask], pred[mask]
    codes = truth.ravel().astype(np.int64) * n_classes + pred.ravel().astype(np.int64)
    confusion = np.bincount(codes, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def aggregate(scores) -> dict:
    """Dataset-level object scores from the per-image results of :func:`object_scores`.

    ``tp``, ``fp`` and ``fn`` are summed over the images at each threshold and
    precision, recall, F1 and AP recomputed from the sums, so large images with
    many objects weigh more than in a mean of per-image scores.

    Parameters
    ----------
    scores : sequence of dict
        Results of :func:`object_scores`, all with the same thresholds.

    Returns
    -------
    scores : dict
        ``thresholds``, per-threshold lists ``tp``, ``fp``, ``fn``,
        ``precision``, ``recall``, ``f1``, ``ap``; ``mean_f1`` and ``mean_ap``
        over the thresholds; total ``merges``, ``splits``, ``n_true``,
        ``n_pred``; and ``n_images``. A threshold at which every image is
        empty scores 1.0.

    Raises
    ------
    TypeError
        If ``scores`` is not a sequence of dicts.
    ValueError
        If it is empty, an entry lacks a key, or the thresholds differ.
    """
    if isinstance(scores, dict):
        raise TypeError("aggregate expects a list of object_scores results, got a single dict; wrap it in a list.")
    try:
        scores = list(scores)
    except TypeError:
        raise TypeError(f"aggregate expects a list of object_scores results, got {type(scores).__name__}.") from None
    if not scores:
        raise ValueError("aggregate needs at least one object_scores result, got an empty list.")
    needed = ("thresholds",) + _COUNT_KEYS + ("merges", "splits", "n_true", "n_pred")
    for i, item in enumerate(scores):
        if not isinstance(item, dict):
            raise TypeError(f"scores[{i}] must be a dict returned by object_scores, got {type(item).__name__}.")
        missing = [k for k in needed if k not in item]
        if missing:
            raise ValueError(f"scores[{i}] lacks keys {missing}; pass results of object_scores.")
    thresholds = [float(t) for t in scores[0]["thresholds"]]
    for i, item in enumerate(scores[1:], start=1):
        if len(item["thresholds"]) != len(thresholds) or not np.allclose(item["thresholds"], thresholds):
            raise ValueError(
                f"scores[{i}] uses thresholds {list(item['thresholds'])} but scores[0] uses {thresholds}; "
                "compute all images with the same thresholds."
            )
    totals = {k: np.sum([item[k] for item in scores], axis=0).astype(np.int64) for k in _COUNT_KEYS}
    result = {"thresholds": thresholds}
    result.update({k: [int(v) for v in totals[k]] for k in _COUNT_KEYS})
    per = [_scores_from_counts(tp, fp, fn, both_empty=(tp + fp + fn == 0)) for tp, fp, fn in zip(result["tp"], result["fp"], result["fn"])]
    for key in ("precision", "recall", "f1"):
        result[key] = [p[key] for p in per]
    result["ap"] = [p["accuracy"] for p in per]
    result["mean_f1"] = float(np.mean(result["f1"]))
    result["mean_ap"] = float(np.mean(result["ap"]))
    for key in ("merges", "splits", "n_true", "n_pred"):
        result[key] = int(sum(int(item[key]) for item in scores))
    result["n_images"] = len(scores)
    return result
