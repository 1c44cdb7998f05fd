"""Robust intensity normalisation.

Images are scaled so that the ``low``-th percentile maps to 0 and the
``high``-th percentile to 1 (defaults 1 and 99.8), computed **per stack**:
over all planes of a Z stack or T series at once (on a strided subsample of at
most ~4 million pixels), so neighbouring slices keep the same scale. Per-plane
statistics are available with ``per_plane=True``.

Sparse objects are not erased: when the two percentiles collapse onto one
value (objects cover less than ``100 - high`` percent of the pixels, e.g. a
few bright nuclei on a background-subtracted zero background), the range is
taken from the pixels that differ from that value (:func:`percentile_range`):
the ``high``-th percentile of the brighter pixels becomes 1 (the background
stays 0), or, when no pixel is brighter, the ``low``-th percentile of the
darker ones becomes 0. Only a constant image is *blank*: it maps to zeros,
never divides by zero, and :func:`cellrefine.segment` /
:func:`cellrefine.finetune` warn with :class:`BlankImageWarning`.

The scaling (:func:`to_float32`) is monotonic and its output is finite for
finite input (values beyond the float32 range are clipped to it; float64 and
32/64-bit integer images are scaled in float64 before the float32 cast, so a
large offset does not cancel a small range). NaN/Inf pixels are rejected with
a ``ValueError`` by :func:`cellrefine.segment` (see
:class:`cellrefine.reader.PlaneReader`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["percentile_range", "normalize", "to_float32", "strided_sample", "BlankImageWarning", "SAMPLE_PIXELS"]

#: Largest number of pixels the percentiles are computed on (a strided subsample beyond it).
SAMPLE_PIXELS = 4_000_000

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class BlankImageWarning(UserWarning):
    """An image (or stack) is constant, so it normalises to zeros and nothing can be found in it."""


def strided_sample(array) -> np.ndarray:
    """A strided sample of at most about :data:`SAMPLE_PIXELS` elements of ``array`` as numpy (loads only those).

    Every axis longer than the step is sliced with the same step, so a lazy
    (dask/zarr) array is read only where sampled.
    """
    size = int(np.prod(array.shape)) if array.ndim else 1
    if size <= SAMPLE_PIXELS:
        return np.asarray(array)
    step = int(np.ceil((size / SAMPLE_PIXELS) ** (1 / array.ndim)))
    sliced = array[tuple(slice(None, None, step) if n > step else slice(None) for n in array.shape)]
    return np.asarray(sliced)


def _check_percentiles(low, high) -> tuple[float, float]:
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"percentile {name} must be a number in [0, 100], got {type(value).__name__}.")
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}.")
    return float(low), float(high)


def _finite_values(array) -> np.ndarray:
    """The finite values of ``array`` as float64 (integers too: numpy interpolates percentiles in the input's dtype,
    where ``max - min`` of a signed integer image can overflow)."""
    values = np.asarray(array).ravel()
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    return values.astype(np.float64, copy=False)


def percentile_range(array, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """Return the values mapped to 0 and 1: the ``(low, high)`` percentiles of ``array`` (a strided subsample when large).

    NaN/Inf values are ignored. When the percentiles collapse onto one value
    ``v`` (more than ``high - low`` percent of the pixels equal ``v``, e.g.
    sparse bright objects on a flat background), the range comes from the
    other pixels, so sparse objects are kept: if some pixels are brighter
    than ``v``, ``(v, high-th percentile of the brighter pixels)``; otherwise
    ``(low-th percentile of the darker pixels, v)``. Only a constant image
    (or one without finite values) gives ``lo == hi``; see :func:`to_float32`.

    Parameters
    ----------
    array : array-like (numpy, dask or zarr)
    low, high : float
        Percentiles in [0, 100], ``low < high``.

    Returns
    -------
    (lo, hi) : tuple of float
        Finite, ``lo <= hi``; ``(0.0, 0.0)`` when there is no finite value.

    Examples
    --------
    >>> image = np.zeros((100, 100)); image[:3, :3] = 3000  # 0.09 % bright pixels
    >>> percentile_range(image)
    (0.0, 3000.0)
    """
    low, high = _check_percentiles(low, high)
    sample = _finite_values(strided_sample(array))
    if sample.size == 0:
        return 0.0, 0.0
    lo, hi = _percentiles(sample, (low, high))
    if hi > lo:
        return lo, hi
    brighter = sample[sample > hi]
    if brighter.size:
        return lo, _percentiles(brighter, (high,))[0]
    darker = sample[sample < lo]
    if darker.size:
        return _percentiles(darker, (low,))[0], hi
    return lo, hi


def _percentiles(values: np.ndarray, percentiles: tuple) -> list[float]:
    """``np.percentile`` as floats; values near the float64 limit are halved first so the interpolation cannot overflow."""
    if values.dtype.kind == "f" and np.abs(values).max() > 1e300:
        return [2 * float(v) for v in np.percentile(values * 0.5, percentiles)]
    return [float(v) for v in np.percentile(values, percentiles)]


def _exact_in_float32(dtype: np.dtype) -> bool:
    """Every value of ``dtype`` is a float32 (bool, 8/16-bit integers, float16/32)."""
    return dtype.kind == "b" or (dtype.kind in "ui" and dtype.itemsize <= 2) or (dtype.kind == "f" and dtype.itemsize <= 4)


def to_float32(array, lo: float, hi: float, *, copy: bool = True) -> np.ndarray:
    """Scale ``array`` so ``lo`` → 0 and ``hi`` → 1 as float32: the one scaling arithmetic.

    Monotonic; finite input gives finite output (results beyond the float32
    range are clipped to it); NaN stays NaN. Bool, 8/16-bit integer and
    float16/32 images are scaled in float32; float64 and 32/64-bit integer
    images in float64 (then cast), so a large offset does not cancel a small
    range (and so is a narrow range far from zero, ``abs(lo) > 1e4 * (hi - lo)``).

    Parameters
    ----------
    array : array-like
    lo, hi : float
        Finite values mapped to 0 and 1. A blank range (``hi <= lo``) gives zeros.
    copy : bool
        True (default): a new array; the input is never modified. False: a
        float32 numpy ``array`` is scaled in place (and returned), for arrays
        the caller owns.

    Raises
    ------
    ValueError
        ``lo`` or ``hi`` is not finite.
    """
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"lo and hi must be finite numbers, got lo={lo}, hi={hi}.")
    in_place = not copy and isinstance(array, np.ndarray) and array.dtype == np.float32
    values = array if isinstance(array, np.ndarray) else np.asarray(array)
    span = hi - lo  # may overflow to inf for values near the float64 limit
    if not span > 0:
        out = values if in_place else np.zeros(values.shape, np.float32)
        out[...] = 0
        return out
    scale = 1.0 / span if span > 1e-300 else math.inf
    # float32 arithmetic is exact enough when the input is float32-exact and lo's float32 rounding is small against the span
    fast = _exact_in_float32(values.dtype) and math.isfinite(span) and scale <= 1e30 and abs(lo) <= min(1e30, 1e4 * span)
    if fast:
        out = values if in_place else np.array(values, dtype=np.float32, copy=True)
        with np.errstate(over="ignore", invalid="ignore"):
            out -= np.float32(lo)
            out *= np.float32(scale)
        if values.dtype == np.float32:  # |x - lo| * scale may overflow only for float32 input (others are below 65536 + 1e4 * span)
            np.clip(out, -_FLOAT32_MAX, _FLOAT32_MAX, out=out)
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(span):  # divide: 1 / span overflows for a subnormal span, and 0 * inf would be NaN
            scaled = np.subtract(values, lo, dtype=np.float64)
            scaled /= span
        else:  # halve everything so the span is finite
            scaled = np.multiply(values, 0.5, dtype=np.float64)
            scaled -= 0.5 * lo
            scaled *= 1.0 / (0.5 * hi - 0.5 * lo)
        np.clip(scaled, -_FLOAT32_MAX, _FLOAT32_MAX, out=scaled)
    if in_place:
        values[...] = scaled
        return values
    return scaled.astype(np.float32)


def normalize(array, low: float = 1.0, high: float = 99.8, per_plane: bool = False) -> np.ndarray:
    """Percentile-normalise ``array`` to float32 (``low`` → 0, ``high`` → 1).

    The range is :func:`percentile_range` (sparse bright objects are kept);
    a constant array gives zeros without a warning (:func:`cellrefine.segment`
    warns with :class:`BlankImageWarning`).

    Parameters
    ----------
    array : array-like
        Bool, any integer or float dtype. Not modified.
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
