""" "Review next": the objects of the last segmentation, most likely wrong first; a click goes there.

The ranking comes from :func:`cellrefine.uncertainty.rank_objects` (computed
in the segmentation worker, kept in the :class:`~.session.SegmentationRecord`).
Clicking a row moves the viewer's T/Z sliders to the object's plane, centres
the camera on it, makes the instances layer active and selects the object's
label (for a missed-object candidate: a new, unused label, ready to paint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from .controls import stacked, wrapped_label

if TYPE_CHECKING:
    import napari

__all__ = ["ReviewPanel", "go_to_object", "MAX_ROWS"]

MAX_ROWS = 500
COLUMNS = ("Object", "Score", "Size (px)")


def go_to_object(viewer: napari.Viewer, layer, obj) -> None:
    """Show ``obj`` (an ObjectUncertainty of ``layer``'s labels): slice, camera centre, selected label."""
    centroid = np.asarray(obj.centroid, float)
    if centroid.size != layer.ndim:
        raise ValueError(f"object {obj.label} has a {centroid.size}-D centroid but layer {layer.name!r} has {layer.ndim} dimensions.")
    world = np.asarray(layer.data_to_world(centroid), float)
    offset = viewer.dims.ndim - layer.ndim  # layers are right-aligned to the viewer's dimensions
    displayed = set(viewer.dims.displayed)
    for index, value in enumerate(world):
        axis = offset + index
        if axis not in displayed:
            viewer.dims.set_point(axis, float(value))
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 moved the camera
    camera.center = tuple(float(world[axis - offset]) for axis in viewer.dims.displayed if axis >= offset)
    viewer.layers.selection.active = layer
    if obj.label > 0:
        layer.selected_label = int(obj.label)
    else:  # a missed object: a fresh label to paint it with
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        layer.selected_label = int(np.asarray(data).max()) + 1


class _NumberItem(QTableWidgetItem):
    """A cell that sorts by its number, not its text."""

    def __init__(self, value, text: str):
        super().__init__(text)
        self.value = value
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)

    def __lt__(self, other) -> bool:
        if isinstance(other, _NumberItem):
            return self.value < other.value
        return super().__lt__(other)


class ReviewPanel(QWidget):
    """A sortable table of the ranked objects of one image's last segmentation.

    ``image_getter()`` returns the Image layer whose segmentation to list.
    """

    def __init__(self, viewer: napari.Viewer, session, image_getter, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = session
        self._image_getter = image_getter
        self._ranking: list = []
        self._layer = None
        self.summary = wrapped_label("Segment an image to list the objects most likely wrong.")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(140)
        self.table.setToolTip("Click an object to go there; click a column title to sort by it")
        stacked(self, self.summary, self.table)
        self.table.cellClicked.connect(self._on_clicked)
        session.results_changed.connect(self.refresh)

    def refresh(self) -> None:
        """List the ranking of the current image's last segmentation."""
        image = self._image_getter()
        record = self.session.record_for(image)
        ranking = list(record.ranking or []) if record is not None else []
        layer = record.layer("instances") if record is not None else None
        self.show_ranking(ranking, layer)

    def show_ranking(self, ranking: list, layer) -> None:
        """Fill the table with ``ranking`` (ObjectUncertainty, most uncertain first) of ``layer``."""
        self._ranking, self._layer = list(ranking), layer
        shown = self._ranking[:MAX_ROWS]
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(shown))
        for row, obj in enumerate(shown):
            name = f"missed? ({-obj.label})" if obj.label < 0 else str(obj.label)
            item = _NumberItem(obj.label if obj.label > 0 else 10**12 - obj.label, name)
            item.setData(Qt.ItemDataRole.UserRole, row)
            self.table.setItem(row, 0, item)
            self.table.setItem(row, 1, _NumberItem(obj.score, f"{obj.score:.2f}"))
            self.table.setItem(row, 2, _NumberItem(obj.size, str(obj.size)))
        self.table.setSortingEnabled(True)
        self.table.sortItems(1, Qt.SortOrder.DescendingOrder)
        if layer is None or not self._ranking:
            self.summary.setText("Segment an image to list the objects most likely wrong.")
        else:
            missed = sum(obj.label < 0 for obj in self._ranking)
            extra = f" (the first {MAX_ROWS} shown)" if len(self._ranking) > MAX_ROWS else ""
            candidates = f", {missed} possibly missed" if missed else ""
            self.summary.setText(
                f"{len(self._ranking) - missed} objects of {layer.name!r}{candidates}, most likely wrong first{extra}. Click one to go there."
            )

    def object_at(self, row: int):
        """The ObjectUncertainty shown in table row ``row`` (after sorting)."""
        item = self.table.item(row, 0)
        return None if item is None else self._ranking[item.data(Qt.ItemDataRole.UserRole)]

    def _on_clicked(self, row: int, _column: int) -> None:
        obj = self.object_at(row)
        layer = self._layer
        if obj is None or layer is None or not any(existing is layer for existing in self.viewer.layers):
            return
        go_to_object(self.viewer, layer, obj)
