"""Reading napari layers: axes, data copies, the current slice, result geometry.

Axes of an Image layer, first match wins:

1. the override typed by the user;
2. ``layer.metadata["cellrefine_axes"]`` (set by the sample and by readers);
3. the layer's own axis labels, then the viewer's (last ``layer.ndim``), when
   they are letters from ``TZCYX`` (e.g. ``("t", "y", "x")``);
4. a guess from ``layer.ndim``: ``YX``, ``ZYX``, ``TZYX``, ``TZCYX``.

An RGB(A) layer (``layer.rgb``) adds a trailing ``C``: napari does not count
the colour axis in ``layer.ndim``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..axes import AXES, axes_doubt, check_axes
from .workers import UserError

if TYPE_CHECKING:
    import napari

__all__ = ["layer_axes", "axes_warning", "layer_array", "current_plane", "result_geometry", "unique_name", "layer_shape", "GUESSED"]

_GUESS = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}
GUESSED = "guessed from the number of dimensions"


def layer_shape(layer) -> tuple:
    """Shape of the layer's full-resolution data (level 0 when multiscale)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return tuple(data.shape)


def _letters(labels) -> str | None:
    letters = "".join(str(label).upper() for label in labels)
    if len(letters) == len(labels) and set(letters) <= set(AXES) and len(set(letters)) == len(letters):
        return letters
    return None


def layer_axes(viewer: napari.Viewer, layer, override: str = "") -> tuple[str, str]:
    """Axes of ``layer``'s data (including a colour axis) and where they came from.

    Raises
    ------
    UserError
        The override or the metadata does not fit the data.
    """
    shape = layer_shape(layer)
    rgb = bool(getattr(layer, "rgb", False))
    candidates = []
    if override and override.strip():
        candidates.append((override.strip().upper(), "override"))
    else:
        meta = (layer.metadata or {}).get("cellrefine_axes")
        if meta:
            candidates.append((str(meta).upper(), "layer metadata"))
        else:
            for labels, source in (
                (getattr(layer, "axis_labels", ()), "layer axis labels"),
                (viewer.dims.axis_labels[-layer.ndim :], "viewer axis labels"),
            ):
                letters = _letters(labels) if len(labels) == layer.ndim else None
                if letters and "Y" in letters and "X" in letters:
                    candidates.append((letters + ("C" if rgb else ""), source))
                    break
            else:
                if layer.ndim not in _GUESS:
                    raise UserError(f"layer {layer.name!r} has {layer.ndim} dimensions; CellRefine needs 2 to 5 (axes out of {AXES!r}).")
                candidates.append((_GUESS[layer.ndim] + ("C" if rgb else ""), GUESSED))
    axes, source = candidates[0]
    try:
        axes = check_axes(shape, axes)
    except (ValueError, TypeError) as error:
        raise UserError(f"axes {axes!r} ({source}) do not fit layer {layer.name!r}: {error}") from None
    if rgb and axes[-1] != "C":
        raise UserError(f"layer {layer.name!r} is RGB, so its last axis is colour: axes must end in 'C', got {axes!r}.")
    return axes, source


def axes_warning(layer, axes: str, source: str) -> str | None:
    """A warning when guessed axes look wrong, by the core's rule (:func:`cellrefine.axes.axes_doubt`, the one behind
    :class:`~cellrefine.axes.AxesGuessWarning`): a 2- or 3-item first axis taken as Z/T (e.g. (2, Y, X): perhaps
    channels), or a 2- to 4-item last axis taken as X (e.g. (Y, X, 2): channels last). None when the axes were not
    guessed or look fine. The widget passes the axes on to the core, which therefore never warns a second time."""
    if source != GUESSED:
        return None
    shape = layer_shape(layer)
    doubt = axes_doubt(shape, axes)
    if doubt is None:
        return None
    return f"{layer.name!r} has shape {shape}: {doubt.reason}. {doubt.hint}, type {' or '.join(doubt.alternatives)} in Axes."


def layer_dims_axes(layer, axes: str) -> str:
    """The letters of the layer's napari dimensions (the colour axis of RGB layers is not one)."""
    return axes[:-1] if getattr(layer, "rgb", False) else axes


def layer_array(layer) -> np.ndarray:
    """A NumPy copy of the layer's data (level 0 of a multiscale layer), for a worker."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.array(data, copy=True)


def current_plane(viewer: napari.Viewer, layer, axes: str) -> tuple[int, int]:
    """(t, z) indices of the slice the viewer shows for ``layer`` (0 for absent axes)."""
    dims_axes = layer_dims_axes(layer, axes)
    position = np.asarray(layer.world_to_data(viewer.dims.point), float)
    shape = layer_shape(layer)
    index = []
    for letter in "TZ":
        if letter in dims_axes:
            i = dims_axes.index(letter)
            index.append(int(np.clip(np.round(position[i]), 0, shape[i] - 1)))
        else:
            index.append(0)
    return tuple(index)


def result_geometry(layer, axes: str) -> dict:
    """Layer keyword arguments that place results (axes without C) on ``layer``."""
    dims_axes = layer_dims_axes(layer, axes)
    keep = [i for i, letter in enumerate(dims_axes) if letter != "C"]
    geometry = {
        "scale": [layer.scale[i] for i in keep],
        "translate": [layer.translate[i] for i in keep],
    }
    labels = getattr(layer, "axis_labels", None)
    if labels is not None and len(labels) == len(dims_axes):
        geometry["axis_labels"] = [labels[i] for i in keep]
    units = getattr(layer, "units", None)
    if units is not None and len(units) == len(dims_axes):
        geometry["units"] = [units[i] for i in keep]
    return geometry


def unique_name(viewer: napari.Viewer, base: str) -> str:
    """``base``, or ``base [2]``, ``base [3]``... if a layer already has that name."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    n = 2
    while f"{base} [{n}]" in names:
        n += 1
    return f"{base} [{n}]"
