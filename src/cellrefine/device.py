"""Device selection: ``"auto"`` → CUDA → Apple MPS (probed) → CPU.

Nothing in CellRefine is hard-coded to one device. ``"auto"`` picks CUDA when
``torch.cuda.is_available()``, else MPS when available *and* a small U-Net
forward pass runs on it (some MPS builds lack operators), else the CPU. A
failed MPS probe logs and emits a :class:`RuntimeWarning` and falls back to
the CPU.
"""

from __future__ import annotations

import functools
import logging
import warnings

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "DEVICES", "PRECISIONS", "autocast_dtype", "cpu_bf16_supported", "inference_dtypes"]

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16")


@functools.cache
def _mps_works() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_available():
        return False
    try:
        from .model.unet import UNet

        network = UNet(depth=1, base_channels=4).to("mps").eval()
        with torch.inference_mode():
            network(torch.zeros(1, 1, 16, 16, device="mps")).cpu()
        return True
    except Exception as error:
        warnings.warn(f"Apple MPS is available but a test forward pass failed ({error}); using the CPU.", RuntimeWarning, stacklevel=3)
        logger.warning("MPS probe failed: %s", error)
        return False


def resolve_device(device="auto"):
    """Turn ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:1"``/``"mps"`` or a torch.device into a torch.device.

    Raises
    ------
    ValueError
        Unknown name, or a device that is not available on this machine.
    """
    import torch

    if isinstance(device, torch.device):
        name = device.type
    elif isinstance(device, str):
        name = device.split(":")[0].lower()
    else:
        raise TypeError(f"device must be a string such as 'auto', 'cpu', 'cuda' or 'mps', got {type(device).__name__}.")
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {DEVICES} (or 'cuda:N').")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_works():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but PyTorch sees no CUDA GPU; install a CUDA build of torch or use device='auto'/'cpu'.")
    if name == "mps" and not _mps_works():
        raise ValueError("device='mps' was requested but Apple MPS is not usable here; use device='auto' or 'cpu'.")
    return torch.device(device.lower()) if isinstance(device, str) else device


def autocast_dtype(device):
    """The mixed-precision dtype to use on ``device`` (None = full float32).

    CUDA: bfloat16 where supported, else float16. CPU and MPS: None.
    """
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@functools.cache
def cpu_bf16_supported() -> bool:
    """True when oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_dtypes(device, precision: str = "auto"):
    """``(weights_dtype, autocast_dtype)`` for inference on ``device``.

    ``precision="auto"``: bfloat16 weights and activations on CPUs with native
    bf16 instructions (float32 elsewhere); autocast (``autocast_dtype``) on
    CUDA. ``"float32"``: full precision everywhere. ``"bfloat16"``: bf16 even
    where it is emulated (slow on CPUs without native support).

    Raises
    ------
    ValueError
        Unknown precision, or bfloat16 on a CUDA GPU without bf16 support.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "float32":
        return torch.float32, None
    if device.type == "cpu":
        if precision == "bfloat16" or cpu_bf16_supported():
            return torch.bfloat16, None
        return torch.float32, None
    if device.type == "cuda":
        if precision == "bfloat16":
            if not torch.cuda.is_bf16_supported():
                raise ValueError("precision='bfloat16' was requested but this GPU does not support bfloat16; use 'auto' or 'float32'.")
            return torch.float32, torch.bfloat16
        return torch.float32, autocast_dtype(device)
    return torch.float32, (torch.bfloat16 if precision == "bfloat16" else None)
