"""A simulated annotator for the "review next" and corrections-to-accuracy benchmarks.

The annotator is pointed at one object (or missed-object candidate) at a time,
as the review list in napari would, and corrects it against the ground truth
the way a user paints in napari:

* a predicted object that matches a true object (IoU >= 0.5) and holds no
  second true object (no visible merge) is **confirmed** (nothing changes);
* a wrong object is **replaced**: it is erased and every true object it
  covers substantially (>= 20 % of the object's pixels, or most of the true
  object) is painted from the ground truth, so all edited pixels end up right:
  a true object that another object already matches is painted with that
  object's id (the fragment is merged back into it), the others get new ids;
  objects left mostly inside a painted true object (fragments of a split) are
  erased too;
* an object over no true object is **erased** (a false positive);
* at a missed-object candidate, the true object under its centroid is
  **painted** if no object matches it yet.

Every pixel the annotator changed is recorded (``edited``), so the reviewed
mask a napari user would give fine-tuning is ``edited`` plus a margin.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellrefine.metrics import match_instances


class Annotator:
    """The corrected label image of one image and the annotator's edits on it.

    ``labels`` starts as the predicted instances; ids of painted objects start
    above every id in use.
    """

    def __init__(self, truth: np.ndarray, predicted: np.ndarray):
        self.truth = np.asarray(truth).astype(np.int64)
        self.truth_sizes = np.bincount(self.truth.ravel())
        self.labels = np.asarray(predicted).astype(np.int64).copy()
        self.edited = np.zeros(self.truth.shape, bool)
        self.visited = np.zeros(self.truth.shape, bool)
        self.next_id = int(self.labels.max()) + 1
        self.counts = self._counts()

    def _counts(self) -> dict:
        r = match_instances(self.truth, self.labels, 0.5)
        return {"tp": r["tp"], "fp": r["fp"], "fn": r["fn"]}

    def refresh(self, predicted: np.ndarray) -> int:
        """Replace the unedited part of ``labels`` by a new prediction (after fine-tuning); returns the id offset of its objects."""
        offset = self.next_id
        predicted = np.asarray(predicted).astype(np.int64)
        self.labels = np.where(self.edited, self.labels, np.where(predicted > 0, predicted + offset, 0))
        self.next_id = int(self.labels.max()) + 1
        self.counts = self._counts()
        return offset

    def matching_object(self, g: int, exclude: int = -1) -> int:
        """The current object matching true object ``g`` at IoU >= 0.5 (0 if none), ignoring ``exclude``."""
        inside = self.labels[self.truth == g]
        ids, overlap = np.unique(inside[inside > 0], return_counts=True)
        for o, n in zip(ids, overlap):
            if o == exclude:
                continue
            size = int(np.count_nonzero(self.labels == o))
            if n / (size + self.truth_sizes[g] - n) >= 0.5:
                return int(o)
        return 0

    def _paint(self, g: int, label: int = 0) -> None:
        """Paint true object ``g`` with ``label`` (0: a new id), erasing fragments of it."""
        where = self.truth == g
        inside = self.labels[where]
        ids, overlap = np.unique(inside[inside > 0], return_counts=True)
        for o, n in zip(ids, overlap):
            mask = self.labels == o
            if o != label and n > 0.5 * np.count_nonzero(mask):  # a fragment of g: the user erases it while painting g
                self.labels[mask] = 0
                self.edited |= mask
        if not label:
            label, self.next_id = self.next_id, self.next_id + 1
        self.labels[where] = label
        self.edited |= where

    def _is_right(self, mask, size, ids, overlap) -> bool:
        """Matches a true object (IoU >= 0.5) and is no visible merge (no second true object mostly inside it)."""
        iou = overlap / (size + self.truth_sizes[ids] - overlap)
        return bool(iou.size and iou.max() >= 0.5 and np.count_nonzero(overlap > 0.5 * self.truth_sizes[ids]) <= 1)

    def review_object(self, label: int) -> str:
        """Review the object ``label`` of ``labels``: 'confirmed', 'replaced', 'erased' or 'gone' (no longer there)."""
        mask = self.labels == label
        size = int(np.count_nonzero(mask))
        if size == 0:
            return "gone"
        self.visited |= mask
        ids, overlap = np.unique(self.truth[mask], return_counts=True)
        overlap, ids = overlap[ids > 0], ids[ids > 0]
        if self._is_right(mask, size, ids, overlap):
            return "confirmed"
        covered = ids[(overlap >= 0.2 * size) | (overlap > 0.5 * self.truth_sizes[ids])]
        targets = [(int(g), self.matching_object(int(g), exclude=label)) for g in covered]
        self.labels[mask] = 0
        self.edited |= mask
        for g, match in targets:
            self._paint(g, match)
        self.counts = self._counts()
        return "replaced" if targets else "erased"

    def review_missed(self, centroid) -> str:
        """Look at a missed-object candidate: 'painted' the true object there, or 'confirmed' (nothing to add)."""
        point = tuple(int(round(c)) for c in centroid)
        window = tuple(slice(max(c - 2, 0), c + 3) for c in point)
        self.visited[window] = True
        g = int(self.truth[point])
        if g == 0:
            values = self.truth[window][self.truth[window] > 0]
            g = int(np.bincount(values).argmax()) if values.size else 0
        if g == 0 or self.matching_object(g):
            return "confirmed"
        self._paint(g)
        self.counts = self._counts()
        return "painted"

    def needs_edit(self, item) -> bool:
        """Whether reviewing ``item`` (an ``ObjectUncertainty`` of the current labels) would change anything."""
        if item.missed:
            point = tuple(int(round(c)) for c in item.centroid)
            g = int(self.truth[point])
            return g > 0 and not self.matching_object(g)
        mask = self.labels == item.label
        ids, overlap = np.unique(self.truth[mask], return_counts=True)
        return not self._is_right(mask, np.count_nonzero(mask), ids[ids > 0], overlap[ids > 0])

    def reviewed_mask(self, margin: int) -> np.ndarray:
        """The edited pixels grown by ``margin`` pixels in YX (what a napari user marks as reviewed)."""
        if margin <= 0 or not self.edited.any():
            return self.edited.copy()
        return ndi.binary_dilation(self.edited, iterations=margin)


def f1(annotators) -> float:
    """Dataset F1@0.5 from the summed counts of the annotators' current labels."""
    tp = sum(a.counts["tp"] for a in annotators)
    fp = sum(a.counts["fp"] for a in annotators)
    fn = sum(a.counts["fn"] for a in annotators)
    return 2 * tp / max(2 * tp + fp + fn, 1)


def review(annotator: Annotator, item, offset: int = 0) -> str:
    """Review one ranked item (an ``ObjectUncertainty``) on its image's annotator."""
    if item.missed:
        return annotator.review_missed(item.centroid)
    return annotator.review_object(item.label + offset)


def already_reviewed(annotator: Annotator, item, offset: int = 0) -> bool:
    """True when most of the item's object lies in pixels the annotator has looked at or edited."""
    if item.missed:
        point = tuple(int(round(c)) for c in item.centroid)
        return bool(annotator.visited[point] or annotator.edited[point])
    mask = annotator.labels == item.label + offset
    n = int(np.count_nonzero(mask))
    return n == 0 or np.count_nonzero(mask & (annotator.visited | annotator.edited)) > 0.5 * n
