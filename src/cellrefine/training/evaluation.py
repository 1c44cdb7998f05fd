"""Before/after figures of a fine-tune, computed with the right weights: the parent's, and the returned model's."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..metrics import correction_scores
from ..metrics.corrections import CORRECTION_KEYS
from ..targets import instances_to_semantic
from .calibrate import POSTPROCESS_KEYS, calibrate_min_size, calibrate_postprocess, calibration_references
from .inputs import Plane
from .scoring import reviewed_pixel_scores
from .settings import TrainSettings

__all__ = ["Evaluation", "iter_evaluate"]


@dataclasses.dataclass
class Evaluation:
    """What :func:`iter_evaluate` measured (all JSON-serialisable).

    Attributes
    ----------
    metrics_before, metrics_after : dict
        ``reviewed_accuracy``, ``reviewed_iou_cell``, ``reviewed_iou_boundary``
        on the reviewed pixels of the evaluated planes, for the parent and the returned model.
    objects_before, objects_after : dict or None
        :func:`cellrefine.metrics.correction_scores` summed over the
        evaluated planes (parent vs itself, and parent vs the returned model);
        None for semantic labels.
    thresholds_before, thresholds_after : dict
        ``foreground_threshold`` and ``seed_threshold`` of the parent and of the returned model.
    postprocess : dict
        The returned model's post-processing settings.
    calibration : list or None
        ``[foreground, seed, mean_f1]`` rows when the thresholds were re-picked.
    planes : int
        Planes evaluated (and calibrated on).
    min_size_calibration : list or None
        ``[min_size, mean_f1]`` rows of :func:`~cellrefine.training.calibrate.calibrate_min_size`.
    """

    metrics_before: dict
    metrics_after: dict
    objects_before: dict | None
    objects_after: dict | None
    thresholds_before: dict
    thresholds_after: dict
    postprocess: dict
    calibration: list | None
    planes: int
    min_size_calibration: list | None = None


def _thresholds(settings) -> dict:
    thresholds = {"foreground_threshold": float(settings["foreground_threshold"]), "seed_threshold": float(settings["seed_threshold"])}
    if "min_size" in settings:
        thresholds["min_size"] = int(settings["min_size"])
    return thresholds


def iter_evaluate(parent, network, planes: list[Plane], kind: str, settings: TrainSettings, device):
    """Score the parent and the tuned ``network`` on ``planes``, re-picking the thresholds first; a generator.

    Yields ``(phase, message)`` before each slow part and returns an
    :class:`Evaluation`. Each plane is predicted once by each model; the
    thresholds (``settings.calibrate_postprocess``, instance labels only)
    are chosen on these predictions, then the returned model's instances are
    made with them.

    Parameters
    ----------
    parent : Model
        The starting model (never modified).
    network : UNet
        The network of the model that will be returned, as it will be returned.
    planes : list of Plane
        The planes to evaluate (a bounded sample, see :func:`~cellrefine.training.scoring.evaluation_planes`).
    kind : {"instances", "semantic"}
    settings : TrainSettings
    device : torch.device
    """
    from ..postprocess import PostprocessSettings, probabilities_to_instances
    from ..tiling import predict_probabilities

    current = dict(parent.config.get("postprocess", {}))
    base = PostprocessSettings(**current)
    base_dict = {k: getattr(base, k) for k in POSTPROCESS_KEYS}
    truths, before, after, masks, new_probabilities, parent_instances = [], [], [], [], [], []
    for number, plane in enumerate(planes, start=1):
        yield "scoring", f"Comparing the fine-tuned model with the starting one on reviewed plane {number} of {len(planes)}…"
        parent_probabilities = predict_probabilities(parent.network, plane.image, device=device)
        probabilities = predict_probabilities(network, plane.image, device=device)
        if kind == "semantic":
            truths.append(plane.labels.astype(np.uint8))
        else:
            truths.append(instances_to_semantic(plane.labels, settings.boundary_width))
            parent_instances.append(probabilities_to_instances(parent_probabilities, base))
            new_probabilities.append(probabilities)
        before.append(parent_probabilities.argmax(axis=0).astype(np.uint8))
        after.append(probabilities.argmax(axis=0).astype(np.uint8))
        masks.append(plane.mask)
    metrics_before = reviewed_pixel_scores(truths, before, masks)
    metrics_after = reviewed_pixel_scores(truths, after, masks)
    if kind == "semantic":
        return Evaluation(metrics_before, metrics_after, None, None, _thresholds(base_dict), _thresholds(base_dict), current, None, len(planes))

    chosen, table, min_size_table = current, None, None
    if settings.calibrate_postprocess:
        yield "calibrating", f"Re-picking the watershed thresholds on your reviewed pixels ({len(planes)} plane(s))…"
        references = [
            calibration_references(plane.labels, plane.mask, parent if settings.distill > 0 else None)
            for plane, parent in zip(planes, parent_instances)
        ]
        chosen, table = calibrate_postprocess(new_probabilities, references, current)
        chosen, min_size_table = calibrate_min_size(new_probabilities, references, chosen)
    tuned = PostprocessSettings(**chosen)
    objects_before = dict.fromkeys(CORRECTION_KEYS, 0)
    objects_after = dict.fromkeys(CORRECTION_KEYS, 0)
    for plane, parent_labels, probabilities in zip(planes, parent_instances, new_probabilities):
        new_instances = probabilities_to_instances(probabilities, tuned)
        for totals, instances in ((objects_before, parent_labels), (objects_after, new_instances)):
            for key, value in correction_scores(parent_labels, plane.labels, plane.mask, instances).items():
                totals[key] += value
    thresholds_after = _thresholds({**base_dict, **chosen})
    return Evaluation(
        metrics_before,
        metrics_after,
        objects_before,
        objects_after,
        _thresholds(base_dict),
        thresholds_after,
        chosen,
        table,
        len(planes),
        min_size_table,
    )
