"""Robust intensity normalisation.

Images are scaled so that the ``low``-th percentile maps to 0 and the
``high``-th percentile to 1 (defaults 1 and 99.8), computed **per stack**:
over all planes of a Z stack or T series at once (on a strided subsample of at
most ~4 million pixels), so neighbouring slices keep the same scale. Per-plane
statistics are available with ``per_plane=True``. A blank image (high == low)
maps to zeros; it never divides by zero. NaN/Inf pixels are rejected with a
``ValueError`` by :func:`cellrefine.segment` (see ``check_finite``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["percentile_range", "normalize", "to_float32"]

_SAMPLE_PIXELS = 4_000_000


def _subsample(array) -> np.ndarray:
    """A strided view of at most about ``_SAMPLE_PIXELS`` elements (loads only those)."""
    size = int(np.prod(array.shape)) if array.ndim else 1
    if size <= _SAMPLE_PIXELS:
        return np.asarray(array)
    step = int(np.ceil((size / _SAMPLE_PIXELS) ** (1 / array.ndim)))
    sliced = array[tuple(slice(None, None, step) if n > step else slice(None) for n in array.shape)]
    return np.asarray(sliced)


def percentile_range(array, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """Return the ``(low, high)`` percentiles of ``array`` (a strided subsample when large).

    Parameters
    ----------
    array : array-like (numpy, dask or zarr)
    low, high : float
        Percentiles in [0, 100], ``low < high``.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}.")
    sample = _subsample(array)
    if sample.dtype.kind == "b":
        sample = sample.astype(np.uint8)
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(sample, (low, high))
    return float(lo), float(hi)


def to_float32(array, lo: float, hi: float) -> np.ndarray:
    """Scale ``array`` so ``lo`` → 0 and ``hi`` → 1 as a new float32 array.

    A blank range (``hi <= lo``) gives zeros. The input is never modified.
    """
    out = np.asarray(array, dtype=np.float32).copy() if not isinstance(array, np.ndarray) or array.dtype != np.float32 else array.copy()
    if hi <= lo:
        out[...] = 0
        return out
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


def normalize(array, low: float = 1.0, high: float = 99.8, per_plane: bool = False) -> np.ndarray:
    """Percentile-normalise ``array`` to float32 (``low`` → 0, ``high`` → 1).

    Parameters
    ----------
    array : array-like
        Any integer or float dtype. Not modified.
    low, high : float
        Percentiles mapped to 0 and 1.
    per_plane : bool
        If True, normalise each of the last-two-axes planes on its own;
        otherwise use one range for the whole array.

    Returns
    -------
    normalized : float32 array of the same shape.

    Examples
    --------
    >>> normalize(np.array([[0, 50], [100, 100]], np.uint8), 0, 100)
    array([[0. , 0.5],
           [1. , 1. ]], dtype=float32)
    """
    array = np.asarray(array)
    if per_plane and array.ndim > 2:
        planes = array.reshape((-1,) + array.shape[-2:])
        return np.stack([normalize(plane, low, high) for plane in planes]).reshape(array.shape)
    lo, hi = percentile_range(array, low, high)
    return to_float32(array, lo, hi)
