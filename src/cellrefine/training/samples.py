"""Training samples (targets, loss weights, the starting model's predictions) and the crop sampler.

:func:`prepare_sample` turns one plane into a :class:`TrainingSample`.
:class:`SampleSet` does that lazily, on the first crop drawn from a plane
(the prediction of the starting model, needed for ``changed_weight`` and
distillation, is the slow part), so training starts after preparing only the
planes of its first batch. :class:`Sampler` draws crops around reviewed pixels.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence

import numpy as np

from ..targets import border_weight_map, class_weight_map, instances_to_semantic
from .inputs import KINDS, Plane
from .settings import TrainSettings

__all__ = ["TrainingSample", "prepare_sample", "prepare_samples", "SampleSet", "Sampler", "crop_padded", "teacher_confidence"]


@dataclasses.dataclass
class TrainingSample:
    """One normalised plane ready for sampling.

    Attributes
    ----------
    image : (C, Y, X) float32
        Normalised image.
    semantic : (Y, X) uint8
        Target classes (0 background, 1 cell, 2 boundary).
    weights : (Y, X) float32
        Loss weights; 0 = not trained on (unreviewed or held back).
    teacher : (3, Y, X) float16 or None
        The starting model's probabilities, kept on the unreviewed pixels
        (distillation); zero where there is nothing to keep (held-back pixels).
    """

    image: np.ndarray
    semantic: np.ndarray
    weights: np.ndarray
    teacher: np.ndarray | None = None

    @property
    def reviewed(self) -> int:
        """Pixels trained on (non-zero weight)."""
        return int(np.count_nonzero(self.weights))


def prepare_sample(
    image: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    kind: str = "instances",
    predicted: np.ndarray | None = None,
    settings: TrainSettings | None = None,
    teacher: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> TrainingSample:
    """Build the target and loss weights of one plane.

    Parameters
    ----------
    image : (C, Y, X) float32
        Normalised image.
    labels : (Y, X) int
        Instance labels (any non-negative ids; a bool image is one object), or
        class map (0/1/2) when ``kind="semantic"``.
    mask : (Y, X) bool, optional
        Reviewed pixels; the loss ignores the others. None = all pixels.
    kind : {"instances", "semantic"}
    predicted : (Y, X) uint8, optional
        The model's own class prediction; pixels whose target differs get
        ``settings.changed_weight`` times more weight, so corrections are learned fast.
    settings : TrainSettings, optional
    teacher : (3, Y, X) array, optional
        The starting model's probabilities, stored as float16 (see :class:`TrainingSample`).
    exclude : (Y, X) bool, optional
        Reviewed pixels held back from training (to judge checkpoints on):
        weight 0, and no distillation there.

    Returns
    -------
    TrainingSample
    """
    settings = settings or TrainSettings()
    if kind not in KINDS:
        raise ValueError(f"kind must be 'instances' or 'semantic', got {kind!r}.")
    if kind == "semantic":
        semantic = np.asarray(labels)
        if semantic.dtype.kind not in "iub" or (semantic.size and (semantic.min() < 0 or semantic.max() > 2)):
            raise ValueError(f"labels with kind='semantic' must be classes 0 (background), 1 (cell), 2 (boundary); got {semantic.dtype} values.")
        semantic = semantic.astype(np.uint8)
        instances = None
    else:
        instances = np.asarray(labels)
        semantic = instances_to_semantic(instances, settings.boundary_width)
    reviewed = np.ones(semantic.shape, bool) if mask is None else np.asarray(mask, bool)
    if exclude is not None:
        reviewed = reviewed & ~exclude
    if settings.weighting == "border":
        weights = reviewed.astype(np.float32)
    else:
        weights = class_weight_map(semantic, reviewed)
    if settings.weighting in ("unet", "border") and instances is not None:
        weights = weights + border_weight_map(instances, settings.w0, settings.sigma, mask=reviewed)
    if predicted is not None and settings.changed_weight != 1:
        weights = np.where(predicted != semantic, weights * settings.changed_weight, weights)
    weights = np.where(reviewed, weights, 0).astype(np.float32)
    if teacher is not None:
        teacher = np.array(teacher, np.float16)
        if exclude is not None:
            teacher[:, exclude] = 0
    return TrainingSample(np.ascontiguousarray(image, np.float32), semantic, weights, teacher)


class SampleSet(Sequence):
    """The :class:`TrainingSample` of each plane, prepared on first access (thread-safe).

    Parameters
    ----------
    planes : list of Plane
    kind : {"instances", "semantic"}
    settings : TrainSettings
    parent : Model, optional
        The starting model: its prediction gives ``predicted`` (when
        ``settings.changed_weight != 1``) and, on partly reviewed planes when
        ``settings.distill > 0``, the teacher. None: neither.
    device : torch.device, optional
        Where the starting model predicts.
    exclude : list of (Y, X) bool or None, optional
        Held-back pixels per plane (see :func:`prepare_sample`).

    Attributes
    ----------
    reviewed : (n_planes,) int64
        Pixels trained on per plane, known without preparing anything.
    preparation_seconds : float
        Time spent preparing samples so far.
    """

    def __init__(
        self, planes: Sequence[Plane], kind: str = "instances", settings: TrainSettings | None = None, *, parent=None, device=None, exclude=None
    ):
        self.planes = list(planes)
        self.kind = kind
        self.settings = settings or TrainSettings()
        self.parent = parent
        self.device = device
        self.exclude = list(exclude) if exclude is not None else [None] * len(self.planes)
        self.reviewed = np.array([self._trained_pixels(plane, ex) for plane, ex in zip(self.planes, self.exclude)], np.int64)
        partly = [plane.mask is not None and not plane.mask.all() for plane in self.planes]
        self._teacher = [parent is not None and self.settings.distill > 0 and p for p in partly]
        self._ready: dict = {}
        self._lock = threading.Lock()
        self.preparation_seconds = 0.0
        #: per plane, the starting model's :func:`teacher_confidence` on its unreviewed pixels (None until prepared, or without a teacher)
        self.teacher_confidence: list = [None] * len(self.planes)

    @classmethod
    def of(cls, samples: Sequence[TrainingSample]) -> SampleSet:
        """A set of samples that are already prepared."""
        planes = [Plane(s.image, np.zeros(s.semantic.shape, np.int32), s.weights > 0) for s in samples]
        result = cls(planes)
        result.reviewed = np.array([s.reviewed for s in samples], np.int64)
        result._teacher = [s.teacher is not None for s in samples]
        result._ready = dict(enumerate(samples))
        return result

    @staticmethod
    def _trained_pixels(plane: Plane, exclude) -> int:
        if exclude is None:
            return plane.reviewed_pixels
        return int(np.count_nonzero(plane.reviewed_mask() & ~exclude))

    def __len__(self) -> int:
        return len(self.planes)

    def has_teacher(self, index: int) -> bool:
        """Whether plane ``index`` has (or will have) a teacher, known without preparing it."""
        return bool(self._teacher[index])

    @property
    def distilling(self) -> bool:
        return any(self._teacher)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # IndexError out of range; negative indices count from the end
        with self._lock:
            sample = self._ready.get(index)
            if sample is None:
                started = time.perf_counter()
                sample = self._ready[index] = self._prepare(index)
                self.preparation_seconds += time.perf_counter() - started
        return sample

    def _prepare(self, index: int) -> TrainingSample:
        from ..tiling import predict_probabilities

        plane, settings = self.planes[index], self.settings
        predicted = teacher = None
        if self.parent is not None and (settings.changed_weight != 1 or self._teacher[index]):
            probabilities = predict_probabilities(self.parent.network, plane.image, device=self.device)
            predicted = probabilities.argmax(axis=0).astype(np.uint8) if settings.changed_weight != 1 else None
            teacher = probabilities if self._teacher[index] else None
        if teacher is not None:
            confidence = teacher_confidence(teacher, ~plane.reviewed_mask())
            self.teacher_confidence[index] = round(confidence, 4)
            if confidence < settings.distill_confidence:
                teacher = None  # out of the starting model's domain: nothing worth keeping (TrainSettings.distill_confidence)
        return prepare_sample(plane.image, plane.labels, plane.mask, self.kind, predicted, settings, teacher, self.exclude[index])


def teacher_confidence(probabilities: np.ndarray, unreviewed: np.ndarray) -> float:
    """How much at home the starting model is on a plane (compared with ``TrainSettings.distill_confidence``).

    Its mean top-class probability over the unreviewed pixels whose most likely class is not
    *boundary* (over all unreviewed pixels if every one of them is). Boundary pixels are left out
    because they are uncertain by nature (a 2-px band with soft edges) and their share follows the
    objects' density, not the domain: the bundled cells model scores 0.873 over all pixels of its
    own dense sample but 0.929 without them; the nuclei model on EM 0.66-0.79 either way.

    Parameters
    ----------
    probabilities : (3, Y, X) float array
        The starting model's background, cell and boundary probabilities.
    unreviewed : (Y, X) bool array
        The pixels nobody reviewed (where distillation would keep the model's predictions).

    Returns
    -------
    float
        In [1/3, 1]; the mean top-class probability of the pixels considered.

    Examples
    --------
    >>> p = np.array([[0.95, 0.25], [0.04, 0.3], [0.01, 0.45]])[:, None, :]  # background pixel, boundary pixel
    >>> round(teacher_confidence(p, np.ones((1, 2), bool)), 2)  # the boundary pixel is left out
    0.95
    """
    top = probabilities.max(axis=0)
    considered = unreviewed & (probabilities.argmax(axis=0) != 2)
    return float(top[considered if considered.any() else unreviewed].mean())


def prepare_samples(
    planes: Sequence[Plane], kind: str = "instances", settings: TrainSettings | None = None, *, parent=None, device=None
) -> list[TrainingSample]:
    """:func:`prepare_sample` for every plane now (see :class:`SampleSet` for the parameters)."""
    samples = SampleSet(planes, kind, settings, parent=parent, device=device)
    return [samples[i] for i in range(len(samples))]


class Sampler:
    """Draws training crops centred on reviewed pixels.

    Parameters
    ----------
    samples : SampleSet or sequence of TrainingSample
    crop_size : int
    rng : numpy.random.Generator
        The sampler's own generator.
    context_crops : float
        Share of crops, in planes with a teacher, centred anywhere in the
        plane rather than on a reviewed pixel (context for distillation).
    image_weights : {"reviewed", "uniform"}
        How planes are chosen: in proportion to the square root of their
        reviewed pixels (fine-tuning), or all alike (training from scratch).
    """

    def __init__(self, samples, crop_size: int, rng: np.random.Generator, *, context_crops: float = 0.0, image_weights: str = "reviewed"):
        self.samples = samples if isinstance(samples, SampleSet) else SampleSet.of(samples)
        self.crop = int(crop_size)
        self.rng = rng
        self.context_crops = float(context_crops)
        counts = self.samples.reviewed.astype(np.float64)
        if not counts.any():
            raise ValueError("no plane has a pixel to train on.")
        if image_weights == "reviewed":
            weights = np.sqrt(counts)
        elif image_weights == "uniform":
            weights = (counts > 0).astype(np.float64)
        else:
            raise ValueError(f"image_weights must be 'reviewed' or 'uniform', got {image_weights!r}.")
        self.image_p = weights / weights.sum()
        self._centres: dict = {}

    @property
    def distilling(self) -> bool:
        return self.samples.distilling

    def crop_one(self) -> tuple:
        """``(image, semantic, weights, teacher or None)`` of one crop (teacher zeros for planes without one)."""
        index = int(self.rng.choice(len(self.samples), p=self.image_p))
        sample = self.samples[index]
        half = self.crop // 2
        if sample.teacher is not None and self.rng.random() < self.context_crops:
            centre = [int(self.rng.integers(n)) for n in sample.semantic.shape]
        else:
            flat = self._centres.get(index)
            if flat is None:
                flat = self._centres[index] = np.flatnonzero(sample.weights)
            centre = np.unravel_index(flat[self.rng.integers(len(flat))], sample.semantic.shape)
        jitter = self.rng.integers(-half // 2, half // 2 + 1, size=2)
        starts = [int(c + j - half) for c, j in zip(centre, jitter)]
        image = crop_padded(sample.image, starts, self.crop, mode="reflect")
        semantic = crop_padded(sample.semantic, starts, self.crop, mode="constant")
        weights = crop_padded(sample.weights, starts, self.crop, mode="constant")
        teacher = None
        if self.distilling:
            if sample.teacher is None:  # fully reviewed plane: no distillation pixels
                teacher = np.zeros((3, self.crop, self.crop), np.float32)
            else:
                teacher = crop_padded(sample.teacher, starts, self.crop, mode="reflect").astype(np.float32)
        return image, semantic, weights, teacher

    def batch(self, batch_size: int) -> tuple:
        """``(images, semantic, weights, teacher or None)`` stacked over ``batch_size`` crops."""
        crops = [self.crop_one() for _ in range(batch_size)]
        teacher = np.stack([c[3] for c in crops]) if self.distilling else None
        return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops]), np.stack([c[2] for c in crops]), teacher


def crop_padded(array: np.ndarray, starts, size: int, mode: str = "constant") -> np.ndarray:
    """Crop ``size`` x ``size`` over the last two axes of ``array`` from ``starts``, padding outside.

    Parameters
    ----------
    array : (..., Y, X) array
    starts : (int, int)
        Top-left corner; may be negative or reach past the edges.
    size : int
    mode : {"constant", "reflect"}
        Zeros outside, or the image mirrored at its edges (``np.pad``'s "symmetric").

    Returns
    -------
    (..., size, size) C-contiguous array
    """
    shape = array.shape[-2:]
    lo = [min(max(s, 0), n) for s, n in zip(starts, shape)]
    hi = [min(max(s + size, 0), n) for s, n in zip(starts, shape)]
    crop = array[..., lo[0] : hi[0], lo[1] : hi[1]]
    before = [min(l - s, size) for l, s in zip(lo, starts)]
    after = [size - (h - l) - b for l, h, b in zip(lo, hi, before)]
    if any(before) or any(after):
        pad = [(0, 0)] * (array.ndim - 2) + list(zip(before, after))
        if mode == "reflect" and crop.shape[-1] and crop.shape[-2]:
            crop = np.pad(crop, pad, mode="symmetric")
        else:
            crop = np.pad(crop, pad, mode="constant")
    return np.ascontiguousarray(crop)
