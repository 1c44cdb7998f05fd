"""Did a new segmentation learn a user's corrections, and leave the rest alone? (:func:`correction_scores`)"""

from __future__ import annotations

import numpy as np

from .matching import check_label_pair, check_labels, check_threshold, match_pairs, object_table, overlap_table

__all__ = ["correction_scores", "objects_mostly_inside", "CORRECTION_KEYS"]

#: The keys of :func:`correction_scores` (all counts of objects).
CORRECTION_KEYS = (
    "corrected",
    "corrected_right",
    "painted",
    "painted_right",
    "erased",
    "erased_gone",
    "confirmed",
    "confirmed_kept",
    "unreviewed",
    "unreviewed_kept",
)


def _matched(truth: np.ndarray, prediction: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(truth ids, whether each is matched, prediction ids, whether each is matched) at ``threshold``."""
    table = overlap_table(truth, prediction)
    pairs = match_pairs(table, threshold)
    true_hit = np.zeros(table.n_true, bool)
    pred_hit = np.zeros(table.n_pred, bool)
    true_hit[table.rows[pairs]] = True
    pred_hit[table.cols[pairs]] = True
    return table.true_ids, true_hit, table.pred_ids, pred_hit


def _inside_counts(labels: np.ndarray, reviewed: np.ndarray):
    """``(area, index, inside)``: each object's pixel count, the pixels' object index (-1 background), its reviewed pixel count."""
    ids, area, index = object_table(labels)
    inside = np.bincount(index[(index >= 0) & reviewed.ravel()], minlength=ids.size)
    return area, index, inside


def _reviewed_share(labels: np.ndarray, reviewed: np.ndarray) -> np.ndarray:
    """Share of each object's pixels that are reviewed, objects in increasing id order."""
    area, _, inside = _inside_counts(labels, reviewed)
    return inside / np.maximum(area, 1)


def objects_mostly_inside(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``labels`` keeping only the objects with at least half of their pixels in ``mask`` (whole, not cut at its edge)."""
    labels = np.asarray(labels)
    area, index, inside = _inside_counts(labels, np.asarray(mask, bool))
    keep = np.concatenate([[False], inside * 2 >= area])
    return np.where(keep[index + 1].reshape(labels.shape), labels, 0)


def correction_scores(parent_instances, corrected_labels, reviewed_mask, new_instances, threshold: float = 0.5) -> dict:
    """Count the corrected objects a new segmentation got right and the unreviewed objects it kept.

    A user corrected ``parent_instances`` (a model's segmentation) into
    ``corrected_labels`` on the ``reviewed_mask`` pixels; ``new_instances``
    is the segmentation after fine-tuning. Objects match when their IoU (over
    their whole areas) is at least ``threshold``, one to one.

    * **painted**: objects of ``corrected_labels`` with at least half of their
      pixels reviewed that no parent object matches (missed, split, merged or
      badly outlined by the parent). *Right* when a new object matches it.
    * **erased**: parent objects with at least half of their pixels reviewed
      that no corrected object matches (removed or redrawn by the user).
      *Gone* when no new object matches it and, if the user painted most of it
      background, at most half of its pixels are foreground in ``new_instances``.
    * **confirmed**: reviewed objects of ``corrected_labels`` that a parent
      object matches (the parent had them right). *Kept* when a new object matches it.
    * **unreviewed**: parent objects with less than half of their pixels
      reviewed. *Kept* when a new object matches it.

    Parameters
    ----------
    parent_instances, corrected_labels, new_instances : array-like of int, same shape
        Instance label images (0 = background), any number of dimensions.
    reviewed_mask : array-like of bool, same shape, or None
        The pixels the user reviewed; None = all of them.
    threshold : float, optional
        IoU for a match, in [0, 1]. Default 0.5.

    Returns
    -------
    counts : dict of int
        ``painted``, ``painted_right``, ``erased``, ``erased_gone``,
        ``corrected`` (painted + erased), ``corrected_right`` (painted right +
        erased gone), ``confirmed``, ``confirmed_kept``, ``unreviewed``,
        ``unreviewed_kept``. Counts over several images add up.

    Raises
    ------
    TypeError, ValueError
        Invalid label images, a non-boolean mask, different shapes, or a
        threshold outside [0, 1].

    Examples
    --------
    >>> parent = np.zeros((8, 16), int); parent[1:4, 1:4] = 1; parent[1:4, 10:13] = 2
    >>> corrected = parent.copy(); corrected[1:4, 1:4] = 0; corrected[5:8, 5:8] = 3
    >>> reviewed = np.zeros((8, 16), bool); reviewed[:, :9] = True
    >>> scores = correction_scores(parent, corrected, reviewed, corrected)
    >>> scores["corrected"], scores["corrected_right"], scores["unreviewed"], scores["unreviewed_kept"]
    (2, 2, 1, 1)
    """
    parent, corrected = check_label_pair(parent_instances, corrected_labels, ("parent_instances", "corrected_labels"))
    new = check_labels(new_instances, "new_instances")
    if new.shape != parent.shape:
        raise ValueError(f"new_instances must have the shape of the other label images {parent.shape}, got {new.shape}.")
    threshold = check_threshold(threshold)
    if reviewed_mask is None:
        reviewed = np.ones(parent.shape, bool)
    else:
        reviewed = np.asarray(reviewed_mask)
        if reviewed.dtype.kind != "b":
            raise TypeError(f"reviewed_mask must be a boolean array, got dtype {reviewed.dtype}; use mask.astype(bool).")
        if reviewed.shape != parent.shape:
            raise ValueError(f"reviewed_mask must have the shape of the label images {parent.shape}, got {reviewed.shape}.")

    _, corrected_by_parent, _, parent_in_corrected = _matched(corrected, parent, threshold)
    corrected_reviewed = _reviewed_share(corrected, reviewed) >= 0.5
    parent_reviewed = _reviewed_share(parent, reviewed) >= 0.5
    _, corrected_in_new, _, _ = _matched(corrected, new, threshold)
    _, parent_in_new, _, _ = _matched(parent, new, threshold)

    painted = corrected_reviewed & ~corrected_by_parent
    confirmed = corrected_reviewed & corrected_by_parent
    erased = parent_reviewed & ~parent_in_corrected
    unreviewed = ~parent_reviewed

    gone = erased & ~parent_in_new
    if gone.any():
        # objects painted over with background must not come back as a smaller object either
        _, area, index = object_table(parent)
        inside = index >= 0
        background = np.bincount(index[inside], weights=corrected.ravel()[inside] == 0, minlength=area.size)
        foreground = np.bincount(index[inside], weights=new.ravel()[inside] > 0, minlength=area.size)
        erased_to_background = background * 2 >= area
        gone &= ~erased_to_background | (foreground * 2 <= area)

    counts = {
        "painted": int(painted.sum()),
        "painted_right": int((painted & corrected_in_new).sum()),
        "erased": int(erased.sum()),
        "erased_gone": int(gone.sum()),
        "confirmed": int(confirmed.sum()),
        "confirmed_kept": int((confirmed & corrected_in_new).sum()),
        "unreviewed": int(unreviewed.sum()),
        "unreviewed_kept": int((unreviewed & parent_in_new).sum()),
    }
    counts["corrected"] = counts["painted"] + counts["erased"]
    counts["corrected_right"] = counts["painted_right"] + counts["erased_gone"]
    return {key: counts[key] for key in CORRECTION_KEYS}
