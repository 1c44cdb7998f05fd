"""The Fine-tune widget's "Export for bioimage.io…" button writes a package CellRefine (and bioimage.io) can load."""

from __future__ import annotations

import zipfile

import numpy as np

import cellrefine as cr
from cellrefine._qt.finetune_widget import FinetuneWidget
from cellrefine._qt.session import get_session

from .conftest import finish


def test_export_button_writes_a_package(qtbot, viewer, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    import cellrefine._qt.finetune_widget as finetune_widget

    asked, workers = [], []

    def fake_dialog(parent, title, suggestion, filters):
        asked.append((title, suggestion, filters))
        return str(tmp_path / "exported"), filters  # no suffix typed: .zip is added

    def recording_start(*args, **kwargs):
        workers.append(start_export(*args, **kwargs))
        return workers[-1]

    start_export = finetune_widget.start_export
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(fake_dialog))
    monkeypatch.setattr(finetune_widget, "start_export", recording_start)
    widget = FinetuneWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.export_button.text() == "Export for bioimage.io…" and widget.export_button.isEnabled()

    widget.export_button.click()
    assert len(workers) == 1 and not widget.export_button.isEnabled()  # one export at a time
    finish(qtbot, workers[0], timeout=120_000)
    qtbot.waitUntil(widget.export_button.isEnabled, timeout=5_000)

    assert asked == [("Export for bioimage.io", "tiny.zip", "bioimage.io model package (*.zip)")]
    package = tmp_path / "exported.zip"
    assert package.is_file()
    assert "Exported tiny for bioimage.io to" in widget.controls.status.text()
    with zipfile.ZipFile(package) as archive:
        assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "test_input.npy", "test_output.npy"} <= set(archive.namelist())
    loaded = cr.load_model(package)
    model = get_session(viewer).model
    assert loaded.config == model.config
    for key, value in model.network.state_dict().items():
        assert np.array_equal(value.numpy(), loaded.network.state_dict()[key].numpy()), key


def test_export_cancelled_or_refused_starts_nothing(qtbot, viewer, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    import cellrefine._qt.finetune_widget as finetune_widget

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *args: ("", "")))
    reported = []
    monkeypatch.setattr(finetune_widget, "report_error", lambda error: reported.append(str(error)))
    widget = FinetuneWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.export_model() is None  # dialog cancelled
    assert widget.export_model(tmp_path / "out" / "model.safetensors") is None
    assert reported and "a bioimage.io package is a .zip file" in reported[-1]
    assert widget.export_button.isEnabled() and not (tmp_path / "out").exists()


def test_export_to_a_folder_is_reported(qtbot, viewer, tmp_path, monkeypatch):
    import cellrefine._qt.finetune_widget as finetune_widget

    reported = []
    monkeypatch.setattr(finetune_widget, "report_error", lambda error: reported.append(str(error)))
    (tmp_path / "taken.zip").mkdir()
    widget = FinetuneWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.export_model(tmp_path / "taken.zip") is None
    assert reported and "taken.zip" in reported[-1]
