"""The optimisation loop: AdamW, the learning-rate schedule, mixed precision and batch prefetching."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from .augment import augment
from .losses import weighted_loss
from .settings import TrainSettings

__all__ = ["optimize", "Step", "learning_rate_at", "freeze_batchnorm", "training_autocast_dtype"]


class Step(NamedTuple):
    """One optimisation step, as yielded by :func:`optimize`.

    Attributes
    ----------
    step : int
        Steps done (1-based).
    loss : float
    seconds : float
        Wall time of the step, waiting for its batch included.
    preparation_seconds : float
        The part of ``seconds`` spent waiting for training samples to be
        prepared (the starting model's prediction on a plane first drawn).
    """

    step: int
    loss: float
    seconds: float
    preparation_seconds: float


def learning_rate_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 5 % of ``base``.

    Examples
    --------
    >>> learning_rate_at(0, 100, 1.0), round(learning_rate_at(99, 100, 1.0), 3)
    (0.2, 0.05)
    """
    warmup = max(1, int(0.05 * total))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def freeze_batchnorm(network) -> None:
    """Put every BatchNorm layer of ``network`` in eval mode (its running statistics stay as they are)."""
    from torch import nn

    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    for module in network.modules():
        if isinstance(module, norms):
            module.eval()


def training_autocast_dtype(device, precision: str = "auto"):
    """The autocast dtype for training on ``device`` (None = float32).

    ``"auto"``: bfloat16 on CPUs with native bf16 (about 1.8x faster steps,
    float32 master weights), the GPU's autocast dtype on CUDA (bfloat16, or
    float16 with loss scaling), float32 elsewhere. ``"float32"``: None.
    ``"bfloat16"``: bfloat16 everywhere (ValueError on a CUDA GPU without it).
    """
    import torch

    from ..device import autocast_dtype, cpu_bf16_supported

    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}.")
    if precision == "float32":
        return None
    if device.type == "cuda":
        if precision == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bfloat16' was requested but this GPU does not support bfloat16; use 'auto' or 'float32'.")
        return torch.bfloat16 if precision == "bfloat16" else autocast_dtype(device)
    if precision == "bfloat16" or (device.type == "cpu" and cpu_bf16_supported()):
        return torch.bfloat16
    return None


def _optimizer(network, settings: TrainSettings):
    import torch

    try:  # one fused kernel for the whole update instead of a dozen passes over the weights
        return torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)


def optimize(network, sampler, settings: TrainSettings, device, *, stop=None):
    """Train ``network`` in place for ``settings.steps`` AdamW steps; a generator of :class:`Step`.

    Batches are drawn by a background thread (one batch ahead), so sampling,
    augmentation and lazy sample preparation overlap the forward/backward
    pass. The random streams are the sampler's generator and a torch
    generator seeded with ``settings.seed``; nothing global is reseeded.

    Parameters
    ----------
    network : torch.nn.Module
        Trained in place (moved to ``device``, channels-last on the CPU); left in eval mode.
    sampler : Sampler
    settings : TrainSettings
        ``steps``, ``batch_size``, ``learning_rate``, ``weight_decay``,
        ``elastic``, ``dice``, ``distill``, ``freeze_norm``, ``precision`` and ``seed`` are used.
    device : torch.device
    stop : object with ``is_set()``, optional
        Checked after every step: when set, the loop ends there.

    Raises
    ------
    FloatingPointError
        The loss became NaN or infinite (the step is not applied).
    """
    import concurrent.futures

    import torch

    total = settings.steps
    generator = torch.Generator().manual_seed(settings.seed)
    network.to(device)
    if device.type == "cpu":
        # oneDNN convolutions (forward and backward) are ~20 % faster channels-last on the CPU;
        # ``network`` is the tuned copy, and saving makes the weights contiguous again.
        network.to(memory_format=torch.channels_last)
    network.train()
    if settings.freeze_norm:
        freeze_batchnorm(network)
    optimizer = _optimizer(network, settings)
    amp_dtype = training_autocast_dtype(device, settings.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16 and device.type == "cuda")
    samples = getattr(sampler, "samples", None)

    def make_batch():
        before = getattr(samples, "preparation_seconds", 0.0)
        image, semantic, weights, teacher = sampler.batch(settings.batch_size)
        augmented = augment(
            torch.from_numpy(image),
            torch.from_numpy(semantic.astype(np.int64)),
            torch.from_numpy(weights),
            generator,
            settings.elastic,
            teacher=None if teacher is None else torch.from_numpy(teacher),
        )
        prepared = getattr(samples, "preparation_seconds", 0.0) - before
        return (augmented if teacher is not None else (*augmented, None)), prepared

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellrefine-batches") as pool:
            pending = pool.submit(make_batch)
            for step in range(total):
                started = time.perf_counter()
                (images, semantic, weights, teacher), prepared = pending.result()
                waited = time.perf_counter() - started
                if step + 1 < total:
                    pending = pool.submit(make_batch)
                images, semantic, weights = images.to(device), semantic.to(device), weights.to(device)
                teacher = None if teacher is None else teacher.to(device)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate_at(step, total, settings.learning_rate)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits = network(images)
                loss = weighted_loss(logits, semantic, weights, settings.dice, teacher, settings.distill)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"the training loss became {value} at step {step + 1}; nothing was learned from this step. "
                        f"Lower learning_rate (now {settings.learning_rate:g}), or use precision='float32', and check the image for extreme values."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                yield Step(step + 1, value, time.perf_counter() - started, min(waited, prepared))
                if stop is not None and stop.is_set():
                    break
    finally:
        network.eval()
