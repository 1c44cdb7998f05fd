"""Resampling one axis of an array (NumPy only): Z to isotropic spacing and back.

Used by 3D segmentation (XZ/YZ planes of a stack predicted at isotropic
spacing) and by fine-tuning on XZ/YZ planes, so that both see the same
pixels. Samples are taken at pixel centres: output index ``d`` of an axis
resampled from ``old`` to ``new`` pixels reads the input at
``(d + 0.5) * old / new - 0.5`` (clipped to the first and last pixel), so
the first and last pixels map onto each other and a constant stays constant.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resample_axis", "isotropic_length", "sample_positions"]

ORDERS = (0, 1)


def isotropic_length(n_z: int, factor: float) -> int:
    """The number of Z planes at isotropic spacing: ``max(1, round(n_z * factor))``.

    Parameters
    ----------
    n_z : int
        Planes in the stack.
    factor : float
        Z spacing over the in-plane spacing (e.g. ``scale_z / scale_x``).

    Examples
    --------
    >>> isotropic_length(10, 2.0), isotropic_length(3, 0.1)
    (20, 1)
    """
    return max(1, int(round(int(n_z) * float(factor))))


def sample_positions(old_length: int, new_length: int) -> np.ndarray:
    """Where each of ``new_length`` output pixels samples an axis of ``old_length`` pixels (float64, clipped)."""
    positions = (np.arange(new_length, dtype=np.float64) + 0.5) * (old_length / new_length) - 0.5
    return np.clip(positions, 0.0, old_length - 1)


def resample_axis(array, axis: int, new_length: int, order: int = 1) -> np.ndarray:
    """Resample ``array`` along ``axis`` to ``new_length`` pixels.

    Parameters
    ----------
    array : array-like
        Any number of dimensions.
    axis : int
        The axis to resample (negative counts from the end).
    new_length : int
        Its new length (positive).
    order : {0, 1}
        1: linear interpolation between the two nearest input pixels (for
        images); the result is floating point (float32 stays float32, other
        dtypes follow NumPy's promotion with float32). 0: nearest pixel (for
        labels and masks); the dtype and the values are kept.

    Returns
    -------
    ndarray
        ``array`` itself when the length does not change, else a new
        C-contiguous array with ``new_length`` pixels along ``axis``.

    Raises
    ------
    ValueError
        ``order`` is not 0 or 1, ``new_length`` is not positive, or ``axis``
        is out of range.

    Examples
    --------
    >>> resample_axis(np.array([0.0, 2.0]), 0, 4).tolist()
    [0.0, 0.5, 1.5, 2.0]
    >>> resample_axis(np.array([3, 7]), 0, 4, order=0).tolist()
    [3, 3, 7, 7]
    """
    array = np.asarray(array)
    if order not in ORDERS:
        raise ValueError(f"order must be 0 (nearest, for labels) or 1 (linear, for images), got {order!r}.")
    if isinstance(new_length, bool) or int(new_length) != new_length or new_length < 1:
        raise ValueError(f"new_length must be a positive whole number, got {new_length!r}.")
    if not -array.ndim <= axis < array.ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {array.ndim} dimensions.")
    axis, new_length = axis % array.ndim, int(new_length)
    old_length = array.shape[axis]
    if old_length == 0:
        raise ValueError(f"cannot resample an empty axis (shape {array.shape}, axis {axis}).")
    if new_length == old_length:
        return array
    if order == 0:
        nearest = np.minimum(np.floor((np.arange(new_length) + 0.5) * (old_length / new_length)).astype(np.intp), old_length - 1)
        return np.ascontiguousarray(np.take(array, nearest, axis=axis))
    positions = sample_positions(old_length, new_length)
    lower = np.floor(positions).astype(np.intp)
    upper = np.minimum(lower + 1, old_length - 1)
    dtype = np.result_type(array.dtype, np.float32)
    shape = [1] * array.ndim
    shape[axis] = new_length
    weight = (positions - lower).astype(dtype).reshape(shape)
    low_values = np.take(array, lower, axis=axis).astype(dtype, copy=False)
    high_values = np.take(array, upper, axis=axis).astype(dtype, copy=False)
    return np.ascontiguousarray(low_values + (high_values - low_values) * weight)
