"""Axes of images: validation, inference and the canonical (T, Z, C, Y, X) view.

Axes are strings over ``"TZCYX"`` (time, depth, channel, rows, columns), one
letter per array dimension, each at most once, and always containing ``Y``
and ``X``. When ``axes`` is None it is inferred from the shape:

============  ==========================  =====================
ndim          last axis has 3 or 4 items  otherwise
============  ==========================  =====================
2             --                          ``YX``
3             ``YXC`` (RGB/RGBA)          ``ZYX``
4             ``ZYXC``                    ``TZYX``
5             ``TZYXC``                   ``TZCYX``
============  ==========================  =====================

So the last two non-channel axes are always YX, a trailing axis of size 3 or
4 is colour, and a leading third axis is Z. Pass ``axes="TYX"`` for a time
series, ``axes="CYX"`` for channel-first images.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AXES", "infer_axes", "check_axes", "to_tzcyx", "from_tzyx", "spatial_shape"]

AXES = "TZCYX"


def infer_axes(shape) -> str:
    """Guess the axes of an array of ``shape`` (see the module docstring)."""
    shape = tuple(shape)
    ndim = len(shape)
    colour = ndim >= 3 and shape[-1] in (3, 4)
    table = {2: ("YX", "YX"), 3: ("YXC", "ZYX"), 4: ("ZYXC", "TZYX"), 5: ("TZYXC", "TZCYX")}
    if ndim not in table:
        raise ValueError(
            f"cannot segment an array with {ndim} dimensions (shape {shape}); CellRefine takes 2 to 5 axes out of "
            f"'{AXES}'. Squeeze or split the array first."
        )
    return table[ndim][0 if colour else 1]


def check_axes(shape, axes: str | None) -> str:
    """Validate ``axes`` against ``shape`` (inferring it when None); return it upper-cased.

    Raises
    ------
    ValueError
        Wrong length, unknown or repeated letters, or missing Y/X.
    """
    shape = tuple(shape)
    if axes is None:
        return infer_axes(shape)
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'YX', 'ZYX' or 'TZCYX', got {type(axes).__name__}.")
    axes = axes.upper()
    if len(axes) != len(shape):
        raise ValueError(
            f"axes {axes!r} has {len(axes)} letters but the image has {len(shape)} dimensions (shape {shape}); give one letter per dimension."
        )
    unknown = set(axes) - set(AXES)
    if unknown:
        raise ValueError(f"axes {axes!r} contains unknown letters {sorted(unknown)}; use letters from {AXES!r}.")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} repeats a letter; each of {AXES!r} may appear once.")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes {axes!r} must contain both 'Y' and 'X'.")
    return axes


def to_tzcyx(array, axes: str):
    """View ``array`` as (T, Z, C, Y, X), adding length-1 axes (no copy for numpy/dask)."""
    order = [axes.index(a) for a in AXES if a in axes]
    view = array.transpose(order) if order != list(range(len(order))) else array
    present = [a for a in AXES if a in axes]
    shape = tuple(view.shape[present.index(a)] if a in present else 1 for a in AXES)
    return view.reshape(shape)


def from_tzyx(result: np.ndarray, axes: str) -> np.ndarray:
    """Turn a (..., T, Z, Y, X) result back into the input's axis order, without C.

    Leading axes (e.g. classes) stay first. Returns a C-contiguous array; no
    copy is made when the input's axes are already in (T)(Z)YX order.
    """
    lead = result.ndim - 4
    if lead < 0:
        raise ValueError(f"from_tzyx needs a (..., T, Z, Y, X) array, got shape {result.shape}.")
    target = [a for a in axes if a != "C"]
    kept = [a for a in "TZYX" if a in target]
    squeezed = result.reshape(result.shape[:lead] + tuple(result.shape[lead + "TZYX".index(a)] for a in kept))
    order = list(range(lead)) + [lead + kept.index(a) for a in target]
    return np.ascontiguousarray(np.transpose(squeezed, order))


def spatial_shape(shape, axes: str) -> tuple:
    """The shape of ``shape`` without its channel axis (the shape of every result)."""
    return tuple(n for n, a in zip(shape, axes) if a != "C")
