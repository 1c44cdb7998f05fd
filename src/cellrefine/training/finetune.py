"""Fine-tuning a copy of a model on corrected labels: :func:`iter_finetune` and :func:`finetune`.

One generator does the work and owns the policy, so the napari widget, the
CLI and the API return the same model for the same data and settings: it
prepares the reviewed planes (lazily, see :class:`~cellrefine.training.samples.SampleSet`),
trains, scores checkpoints on held-back reviewed pixels
(:mod:`~cellrefine.training.scoring`), keeps the best one, re-picks the
watershed thresholds and measures the parent and the returned model
(:mod:`~cellrefine.training.evaluation`). A stop request ends training after
the current step and still returns a calibrated model.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from .evaluation import iter_evaluate
from .inputs import collect_planes
from .loop import freeze_batchnorm, optimize, training_autocast_dtype
from .report import base_record, data_fingerprint, loss_curve, plane_orientations
from .samples import Sampler, SampleSet
from .scoring import evaluation_planes, plan_score_windows, score_windows
from .settings import TrainSettings

logger = logging.getLogger(__name__)

__all__ = ["FinetuneUpdate", "iter_finetune", "finetune", "PHASES"]

PHASES = ("preparing", "training", "scoring", "calibrating")


@dataclasses.dataclass
class FinetuneUpdate:
    """Progress of a fine-tuning run, yielded by :func:`iter_finetune`.

    Attributes
    ----------
    step, total : int
        Steps done and planned (``done`` is ``step``: the unit of progress bars).
    loss : float
        Loss of this step (weighted cross-entropy + Dice + distillation); NaN
        outside the ``"training"`` phase.
    metrics : dict
        ``loss_smoothed``; ``seconds`` (since the start), ``preparation_seconds``,
        ``training_seconds`` (optimisation steps only: an ETA is
        ``(total - step) / steps_per_second``), ``scoring_seconds``,
        ``steps_per_second`` (over ``training_seconds``), ``eta_seconds``; and at
        checkpoint steps ``reviewed_accuracy``, ``reviewed_iou_cell``,
        ``reviewed_iou_boundary``, ``checkpoint_score`` on the scoring windows.
    model : Model or None
        At checkpoint steps, a copy of the model as it is now (safe to keep).
    snapshot : callable
        ``update.snapshot()`` copies the model as it is at this step; call it
        only while the generator is paused at this update.
    phase : {"preparing", "training", "scoring", "calibrating"}
    message : str
        What is being done, in words.
    """

    step: int
    total: int
    loss: float
    metrics: dict
    model: object = None
    snapshot: Callable = dataclasses.field(default=None, repr=False, compare=False)
    phase: str = "training"
    message: str = ""

    @property
    def done(self) -> int:
        return self.step


def _resolve_settings(settings, steps, overrides) -> TrainSettings:
    if settings is None:
        settings = TrainSettings()
    if not isinstance(settings, TrainSettings):
        raise TypeError(f"settings must be a TrainSettings (FinetuneSettings), got {type(settings).__name__}.")
    if steps is not None:
        overrides["steps"] = steps
    return dataclasses.replace(settings, **overrides).validate()


def iter_finetune(
    model,
    images,
    labels,
    masks=None,
    *,
    axes=None,
    kind: str = "instances",
    steps: int | None = None,
    device="auto",
    settings: TrainSettings | None = None,
    stop=None,
    scale=None,
    slice_axes: str = "auto",
    **overrides,
):
    """Fine-tune a copy of ``model`` on corrected labels; a generator.

    Yields :class:`FinetuneUpdate` (a ``"preparing"`` one first, one per
    optimisation step, then ``"scoring"``/``"calibrating"`` ones) and returns
    the tuned :class:`~cellrefine.model.io.Model` (``StopIteration.value``;
    :func:`finetune` returns it directly). The returned model is the best
    checkpoint (``settings.keep_best``) with re-picked thresholds
    (``settings.calibrate_postprocess``); its ``config["provenance"][-1]``
    holds the figures before (the parent) and after (the returned model),
    see :func:`~cellrefine.training.report.finetune_summary`. ``close()``
    cancels without a result. The model passed in and the input arrays are
    never modified; the process's random generators are never reseeded.

    Parameters
    ----------
    model : Model
        The starting model (e.g. ``cellrefine.load_model()``).
    images : array or list of arrays
        2D images or stacks (see ``axes``).
    labels : array or list of int arrays
        Instance labels (0 = background, one id per object) with the image's
        shape without C; or class maps (0/1/2) with ``kind="semantic"``.
    masks : array or list of bool arrays, optional
        Reviewed pixels per image; the loss ignores the others, so an object
        nobody looked at is never learned as background. None = every pixel.
        Planes without a reviewed pixel are not used (nor read). In a stack a
        plane is used only where its reviewed pixels hold a 2 x 2 square,
        so a correction painted in an XY view trains XY
        planes and one painted in an XZ/YZ view trains that XZ/YZ plane.
    axes : str or list of str, optional
        Axes of each image (inferred when None).
    kind : {"instances", "semantic"}
    steps : int, optional
        Overrides ``settings.steps`` (default 150).
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
    settings : TrainSettings, optional
        Hyper-parameters; ``**overrides`` replace single fields (e.g.
        ``learning_rate=5e-4``, ``seed=1``, ``keep_best=False``).
    stop : object with ``is_set()``, optional
        E.g. a ``threading.Event``: once set, training ends after the current
        step and the run goes on to choose the checkpoint, calibrate and return.
    scale : sequence of numbers, or list of them (one per image), optional
        Voxel size, as a napari layer's ``scale`` ((z, y, x) or one number per
        non-channel axis; see :func:`cellrefine.axes.check_scale`). XZ/YZ
        training planes are resampled along Z to the in-plane spacing, as 3D
        segmentation does. None: isotropic.
    slice_axes : str
        The axes training planes are cut along: ``"Z"`` XY planes, ``"Y"`` XZ
        planes, ``"X"`` YZ planes, or a combination such as ``"ZYX"``.
        ``"auto"`` (default): ``"ZYX"`` for images with a Z axis of 2 planes
        or more and a mask, ``"Z"`` otherwise (a fully labelled stack would
        otherwise train on every XZ/YZ plane: pass ``"ZYX"`` for that). See
        :mod:`cellrefine.training.orientations`.

    Raises
    ------
    ValueError, TypeError
        Mismatched lengths/shapes/dtypes, nothing annotated, reviewed pixels
        that form no training plane in ``slice_axes``, a bad ``scale`` or
        ``slice_axes``, or an invalid setting.
    FloatingPointError
        The loss became NaN or infinite.
    """
    from ..device import resolve_device
    from ..model.io import Model

    if not isinstance(model, Model):
        raise TypeError(f"model must be a cellrefine Model (from cellrefine.load_model), got {type(model).__name__}.")
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise TypeError(f"stop must have an is_set() method (e.g. a threading.Event), got {type(stop).__name__}.")
    settings = _resolve_settings(settings, steps, overrides)
    device = resolve_device(device)
    started = time.perf_counter()
    planes = collect_planes(images, labels, masks, axes, kind, model, scale=scale, slice_axes=slice_axes)
    total = settings.steps
    reviewed = sum(plane.reviewed_pixels for plane in planes)
    counts = plane_orientations(planes)
    kinds = "" if set(counts) == {"XY"} else " (" + ", ".join(f"{n} {name}" for name, n in counts.items()) + ")"
    yield FinetuneUpdate(
        0,
        total,
        float("nan"),
        {},
        phase="preparing",
        message=f"Preparing {len(planes)} reviewed plane(s){kinds}, {reviewed} reviewed pixels (the starting model predicts each plane as training first uses it)…",
    )
    tuned = model.copy()
    network = tuned.network.to(device).eval()
    windows = plan_score_windows(planes, settings, kind, grid=getattr(network, "grid", 1))
    samples = SampleSet(planes, kind, settings, parent=model, device=device, exclude=windows.exclude)
    sampler = Sampler(samples, settings.crop_size, np.random.default_rng(settings.seed), context_crops=settings.context_crops)
    amp_dtype = training_autocast_dtype(device, settings.precision)
    fingerprint = []  # computed once, on first use

    def record(steps_done: int, checkpoints: list) -> dict:
        if not fingerprint:
            fingerprint.append(data_fingerprint(planes))
        return {
            **base_record(model, settings, planes, fingerprint[0]),
            "steps": int(steps_done),
            "planned_steps": total,
            "slice_axes": slice_axes,
            "scale": _scale_record(scale),
            "loss_curve": loss_curve(losses[:steps_done]),
            "checkpoint": {"judged_on": windows.judged_on, "held_out": windows.held_out, "scores": [list(c) for c in checkpoints]},
        }

    def snapshot(steps_done: int, checkpoints: list):
        copy = tuned.copy()
        copy.config["provenance"] = list(model.config.get("provenance", [])) + [{**record(steps_done, checkpoints), "snapshot": True}]
        copy.config["name"] = _tuned_name(model.name)
        return copy

    def score(step: int) -> dict:
        network.eval()
        scores = score_windows(network, windows, device, amp_dtype)
        checkpoints.append([step, round(scores["score"], 4)])
        if settings.keep_best and (not best or scores["score"] >= best["score"]):
            best.update(score=scores["score"], step=step, state={k: v.detach().clone() for k, v in network.state_dict().items()})
        return scores

    setup_seconds = time.perf_counter() - started
    losses, checkpoints, best = [], [], {}
    times = {"training": 0.0, "waiting": 0.0, "scoring": 0.0}
    metrics = {}
    stopped_early = False
    steps_run = optimize(network, sampler, settings, device)
    try:
        for result in steps_run:
            step = result.step
            losses.append(result.loss)
            times["training"] += result.seconds - result.preparation_seconds
            times["waiting"] += result.preparation_seconds
            rate = step / max(times["training"], 1e-9)
            metrics = {
                "loss_smoothed": float(np.mean(losses[-10:])),
                "seconds": time.perf_counter() - started,
                "preparation_seconds": setup_seconds + times["waiting"],
                "training_seconds": times["training"],
                "scoring_seconds": times["scoring"],
                "steps_per_second": rate,
                "eta_seconds": (total - step) / rate,
            }
            model_now = None
            if step % settings.validate_every == 0 or step == total:
                scoring_started = time.perf_counter()
                scores = score(step)
                metrics.update({k: v for k, v in scores.items() if k != "score"}, checkpoint_score=scores["score"])
                model_now = snapshot(step, checkpoints)
                network.train()
                if settings.freeze_norm:
                    freeze_batchnorm(network)
                times["scoring"] += time.perf_counter() - scoring_started
                metrics.update(scoring_seconds=times["scoring"], seconds=time.perf_counter() - started)
            current = dict(metrics)
            yield FinetuneUpdate(
                step,
                total,
                result.loss,
                current,
                model_now,
                snapshot=lambda step=step, saved=list(checkpoints): snapshot(step, saved),
                phase="training",
                message=f"Training: step {step} of {total}",
            )
            if stop is not None and stop.is_set():
                stopped_early = step < total
                break
    finally:
        steps_run.close()
    steps_done = len(losses)
    if not checkpoints or checkpoints[-1][0] != steps_done:  # stopped between checkpoints: score the last step too
        scoring_started = time.perf_counter()
        score(steps_done)
        times["scoring"] += time.perf_counter() - scoring_started
    chosen_step = steps_done
    if best and best["step"] != steps_done:
        network.load_state_dict(best["state"])
        chosen_step = best["step"]
    network.eval()
    final = tuned.copy()
    final.network.to(device).eval()
    chosen = evaluation_planes(planes, settings, steps_done)
    evaluation = None
    evaluating = iter_evaluate(model, final.network, [planes[i] for i in chosen], kind, settings, device)
    while evaluation is None:
        try:
            phase, message = next(evaluating)
        except StopIteration as done:
            evaluation = done.value
            break
        yield FinetuneUpdate(steps_done, total, float("nan"), dict(metrics), phase=phase, message=message)
    final.config["postprocess"] = dict(evaluation.postprocess)
    entry = record(steps_done, checkpoints)
    entry["checkpoint"]["step"] = chosen_step
    entry.update(
        stopped_early=stopped_early,
        seconds=round(time.perf_counter() - started, 2),
        preparation_seconds=round(setup_seconds + times["waiting"], 2),
        training_seconds=round(times["training"], 2),
        scoring_seconds=round(times["scoring"], 2),
        evaluated_planes=evaluation.planes,
        metrics_before=evaluation.metrics_before,
        metrics_after=evaluation.metrics_after,
        objects_before=evaluation.objects_before,
        objects_after=evaluation.objects_after,
        thresholds_before=evaluation.thresholds_before,
        thresholds_after=evaluation.thresholds_after,
        teacher_confidence=list(samples.teacher_confidence),
    )
    if evaluation.calibration is not None:
        entry["postprocess_calibration"] = evaluation.calibration
    if evaluation.min_size_calibration:
        entry["min_size_calibration"] = evaluation.min_size_calibration
    final.config["provenance"] = list(model.config.get("provenance", [])) + [entry]
    final.config["name"] = _tuned_name(model.name)
    return final


def _scale_record(scale):
    """``scale`` as JSON (nested lists of floats, None kept)."""
    if scale is None:
        return None
    return [_scale_record(entry) if entry is None or hasattr(entry, "__len__") else float(entry) for entry in scale]


def _tuned_name(name: str) -> str:
    return name if name.endswith("-finetuned") else f"{name}-finetuned"


def _training_updates(generator):
    """Pass on the ``"training"`` updates of ``generator`` only; return its value."""
    while True:
        try:
            update = next(generator)
        except StopIteration as done:
            return done.value
        if update.phase == "training":
            yield update


def finetune(model, images, labels, masks=None, steps: int | None = None, device="auto", progress=None, **kwargs):
    """Fine-tune a copy of ``model`` and return it (runs :func:`iter_finetune` to the end).

    Parameters are those of :func:`iter_finetune`; ``progress`` is called as
    ``progress(step, total)`` after every step (or ``update(n)`` on a
    tqdm-like object). If it returns ``False`` training stops after that step
    and the run still chooses the checkpoint and calibrates (as Stop in napari).

    Examples
    --------
    >>> tuned = finetune(load_model(), [image], [labels], masks=[reviewed])  # doctest: +SKIP
    >>> print("\\n".join(finetune_summary(tuned)))  # doctest: +SKIP
    """
    from ..progress import run_to_end

    stop = kwargs.pop("stop", None) or threading.Event()
    generator = iter_finetune(model, images, labels, masks, steps=steps, device=device, stop=stop, **kwargs)
    return run_to_end(_training_updates(generator), progress, on_cancel=stop.set)
