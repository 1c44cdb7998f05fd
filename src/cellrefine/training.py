"""Fine-tuning engine: targets, sampling, augmentation, losses and the
:func:`iter_finetune` generator that drives threaded and inline runs alike.

One generator does the work: it yields a :class:`FinetuneUpdate` after every
optimisation step (so a napari worker can quit between steps) and *returns*
the tuned :class:`~cellrefine.model.io.Model`. :func:`finetune` runs it to the
end. Closing the generator (``gen.close()``) stops it cleanly; the model that
was passed in is never modified.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from .targets import border_weight_map, class_weight_map, instances_to_semantic

logger = logging.getLogger(__name__)

__all__ = ["FinetuneUpdate", "FinetuneSettings", "iter_finetune", "finetune", "TrainingSample", "prepare_sample"]


@dataclasses.dataclass
class FinetuneUpdate:
    """Progress of a fine-tuning run, yielded after every step.

    Attributes
    ----------
    step, total : int
        Steps done and planned.
    loss : float
        Loss of this step (weighted cross-entropy [+ Dice]).
    metrics : dict
        ``"loss_smoothed"``, ``"seconds"``, ``"steps_per_second"`` and, at
        validation steps, ``"val_f1_50"`` / ``"val_pixel_accuracy"``.
    model : Model or None
        The model as it is now (a snapshot, safe to keep), attached at
        validation steps and on the last step; None otherwise.
    snapshot : callable
        ``update.snapshot()`` copies the model as it is at this step. Call it
        only while the generator is paused at this update (inline use);
        threaded callers should keep ``update.model`` instead.
    """

    step: int
    total: int
    loss: float
    metrics: dict
    model: object = None
    snapshot: Callable = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class FinetuneSettings:
    """Hyper-parameters of :func:`iter_finetune` (the defaults are what users run)."""

    steps: int = 150
    batch_size: int = 4
    crop_size: int = 192
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    weighting: str = "unet"  # "unet" (w0/sigma border map + class balance) or "class"
    w0: float = 10.0
    sigma: float = 5.0
    dice: float = 0.5
    changed_weight: float = 3.0
    distill: float = 3.0  # keep the parent's predictions on unreviewed pixels (0 = off)
    context_crops: float = 0.5  # share of crops drawn anywhere in a partly reviewed plane (distillation context)
    boundary_width: int = 2
    elastic: float = 0.5  # probability of an elastic deformation per crop
    freeze_norm: bool = True  # keep BatchNorm statistics of the parent model
    seed: int = 0
    validate_every: int = 25
    calibrate_postprocess: bool = True  # re-pick watershed thresholds on the training planes

    def validate(self) -> FinetuneSettings:
        """Raise ValueError naming the first invalid setting; return self."""
        if self.weighting not in ("unet", "class"):
            raise ValueError(f"weighting must be 'unet' or 'class', got {self.weighting!r}.")
        for name in ("steps", "batch_size", "crop_size", "validate_every", "boundary_width"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("learning_rate", "sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("weight_decay", "w0", "dice", "changed_weight", "distill"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}.")
        for name in ("elastic", "context_crops"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)!r}.")
        return self


@dataclasses.dataclass
class TrainingSample:
    """One normalised plane ready for sampling.

    ``image`` (C, Y, X) float32, ``semantic`` (Y, X) uint8 target classes,
    ``weights`` (Y, X) float32 loss weights (0 = ignored), and optionally
    ``teacher`` (3, Y, X) float16: the parent model's probabilities, used to
    keep its behaviour on the unreviewed pixels (distillation).
    """

    image: np.ndarray
    semantic: np.ndarray
    weights: np.ndarray
    teacher: np.ndarray | None = None

    @property
    def reviewed(self) -> int:
        return int(np.count_nonzero(self.weights))


def prepare_sample(
    image: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    kind: str = "instances",
    predicted: np.ndarray | None = None,
    settings: FinetuneSettings | None = None,
) -> TrainingSample:
    """Build the target and loss weights of one plane.

    Parameters
    ----------
    image : (C, Y, X) float32
        Normalised image.
    labels : (Y, X) int
        Instance labels, or class map (0/1/2) when ``kind="semantic"``.
    mask : (Y, X) bool, optional
        Reviewed pixels; the loss ignores the others. None = all pixels.
    predicted : (Y, X) uint8, optional
        The model's own class prediction; pixels whose target differs get
        ``changed_weight`` times more weight, so corrections are learned fast.
    """
    settings = settings or FinetuneSettings()
    if kind == "semantic":
        semantic = np.asarray(labels).astype(np.uint8)
        instances = None
    else:
        instances = np.asarray(labels)
        semantic = instances_to_semantic(instances, settings.boundary_width)
    reviewed = np.ones(semantic.shape, bool) if mask is None else np.asarray(mask, bool)
    weights = class_weight_map(semantic, reviewed)
    if settings.weighting == "unet" and instances is not None:
        weights = weights + border_weight_map(instances, settings.w0, settings.sigma)
    if predicted is not None and settings.changed_weight != 1:
        weights = np.where(predicted != semantic, weights * settings.changed_weight, weights)
    weights = np.where(reviewed, weights, 0).astype(np.float32)
    return TrainingSample(np.ascontiguousarray(image, np.float32), semantic, weights)


class _Sampler:
    """Draws crops centred on reviewed pixels, weighting images by reviewed area."""

    def __init__(self, samples: Sequence[TrainingSample], crop_size: int, rng: np.random.Generator):
        self.samples = samples
        self.crop = crop_size
        self.rng = rng
        counts = np.array([s.reviewed for s in samples], np.float64)
        self.image_p = np.sqrt(counts) / np.sqrt(counts).sum()
        self.reviewed_idx = [np.flatnonzero(s.weights) for s in samples]

    context_crops = 0.0  # share of crops centred anywhere in a plane that has a teacher

    @property
    def distilling(self) -> bool:
        return any(s.teacher is not None for s in self.samples)

    def crop_one(self):
        index = self.rng.choice(len(self.samples), p=self.image_p)
        sample = self.samples[index]
        half = self.crop // 2
        if sample.teacher is not None and self.rng.random() < self.context_crops:
            centre = [int(self.rng.integers(n)) for n in sample.semantic.shape]
        else:
            flat = self.reviewed_idx[index]
            centre = np.unravel_index(flat[self.rng.integers(len(flat))], sample.semantic.shape)
        jitter = self.rng.integers(-half // 2, half // 2 + 1, size=2)
        starts = [int(c + j - half) for c, j in zip(centre, jitter)]
        image = _crop_padded(sample.image, starts, self.crop, mode="reflect")
        semantic = _crop_padded(sample.semantic, starts, self.crop, mode="constant")
        weights = _crop_padded(sample.weights, starts, self.crop, mode="constant")
        teacher = None
        if self.distilling:
            if sample.teacher is None:  # fully reviewed plane: no distillation pixels
                teacher = np.zeros((3, self.crop, self.crop), np.float32)
            else:
                teacher = _crop_padded(sample.teacher, starts, self.crop, mode="reflect").astype(np.float32)
        return image, semantic, weights, teacher

    def batch(self, batch_size: int):
        crops = [self.crop_one() for _ in range(batch_size)]
        teacher = np.stack([c[3] for c in crops]) if self.distilling else None
        return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops]), np.stack([c[2] for c in crops]), teacher


def _crop_padded(array: np.ndarray, starts, size: int, mode: str) -> np.ndarray:
    """Crop ``size`` x ``size`` over the last two axes at ``starts``, padding outside."""
    shape = array.shape[-2:]
    lo = [max(s, 0) for s in starts]
    hi = [min(s + size, n) for s, n in zip(starts, shape)]
    crop = array[..., lo[0] : hi[0], lo[1] : hi[1]]
    before = [l - s for l, s in zip(lo, starts)]
    after = [size - (h - l) - b for l, h, b in zip(lo, hi, before)]
    if any(before) or any(after):
        pad = [(0, 0)] * (array.ndim - 2) + list(zip(before, after))
        if mode == "reflect":
            crop = np.pad(crop, pad, mode="symmetric")
        else:
            crop = np.pad(crop, pad, mode="constant")
    return np.ascontiguousarray(crop)


def augment(images, semantic, weights, generator, elastic: float = 0.5, teacher=None):
    """Random flips, 90° rotations, intensity jitter and elastic deformation.

    Operates on torch tensors ``images`` (N, C, Y, X), ``semantic`` (N, Y, X)
    long, ``weights`` (N, Y, X) float and optionally ``teacher`` (N, 3, Y, X)
    probabilities (moved with the image, never intensity-jittered).
    Returns ``(images, semantic, weights)`` or, with a teacher,
    ``(images, semantic, weights, teacher)``.
    """
    import torch
    from torch.nn import functional as F

    n = images.shape[0]
    n_image_channels = images.shape[1]
    if teacher is not None:
        images = torch.cat([images, teacher.to(images)], dim=1)
    out_i, out_s, out_w = [], [], []
    rand = torch.rand(n, 6, generator=generator)
    for k in range(n):
        img, sem, wt = images[k], semantic[k], weights[k]
        if rand[k, 0] < 0.5:
            img, sem, wt = img.flip(-1), sem.flip(-1), wt.flip(-1)
        if rand[k, 1] < 0.5:
            img, sem, wt = img.flip(-2), sem.flip(-2), wt.flip(-2)
        turns = int(rand[k, 2] * 4) % 4
        if turns:
            img, sem, wt = (torch.rot90(t, turns, dims=(-2, -1)) for t in (img, sem, wt))
        out_i.append(img)
        out_s.append(sem)
        out_w.append(wt)
    images, semantic, weights = torch.stack(out_i), torch.stack(out_s), torch.stack(out_w)
    if teacher is not None:
        images, teacher = images[:, :n_image_channels], images[:, n_image_channels:]
    # intensity: contrast, brightness, gamma-like curve, noise
    scale = (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=generator)).to(images)
    shift = (0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)).to(images)
    images = images * scale + shift
    noise = (0.03 * torch.rand(n, 1, 1, 1, generator=generator)).to(images)
    images = images + noise * torch.randn(images.shape, generator=generator).to(images)
    # elastic deformation: smooth random displacement (coarse 4x4 grid, up-sampled)
    deform = (torch.rand(n, generator=generator) < elastic).to(images.device)
    if deform.any():
        size = images.shape[-1]
        coarse = torch.randn(n, 2, 4, 4, generator=generator).to(images) * (6.0 / size)
        coarse = coarse * deform[:, None, None, None]
        displacement = F.interpolate(coarse, size=images.shape[-2:], mode="bicubic", align_corners=True)
        ys = torch.linspace(-1, 1, images.shape[-2], device=images.device)
        xs = torch.linspace(-1, 1, images.shape[-1], device=images.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1)[None] + displacement.permute(0, 2, 3, 1)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        if teacher is not None:
            teacher = F.grid_sample(teacher, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        stacked = torch.stack([semantic.to(images.dtype), weights], dim=1)
        stacked = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=True)
        semantic, weights = stacked[:, 0].round().long(), stacked[:, 1]
    if teacher is not None:
        return images, semantic, weights, teacher
    return images, semantic, weights


def weighted_loss(logits, semantic, weights, dice: float = 0.0, teacher=None, distill: float = 0.0):
    """Pixel-weighted cross-entropy (normalised by the weight sum) plus an optional
    soft Dice over the weighted (reviewed) pixels of the cell and boundary classes,
    plus ``distill`` x the mean KL divergence from ``teacher`` (the parent model's
    probabilities) over the *unreviewed* pixels (weight 0) where a teacher exists."""
    from torch.nn import functional as F

    ce = F.cross_entropy(logits.float(), semantic, reduction="none")
    total_weight = weights.sum().clamp_min(1e-6)
    loss = (ce * weights).sum() / total_weight
    if dice > 0:
        probabilities = logits.float().softmax(dim=1)
        reviewed = (weights > 0).to(probabilities.dtype)
        one_hot = F.one_hot(semantic.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
        dims = (0, 2, 3)
        intersection = (probabilities * one_hot * reviewed[:, None]).sum(dims)
        denominator = ((probabilities + one_hot) * reviewed[:, None]).sum(dims)
        dice_per_class = (2 * intersection + 1) / (denominator + 1)
        loss = loss + dice * (1 - dice_per_class[1:].mean())
    if teacher is not None and distill > 0:
        unreviewed = (weights == 0) & (teacher.sum(dim=1) > 0.5)
        if unreviewed.any():
            log_p = F.log_softmax(logits.float(), dim=1)
            target = teacher.float().clamp_min(1e-6)
            kl = (target * (target.log() - log_p)).sum(dim=1)
            loss = loss + distill * (kl * unreviewed).sum() / unreviewed.sum()
    return loss


def _lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 5 % of ``base``."""
    warmup = max(1, int(0.05 * total))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


