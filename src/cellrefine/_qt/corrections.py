"""Which pixels of a result Labels layer did the user correct?

A :class:`CorrectionTracker` watches one Labels layer written by CellRefine.
It combines two sources, so brush, fill, erase, polygon, ``data_setitem``,
undo and redo are all handled:

* napari's ``Labels.events.paint``: its ``value`` is the undo item, a list of
  atoms, each either a ``_MaskedPaintAtom(slice_key, mask, old_values,
  new_value)`` (paint, fill, polygon) or a ``(indices, old_values,
  new_values)`` tuple (``data_setitem``). The tracker remembers the value
  painted into each pixel. A painted pixel counts as corrected while it still
  holds that value, so an undone stroke (undo emits no event, it restores the
  old values) drops out, and a redone one comes back.
* a comparison of the layer's data with the prediction CellRefine last wrote
  into it (edits made without paint events, e.g. by scripts).

It also records the orientation each pixel was painted in: in a Z stack the
user may roll the axes so that Z is displayed and paint in an XZ view (Y is
the sliced axis) or a YZ view (X sliced). ``data_setitem`` edits and
differences found by comparison count as painted in XY.

The layer's data array is never replaced or copied on paint, so napari's undo
keeps working. :meth:`CorrectionTracker.reviewed_mask` is what fine-tuning
trains on: the changed pixels, the full extent (in the 2D plane they were
painted in: XY, XZ or YZ) of every object containing a changed pixel, a
margin around them, and the regions the user marked as reviewed. A correction
painted in an XZ view so gives a mask one Y index thick, which fine-tuning
(:mod:`cellrefine.training.orientations`) turns into an XZ training plane.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np
from scipy import ndimage as ndi

from ..axes import from_tzyx, to_tzcyx

logger = logging.getLogger(__name__)

__all__ = ["CorrectionTracker", "REVIEW_MARGIN", "ORIENTATIONS"]

REVIEW_MARGIN = 8
#: the planes a pixel can be painted in, by code (the tracker's ``orientation_codes()``)
ORIENTATIONS = ("XY", "XZ", "YZ")
_FIXED_AXIS = (1, 2, 3)  # axis of the (T, Z, Y, X) view each orientation holds fixed: Z, Y, X


def tzyx(array, axes: str):
    """View an array with ``axes`` (no C) as (T, Z, Y, X)."""
    return to_tzcyx(array, axes)[:, :, 0]


class CorrectionTracker:
    """Record corrections made to one result Labels layer.

    Parameters
    ----------
    layer : napari.layers.Labels
        The layer to watch (held weakly).
    prediction : array
        What CellRefine wrote into the layer (copied).
    axes : str
        Axes of the layer's data, letters from ``"TZYX"`` (e.g. ``"TYX"``).
    kind : {"instances", "semantic"}
        Instance ids, or the 0/1/2 class map (objects are then connected
        components of the foreground).
    margin : int
        Pixels added around corrected objects in :meth:`reviewed_mask`.
    """

    def __init__(self, layer, prediction, axes: str, kind: str = "instances", margin: int = REVIEW_MARGIN):
        if kind not in ("instances", "semantic"):
            raise ValueError(f"kind must be 'instances' or 'semantic', got {kind!r}.")
        self._layer = weakref.ref(layer)
        self.axes = axes
        self.kind = kind
        self.margin = int(margin)
        self.image = None  # weakref to the Image layer the prediction came from (set by the session)
        self.paint_events = 0
        self._painted = None  # value last painted into each pixel (where _touched)
        self._touched = None
        self._orientation = None  # the ORIENTATIONS code each pixel was last painted in
        self.prediction = np.array(prediction, copy=True)
        self._reviewed = np.zeros(tzyx(self.prediction, axes).shape, bool)
        layer.events.paint.connect(self._on_paint)

    # -- bookkeeping -----------------------------------------------------------------
    @property
    def layer(self):
        return self._layer()

    def reset(self, prediction) -> None:
        """A new prediction was written into the layer: forget past corrections."""
        self.prediction = np.array(prediction, copy=True)
        self.paint_events = 0
        self._painted = self._touched = self._orientation = None
        self._reviewed = np.zeros(tzyx(self.prediction, self.axes).shape, bool)

    def set_prediction(self, prediction) -> None:
        """CellRefine itself changed the layer (e.g. classes recomputed from edited instances):
        take ``prediction`` as the new reference, keeping the marked reviewed regions."""
        prediction = np.array(prediction, copy=True)
        if tzyx(prediction, self.axes).shape != self._reviewed.shape:
            raise ValueError(f"the new prediction has shape {prediction.shape}, the layer had {self.prediction.shape}.")
        self.prediction = prediction

    def _data(self) -> np.ndarray:
        layer = self.layer
        if layer is None:
            return self.prediction
        data = layer.data[0] if layer.multiscale else layer.data
        return np.asarray(data)

    def _on_paint(self, event) -> None:
        data = self._data()
        if data.shape != self.prediction.shape:
            logger.warning("labels layer changed shape; corrections are compared with the prediction only")
            return
        if self._painted is None:
            self._painted = np.zeros(data.shape, data.dtype)
            self._touched = np.zeros(data.shape, bool)
            self._orientation = np.zeros(data.shape, np.uint8)
        self.paint_events += 1
        for atom in event.value:
            if hasattr(atom, "slice_key"):  # napari's _MaskedPaintAtom
                code = self._painted_orientation(atom.slice_key)
                touched, painted = self._touched[atom.slice_key], self._painted[atom.slice_key]
                orientation = self._orientation[atom.slice_key]
                if atom.mask is None:
                    touched[...] = True
                    painted[...] = atom.new_value
                    orientation[...] = code
                else:
                    mask = np.broadcast_to(atom.mask, touched.shape)
                    touched[mask] = True
                    painted[mask] = atom.new_value
                    orientation[mask] = code
            else:  # (indices, old_values, new_values) from data_setitem: counted as painted in XY
                indices, _, new_values = atom
                self._touched[indices] = True
                self._painted[indices] = new_values
                self._orientation[indices] = 0

    def _painted_orientation(self, slice_key) -> int:
        """The ORIENTATIONS code of the plane a paint atom was painted in (0, XY, unless Z and one of Y/X were the painted axes)."""
        dims = len(slice_key)
        fixed = [i for i, key in enumerate(slice_key) if not isinstance(key, slice)]  # napari < 0.6: ints for the sliced dims
        painted = [i for i in range(dims) if i not in fixed] if fixed else None
        layer = self.layer
        if painted is None and layer is not None:
            try:  # the dims napari paints in (Labels._get_dims_to_paint): the displayed ones
                painted = [int(i) for i in layer._slice_input.order[-int(layer.n_edit_dimensions) :]]
            except (AttributeError, TypeError, ValueError):
                painted = None
        letters = self.axes[-dims:] if len(self.axes) >= dims else self.axes
        if painted is None:  # fall back on the shape of the edit: thick in Z, one pixel in Y (X)
            spans = {letters[i]: key.stop - key.start for i, key in enumerate(slice_key) if isinstance(key, slice) and key.stop is not None}
            if "Z" in spans and spans["Z"] > 1:
                return 1 if spans.get("Y") == 1 else 2 if spans.get("X") == 1 else 0
            return 0
        shown = {letters[i] for i in painted if i < len(letters)}
        if len(painted) == 2 and "Z" in shown:
            return 1 if "X" in shown else 2 if "Y" in shown else 0
        return 0

    # -- queries ---------------------------------------------------------------------
    def changed_mask(self) -> np.ndarray:
        """Pixels the user corrected, with the layer's shape."""
        data = self._data()
        if data.shape != self.prediction.shape:
            return np.ones(data.shape, bool)
        changed = data != self.prediction
        if self._touched is not None:
            changed |= self._touched & (data == self._painted)
        return changed

    def is_edited(self) -> bool:
        """True once the user painted on the layer or its data differs from the prediction."""
        data = self._data()
        return self.paint_events > 0 or data.shape != self.prediction.shape or not np.array_equal(data, self.prediction)

    def _object_masks(self, plane_changed, plane_data, plane_prediction):
        """Pixels of every object (now or predicted) that contains a changed pixel."""
        objects = plane_changed.copy()
        for labels in (plane_data, plane_prediction):
            if self.kind == "semantic":
                labels = ndi.label(labels > 0)[0]
            ids = np.unique(labels[plane_changed])
            ids = ids[ids != 0]
            if ids.size:
                objects |= np.isin(labels, ids)
        return objects

    def orientation_codes(self) -> np.ndarray:
        """The :data:`ORIENTATIONS` code each pixel was last painted in (0 = XY where never painted), with the layer's shape."""
        if self._orientation is None:
            return np.zeros(self.prediction.shape, np.uint8)
        return self._orientation.copy()

    def slice_axes(self) -> str:
        """The ``slice_axes`` to fine-tune with: ``"Z"`` (XY planes), plus ``"Y"`` (``"X"``) when a correction was painted in an XZ (YZ) view.

        So corrections painted only in XY views train on XY planes, as
        before, and none of them becomes XZ/YZ strips where several
        corrected XY planes stack up.
        """
        if self._orientation is None:
            return "Z"
        codes = set(np.unique(self._orientation[self.changed_mask() & self._touched]).tolist())
        return "Z" + "".join(letter for code, letter in ((1, "Y"), (2, "X")) if code in codes)

    def _changed_planes(self, changed_v):
        """``(code, key, changed)`` for every 2D plane holding a change painted in orientation ``code``.

        ``key`` indexes that plane in a (T, Z, Y, X) view (an XY plane at
        (t, z), an XZ plane at (t, y), a YZ plane at (t, x)) and ``changed``
        is the plane's changes made in that orientation.
        """
        codes = None if self._orientation is None else tzyx(self._orientation, self.axes)
        for code, fixed in enumerate(_FIXED_AXIS):
            if codes is None:
                if code:
                    break
                ours = changed_v
            else:
                ours = changed_v & (codes == code)
            others = tuple(axis for axis in _FIXED_AXIS if axis != fixed)
            for t, position in zip(*np.nonzero(ours.any(axis=others))):
                key = [int(t), slice(None), slice(None), slice(None)]
                key[fixed] = int(position)
                yield code, tuple(key), ours[tuple(key)]

    def corrected_counts(self) -> tuple[int, int]:
        """(corrected objects, corrected pixels).

        Objects: distinct ids (now, or predicted where erased) containing a
        changed pixel, counted per 2D plane painted in (XY, XZ or YZ); for a
        class map, connected groups of changed pixels.
        """
        changed = self.changed_mask()
        pixels = int(changed.sum())
        if not pixels:
            return 0, 0
        data = self._data()
        if data.shape != self.prediction.shape:
            return 0, pixels
        changed_v, data_v, prediction_v = (tzyx(a, self.axes) for a in (changed, data, self.prediction))
        objects = 0
        for _, key, c in self._changed_planes(changed_v):
            if self.kind == "semantic":
                objects += ndi.label(c, structure=np.ones((3, 3)))[1]
            else:
                now_plane = data_v[key]
                now = set(np.unique(now_plane[c]).tolist())
                erased = set(np.unique(prediction_v[key][c & (now_plane == 0)]).tolist())
                objects += len((now | erased) - {0})
        return objects, pixels

    def mark_reviewed(self, t: int, z: int, region=None) -> None:
        """Mark plane (t, z) as reviewed, or only ``region`` (a (Y, X) bool mask) of it."""
        plane = self._reviewed[t, z]
        if region is None:
            plane[...] = True
        else:
            plane |= np.asarray(region, bool)

    def reviewed_pixels_marked(self) -> int:
        return int(self._reviewed.sum())

    def _spacing(self) -> tuple:
        """(z, y, x) spacing of the layer (its ``scale``; 1 where it has no such axis)."""
        layer = self.layer
        scale = getattr(layer, "scale", None)
        if scale is None or len(scale) != len(self.axes):
            return (1.0, 1.0, 1.0)
        named = dict(zip(self.axes, (abs(float(v)) for v in scale)))
        return tuple(named.get(letter, 1.0) for letter in "ZYX")

    def reviewed_mask(self) -> np.ndarray:
        """Pixels fine-tuning may learn from, with the layer's shape (bool).

        Changed pixels, every object containing one (its extent in the 2D
        plane the change was painted in: XY, XZ or YZ, in the current data
        and in the prediction), a margin of ``margin`` pixels around them (in
        XZ/YZ planes measured in in-plane pixels, with Z steps as long as the
        layer's ``scale`` says), and the regions marked as reviewed.
        """
        changed = self.changed_mask()
        data = self._data()
        out = self._reviewed.copy()
        if data.shape != self.prediction.shape:
            return np.ones(data.shape, bool)
        changed_v, data_v, prediction_v = (tzyx(a, self.axes) for a in (changed, data, self.prediction))
        z, y, x = self._spacing()
        sampling = (None, (z / x, 1.0), (z / y, 1.0))
        for code, key, plane_changed in self._changed_planes(changed_v):
            objects = self._object_masks(plane_changed, data_v[key], prediction_v[key])
            if self.margin > 0:
                objects = ndi.distance_transform_edt(~objects, sampling=sampling[code]) <= self.margin
            out[key] |= objects
        return from_tzyx(out, self.axes)
