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

from .corrections import correction_scores
from .scores import DEFAULT_THRESHOLDS, aggregate, match_instances, object_scores, pixel_iou

__all__ = ["match_instances", "object_scores", "pixel_iou", "aggregate", "correction_scores", "DEFAULT_THRESHOLDS"]