#: Fine-tune under bfloat16 autocast on CPUs with native bf16 (see docs/benchmarks.md).
CPU_BF16_TRAINING = True


def optimize(network, sampler: _Sampler, settings: FinetuneSettings, device, total_steps: int, seed: int = 0, start_step: int = 0):
    """Generator of ``(step, loss, seconds)``: one AdamW step per iteration.

    Batches are drawn by a background thread (one batch ahead) so sampling
    and augmentation overlap the forward/backward pass.
    """
    import concurrent.futures

    import torch

    from .device import autocast_dtype

    generator = torch.Generator().manual_seed(seed)
    network.to(device)
    if device.type == "cpu":
        # oneDNN convolutions (forward and backward) are ~20 % faster channels-last on the CPU;
        # ``network`` is the tuned copy, and saving makes the weights contiguous again.
        network.to(memory_format=torch.channels_last)
    network.train()
    if settings.freeze_norm:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    try:  # one fused kernel for the whole update instead of a dozen passes over the weights
        optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    amp_dtype = autocast_dtype(device)
    if amp_dtype is None and device.type == "cpu" and CPU_BF16_TRAINING:
        from .device import cpu_bf16_supported

        # bfloat16 autocast (float32 master weights) on CPUs with native bf16: ~1.8x faster steps
        amp_dtype = torch.bfloat16 if cpu_bf16_supported() else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def make_batch():
        image, semantic, weights, teacher = sampler.batch(settings.batch_size)
        augmented = augment(
            torch.from_numpy(image),
            torch.from_numpy(semantic.astype(np.int64)),
            torch.from_numpy(weights),
            generator,
            settings.elastic,
            teacher=None if teacher is None else torch.from_numpy(teacher),
        )
        return augmented if teacher is not None else (*augmented, None)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make_batch)
        for step in range(start_step, total_steps):
            started = time.perf_counter()
            images, semantic, weights, teacher = pending.result()
            if step + 1 < total_steps:
                pending = pool.submit(make_batch)
            images, semantic, weights = images.to(device), semantic.to(device), weights.to(device)
            teacher = None if teacher is None else teacher.to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, settings.learning_rate)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = network(images)
            loss = weighted_loss(logits, semantic, weights, settings.dice, teacher, settings.distill)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            yield step + 1, float(loss.detach()), time.perf_counter() - started
    network.eval()


