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

A guess that may well be wrong warns with :class:`AxesGuessWarning` (see
:func:`axes_doubt`): a first axis of 2 or 3 items taken as Z or T (a
(2, Y, X) image is as likely two channels as two planes), or a last axis of
at most 4 items taken as X (a (Y, X, 2) image is almost surely two channels,
not planes 2 pixels wide). Passing ``axes`` (even the guessed one) never warns.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings

import numpy as np

__all__ = ["AXES", "AxesGuessWarning", "AxesDoubt", "axes_doubt", "infer_axes", "check_axes", "to_tzcyx", "from_tzyx", "spatial_shape", "check_scale"]

AXES = "TZCYX"


class AxesGuessWarning(UserWarning):
    """The axes of an image were guessed from its shape and the guess is doubtful; pass ``axes=`` to say what they are."""


@dataclasses.dataclass(frozen=True)
class AxesDoubt:
    """Why guessed axes may be wrong, for a warning in the words of its caller.

    Attributes
    ----------
    reason : str
        What was guessed, e.g. ``"its first axis (2 items) was guessed as Z"``.
    hint : str
        The likelier reading, as the start of a sentence, e.g.
        ``"If it holds channels or time points"``.
    alternatives : tuple of str
        Valid axes for that reading (e.g. ``("CYX", "TYX")``).
    """

    reason: str
    hint: str
    alternatives: tuple


def axes_doubt(shape, axes: str) -> AxesDoubt | None:
    """Whether axes guessed for ``shape`` look doubtful (the rule behind :class:`AxesGuessWarning`).

    Doubtful: a last axis of at most 4 items read as X, or a first axis of 2
    or 3 items read as Z or T (when another letter fits there), in an array
    of 3 or more dimensions.

    Parameters
    ----------
    shape : tuple of int
    axes : str
        Valid axes for ``shape`` (e.g. from :func:`infer_axes`).

    Returns
    -------
    AxesDoubt or None
        None when the guess looks safe.

    Examples
    --------
    >>> axes_doubt((2, 64, 64), "ZYX").alternatives
    ('CYX', 'TYX')
    >>> axes_doubt((64, 48, 2), "ZYX").alternatives
    ('YXC',)
    >>> axes_doubt((5, 64, 64), "ZYX") is None
    True
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3:
        return None
    if axes[-1] == "X" and shape[-1] <= 4:
        colour = axes.replace("C", "") + "C" if "C" in axes else axes[1:] + "C"
        return AxesDoubt(
            f"its axes were guessed as {axes}, i.e. planes of {shape[-2]} × {shape[-1]} pixels (the last axis, {_items(shape[-1])}, taken as X)",
            "If the last axis holds channels" if shape[-1] == 1 else f"If the last axis holds {shape[-1]} channels",
            (colour,),
        )
    lead = axes[0]
    if lead in "ZT" and shape[0] in (2, 3):
        others = [letter + axes[1:] for letter in "CTZ" if letter != lead]
        alternatives = tuple(candidate for candidate in others if len(set(candidate)) == len(candidate))
        if alternatives:  # (T, Z, C, Y, X) has no other letter left for its first axis
            readings = " or ".join(_READINGS[candidate[0]] for candidate in alternatives)
            return AxesDoubt(f"its first axis ({shape[0]} items) was guessed as {lead}", f"If it holds {readings}", alternatives)
    return None


_READINGS = {"C": "channels", "T": "time points", "Z": "Z planes"}


def _items(n: int) -> str:
    return "1 item" if n == 1 else f"{n} items"


def infer_axes(shape, *, warn: bool = True) -> str:
    """Guess the axes of an array of ``shape`` (see the module docstring).

    Parameters
    ----------
    shape : tuple of int
    warn : bool, optional
        Warn with :class:`AxesGuessWarning` when the guess is doubtful
        (:func:`axes_doubt`); False only returns the guess.

    Warns
    -----
    AxesGuessWarning
        E.g. for (2, Y, X) (guessed ZYX: two planes, or two channels?) and
        (Y, X, 2) (guessed ZYX: planes 2 pixels wide, or two channels?).
    """
    shape = tuple(shape)
    ndim = len(shape)
    colour = ndim >= 3 and shape[-1] in (3, 4)
    table = {2: ("YX", "YX"), 3: ("YXC", "ZYX"), 4: ("ZYXC", "TZYX"), 5: ("TZYXC", "TZCYX")}
    if ndim not in table:
        raise ValueError(
            f"cannot segment an array with {ndim} dimensions (shape {shape}); CellRefine takes 2 to 5 axes out of "
            f"'{AXES}'. Squeeze or split the array first."
        )
    axes = table[ndim][0 if colour else 1]
    doubt = axes_doubt(shape, axes) if warn else None
    if doubt is not None:
        choices = " or ".join(repr(a) for a in doubt.alternatives)
        warnings.warn(
            f"an image of shape {shape} has no axes given: {doubt.reason}. {doubt.hint}, pass axes={choices}; "
            f"pass axes={axes!r} to keep this reading without a warning.",
            AxesGuessWarning,
            stacklevel=user_stacklevel(),
        )
    return axes


def user_stacklevel() -> int:
    """The ``stacklevel`` for :func:`warnings.warn` that points at the first caller outside the ``cellrefine`` package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "cellrefine":
        frame, level = frame.f_back, level + 1
    return level


