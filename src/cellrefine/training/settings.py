"""The hyper-parameters of fine-tuning and of training from scratch: one :class:`TrainSettings`."""

from __future__ import annotations

import dataclasses
import math
from numbers import Integral, Real

from ..settings_fields import reject_unknown_fields

__all__ = ["TrainSettings", "FinetuneSettings", "PRECISIONS", "WEIGHTINGS"]

PRECISIONS = ("auto", "float32", "bfloat16")
WEIGHTINGS = ("unet", "class", "border")

_POSITIVE_INTS = ("steps", "batch_size", "crop_size", "validate_every", "boundary_width")
_POSITIVE_FLOATS = ("learning_rate", "sigma")
_NON_NEGATIVE_FLOATS = ("weight_decay", "w0", "dice", "changed_weight", "distill")
_PROBABILITIES = ("elastic", "context_crops", "distill_confidence")
_FLAGS = ("freeze_norm", "keep_best", "calibrate_postprocess")


@reject_unknown_fields("fine-tuning")
@dataclasses.dataclass
class TrainSettings:
    """Hyper-parameters of :func:`cellrefine.training.iter_finetune` and of ``python -m cellrefine.train``.

    The defaults are what users run when fine-tuning; ``train.py`` overrides
    a few of them (no BatchNorm freeze, no emphasis on changed pixels).
    An unknown field name (``TrainSettings(learnng_rate=1e-3)``, or the same
    override to :func:`~cellrefine.training.finetune`) raises a TypeError that
    names it and suggests the closest field; :meth:`validate` checks the values.

    Attributes
    ----------
    steps : int
        Optimisation steps (the one place this number lives; the ``steps``
        argument of :func:`~cellrefine.training.iter_finetune` overrides it).
    batch_size, crop_size : int
        Crops per step and their side in pixels.
    learning_rate, weight_decay : float
        AdamW; the rate warms up over 5 % of the steps, then decays (cosine) to 5 %.
    weighting : {"unet", "class", "border"}
        ``"unet"``: class balance plus the U-Net border weight (``w0``, ``sigma``);
        ``"class"``: class balance only; ``"border"``: every pixel weight 1 plus
        the border weight (no class balance: the rare boundary class is not
        up-weighted, so its predicted band is not widened).
    w0, sigma : float
        Amplitude and width (pixels) of the border weight.
    dice : float
        Weight of the soft Dice term over the reviewed pixels.
    changed_weight : float
        Extra weight of reviewed pixels where the starting model was wrong (1 = off).
    distill : float
        Weight of keeping the starting model's predictions on the unreviewed
        pixels of partly reviewed planes (0 = off).
    distill_confidence : float
        Distillation is used on a plane only where the starting model is at
        home: its mean top-class probability over the plane's unreviewed
        pixels that it does not call boundary must reach this (0 = always;
        :func:`~cellrefine.training.samples.teacher_confidence`). Out of its
        domain (the bundled nuclei model on EM: 0.66-0.79; on nuclei images:
        0.96-0.99; the cells model on cells: 0.92-0.98) its predictions are
        not worth keeping, and keeping them stops the corrections from
        reshaping the model (docs/benchmarks.md, "Corrections to accuracy").
    context_crops : float
        Share of crops drawn anywhere in a partly reviewed plane (distillation context).
    boundary_width : int
        Width of the boundary class inside each object (pixels).
    elastic : float
        Probability of an elastic deformation per crop.
    freeze_norm : bool
        Keep the BatchNorm statistics of the starting model.
    seed : int
        Seeds the run's own random generators (the process's global generators are never touched).
    validate_every : int
        Score a checkpoint every this many steps (and at the last step).
    keep_best : bool
        Return the checkpoint with the best score on held-back reviewed
        pixels (see :mod:`cellrefine.training.scoring`) instead of the last one.
    holdout : float
        Share of the reviewed pixels held back from training to judge the
        checkpoints on, in [0, 0.5]; only used when there are enough reviewed
        pixels (otherwise checkpoints are judged on training pixels, and the
        provenance says so). 0 = never hold back.
    calibrate_postprocess : bool
        Re-pick the watershed thresholds on the reviewed pixels after training.
    precision : {"auto", "float32", "bfloat16"}
        ``"auto"``: bfloat16 autocast on CPUs with native bf16 and on CUDA
        (float16 where the GPU lacks bf16), float32 elsewhere.
        ``"float32"``: full precision. ``"bfloat16"``: bf16 autocast even
        where it is emulated (slow on CPUs without native bf16).
    """

    steps: int = 150
    batch_size: int = 4
    crop_size: int = 192
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    weighting: str = "unet"
    w0: float = 10.0
    sigma: float = 5.0
    dice: float = 0.5
    changed_weight: float = 3.0
    distill: float = 3.0
    distill_confidence: float = 0.9
    context_crops: float = 0.5
    boundary_width: int = 2
    elastic: float = 0.5
    freeze_norm: bool = True
    seed: int = 0
    validate_every: int = 25
    keep_best: bool = True
    holdout: float = 0.15
    calibrate_postprocess: bool = True
    precision: str = "auto"

    def validate(self) -> TrainSettings:
        """Check every field; return self.

        Raises
        ------
        TypeError
            A number field holds something that is not a number, or a flag is not a bool.
        ValueError
            A value is out of range or not finite, or a choice is unknown; the
            message names the field.
        """
        for name, choices in (("weighting", WEIGHTINGS), ("precision", PRECISIONS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        for name in _POSITIVE_FLOATS:
            if not _number(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        for name in _NON_NEGATIVE_FLOATS:
            if not _number(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}.")
        for name in _PROBABILITIES:
            if not 0 <= _number(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)!r}.")
        if not 0 <= _number(self, "holdout") <= 0.5:
            raise ValueError(f"holdout is the share of reviewed pixels held back, in [0, 0.5], got {self.holdout!r}.")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        return self

    def replace(self, **changes) -> TrainSettings:
        """A validated copy with some fields changed (an unknown field name raises a TypeError naming it)."""
        return dataclasses.replace(self, **changes).validate()


#: The name used by fine-tuning code and earlier versions; the same class.
FinetuneSettings = TrainSettings


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _number(settings, name: str) -> float:
    """The field as a finite float; TypeError for non-numbers, ValueError for NaN/inf."""
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)
