"""Re-picking the watershed thresholds of a fine-tuned model on the reviewed pixels."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..metrics.corrections import objects_mostly_inside

logger = logging.getLogger(__name__)

__all__ = ["CALIBRATION_GRID", "CALIBRATION_MARGIN", "calibrate_postprocess", "calibration_references", "objects_mostly_inside", "POSTPROCESS_KEYS"]

CALIBRATION_GRID = {"foreground_threshold": (0.5, 0.6, 0.7, 0.8), "seed_threshold": (0.6, 0.7, 0.8)}
POSTPROCESS_KEYS = ("foreground_threshold", "seed_threshold", "min_seed_size", "min_size", "stitch_threshold")
#: A new threshold pair must beat the current one by this much mean F1: smaller gains are within the noise of a few corrected objects.
CALIBRATION_MARGIN = 0.02


def calibration_references(labels: np.ndarray, mask: np.ndarray | None, parent_instances: np.ndarray | None) -> list[tuple]:
    """What one plane's post-processing is compared with: a list of ``(group, truth instances, mask or None)``.

    ``"reviewed"``: the objects of the user's labels that lie mostly in the
    reviewed mask (the whole plane when ``mask`` is None). ``"kept"``, for a
    partly reviewed plane when ``parent_instances`` is given: the starting
    model's own objects that lie mostly outside it, which the fine-tune was
    asked to keep. A prediction is compared with a reference through the
    same selection of its objects (:func:`objects_mostly_inside`), so no
    object is cut at the mask's edge.
    """
    labels = np.asarray(labels).astype(np.int64)
    if mask is None or mask.all():
        return [("reviewed", labels, None)]
    references = [("reviewed", objects_mostly_inside(labels, mask), mask)]
    if parent_instances is not None:
        outside = ~mask
        references.append(("kept", objects_mostly_inside(np.asarray(parent_instances).astype(np.int64), outside), outside))
    return references


def calibrate_postprocess(probabilities, references, current: dict) -> tuple[dict, list]:
    """Pick the watershed thresholds that best reproduce the reference instances.

    Fine-tuning changes how confident the network is, so the starting
    model's thresholds may no longer fit. For every (foreground, seed) pair of
    :data:`CALIBRATION_GRID` (and the current pair) the planes are
    post-processed once and compared with their references: mean object F1
    over IoU 0.5...0.9, summed over the planes of each group
    (:func:`cellrefine.metrics.aggregate`), then averaged over the groups, so
    the user's corrections ("reviewed") weigh as much as what was to be kept
    ("kept") however many objects each holds. The current setting is kept
    unless another beats it by :data:`CALIBRATION_MARGIN` (a gain from one or
    two objects is noise, and thresholds that jump are hard to trust).
    Pure compute: the network is not run here.

    Parameters
    ----------
    probabilities : list of (3, Y, X) float32
        The tuned model's class probabilities, one per plane.
    references : list of lists of (group, truth, mask)
        Per plane, what to compare with (see :func:`calibration_references`);
        with a mask, only the predicted objects mostly inside it are compared.
    current : dict
        The current post-processing settings (the model's ``config["postprocess"]``).

    Returns
    -------
    chosen : dict
        Post-processing settings for the tuned model's config.
    table : list of [foreground, seed, mean_f1]
    """
    from ..metrics import aggregate, object_scores
    from ..postprocess import PostprocessSettings, probabilities_to_instances

    base = PostprocessSettings(**current)
    table = []
    best, best_score, current_score = base, -1.0, None
    candidates = [(base.foreground_threshold, base.seed_threshold)] + [
        (fg, seed) for fg in CALIBRATION_GRID["foreground_threshold"] for seed in CALIBRATION_GRID["seed_threshold"]
    ]
    for fg, seed in dict.fromkeys(candidates):
        settings = dataclasses.replace(base, foreground_threshold=fg, seed_threshold=seed)
        groups = {}
        for plane_probabilities, plane_references in zip(probabilities, references):
            predicted = probabilities_to_instances(plane_probabilities, settings)
            for group, truth, mask in plane_references:
                restricted = predicted if mask is None else objects_mostly_inside(predicted, mask)
                groups.setdefault(group, []).append(object_scores(truth, restricted))
        mean_f1 = float(np.mean([aggregate(scores)["mean_f1"] for scores in groups.values()]))
        table.append([fg, seed, round(mean_f1, 4)])
        if current_score is None:  # the first candidate is the current setting
            current_score = mean_f1
        if mean_f1 > best_score + 1e-9 and (settings == base or mean_f1 >= current_score + CALIBRATION_MARGIN):
            best, best_score = settings, mean_f1
    chosen = {k: getattr(best, k) for k in POSTPROCESS_KEYS}
    logger.info("post-processing calibrated on the reviewed pixels: %s (mean F1 %.3f)", chosen, best_score)
    return chosen, table
