"""The model dropdown: the bundled models, recently used files, the in-memory model, Load…"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QWidget

from ..model.bundled import BUNDLED_MODELS
from .controls import ask_model_path, stacked, wrapped_label
from .recent import load_recent_models
from .workers import report_error

__all__ = ["ModelPicker"]


class ModelPicker(QWidget):
    """Shows and changes the session's current model.

    Entries: every bundled model ("nuclei (bundled)", "cells (bundled)", each
    with a tooltip saying what it is for; :mod:`cellrefine.model.bundled`), the
    recent model files (persisted, see :mod:`.recent`), the in-memory model
    (e.g. just fine-tuned) when there is one, and "Load model file…" (a file
    dialog). Under the dropdown, a line says which model is current (it follows
    the session: lazy loading, fine-tuning, Load…).
    """

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.combo = QComboBox()
        self.combo.setToolTip("Model used by Run; fine-tuning starts from it too")
        self.description = wrapped_label(selectable=True)
        stacked(self, self.combo, self.description)
        self.combo.activated.connect(self._on_activated)
        session.model_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        session = self.session
        entries = [
            (f"{bundled.name} (bundled)", ("bundled", bundled.name), f"{bundled.stem}, shipped with CellRefine: {bundled.description}")
            for bundled in BUNDLED_MODELS.values()
        ]
        if session.model_source[0] == "memory" and session.model is not None:
            entries.insert(0, (f"{session.model.name} (in memory)", ("memory", None), "Not saved yet: use Save… in Fine-tune"))
        recent = load_recent_models()
        current_file = session.model_source[1] if session.model_source[0] == "file" else None
        if current_file and str(Path(current_file).expanduser().resolve()) not in recent:
            recent.insert(0, current_file)
        entries += [(Path(path).name, ("file", path), path) for path in recent]
        entries.append(("Load model file…", ("browse", None), "Choose a saved .safetensors model or model folder"))
        self.combo.blockSignals(True)
        self.combo.clear()
        selected = 0
        for index, (text, data, tip) in enumerate(entries):
            self.combo.addItem(text, data)
            self.combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
            if data == session.model_source or (
                data[0] == "file" and current_file and Path(data[1]).expanduser().resolve() == Path(current_file).expanduser().resolve()
            ):
                selected = index
        self.combo.setCurrentIndex(selected)
        self.combo.blockSignals(False)
        self.description.setText(f"Current: {session.model_description()}")
        kind, value = session.model_source
        purpose = f" ({BUNDLED_MODELS[value].description})" if kind == "bundled" and value in BUNDLED_MODELS else ""
        self.description.setToolTip(self.description.text() + purpose)

    def _on_activated(self, index: int) -> None:
        kind, value = self.combo.itemData(index)
        try:
            if kind == "bundled" and self.session.model_source != (kind, value):
                self.session.use_bundled(value)
            elif kind == "file":
                self.session.load_model_file(value)
            elif kind == "browse":
                path = ask_model_path(self)
                if path:
                    self.session.load_model_file(path)
        except (OSError, ValueError, TypeError) as error:  # missing/corrupt model file: a message
            report_error(error)
        self.refresh()
