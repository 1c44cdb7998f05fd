"""Re-picking the watershed thresholds of a fine-tuned model on the reviewed pixels."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..metrics.corrections import objects_mostly_inside
from ..postprocess import PostprocessSettings

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_GRID",
    "CALIBRATION_MARGIN",
    "MIN_SIZE_FRACTIONS",
    "PARTIAL_BOUNDARY_FOREGROUNDS",
    "calibrate_postprocess",
    "calibrate_min_size",
    "calibration_references",
    "objects_mostly_inside",
    "POSTPROCESS_KEYS",
]

CALIBRATION_GRID = {"foreground_threshold": (0.5, 0.6, 0.7, 0.8), "seed_threshold": (0.6, 0.7, 0.8)}
#: Foreground thresholds for a model whose foreground counts only part of the boundary (``boundary_weight`` < 1, e.g. the
#: cells model: 0.3, foreground 0.4): its foreground sits lower, so its grid is CALIBRATION_GRID's shifted down by 0.2.
#: Measured with benchmarks/bench_corrections.py: cells, 10 corrected cells, mean F1 0.489 with the grid from 0.5 and
#: 0.526 with this one; nuclei (weight 1) with the low values allowed: 100 corrected nuclei 0.782 instead of 0.889
#: (thresholds of 0.3-0.4 won on the reviewed objects and lost on the others), so weight-1 models keep the grid above.
PARTIAL_BOUNDARY_FOREGROUNDS = (0.3, 0.4, 0.5, 0.6)
#: Every post-processing setting a calibrated config carries (the fields of PostprocessSettings, ``boundary_weight`` included:
#: calibration changes the thresholds and ``min_size``, never the weight the model was bundled with).
POSTPROCESS_KEYS = tuple(field.name for field in dataclasses.fields(PostprocessSettings))
#: A new threshold pair must beat the current one by this much mean F1: smaller gains are within the noise of a few corrected objects.
CALIBRATION_MARGIN = 0.02
#: ``min_size`` candidates of :func:`calibrate_min_size`, as fractions of the median area of the reviewed objects.
MIN_SIZE_FRACTIONS = (0.05, 0.1, 0.25)


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
    :data:`CALIBRATION_GRID` (foreground thresholds from
    :data:`PARTIAL_BOUNDARY_FOREGROUNDS` when the model's ``boundary_weight`` is
    below 1) and the current pair the planes are
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
    base = PostprocessSettings(**current)
    table = []
    best, best_score, current_score = base, -1.0, None
    foregrounds = CALIBRATION_GRID["foreground_threshold"] if base.boundary_weight == 1 else PARTIAL_BOUNDARY_FOREGROUNDS
    candidates = [(base.foreground_threshold, base.seed_threshold)] + [
        (fg, seed) for fg in foregrounds for seed in CALIBRATION_GRID["seed_threshold"]
    ]
    for fg, seed in dict.fromkeys(candidates):
        settings = dataclasses.replace(base, foreground_threshold=fg, seed_threshold=seed)
        mean_f1 = _mean_f1(probabilities, references, settings)
        table.append([fg, seed, round(mean_f1, 4)])
        if current_score is None:  # the first candidate is the current setting
            current_score = mean_f1
        if mean_f1 > best_score + 1e-9 and (settings == base or mean_f1 >= current_score + CALIBRATION_MARGIN):
            best, best_score = settings, mean_f1
    chosen = {k: getattr(best, k) for k in POSTPROCESS_KEYS}
    logger.info("post-processing calibrated on the reviewed pixels: %s (mean F1 %.3f)", chosen, best_score)
    return chosen, table


def _mean_f1(probabilities, references, settings) -> float:
    """Mean object F1 (IoU 0.5...0.9) of ``settings`` against the references, summed per group, averaged over the groups."""
    from ..metrics import aggregate, object_scores
    from ..postprocess import probabilities_to_instances

    groups = {}
    for plane_probabilities, plane_references in zip(probabilities, references):
        predicted = probabilities_to_instances(plane_probabilities, settings)
        for group, truth, mask in plane_references:
            restricted = predicted if mask is None else objects_mostly_inside(predicted, mask)
            groups.setdefault(group, []).append(object_scores(truth, restricted))
    return float(np.mean([aggregate(scores)["mean_f1"] for scores in groups.values()]))


def calibrate_min_size(probabilities, references, current: dict) -> tuple[dict, list]:
    """Raise ``min_size`` when the reviewed objects show that small predicted pieces are fragments.

    A model used out of its domain often leaves small pieces of dim objects
    (measured on the cells3d stack after 3 corrected slices: pieces of 70-600
    voxels next to nuclei of 15,000-55,000; the 2D score on the corrected
    slices and the 3D score both peak near a quarter of the median object
    area). Candidates are :data:`MIN_SIZE_FRACTIONS` of the median area of the
    user's reviewed objects, only above the current ``min_size``; one is
    chosen when it beats the current setting by :data:`CALIBRATION_MARGIN`
    mean F1 on the reviewed pixels (as :func:`calibrate_postprocess`), so a
    setting that fits is kept. In the 3D mode ``min_size`` becomes a volume
    (:func:`cellrefine.postprocess.volume_threshold`).

    Parameters
    ----------
    probabilities, references
        As for :func:`calibrate_postprocess`.
    current : dict
        Post-processing settings (e.g. what :func:`calibrate_postprocess` chose).

    Returns
    -------
    chosen : dict
        ``current`` with the chosen ``min_size``.
    table : list of [min_size, mean_f1]
        The current setting first, then each candidate tried.
    """
    base = PostprocessSettings(**current)
    areas = []
    for plane_references in references:
        for group, truth, _ in plane_references:
            if group == "reviewed":
                counts = np.bincount(np.asarray(truth).ravel().astype(np.intp, copy=False))[1:]
                areas.extend(counts[counts > 0].tolist())
    if not areas:
        return {k: getattr(base, k) for k in POSTPROCESS_KEYS}, []
    median = float(np.median(areas))
    sizes = sorted({int(round(fraction * median)) for fraction in MIN_SIZE_FRACTIONS} - {base.min_size})
    sizes = [size for size in sizes if size > base.min_size]
    current_score = _mean_f1(probabilities, references, base)
    table = [[int(base.min_size), round(current_score, 4)]]
    best, best_score = base, current_score
    for size in sizes:
        settings = dataclasses.replace(base, min_size=size)
        score = _mean_f1(probabilities, references, settings)
        table.append([size, round(score, 4)])
        if score >= current_score + CALIBRATION_MARGIN and score > best_score + 1e-9:
            best, best_score = settings, score
    if best is not base:
        logger.info(
            "min_size raised to %d px on the reviewed objects (median area %.0f px; mean F1 %.3f -> %.3f)",
            best.min_size,
            median,
            current_score,
            best_score,
        )
    return {k: getattr(best, k) for k in POSTPROCESS_KEYS}, table
