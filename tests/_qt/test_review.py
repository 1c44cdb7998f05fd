""" "Review next": the ranked objects of a segmentation, and a click that takes the viewer there."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt

from cellrefine._qt.segment_widget import SegmentWidget
from cellrefine._qt.session import get_session
from cellrefine.uncertainty import ObjectUncertainty

from .conftest import finish, make_blobs


def _camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def _click_row(qtbot, table, row: int) -> None:
    table.scrollToItem(table.item(row, 0))
    rect = table.visualItemRect(table.item(row, 1))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_click_on_a_ranked_object_moves_the_viewer_there(qtbot, viewer):
    stack = np.stack([make_blobs(seed=k)[0] for k in range(3)])
    viewer.add_image(stack, name="stack", metadata={"cellrefine_axes": "TYX"}, scale=(1.0, 0.5, 0.5))
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.show()
    widget.foreground_threshold.value = 0.0  # the tiny untrained model: make sure there are objects
    widget.seed_threshold.value = 0.0
    widget.min_size.value = 0
    finish(qtbot, widget.run())
    record = get_session(viewer).record_for(viewer.layers["stack"])
    instances = viewer.layers["stack instances"]
    objects = [obj for obj in record.ranking if obj.label > 0]
    assert objects and len(record.ranking) == widget.review.table.rowCount()
    scores = [obj.score for obj in record.ranking]
    assert scores == sorted(scores, reverse=True)  # most uncertain first

    # pick an object on another frame than the one shown
    target = next(obj for obj in objects if round(obj.centroid[0]) != viewer.dims.current_step[0])
    row = next(r for r in range(widget.review.table.rowCount()) if widget.review.object_at(r) is target)
    _click_row(qtbot, widget.review.table, row)

    t, y, x = target.centroid
    assert viewer.dims.current_step[0] == round(t)
    np.testing.assert_allclose(_camera(viewer).center[-2:], (y * 0.5, x * 0.5), atol=1e-6)  # world = data * scale
    assert viewer.layers.selection.active is instances
    assert instances.selected_label == target.label
    assert (instances.data[round(t)] == target.label).any()


def test_table_sorts_and_missed_candidates_get_a_fresh_label(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    labels = np.zeros((2, 40, 40), np.uint32)
    labels[0, 5:10, 5:10] = 1
    labels[1, 20:30, 25:35] = 2
    layer = viewer.add_labels(labels, name="objects")
    ranking = [
        ObjectUncertainty(label=2, score=0.9, size=100, centroid=(1.0, 24.5, 29.5)),
        ObjectUncertainty(label=-1, score=0.6, size=30, centroid=(0.0, 30.0, 10.0), missed=True),
        ObjectUncertainty(label=1, score=0.2, size=25, centroid=(0.0, 7.0, 7.0)),
    ]
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.show()
    panel = widget.review
    panel.show_ranking(ranking, layer)
    assert [panel.object_at(r).label for r in range(3)] == [2, -1, 1]
    assert "2 objects of 'objects', 1 possibly missed" in panel.summary.text()
    panel.table.sortItems(2, Qt.SortOrder.AscendingOrder)  # by size
    assert [panel.object_at(r).label for r in range(3)] == [1, -1, 2]

    _click_row(qtbot, panel.table, 1)  # the missed candidate
    assert viewer.dims.current_step[0] == 0
    np.testing.assert_allclose(_camera(viewer).center[-2:], (30.0, 10.0))
    assert layer.selected_label == 3  # a new label, ready to paint the missed object
    _click_row(qtbot, panel.table, 2)
    assert viewer.dims.current_step[0] == 1 and layer.selected_label == 2


def test_current_slice_runs_rank_only_that_slice_with_the_layers_ids(qtbot, viewer):
    stack = np.stack([make_blobs(seed=k)[0] for k in range(3)])
    viewer.add_image(stack, name="stack", metadata={"cellrefine_axes": "TYX"})
    widget = SegmentWidget(viewer)
    widget.current_slice.value = True
    widget.foreground_threshold.value = 0.0
    widget.seed_threshold.value = 0.0
    widget.min_size.value = 0
    for frame in (1, 2):  # the second run is merged into the same (unedited) layer, its ids moved past the kept ones
        viewer.dims.set_current_step(0, frame)
        finish(qtbot, widget.run())
        record = get_session(viewer).record_for(viewer.layers["stack"])
        instances = viewer.layers["stack instances"]
        assert record.ranking
        assert {round(obj.centroid[0]) for obj in record.ranking} == {frame}
        for obj in record.ranking:
            if obj.label > 0:
                assert (instances.data[frame] == obj.label).any(), obj.label
    assert instances.data[1].any() and instances.data[2].any()
