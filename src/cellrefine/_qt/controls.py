"""Small Qt controls shared by the widgets: the layer picker and file dialogs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QLabel, QPushButton, QVBoxLayout, QWidget

if TYPE_CHECKING:
    import napari

__all__ = ["LayerCombo", "ask_model_path", "ask_save_path", "ask_labels_path", "wrapped_label", "button", "stacked"]


def wrapped_label(text: str = "", selectable: bool = False) -> QLabel:
    """A word-wrapped label (text selectable with the mouse when ``selectable``)."""
    label = QLabel(text)
    label.setWordWrap(True)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def button(text: str, tooltip: str) -> QPushButton:
    """A push button with its tooltip."""
    widget = QPushButton(text)
    widget.setToolTip(tooltip)
    return widget


def stacked(owner: QWidget, *widgets: QWidget) -> QVBoxLayout:
    """A margin-free vertical layout of ``owner`` holding ``widgets`` in order."""
    layout = QVBoxLayout(owner)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return layout


class LayerCombo(QComboBox):
    """A dropdown of the viewer's layers of one type, kept in sync with the layer list.

    Its napari event connections are registered in ``events`` (an
    :class:`~.job_controls.EventConnections`), so the owning widget can undo
    them when it closes.
    """

    def __init__(self, viewer: napari.Viewer, layer_type, placeholder: str = "(none)", events=None, parent=None):
        from .job_controls import EventConnections

        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._placeholder = placeholder
        self._layers: list = []
        self.events = events if events is not None else EventConnections()
        self.events.connect(viewer.layers.events.inserted, self._on_inserted)
        self.events.connect(viewer.layers.events.removed, self.refresh)
        self.events.connect(viewer.layers.events.moved, self.refresh)
        for layer in viewer.layers:
            self.events.connect(layer.events.name, self.refresh)
        # long layer names must not widen the dock: show what fits, the full name in the tooltip
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(14)
        self.currentTextChanged.connect(self.setToolTip)
        self.refresh()

    def _on_inserted(self, event) -> None:
        self.events.connect(event.value.events.name, self.refresh)
        self.refresh()

    def refresh(self, event=None) -> None:
        current = self.current_layer()
        self._layers = [layer for layer in self._viewer.layers if isinstance(layer, self._type)]
        self.blockSignals(True)
        self.clear()
        if self._layers:
            self.addItems([layer.name for layer in self._layers])
        else:
            self.addItem(self._placeholder)
        self.blockSignals(False)
        if current is not None and any(layer is current for layer in self._layers):
            self.set_layer(current)
        else:
            self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self):
        index = self.currentIndex()
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def set_layer(self, layer) -> None:
        for index, candidate in enumerate(self._layers):
            if candidate is layer:
                self.setCurrentIndex(index)
                return


def ask_model_path(parent) -> str | None:
    """File dialog for a saved model (a ``.safetensors`` file, or a model folder's file)."""
    from pathlib import Path

    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(parent, "Load a CellRefine model", "", "CellRefine model (*.safetensors config.json);;All files (*)")
    if not path:
        return None
    path = Path(path)
    # a model folder holds model.safetensors + config.json: load the folder
    if path.name in ("model.safetensors", "config.json") and (path.parent / "config.json").is_file():
        return str(path.parent)
    return str(path)


def ask_save_path(parent, suggestion: str = "model.safetensors") -> str | None:
    """Save dialog for a model; the path ends in ``.safetensors``."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, "Save the CellRefine model", suggestion, "CellRefine model (*.safetensors)")
    if not path:
        return None
    return path if path.endswith(".safetensors") else path + ".safetensors"


def ask_labels_path(parent, suggestion: str) -> str | None:
    """Save dialog for a labels image; the path ends in ``.tif`` or ``.tiff``."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, "Save labels as TIFF", suggestion, "TIFF image (*.tif *.tiff)")
    if not path:
        return None
    return path if path.lower().endswith((".tif", ".tiff")) else path + ".tif"
