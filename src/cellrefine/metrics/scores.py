"""Instance and semantic scores: :func:`match_instances`, :func:`object_scores`, :func:`pixel_iou`, :func:`aggregate`."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from .matching import (
    COUNT_KEYS,
    check_label_pair,
    check_threshold,
    check_thresholds,
    match_at,
    merges_and_splits,
    nonempty_list,
    overlap_table,
    scores_from_counts,
)

__all__ = ["match_instances", "object_scores", "pixel_iou", "aggregate", "DEFAULT_THRESHOLDS"]

#: IoU thresholds used by :func:`object_scores` by default: 0.5, 0.55, ..., 0.9.
DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 0.9 + 1e-9, 0.05), 2))


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
    truth, prediction = check_label_pair(truth, prediction)
    threshold = check_threshold(threshold)
    return match_at(overlap_table(truth, prediction), threshold)


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
    truth, prediction = check_label_pair(truth, prediction)
    thresholds = check_thresholds(thresholds)
    ov = overlap_table(truth, prediction)
    per = [match_at(ov, t) for t in thresholds]
    merges, splits = merges_and_splits(ov)
    result = {"thresholds": thresholds}
    for key in COUNT_KEYS + ("precision", "recall", "f1"):
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
    truth, pred = check_label_pair(truth_semantic, predicted_semantic, ("truth_semantic", "predicted_semantic"))
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
    scores = nonempty_list(
        scores,
        f"aggregate expects a list of object_scores results, got {type(scores).__name__}.",
        "aggregate needs at least one object_scores result, got an empty list.",
    )
    needed = ("thresholds",) + COUNT_KEYS + ("merges", "splits", "n_true", "n_pred")
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
    totals = {k: np.sum([item[k] for item in scores], axis=0).astype(np.int64) for k in COUNT_KEYS}
    result = {"thresholds": thresholds}
    result.update({k: [int(v) for v in totals[k]] for k in COUNT_KEYS})
    per = [scores_from_counts(tp, fp, fn, both_empty=(tp + fp + fn == 0)) for tp, fp, fn in zip(result["tp"], result["fp"], result["fn"])]
    for key in ("precision", "recall", "f1"):
        result[key] = [p[key] for p in per]
    result["ap"] = [p["accuracy"] for p in per]
    result["mean_f1"] = float(np.mean(result["f1"]))
    result["mean_ap"] = float(np.mean(result["ap"]))
    for key in ("merges", "splits", "n_true", "n_pred"):
        result[key] = int(sum(int(item[key]) for item in scores))
    result["n_images"] = len(scores)
    return result
