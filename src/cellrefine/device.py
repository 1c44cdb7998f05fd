"""Devices, precisions and torch's thread count.

Nothing in CellRefine is hard-coded to one device. ``"auto"`` picks CUDA when
``torch.cuda.is_available()``, else MPS when available *and* a small U-Net
forward pass runs on it (some MPS builds lack operators), else the CPU. A
failed MPS probe logs and emits a :class:`RuntimeWarning` and falls back to
the CPU.

:func:`limit_torch_threads` is the one place that changes torch's (process-wide)
thread count; the napari jobs use it to leave a core to the GUI, and the
``CELLREFINE_NUM_THREADS`` environment variable (or its ``threads`` argument)
sets or switches off that limit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import warnings

logger = logging.getLogger(__name__)

__all__ = [
    "resolve_device",
    "DEVICES",
    "PRECISIONS",
    "THREADS_ENV",
    "autocast_dtype",
    "cpu_bf16_supported",
    "inference_dtypes",
    "job_thread_count",
    "limit_torch_threads",
]

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16")
THREADS_ENV = "CELLREFINE_NUM_THREADS"


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
    """Turn a device name or a ``torch.device`` into an available ``torch.device``.

    Parameters
    ----------
    device : str or torch.device, optional
        ``"auto"`` (CUDA, else a working Apple MPS, else the CPU), ``"cpu"``,
        ``"cuda"``, ``"cuda:N"`` (GPU number N) or ``"mps"``; names are
        case-insensitive and surrounding spaces are ignored.

    Returns
    -------
    torch.device

    Raises
    ------
    TypeError
        ``device`` is neither a string nor a ``torch.device``.
    ValueError
        Unknown name, a malformed or missing GPU number, or a device that is
        not available on this machine.

    Examples
    --------
    >>> resolve_device("CPU")
    device(type='cpu')
    """
    import torch

    if isinstance(device, torch.device):
        name, index = device.type, device.index
    elif isinstance(device, str):
        name, colon, number = device.strip().lower().partition(":")
        if name not in DEVICES:
            raise ValueError(f"unknown device {device!r}; use one of {DEVICES} (or 'cuda:N').")
        index = None
        if colon:
            if name == "auto" or not number.isdigit():
                raise ValueError(f"device {device!r} is malformed; a device number goes after 'cuda', 'cpu' or 'mps' as in 'cuda:0'.")
            index = int(number)
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
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but PyTorch sees no CUDA GPU; install a CUDA build of torch or use device='auto'/'cpu'.")
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} was requested but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0.")
    if name == "mps" and not _mps_works():
        raise ValueError("device='mps' was requested but Apple MPS is not usable here; use device='auto' or 'cpu'.")
    return torch.device(name) if index is None else torch.device(name, index)


def _as_device(device):
    import torch

    return device if isinstance(device, torch.device) else resolve_device(device)


def autocast_dtype(device):
    """The mixed-precision (autocast) dtype to use on ``device``; None means full float32.

    Parameters
    ----------
    device : torch.device or str
        A device, or a name accepted by :func:`resolve_device`.

    Returns
    -------
    torch.dtype or None
        CUDA: ``torch.bfloat16`` where the GPU supports it, else
        ``torch.float16``. CPU and MPS: None.
    """
    import torch

    if _as_device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@functools.cache
def cpu_bf16_supported() -> bool:
    """True when oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX).

    Returns
    -------
    bool
        The answer is cached for the life of the process; False when torch
        cannot tell.
    """
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_dtypes(device, precision: str = "auto"):
    """``(weights_dtype, autocast_dtype)`` for inference on ``device``.

    Parameters
    ----------
    device : torch.device or str
        A device, or a name accepted by :func:`resolve_device`.
    precision : {"auto", "float32", "bfloat16"}
        ``"auto"``: bfloat16 weights and activations on CPUs with native bf16
        instructions (float32 elsewhere); autocast (:func:`autocast_dtype`)
        on CUDA; float32 on MPS. ``"float32"``: full precision everywhere.
        ``"bfloat16"``: bf16 even where it is emulated (slow on CPUs without
        native support); autocast to bf16 on CUDA and MPS.

    Returns
    -------
    tuple of (torch.dtype, torch.dtype or None)

    Raises
    ------
    ValueError
        Unknown precision, or bfloat16 on a CUDA GPU without bf16 support.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    device = _as_device(device)
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


def job_thread_count(threads: int | None = None) -> int | None:
    """How many torch threads a CellRefine job should use (None = leave torch's setting alone).

    Parameters
    ----------
    threads : int, optional
        A count of 1 or more is used as it is; 0 means "do not change torch's
        thread count". None (the default) reads the ``CELLREFINE_NUM_THREADS``
        environment variable, which takes the same values; when that is unset
        or empty the answer is one less than the number of CPUs (at least 1,
        and never more than torch's current count), which leaves a core to the
        GUI.

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
        ``threads`` (or the environment variable) is negative or not a whole number.
    """
    import torch

    source = "threads"
    if threads is None:
        text = os.environ.get(THREADS_ENV, "").strip()
        if not text:
            return min(torch.get_num_threads(), max(1, (os.cpu_count() or 2) - 1))
        source = f"the environment variable {THREADS_ENV}"
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"{source} must be a whole number (0 = leave torch's thread count alone), got {text!r}.") from None
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise ValueError(f"{source} must be a whole number (0 = leave torch's thread count alone), got {threads!r}.")
    if threads < 0:
        raise ValueError(f"{source} must be 0 (leave torch's thread count alone) or a positive number of threads, got {threads}.")
    return threads or None


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved: int | None = None
_threads_set: int | None = None


@contextlib.contextmanager
def limit_torch_threads(threads: int | None = None):
    """Set torch's thread count for the duration of a job, then restore it.

    ``torch.set_num_threads`` is process-wide: while any job is inside this
    block, *every* torch computation in the process (a user's script in the
    napari console included) uses the job's count. By default that is one less
    than the number of CPUs, which keeps the GUI responsive during segmentation
    and fine-tuning.

    Opt out or choose the count with the ``threads`` argument or the
    ``CELLREFINE_NUM_THREADS`` environment variable (see
    :func:`job_thread_count`): ``CELLREFINE_NUM_THREADS=0`` leaves torch's
    thread count untouched; ``CELLREFINE_NUM_THREADS=4`` uses 4 threads.

    Jobs may overlap: the first one in sets the count, the last one out puts
    back the count found on entry, unless something else changed it in the
    meantime (then that change is kept).

    Parameters
    ----------
    threads : int, optional
        See :func:`job_thread_count`.

    Raises
    ------
    ValueError
        An invalid ``threads`` or ``CELLREFINE_NUM_THREADS``.
    """
    import torch

    global _threads_users, _threads_saved, _threads_set
    count = job_thread_count(threads)
    with _threads_lock:
        if _threads_users == 0 and count is not None:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(count)
            _threads_set = torch.get_num_threads()
            logger.debug("torch threads %d -> %d for a CellRefine job", _threads_saved, count)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_saved is not None:
                if torch.get_num_threads() == _threads_set:
                    torch.set_num_threads(_threads_saved)
                _threads_saved = _threads_set = None