def _as_list(value, name: str) -> list:
    if value is None:
        return None
    if isinstance(value, np.ndarray) or hasattr(value, "__array__") and not isinstance(value, (list, tuple)):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays (or one array), got {type(value).__name__}.")
    return list(value)


def _collect_planes(images, labels, masks, axes, kind: str, model):
    """Validate the inputs and return [(normalised plane, labels plane, mask plane or None)]."""
    from .axes import check_axes, spatial_shape
    from .inference import PlaneReader, _check_image

    images = _as_list(images, "images")
    labels = _as_list(labels, "labels")
    masks = _as_list(masks, "masks")
    if not images:
        raise ValueError("images is empty; pass at least one image with its corrected labels.")
    if len(labels) != len(images):
        raise ValueError(f"got {len(images)} image(s) but {len(labels)} label image(s); pass one label image per image.")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"got {len(images)} image(s) but {len(masks)} mask(s); pass one mask per image, or masks=None.")
    axes_list = axes if isinstance(axes, (list, tuple)) else [axes] * len(images)
    if len(axes_list) != len(images):
        raise ValueError(f"got {len(axes_list)} axes strings for {len(images)} images.")
    if kind not in ("instances", "semantic"):
        raise ValueError(f"kind must be 'instances' or 'semantic', got {kind!r}.")
    planes = []
    for index, image in enumerate(images):
        image = _check_image(image)
        image_axes = check_axes(image.shape, axes_list[index])
        expected = spatial_shape(image.shape, image_axes)
        label = np.asarray(labels[index])
        if label.shape != expected:
            raise ValueError(
                f"labels[{index}] has shape {label.shape} but image {index} (axes {image_axes!r}) needs {expected}: one label per pixel, no channel axis."
            )
        if label.dtype.kind not in "iub":
            raise TypeError(f"labels[{index}] must be integers (instance ids or classes 0/1/2), got dtype {label.dtype}.")
        if kind == "semantic" and label.size and (label.min() < 0 or label.max() > 2):
            raise ValueError(
                f"labels[{index}] with kind='semantic' must hold classes 0 (background), 1 (cell), 2 (boundary); got values {label.min()}..{label.max()}."
            )
        mask = None
        if masks is not None and masks[index] is not None:
            mask = np.asarray(masks[index])
            if mask.shape != expected:
                raise ValueError(f"masks[{index}] has shape {mask.shape} but must match labels[{index}] {expected}.")
            mask = mask.astype(bool, copy=False)
        reader = PlaneReader(image, image_axes, model)
        label_view = _tzyx(label, image_axes)
        mask_view = None if mask is None else _tzyx(mask, image_axes)
        n_t, n_z = reader.shape[:2]
        for t in range(n_t):
            for z in range(n_z):
                mask_plane = None if mask_view is None else mask_view[t, z]
                if mask_plane is not None and not mask_plane.any():
                    continue
                planes.append((reader.plane(t, z), np.array(label_view[t, z]), None if mask_plane is None else np.array(mask_plane)))
    if not planes:
        raise ValueError("no pixel is marked as reviewed in any mask: nothing to learn from. Paint corrections or mark a region as reviewed first.")
    if all(mask is None for _, _, mask in planes) and not any(label.any() for _, label, _ in planes):
        raise ValueError(
            "the labels contain no objects and no mask marks reviewed background: nothing to learn from. Paint some objects, or pass masks for reviewed background."
        )
    return planes


