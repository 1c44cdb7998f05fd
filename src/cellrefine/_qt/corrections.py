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

The layer's data array is never replaced or copied on paint, so napari's undo
keeps working. :meth:`CorrectionTracker.reviewed_mask` is what fine-tuning
trains on: the changed pixels, the full extent (in their 2D plane) of every
object containing a changed pixel, a margin around them, and the regions the
user marked as reviewed.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np
from scipy import ndimage as ndi

from ..axes import from_tzyx, to_tzcyx

logger = logging.getLogger(__name__)

__all__ = ["CorrectionTracker", "REVIEW_MARGIN"]

REVIEW_MARGIN = 8


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
        self._painted = self._touched = None
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
        self.paint_events += 1
        for atom in event.value:
            if hasattr(atom, "slice_key"):  # napari's _MaskedPaintAtom
                touched, painted = self._touched[atom.slice_key], self._painted[atom.slice_key]
                if atom.mask is None:
                    touched[...] = True
                    painted[...] = atom.new_value
                else:
                    mask = np.broadcast_to(atom.mask, touched.shape)
                    touched[mask] = True
                    painted[mask] = atom.new_value
            else:  # (indices, old_values, new_values) from data_setitem
                indices, _, new_values = atom
                self._touched[indices] = True
                self._painted[indices] = new_values

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

    def corrected_counts(self) -> tuple[int, int]:
        """(corrected objects, corrected pixels).

        Objects: distinct ids (now, or predicted where erased) containing a
        changed pixel; for a class map, connected groups of changed pixels.
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
        for t, z in zip(*np.nonzero(changed_v.any(axis=(2, 3)))):
            c = changed_v[t, z]
            if self.kind == "semantic":
                objects += ndi.label(c, structure=np.ones((3, 3)))[1]
            else:
                now = set(np.unique(data_v[t, z][c]).tolist())
                erased = set(np.unique(prediction_v[t, z][c & (data_v[t, z] == 0)]).tolist())
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

    def reviewed_mask(self) -> np.ndarray:
        """Pixels fine-tuning may learn from, with the layer's shape (bool).

        Changed pixels, every object containing one (its extent in that 2D
        plane, in the current data and in the prediction), a margin of
        ``margin`` pixels around them, and the regions marked as reviewed.
        """
        changed = self.changed_mask()
        data = self._data()
        out = self._reviewed.copy()
        if data.shape != self.prediction.shape:
            return np.ones(data.shape, bool)
        changed_v, data_v, prediction_v = (tzyx(a, self.axes) for a in (changed, data, self.prediction))
        for t, z in zip(*np.nonzero(changed_v.any(axis=(2, 3)))):
            objects = self._object_masks(changed_v[t, z], data_v[t, z], prediction_v[t, z])
            if self.margin > 0:
                objects = ndi.distance_transform_edt(~objects) <= self.margin
            out[t, z] |= objects
        return from_tzyx(out, self.axes)
