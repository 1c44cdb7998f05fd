"""Judging checkpoints on held-back reviewed pixels, at a bounded cost.

Every ``validate_every`` steps the network is scored on a fixed set of
*windows* (``WINDOW`` pixels square, with ``CONTEXT`` pixels of image around
them) cut from the reviewed pixels, never on whole planes, so the cost does
not grow with the number of reviewed planes: at most ``SCORE_SHARE`` of the
forward/backward work of the steps in between (``score_window_budget``).

When there are enough reviewed pixels (``MIN_HOLDOUT_WINDOWS`` windows and
``MIN_HOLDOUT_PIXELS`` pixels), about ``settings.holdout`` of them, whole
windows chosen from ``settings.seed``, are held back from training and the
checkpoints are judged on those. Otherwise they are judged on a sample of the
training pixels, and the provenance says so.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..metrics import pixel_iou
from ..targets import instances_to_semantic
from .inputs import Plane
from .samples import crop_padded
from .settings import TrainSettings

__all__ = [
    "ScoreWindows",
    "plan_score_windows",
    "score_window_budget",
    "score_windows",
    "reviewed_pixel_scores",
    "evaluation_planes",
    "WINDOW",
    "CONTEXT",
    "SCORE_SHARE",
    "STEP_COST",
    "EVALUATION_COST",
    "MIN_HOLDOUT_WINDOWS",
    "MIN_HOLDOUT_PIXELS",
]

WINDOW = 64
CONTEXT = 32
SCORE_SHARE = 0.1
#: Forward-pass equivalents per pixel of a training step (forward + backward + AdamW, bf16 on a CPU with bf16:
#: 0.5 s for 4 x 192² pixels vs 2.1 s/MPix for inference, measured on the 2-core development machine).
STEP_COST = 1.7
#: Forward-pass equivalents per pixel of the final evaluation: the parent and the returned model predict
#: (2), the 13 threshold pairs are post-processed and scored (13 x 0.06).
EVALUATION_COST = 2.8
MAX_SCORE_WINDOWS = 64
MIN_HOLDOUT_WINDOWS = 20
MIN_HOLDOUT_PIXELS = 2**16


@dataclasses.dataclass
class ScoreWindows:
    """The windows checkpoints are scored on.

    Attributes
    ----------
    images : (N, C, S, S) float32
        Each window with its context (S = WINDOW + context on both sides).
    semantic : (N, WINDOW, WINDOW) uint8
        Target classes of the windows.
    valid : (N, WINDOW, WINDOW) bool
        Reviewed pixels of the windows (the ones counted).
    held_out : bool
        True when the windows are held back from training.
    exclude : list of (Y, X) bool or None
        Per plane, the pixels held back from training (None: none).
    held_out_pixels : int
        Reviewed pixels held back.
    context : int
        Context before each window (pixels).
    """

    images: np.ndarray
    semantic: np.ndarray
    valid: np.ndarray
    held_out: bool
    exclude: list
    held_out_pixels: int = 0
    context: int = CONTEXT

    @property
    def judged_on(self) -> str:
        """In words, for the provenance."""
        if self.held_out:
            return f"held-back reviewed pixels ({len(self.images)} windows of {WINDOW} px, {self.held_out_pixels} pixels not trained on)"
        return "training pixels (too few reviewed pixels to hold some back)"


def score_window_budget(settings: TrainSettings, input_size: int) -> int:
    """How many windows of ``input_size`` pixels square fit in ``SCORE_SHARE`` of the training work between two scorings.

    A training step costs about ``STEP_COST`` forward passes over its
    ``batch_size`` crops of ``crop_size``; scoring runs one forward pass per
    window. Between 1 and ``MAX_SCORE_WINDOWS``.
    """
    step_pixels = STEP_COST * settings.batch_size * settings.crop_size**2
    budget = SCORE_SHARE * min(settings.validate_every, settings.steps) * step_pixels / input_size**2
    return int(np.clip(int(budget), 1, MAX_SCORE_WINDOWS))


def _candidates(plane: Plane) -> list:
    """``(y0, x0, reviewed pixels)`` of the WINDOW-sized cells of a plane holding reviewed pixels."""
    height, width = plane.shape
    reviewed = plane.reviewed_mask()
    cells = []
    for y in range(0, height, WINDOW):
        for x in range(0, width, WINDOW):
            y0, x0 = max(0, min(y, height - WINDOW)), max(0, min(x, width - WINDOW))
            count = int(np.count_nonzero(reviewed[y0 : y0 + WINDOW, x0 : x0 + WINDOW]))
            if count:
                cells.append((y0, x0, count))
    return list(dict.fromkeys(cells))


def plan_score_windows(planes: list[Plane], settings: TrainSettings, kind: str = "instances", grid: int = 1) -> ScoreWindows:
    """Choose (and, when there are enough reviewed pixels, hold back) the windows to score checkpoints on.

    Parameters
    ----------
    planes : list of Plane
    settings : TrainSettings
        ``holdout``, ``keep_best``, ``seed``, ``boundary_width`` and the budget fields are used.
    kind : {"instances", "semantic"}
    grid : int
        The network's size multiple: window + context is rounded up to it.

    Returns
    -------
    ScoreWindows
    """
    size = int(np.ceil((WINDOW + 2 * CONTEXT) / grid) * grid)
    context = (size - WINDOW) // 2
    rng = np.random.default_rng([settings.seed, 0x5C0E])
    cells = [(index, y, x, count) for index, plane in enumerate(planes) for y, x, count in _candidates(plane)]
    order = [cells[k] for k in rng.permutation(len(cells))]
    total = sum(plane.reviewed_pixels for plane in planes)
    hold = settings.keep_best and settings.holdout > 0 and len(cells) >= MIN_HOLDOUT_WINDOWS and total >= MIN_HOLDOUT_PIXELS
    exclude = [None] * len(planes)
    held_pixels = 0
    if hold:
        chosen = []
        for cell in order:
            if held_pixels >= settings.holdout * total:
                break
            chosen.append(cell)
            held_pixels += cell[3]
        for index, y, x, _ in chosen:
            if exclude[index] is None:
                exclude[index] = np.zeros(planes[index].shape, bool)
            exclude[index][y : y + WINDOW, x : x + WINDOW] = True
        held_pixels = sum(int(np.count_nonzero(ex & planes[i].reviewed_mask())) for i, ex in enumerate(exclude) if ex is not None)
        order = chosen
    scored = order[: score_window_budget(settings, size)]
    semantic_planes = {}
    images, semantic, valid = [], [], []
    for index, y, x, _ in scored:
        plane = planes[index]
        if index not in semantic_planes:
            labels = plane.labels
            semantic_planes[index] = labels.astype(np.uint8) if kind == "semantic" else instances_to_semantic(labels, settings.boundary_width)
        images.append(crop_padded(plane.image, (y - context, x - context), size, mode="reflect"))
        semantic.append(crop_padded(semantic_planes[index], (y, x), WINDOW))
        valid.append(crop_padded(plane.reviewed_mask(), (y, x), WINDOW))
    return ScoreWindows(np.stack(images), np.stack(semantic), np.stack(valid), hold, exclude, held_pixels, context)


def score_windows(network, windows: ScoreWindows, device, amp_dtype=None, batch_size: int = 8) -> dict:
    """Reviewed-pixel scores of ``network`` (in eval mode) on the windows.

    Returns
    -------
    dict
        ``reviewed_accuracy``, ``reviewed_iou_cell``, ``reviewed_iou_boundary``
        and ``score``, the mean IoU of the classes present (what checkpoints
        are ranked by).
    """
    import torch

    predictions = []
    lo, hi = windows.context, windows.context + WINDOW
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for first in range(0, len(windows.images), batch_size):
            inputs = torch.from_numpy(windows.images[first : first + batch_size]).to(device)
            logits = network(inputs)[:, :, lo:hi, lo:hi]
            predictions.append(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
    predicted = np.concatenate(predictions)
    return reviewed_pixel_scores([windows.semantic], [predicted], [windows.valid], with_score=True)


def reviewed_pixel_scores(truths, predictions, masks, with_score: bool = False) -> dict:
    """Accuracy and cell/boundary IoU of class maps over the reviewed pixels of several planes together.

    Parameters
    ----------
    truths, predictions : list of int arrays
        Target and predicted classes (0/1/2), pairwise of the same shape.
    masks : list of bool arrays or None
        Reviewed pixels (None: all).
    with_score : bool
        Also return ``score``, the mean IoU over the classes present.

    Returns
    -------
    dict
        ``reviewed_accuracy`` and ``reviewed_iou_cell`` / ``reviewed_iou_boundary``
        (:func:`cellrefine.metrics.pixel_iou`; NaN for a class absent from both).
    """
    truth = np.concatenate([np.asarray(t)[m] if m is not None else np.asarray(t).ravel() for t, m in zip(truths, masks)])
    guess = np.concatenate([np.asarray(p)[m] if m is not None else np.asarray(p).ravel() for p, m in zip(predictions, masks)])
    iou = pixel_iou(truth, guess, n_classes=3)
    scores = {
        "reviewed_accuracy": float(np.mean(truth == guess)) if truth.size else float("nan"),
        "reviewed_iou_cell": float(iou[1]),
        "reviewed_iou_boundary": float(iou[2]),
    }
    if with_score:
        scores["score"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
    return scores


def evaluation_planes(planes: list[Plane], settings: TrainSettings, steps_done: int) -> list[int]:
    """Indices of the planes the returned model is evaluated and calibrated on, bounded in pixels.

    Every plane when they fit; otherwise a seeded sample of whole planes
    whose evaluation costs at most ``SCORE_SHARE`` of the training work done
    (``EVALUATION_COST`` vs ``STEP_COST`` forward passes per pixel), at least one.
    """
    budget = SCORE_SHARE * STEP_COST * max(steps_done, 1) * settings.batch_size * settings.crop_size**2 / EVALUATION_COST
    sizes = [int(np.prod(plane.shape)) for plane in planes]
    if sum(sizes) <= budget:
        return list(range(len(planes)))
    order = np.random.default_rng([settings.seed, 0xE7A1]).permutation(len(planes))
    chosen, used = [], 0
    for index in order:
        if chosen and used + sizes[index] > budget:
            continue
        chosen.append(int(index))
        used += sizes[index]
    return sorted(chosen)