def _tzyx(array: np.ndarray, image_axes: str) -> np.ndarray:
    """View a label/mask array (the image's axes without C) as (T, Z, Y, X)."""
    from .axes import to_tzcyx

    return to_tzcyx(array, image_axes.replace("C", ""))[:, :, 0]


def _reviewed_scores(network, samples, device) -> dict:
    """Pixel accuracy and per-class IoU on the reviewed pixels of the training planes."""
    from .inference import predict_probabilities

    correct = total = 0
    intersection = np.zeros(3)
    union = np.zeros(3)
    for sample in samples:
        predicted = predict_probabilities(network, sample.image, device=device).argmax(axis=0)
        reviewed = sample.weights > 0
        truth = sample.semantic[reviewed]
        guess = predicted[reviewed]
        correct += int((truth == guess).sum())
        total += int(reviewed.sum())
        for k in range(3):
            intersection[k] += np.sum((truth == k) & (guess == k))
            union[k] += np.sum((truth == k) | (guess == k))
    iou = np.where(union > 0, intersection / np.maximum(union, 1), np.nan)
    return {"reviewed_accuracy": correct / max(total, 1), "reviewed_iou_cell": float(iou[1]), "reviewed_iou_boundary": float(iou[2])}


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
    settings: FinetuneSettings | None = None,
    **overrides,
):
    """Fine-tune a copy of ``model`` on corrected labels; a generator.

    Yields a :class:`FinetuneUpdate` after every step and returns the tuned
    :class:`~cellrefine.model.io.Model` (``StopIteration.value``; use
    :func:`finetune` to get it directly). ``close()`` cancels cleanly. The
    model passed in and the input arrays are never modified.

    Parameters
    ----------
    model : Model
        The starting model (e.g. ``cellrefine.load_model()``).
    images : list of arrays
        2D images or stacks (see ``axes``).
    labels : list of int arrays
        Instance labels (0 = background, one id per object) with the image's
        shape without C; or class maps (0/1/2) with ``kind="semantic"``.
    masks : list of bool arrays, optional
        Reviewed pixels per image; the loss ignores the others, so an object
        nobody looked at is never learned as background. None = every pixel.
    axes : str or list of str, optional
        Axes of each image (inferred when None).
    kind : {"instances", "semantic"}
    steps : int, optional
        Optimisation steps (default ``settings.steps``: 150 on CPU, 400 on a GPU).
    device : {"auto", "cpu", "cuda", "mps"}
    settings : FinetuneSettings, optional
        Hyper-parameters; ``**overrides`` replace single fields
        (e.g. ``learning_rate=5e-4``, ``seed=1``).

    Raises
    ------
    ValueError, TypeError
        Mismatched lengths/shapes/dtypes, or nothing annotated.
    """
    import torch

    from .device import resolve_device
    from .inference import predict_probabilities
    from .model.io import Model

    if not isinstance(model, Model):
        raise TypeError(f"model must be a cellrefine Model (from cellrefine.load_model), got {type(model).__name__}.")
    settings = dataclasses.replace(settings or FinetuneSettings(), **overrides)
    torch_device = resolve_device(device)
    if steps is None:
        steps = settings.steps if torch_device.type != "cuda" else max(settings.steps, 400)
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    settings = dataclasses.replace(settings, steps=int(steps)).validate()
    planes = _collect_planes(images, labels, masks, axes, kind, model)
    started = time.perf_counter()
    tuned = model.copy()
    network = tuned.network.to(torch_device).eval()
    samples = []
    for image, label, mask in planes:
        distill = settings.distill > 0 and mask is not None and not mask.all()
        predicted = teacher = None
        if settings.changed_weight != 1 or distill:
            probabilities = predict_probabilities(network, image, device=torch_device)
            predicted = probabilities.argmax(axis=0).astype(np.uint8) if settings.changed_weight != 1 else None
            teacher = probabilities.astype(np.float16) if distill else None
        sample = prepare_sample(image, label, mask, kind, predicted, settings)
        sample.teacher = teacher
        samples.append(sample)
    before = _reviewed_scores(network, samples, torch_device)
    torch.manual_seed(settings.seed)
    sampler = _Sampler(samples, settings.crop_size, np.random.default_rng(settings.seed))
    sampler.context_crops = settings.context_crops
    losses = []
    metrics = {}
    for step, loss, _ in optimize(network, sampler, settings, torch_device, int(steps), seed=settings.seed):
        losses.append(loss)
        elapsed = time.perf_counter() - started
        metrics = {
            "loss_smoothed": float(np.mean(losses[-10:])),
            "seconds": elapsed,
            "steps_per_second": step / elapsed,
        }
        snapshot = None
        if step % settings.validate_every == 0 or step == steps:
            network.eval()
            metrics.update(_reviewed_scores(network, samples, torch_device))
            snapshot = _snapshot(tuned, model, settings, planes, losses, metrics, before, step, elapsed)
            network.train()
            if settings.freeze_norm:
                for module in network.modules():
                    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                        module.eval()
        current = dict(metrics)
        yield FinetuneUpdate(
            step=step,
            total=int(steps),
            loss=loss,
            metrics=current,
            model=snapshot,
            snapshot=lambda step=step, current=current: _snapshot(
                tuned, model, settings, planes, losses[:step], current, before, step, time.perf_counter() - started
            ),
        )
    network.eval()
    final = _snapshot(tuned, model, settings, planes, losses, metrics, before, len(losses), time.perf_counter() - started)
    if settings.calibrate_postprocess and kind == "instances":
        teachers = [sample.teacher for sample in samples]
        chosen, table = calibrate_postprocess(network, planes, torch_device, final.config.get("postprocess", {}), teachers)
        final.config["postprocess"] = chosen
        final.config["provenance"][-1]["postprocess_calibration"] = table
    final.network.to(torch_device)
    return final


