"""Small Qt controls shared by the widgets: layer and device pickers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QComboBox

if TYPE_CHECKING:
    import napari

__all__ = ["LayerCombo", "DeviceCombo", "ask_model_path", "ask_save_path"]


class LayerCombo(QComboBox):
    """A dropdown of the viewer's layers of one type, kept in sync with the layer list."""

    def __init__(self, viewer: napari.Viewer, layer_type, placeholder: str = "(none)", parent=None):
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._placeholder = placeholder
        self._layers: list = []
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self.refresh)
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


class DeviceCombo(QComboBox):
    """``auto`` / ``cpu`` / ``cuda`` / ``mps``; unavailable devices are listed but disabled."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from ..device import DEVICES

        self.addItems(list(DEVICES))
        self.setToolTip("Where the network runs; 'auto' picks CUDA, then Apple MPS, then the CPU.")
        try:
            import torch

            available = {"auto": True, "cpu": True, "cuda": torch.cuda.is_available()}
            mps = getattr(torch.backends, "mps", None)
            available["mps"] = bool(mps is not None and mps.is_available())
        except ImportError:  # torch missing: only the error on Run will explain
            available = dict.fromkeys(DEVICES, True)
        model = self.model()
        for index, name in enumerate(DEVICES):
            if not available.get(name, True):
                item = model.item(index)
                item.setEnabled(False)
                item.setToolTip(f"{name} is not available on this machine")

    def device(self) -> str:
        return self.currentText()


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
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, "Save the CellRefine model", suggestion, "CellRefine model (*.safetensors)")
    if not path:
        return None
    return path if path.endswith(".safetensors") else path + ".safetensors"
