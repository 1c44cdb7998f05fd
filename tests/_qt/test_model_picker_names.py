"""The model picker lists every bundled model; choosing one makes Segment and Fine-tune use it. The cells sample opens."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

import cellrefine as cr
from cellrefine._qt.finetune_widget import FinetuneWidget
from cellrefine._qt.segment_widget import SegmentWidget
from cellrefine._qt.session import get_session
from cellrefine.model.bundled import BUNDLED_MODELS

from .conftest import finish, make_blobs


def pick(picker, text: str) -> None:
    """Choose the entry ``text`` as a user would (the picker acts on ``activated``)."""
    index = picker.combo.findText(text)
    assert index >= 0, [picker.combo.itemText(i) for i in range(picker.combo.count())]
    picker.combo.setCurrentIndex(index)
    picker.combo.activated.emit(index)


def test_picker_lists_every_bundled_model_with_what_it_is_for(make_napari_viewer):
    picker = SegmentWidget(make_napari_viewer()).model_picker
    texts = [picker.combo.itemText(i) for i in range(picker.combo.count())]
    assert texts[:2] == ["nuclei (bundled)", "cells (bundled)"]
    assert picker.combo.itemData(1, Qt.ItemDataRole.ToolTipRole) == "cells_v1, shipped with CellRefine: whole cells in phase contrast (Usiigaci)"
    assert "fluorescent/stained nuclei" in picker.combo.itemData(0, Qt.ItemDataRole.ToolTipRole)
    assert picker.combo.currentText() == "nuclei (bundled)"  # the default


def test_picking_cells_makes_segment_use_the_cells_model(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    image = (make_blobs((96, 96), seed=2)[0] * 1000).astype(np.uint16)
    viewer.add_image(image, name="img")
    widget = SegmentWidget(viewer)
    session = get_session(viewer)
    pick(widget.model_picker, "cells (bundled)")
    assert session.model.config["name"] == "cells_v1" and session.model_source == ("bundled", "cells")
    assert widget.model_picker.combo.currentText() == "cells (bundled)"
    assert widget.model_picker.description.text() == "Current: cells_v1 (bundled)"
    assert BUNDLED_MODELS["cells"].description in widget.model_picker.description.toolTip()

    request = widget.request()
    finish(qtbot, widget.run())
    expected = cr.segment(image, model=cr.load_model("cells"), device="cpu", postprocess=request.postprocess)
    nuclei = cr.segment(image, model=cr.load_model("nuclei"), device="cpu", postprocess=request.postprocess)
    assert not np.array_equal(expected.semantic, nuclei.semantic)  # the two models give different answers here
    np.testing.assert_array_equal(viewer.layers["img classes"].data, expected.semantic)
    np.testing.assert_array_equal(viewer.layers["img instances"].data, expected.instances)

    pick(widget.model_picker, "nuclei (bundled)")
    assert session.model.config["name"] == "nuclei_v1" and session.model_source == ("bundled", "nuclei")


def test_fine_tuning_starts_from_the_picked_model_and_reverts_to_it(qtbot, make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    image, labels = make_blobs((64, 64), seed=1)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="img labels")
    session = get_session(viewer)
    segment = SegmentWidget(viewer)  # held: a widget nobody holds is deleted (with its combo) whenever Python's GC runs
    pick(segment.model_picker, "cells (bundled)")
    widget = FinetuneWidget(viewer)
    widget.labels_combo.set_layer(viewer.layers["img labels"])
    widget.steps.value = 2
    widget.resegment.value = False
    finish(qtbot, widget.run(), timeout=120_000)
    record = session.model.config["provenance"][-1]
    assert (record["parent"], record["parent_file"], record["steps"]) == ("cells_v1", "bundled:cells_v1", 2)

    session.set_model(tiny_model)
    assert widget.revert_model().name == "cells_v1"  # "Revert to bundled" goes back to the bundled model chosen last
    assert session.model_source == ("bundled", "cells")


def test_missing_weights_of_a_picked_model_are_a_message(make_napari_viewer, errors, monkeypatch, tmp_path):
    import cellrefine.model.io as model_io

    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)  # loads the nuclei model; held, so its combo outlives the test's clicks
    picker = segment.model_picker
    monkeypatch.setattr(model_io, "bundled_model_path", lambda name="nuclei": tmp_path / "missing.safetensors")
    pick(picker, "cells (bundled)")
    assert "bundled CellRefine model is not installed" in errors["error"][-1]
    assert get_session(viewer).model.name == "nuclei_v1"
    assert picker.combo.currentText() == "nuclei (bundled)"
    with pytest.raises(ValueError, match="'organoids' is not a bundled CellRefine model"):
        get_session(viewer).use_bundled("organoids")


def test_cells_sample_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cellrefine", "cells")
    (layer,) = viewer.layers
    assert layer.name == "Cells (phase contrast)"
    assert layer.data.shape == (512, 512) and layer.data.dtype == np.uint16
    assert layer.metadata["cellrefine_axes"] == "YX"