CALIBRATION_GRID = {"foreground_threshold": (0.5, 0.6, 0.7, 0.8), "seed_threshold": (0.6, 0.7, 0.8)}


def calibrate_postprocess(network, planes, device, current: dict, teachers=None) -> tuple[dict, list]:
    """Pick the watershed thresholds that best reproduce the training labels.

    Fine-tuning changes how confident the network is, so the parent's
    thresholds may no longer fit. For every (foreground, seed) pair of
    :data:`CALIBRATION_GRID` the training planes are post-processed (the
    network runs once per plane) and scored by mean object F1 over IoU
    0.5...0.9 against a reference: the user's labels on reviewed pixels and,
    on unreviewed pixels of planes with a ``teacher`` (the parent's
    probabilities), the parent's own instances with the current thresholds,
    which the fine-tune was asked to keep. Without a teacher, prediction and
    labels are both restricted to the reviewed mask. Ties keep the current
    setting.

    Returns
    -------
    chosen : dict
        Post-processing settings for the tuned model's config.
    table : list of [foreground, seed, mean_f1]
    """
    from .inference import predict_probabilities
    from .metrics import aggregate, object_scores
    from .postprocess import PostprocessSettings, probabilities_to_instances

    base = PostprocessSettings(**current)
    teachers = teachers or [None] * len(planes)
    cached = []
    for (image, label, mask), teacher in zip(planes, teachers):
        probabilities = predict_probabilities(network, image, device=device)
        label = np.asarray(label).astype(np.int64)
        if mask is None:
            truth = label
        elif teacher is not None:
            parent = probabilities_to_instances(teacher.astype(np.float32), base).astype(np.int64)
            truth = np.where(mask, label, np.where(parent > 0, parent + label.max(), 0))
            mask = None  # score the whole plane
        else:
            truth = np.where(mask, label, 0)
        cached.append((probabilities, truth, mask))
    table = []
    best, best_score = base, -1.0
    candidates = [(base.foreground_threshold, base.seed_threshold)] + [
        (fg, seed) for fg in CALIBRATION_GRID["foreground_threshold"] for seed in CALIBRATION_GRID["seed_threshold"]
    ]
    for fg, seed in dict.fromkeys(candidates):
        settings = dataclasses.replace(base, foreground_threshold=fg, seed_threshold=seed)
        scores = []
        for probabilities, truth, mask in cached:
            predicted = probabilities_to_instances(probabilities, settings)
            if mask is not None:
                predicted = np.where(mask, predicted, 0)
            scores.append(object_scores(truth, predicted))
        mean_f1 = float(aggregate(scores)["mean_f1"])
        table.append([fg, seed, round(mean_f1, 4)])
        if mean_f1 > best_score + 1e-9:
            best, best_score = settings, mean_f1
    chosen = {k: getattr(best, k) for k in ("foreground_threshold", "seed_threshold", "min_seed_size", "min_size", "stitch_threshold")}
    logger.info("post-processing calibrated on the training planes: %s (mean F1 %.3f)", chosen, best_score)
    return chosen, table


