"""Counts of corrections and the "mark as reviewed" buttons (part of Fine-tune)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QWidget

from .controls import LayerCombo, button, wrapped_label
from .layers import current_plane
from .workers import UserError, report_error

if TYPE_CHECKING:
    import napari

__all__ = ["CorrectionsPanel", "rasterize_shapes"]


def rasterize_shapes(viewer: napari.Viewer, shapes_layer, labels_layer, axes: str) -> np.ndarray:
    """Rectangles, polygons and ellipses of ``shapes_layer`` as a (Y, X) mask of ``labels_layer``'s plane.

    Vertices go shapes data → world → labels data (so scale and translate
    are respected); lines and paths have no area and are ignored.
    """
    from skimage.draw import polygon2mask

    height, width = (labels_layer.data.shape[axes.index(a)] for a in "YX")
    mask = np.zeros((height, width), bool)
    point = np.asarray(viewer.dims.point, float)
    for vertices, kind in zip(shapes_layer.data, shapes_layer.shape_type):
        if kind not in ("rectangle", "polygon", "ellipse"):
            continue
        corners = []
        for vertex in np.asarray(vertices, float):
            world = np.array(point)
            world_vertex = np.asarray(shapes_layer.data_to_world(vertex), float)
            world[-len(world_vertex) :] = world_vertex
            data = labels_layer.world_to_data(world)
            corners.append((data[axes.index("Y")], data[axes.index("X")]))
        corners = np.array(corners)
        if kind == "ellipse" and len(corners) == 4:
            # the ellipse inscribed in its (possibly rotated) bounding box p0 p1 p2 p3
            centre = corners.mean(axis=0)
            u, v = (corners[1] - corners[0]) / 2, (corners[3] - corners[0]) / 2
            angles = np.linspace(0, 2 * np.pi, 65)[:-1, None]
            mask |= polygon2mask(mask.shape, centre + np.cos(angles) * u + np.sin(angles) * v)
        else:
            mask |= polygon2mask(mask.shape, corners)
    return mask


class CorrectionsPanel(QWidget):
    """How much of a result layer was corrected, and buttons to mark regions reviewed.

    ``labels_getter()`` returns the Labels layer to act on (the Fine-tune
    widget's labels choice). napari event connections are registered in
    ``events`` (the owner's :class:`~.job_controls.EventConnections`).
    """

    def __init__(self, viewer: napari.Viewer, session, labels_getter: Callable, events=None, parent=None):
        super().__init__(parent)
        from napari.layers import Shapes

        from .job_controls import EventConnections

        self.viewer = viewer
        self.session = session
        self._labels_getter = labels_getter
        self._events = events if events is not None else EventConnections()
        self._watched = None
        self.summary = wrapped_label()
        self.mark_slice_button = button(
            "Mark current slice reviewed", "Everything on this slice is correct: train on all of it (including background)"
        )
        self.mark_shapes_button = button(
            "Mark shapes as reviewed", "Train on the areas of the rectangles/polygons/ellipses of the Shapes layer (current slice)"
        )
        self.shapes_combo = LayerCombo(viewer, Shapes, "(no shapes layer)", events=self._events)
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addRow(self.summary)
        layout.addRow(self.mark_slice_button)
        row = QHBoxLayout()
        row.addWidget(self.mark_shapes_button)
        row.addWidget(self.shapes_combo)
        layout.addRow(row)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.refresh)
        self.mark_slice_button.clicked.connect(self.mark_slice_reviewed)
        self.mark_shapes_button.clicked.connect(self.mark_shapes_reviewed)
        session.corrections_changed.connect(self._debounce.start)
        session.results_changed.connect(self._debounce.start)

    def watch(self, layer) -> None:
        """Follow edits of ``layer`` (undo emits no paint event, only a reload)."""
        if self._watched is not None and self._watched() is not None:
            old = self._watched()
            for name in ("data", "set_data", "reload"):
                emitter = getattr(old.events, name, None)
                if emitter is not None:
                    emitter.disconnect(self._schedule)
        self._watched = None
        if layer is not None:
            import weakref

            for name in ("data", "set_data", "reload"):
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    self._events.connect(emitter, self._schedule)
            self._watched = weakref.ref(layer)
        self.refresh()

    def _schedule(self, event=None) -> None:
        self._debounce.start()

    def _tracker(self):
        labels = self._labels_getter()
        if labels is None:
            raise UserError("Choose a labels layer to review first.")
        tracker = self.session.tracker_for(labels)
        if tracker is None:
            raise UserError(
                f"{labels.name!r} is not a CellRefine result layer, so reviewed regions cannot be recorded; every slice holding labels is used for training."
            )
        return labels, tracker

    def refresh(self) -> None:
        labels = self._labels_getter()
        tracker = self.session.tracker_for(labels)
        if labels is None:
            self.summary.setText("No labels layer.")
        elif tracker is None:
            self.summary.setText(f"{labels.name}: not a CellRefine result; every slice holding labels counts as reviewed.")
        else:
            objects, pixels = tracker.corrected_counts()
            reviewed = int(tracker.reviewed_mask().sum()) if pixels or tracker.reviewed_pixels_marked() else 0
            noun = "object" if objects == 1 else "objects"
            self.summary.setText(f"Corrected: {objects} {noun}, {pixels} px\nTraining on {reviewed} reviewed px")
        enabled = tracker is not None
        self.mark_slice_button.setEnabled(enabled)
        self.mark_shapes_button.setEnabled(enabled)

    def mark_slice_reviewed(self) -> None:
        """Mark the slice shown in the viewer as reviewed (all of it is correct)."""
        try:
            labels, tracker = self._tracker()
            t, z = current_plane(self.viewer, labels, tracker.axes)
            tracker.mark_reviewed(t, z)
        except UserError as error:
            report_error(error)
            return
        self.session.corrections_changed.emit()

    def mark_shapes_reviewed(self) -> None:
        """Mark the areas of the chosen Shapes layer (on the current slice) as reviewed."""
        try:
            labels, tracker = self._tracker()
            shapes = self.shapes_combo.current_layer()
            if shapes is None or not len(shapes.data):
                raise UserError("Draw rectangles or polygons on a Shapes layer first, then mark them as reviewed.")
            region = rasterize_shapes(self.viewer, shapes, labels, tracker.axes)
            if not region.any():
                raise UserError(f"The shapes of {shapes.name!r} do not cover any pixel of {labels.name!r}.")
            t, z = current_plane(self.viewer, labels, tracker.axes)
            tracker.mark_reviewed(t, z, region)
        except UserError as error:
            report_error(error)
            return
        self.session.corrections_changed.emit()