def check_axes(shape, axes: str | None) -> str:
    """Validate ``axes`` against ``shape`` (inferring it when None); return it upper-cased.

    Warns
    -----
    AxesGuessWarning
        ``axes`` is None and the guess is doubtful (see :func:`infer_axes`).

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


def check_scale(scale, axes: str) -> tuple[float, float, float]:
    """Validate a voxel size; return it as ``(z, y, x)``.

    Parameters
    ----------
    scale : sequence of numbers or None
        The spacing of the image's axes, with the meaning of a napari layer's
        ``scale``: one positive number per non-channel axis of ``axes`` (e.g.
        four for ``"TZYX"``; the T entry is ignored), or one per spatial axis
        (``(z, y, x)`` for a stack, ``(y, x)`` for a 2D image). Only ratios
        matter (the units are the user's). None means isotropic ``(1, 1, 1)``.
    axes : str
        The image's axes (letters from ``TZCYX``).

    Returns
    -------
    (float, float, float)
        ``(z, y, x)``; ``z`` is 1.0 for an image without a Z axis.

    Raises
    ------
    TypeError
        ``scale`` is not a sequence of numbers (a string, a bool entry...).
    ValueError
        Wrong number of entries, or an entry that is not finite and positive.

    Examples
    --------
    >>> check_scale((4, 2.0, 0.5, 0.5), "TZYX")
    (2.0, 0.5, 0.5)
    >>> check_scale(None, "YX")
    (1.0, 1.0, 1.0)
    """
    import numbers

    if scale is None:
        return (1.0, 1.0, 1.0)
    if isinstance(scale, (str, bytes)) or not hasattr(scale, "__len__") or np.ndim(scale) != 1:
        raise TypeError(f"scale must be a sequence of numbers such as (z, y, x) = (2.0, 0.5, 0.5), or None; got {scale!r}.")
    values = list(scale)
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"scale entries must be numbers, got {value!r} in {tuple(values)!r}.")
    non_channel = [a for a in axes if a != "C"]
    spatial = [a for a in non_channel if a in "ZYX"]
    if len(values) == len(non_channel):
        named = dict(zip(non_channel, values))
    elif len(values) == len(spatial):
        named = dict(zip(spatial, values))
    else:
        raise ValueError(
            f"scale has {len(values)} entries but axes {axes!r} need {len(spatial)} (one per spatial axis, {''.join(spatial)}) "
            f"or {len(non_channel)} (one per non-channel axis, as a napari layer's scale)."
        )
    for letter in spatial:
        value = float(named[letter])
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"scale entry for {letter} must be a finite positive number, got {named[letter]!r}.")
    return tuple(float(named.get(letter, 1.0)) for letter in "ZYX")