def _snapshot(tuned, parent, settings, planes, losses, metrics, before, step, elapsed):
    """A copy of ``tuned`` whose config gets a provenance record for this run."""
    snapshot = tuned.copy()
    record = {
        "kind": "finetune",
        "parent": parent.name,
        "parent_path": getattr(parent, "path", None),
        "steps": int(step),
        "seconds": round(float(elapsed), 2),
        "data_shapes": [list(image.shape[1:]) for image, _, _ in planes],
        "reviewed_pixels": [int(mask.sum()) if mask is not None else int(image[0].size) for image, _, mask in planes],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(settings),
        "loss_curve": [round(float(np.mean(losses[i : i + 10])), 4) for i in range(0, len(losses), 10)],
        "metrics_before": before,
        "metrics_after": {k: v for k, v in metrics.items() if k.startswith("reviewed")},
    }
    snapshot.config["provenance"] = list(parent.config.get("provenance", [])) + [record]
    name = parent.name
    snapshot.config["name"] = name if name.endswith("-finetuned") else f"{name}-finetuned"
    return snapshot


def finetune(model, images, labels, masks=None, steps: int | None = None, device="auto", progress=None, **kwargs):
    """Fine-tune a copy of ``model`` and return it (runs :func:`iter_finetune` to the end).

    Parameters are those of :func:`iter_finetune`; ``progress`` is called as
    ``progress(step, total)`` after every step (or ``update(1)`` on a
    tqdm-like object). If it returns ``False`` training stops early and the
    model as trained so far is returned.

    Examples
    --------
    >>> tuned = finetune(load_model(), [image], [labels], masks=[reviewed])  # doctest: +SKIP
    """
    generator = iter_finetune(model, images, labels, masks, steps=steps, device=device, **kwargs)
    while True:
        try:
            update = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is None:
            continue
        if hasattr(progress, "update"):
            if getattr(progress, "total", None) in (None, 0):
                progress.total = update.total
            progress.update(1)
        elif progress(update.step, update.total) is False:
            tuned = update.snapshot()
            generator.close()
            logger.info("fine-tuning stopped by the progress callback after %d of %d steps", update.step, update.total)
            return tuned
