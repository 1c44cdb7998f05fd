"""Correction tracking on Labels layers: paint, fill, erase, data_setitem, undo/redo, reviewed masks."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from cellrefine._qt.corrections import REVIEW_MARGIN, CorrectionTracker
from cellrefine._qt.corrections_panel import rasterize_shapes


def _prediction(shape=(64, 64)):
    labels = np.zeros(shape, np.uint32)
    labels[..., 10:20, 10:20] = 1
    labels[..., 40:50, 40:55] = 2
    return labels


def _tracked(prediction, axes="YX", kind="instances"):
    layer = Labels(prediction.copy())
    return layer, CorrectionTracker(layer, layer.data, axes, kind)


def test_paint_is_recorded_and_undo_forgets_it():
    layer, tracker = _tracked(_prediction())
    assert not tracker.is_edited() and tracker.corrected_counts() == (0, 0)
    layer.brush_size = 3
    layer.paint((30, 30), 5)
    changed = tracker.changed_mask()
    assert changed.sum() == (layer.data == 5).sum() > 0
    assert tracker.is_edited() and tracker.corrected_counts() == (1, changed.sum())
    layer.undo()
    assert not tracker.changed_mask().any()
    layer.redo()
    assert tracker.changed_mask().sum() == changed.sum()


def test_painting_back_the_predicted_value_still_counts():
    layer, tracker = _tracked(_prediction())
    layer.brush_size = 1
    layer.paint((15, 15), 9)
    layer.paint((15, 15), 1)  # user repainted the original label on purpose
    assert np.array_equal(layer.data, tracker.prediction)
    assert tracker.changed_mask()[15, 15]


def test_fill_erase_and_data_setitem():
    layer, tracker = _tracked(_prediction())
    layer.fill((45, 45), 0)  # erase object 2 with the fill tool
    assert tracker.changed_mask().sum() == 10 * 15
    objects, _ = tracker.corrected_counts()
    assert objects == 1  # the erased object counts
    layer.data_setitem((np.array([1, 2]), np.array([3, 4])), 7)
    assert tracker.changed_mask()[1, 3] and tracker.changed_mask()[2, 4]


def test_edits_without_paint_events_are_seen():
    layer, tracker = _tracked(_prediction())
    layer.data[0, 0] = 3  # e.g. a script; no paint event
    assert tracker.is_edited() and tracker.changed_mask()[0, 0]


def test_reviewed_mask_covers_object_and_margin():
    layer, tracker = _tracked(_prediction())
    layer.data_setitem((np.array([12]), np.array([12])), 0)  # one pixel of object 1 corrected
    mask = tracker.reviewed_mask()
    assert mask[10:20, 10:20].all()  # the whole object
    assert mask[10 - REVIEW_MARGIN, 15] and not mask[10 - REVIEW_MARGIN - 2, 15]  # plus the margin
    assert not mask[45, 45]  # other objects are not reviewed


def test_reviewed_mask_per_plane_and_marked_regions():
    prediction = _prediction((2, 3, 64, 64))
    layer, tracker = _tracked(prediction, axes="TZYX")
    layer.data_setitem((np.array([1]), np.array([2]), np.array([45]), np.array([45])), 0)
    tracker.mark_reviewed(0, 1)
    region = np.zeros((64, 64), bool)
    region[:5, :5] = True
    tracker.mark_reviewed(1, 0, region)
    mask = tracker.reviewed_mask()
    assert mask.shape == prediction.shape
    assert mask[1, 2, 40:50, 40:55].all() and not mask[1, 1, 40:50, 40:55].any()
    assert mask[0, 1].all() and mask[1, 0].sum() == 25


def test_semantic_layers_use_connected_components():
    semantic = np.zeros((32, 32), np.uint8)
    semantic[5:15, 5:15] = 1
    semantic[5:15, 5] = 2
    layer, tracker = _tracked(semantic, kind="semantic")
    layer.data_setitem((np.array([10]), np.array([10])), 2)
    mask = tracker.reviewed_mask()
    assert mask[5:15, 5:15].all()
    assert tracker.corrected_counts() == (1, 1)


def test_reset_forgets_corrections():
    layer, tracker = _tracked(_prediction())
    layer.paint((30, 30), 5)
    tracker.reset(layer.data)
    assert not tracker.is_edited()


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        CorrectionTracker(Labels(np.zeros((4, 4), np.uint8)), np.zeros((4, 4), np.uint8), "YX", "classes")


def test_rasterize_shapes(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((64, 64), np.uint32), scale=(2, 2))
    shapes = viewer.add_shapes([[[10, 10], [10, 30], [30, 30], [30, 10]]], shape_type="rectangle")  # world coordinates
    shapes.add_ellipses([[[60, 60], [60, 80], [80, 80], [80, 60]]])
    mask = rasterize_shapes(viewer, shapes, labels, "YX")
    assert mask[5:15, 5:15].all() and not mask[20, 20]  # labels pixels are 2 world units
    assert mask[35, 35] and not mask[30, 30]  # ellipse centre in, bounding-box corner out
