"""The npe2 manifest: valid, importable, and its widgets/sample work through napari."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from npe2 import PluginManifest

PLUGIN = "napari-cellrefine"
MANIFEST = PluginManifest.from_distribution(PLUGIN)


def test_manifest_validates():
    manifest = PluginManifest.from_distribution(PLUGIN)  # parsing validates the schema
    assert manifest.name == PLUGIN
    manifest.validate_imports()  # every python_name resolves
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment", "Fine-tune"}
    assert [s.key for s in manifest.contributions.sample_data] == ["nuclei", "cells"]
    # the copy at the repository root documents the same manifest
    root = Path(__file__).resolve().parents[2] / "napari.yaml"
    if root.exists():
        assert PluginManifest.from_file(root).contributions == manifest.contributions


@pytest.mark.parametrize("command", MANIFEST.contributions.commands, ids=lambda c: c.id)
def test_python_name_imports(command):
    module_name, _, attribute = command.python_name.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute))


def test_sample_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei")
    (layer,) = viewer.layers
    assert layer.data.shape == (4, 520, 696)
    assert layer.metadata["cellrefine_axes"] == "TYX"
    assert tuple(layer.axis_labels) == ("T", "Y", "X")  # the slider says T


def test_dock_both_widgets_through_manifest(make_napari_viewer):
    from cellrefine._qt.finetune_widget import FinetuneWidget
    from cellrefine._qt.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert isinstance(segment, SegmentWidget) and isinstance(finetune, FinetuneWidget)
    # napari hands widgets a proxy of the viewer; both must share the real viewer's session
    assert segment.viewer is viewer and finetune.viewer is viewer
    assert segment.session is finetune.session


def test_docks_opened_from_the_menu_are_tabbed_and_fit_the_screen(make_napari_viewer, qtbot):
    """As from the Plugins menu (no tabify argument): the second dock joins the first one's tabs; 1600×1000 is enough."""
    from qtpy.QtWidgets import QDockWidget

    def dock_of(widget):
        parent = widget.parentWidget()
        while not isinstance(parent, QDockWidget):
            parent = parent.parentWidget()
        return parent

    viewer = make_napari_viewer(show=True)
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    window = segment.window()
    window.resize(1600, 1000)
    _, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    qtbot.wait(100)
    assert dock_of(finetune) in window.tabifiedDockWidgets(dock_of(segment))
    assert window.height() <= 1000 and window.width() <= 1600
    assert window.minimumSizeHint().height() <= 1000
    for widget in (segment, finetune):
        assert 0 < widget.minimumSizeHint().height() <= 400  # the rest scrolls
