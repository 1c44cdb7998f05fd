"""Corrections painted in XZ/YZ views of a Z stack (axes rolled in napari): the reviewed mask lies in the painted plane."""

from __future__ import annotations

import numpy as np

from cellrefine._qt.corrections import REVIEW_MARGIN, CorrectionTracker
from cellrefine.training.orientations import training_positions

SHAPE = (12, 40, 48)  # Z, Y, X


def _ellipsoid_stack():
    """One object, id 3: an ellipsoid spanning z 3..8, y 12..27, x 10..37."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    labels = np.zeros(SHAPE, np.uint32)
    labels[((zz - 5.5) / 3) ** 2 + ((yy - 19.5) / 8) ** 2 + ((xx - 23.5) / 14) ** 2 <= 1] = 3
    return labels


def _viewer_with_tracker(make_napari_viewer, scale=(1, 1, 1)):
    viewer = make_napari_viewer()
    prediction = _ellipsoid_stack()
    layer = viewer.add_labels(prediction.copy(), scale=scale)
    tracker = CorrectionTracker(layer, layer.data, "ZYX")
    return viewer, layer, tracker, prediction


def test_painting_in_an_xz_view_reviews_that_y_plane_only(make_napari_viewer):
    viewer, layer, tracker, prediction = _viewer_with_tracker(make_napari_viewer)
    viewer.dims.order = (1, 0, 2)  # Y sliced: the canvas shows Z (rows) by X (columns)
    y = 20
    viewer.dims.set_point(1, y)
    assert tuple(viewer.dims.displayed) == (0, 2)
    layer.brush_size = 3
    layer.paint((6, y, 30), 7)  # a 3-pixel disk in the XZ plane: z 5..7, x 29..31
    painted = layer.data != prediction
    assert painted.any() and np.unique(np.nonzero(painted)[1]).tolist() == [y]  # napari painted in that XZ plane
    assert (np.ptp(np.nonzero(painted)[0]), np.ptp(np.nonzero(painted)[2])) == (2, 2)
    assert tracker.orientation_codes()[painted].tolist() == [1] * int(painted.sum())  # recorded as XZ
    mask = tracker.reviewed_mask()
    assert np.unique(np.nonzero(mask)[1]).tolist() == [y]  # flat in Y: one Y index
    # the object's extent in that XZ plane plus the margin (clipped to the stack)
    in_plane = prediction[:, y, :] == 3
    zs, xs = np.nonzero(in_plane)
    assert mask[:, y, :][in_plane].all()
    assert mask[:, y, xs.min() - REVIEW_MARGIN].any() and not mask[:, y, : xs.min() - REVIEW_MARGIN].any()
    assert mask[:, y, :].any(axis=1).all()  # z 3..8 plus 8 planes of margin: every plane of the stack
    # which the fine-tuning rule turns into exactly one XZ training plane
    positions = training_positions(mask, mask.shape, "ZYX")
    assert not positions["Z"].any() and positions["Y"].tolist() == [y] and positions["X"].size == 0
    assert tracker.corrected_counts() == (1, int(painted.sum()))  # one object (id 7), counted once in its XZ plane
    assert tracker.slice_axes() == "ZY"  # fine-tune on XY and XZ planes


def test_painting_in_a_yz_view_with_anisotropic_z(make_napari_viewer):
    viewer, layer, tracker, prediction = _viewer_with_tracker(make_napari_viewer, scale=(4, 1, 1))
    viewer.dims.order = (2, 0, 1)  # X sliced: the canvas shows Z by Y
    x = 24
    viewer.dims.set_point(2, x)
    layer.brush_size = 1
    for z in (4, 5, 6):
        layer.paint((z, 19, x), 0)  # erase a column of the object, one plane at a time
    painted = layer.data != prediction
    assert np.unique(np.nonzero(painted)[2]).tolist() == [x]
    mask = tracker.reviewed_mask()
    assert np.unique(np.nonzero(mask)[2]).tolist() == [x]  # flat in X
    in_plane = prediction[:, :, x] == 3
    assert mask[:, :, x][in_plane].all()
    # the margin is 8 in-plane pixels: 8 along Y, but 8 / 4 = 2 Z planes (the layer's scale)
    zs = np.nonzero(mask[:, :, x].any(axis=1))[0]
    assert (zs.min(), zs.max()) == (np.nonzero(in_plane.any(axis=1))[0].min() - 2, np.nonzero(in_plane.any(axis=1))[0].max() + 2)
    ys = np.nonzero(mask[:, :, x].any(axis=0))[0]
    assert (ys.min(), ys.max()) == (
        np.nonzero(in_plane.any(axis=0))[0].min() - REVIEW_MARGIN,
        np.nonzero(in_plane.any(axis=0))[0].max() + REVIEW_MARGIN,
    )
    positions = training_positions(mask, mask.shape, "ZYX")
    assert not positions["Z"].any() and positions["Y"].size == 0 and positions["X"].tolist() == [x]
    assert tracker.slice_axes() == "ZX"
    layer.undo()
    layer.undo()
    layer.undo()
    assert tracker.slice_axes() == "Z" and not tracker.reviewed_mask().any()  # undone: nothing painted in YZ any more


def test_xy_painting_and_data_setitem_stay_in_xy_planes(make_napari_viewer):
    viewer, layer, tracker, prediction = _viewer_with_tracker(make_napari_viewer)
    viewer.dims.set_point(0, 5)  # default order: Z sliced, XY shown
    layer.brush_size = 3
    layer.paint((5, 20, 30), 9)
    mask = tracker.reviewed_mask()
    assert np.unique(np.nonzero(mask)[0]).tolist() == [5]
    positions = training_positions(mask, mask.shape, "ZYX")
    assert positions["Z"].nonzero()[0].tolist() == [5] and positions["Y"].size == positions["X"].size == 0
    layer.data_setitem((np.array([7]), np.array([15]), np.array([20])), 0)
    assert not tracker.orientation_codes().any()  # brush in an XY view and data_setitem: XY
    assert tracker.slice_axes() == "Z"  # XY corrections only: XY planes, as before
    assert np.unique(np.nonzero(tracker.reviewed_mask())[0]).tolist() == [5, 7]  # one XY plane per correction


def test_both_orientations_in_one_stack(make_napari_viewer):
    viewer, layer, tracker, prediction = _viewer_with_tracker(make_napari_viewer)
    layer.brush_size = 3
    viewer.dims.set_point(0, 4)
    layer.paint((4, 5, 5), 5)  # XY, on the background: reviewed y, x 0..14 of z = 4
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 30)
    layer.paint((6, 30, 40), 6)  # XZ at y = 30: reviewed x 31..47 of every z
    codes = tracker.orientation_codes()
    assert set(np.unique(codes[layer.data == 5]).tolist()) == {0} and set(np.unique(codes[layer.data == 6]).tolist()) == {1}
    positions = training_positions(tracker.reviewed_mask(), SHAPE, "ZYX")
    assert positions["Z"].nonzero()[0].tolist() == [4] and positions["Y"].tolist() == [30] and positions["X"].size == 0
    assert tracker.slice_axes() == "ZY"


def test_atoms_with_int_keys_for_the_sliced_dims(make_napari_viewer):
    """Older napari puts ints in ``slice_key`` for the sliced dims: Y an int means painted in XZ."""
    from collections import namedtuple

    Atom = namedtuple("Atom", "slice_key mask old_values new_value")
    viewer, layer, tracker, prediction = _viewer_with_tracker(make_napari_viewer)
    key = (slice(2, 9), 25, slice(30, 34))
    old = layer.data[key].copy()
    layer.data[key] = 4
    layer.events.paint(value=[Atom(key, None, old, 4)])
    assert tracker.orientation_codes()[key].tolist() == [[1] * 4] * 7
    assert np.unique(np.nonzero(tracker.reviewed_mask())[1]).tolist() == [25]


def test_finetune_widget_passes_the_image_layer_scale(viewer):
    from cellrefine._qt.finetune_widget import FinetuneWidget

    stack = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    image = viewer.add_image(stack, name="stack", scale=(2.5, 0.5, 0.5), metadata={"cellrefine_axes": "ZYX"})
    drawn = viewer.add_labels(_ellipsoid_stack(), name="drawn", scale=(2.5, 0.5, 0.5))
    widget = FinetuneWidget(viewer)
    widget.image_combo.set_layer(image)
    widget.labels_combo.set_layer(drawn)
    inputs = widget.training_inputs()
    assert inputs.scale == (2.5, 0.5, 0.5)
    assert inputs.slice_axes == "Z"  # labels drawn from scratch: whole XY planes count as reviewed, XY planes only


def test_widget_finetunes_on_an_xz_correction(qtbot, viewer):
    """Roll the axes, paint in XZ, fine-tune: the core trains on that one XZ plane, resampled by the image layer's scale."""
    from cellrefine._qt.finetune_widget import FinetuneWidget
    from cellrefine._qt.session import get_session

    from .conftest import finish

    prediction = _ellipsoid_stack()
    stack = np.where(prediction > 0, 1.0, 0.1).astype(np.float32) + np.random.default_rng(0).normal(0, 0.05, SHAPE).astype(np.float32)
    image = viewer.add_image(stack, name="stack", scale=(2, 1, 1), metadata={"cellrefine_axes": "ZYX"})
    labels = viewer.add_labels(prediction.copy(), name="stack instances", scale=(2, 1, 1))
    get_session(viewer).track(labels, prediction, "ZYX", "instances", image)
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 20)
    labels.brush_size = 3
    labels.paint((6, 20, 30), 0)  # erase part of the object in the XZ plane y = 20
    widget = FinetuneWidget(viewer)
    widget.image_combo.set_layer(image)
    widget.labels_combo.set_layer(labels)
    widget.steps.value = 3
    widget.resegment.value = False
    inputs = widget.training_inputs()
    assert inputs.scale == (2.0, 1.0, 1.0) and np.unique(np.nonzero(inputs.reviewed_mask)[1]).tolist() == [20]
    assert inputs.slice_axes == "ZY"
    finish(qtbot, widget.run(), timeout=120_000)
    record = get_session(viewer).model.config["provenance"][-1]
    assert record["plane_orientations"] == {"XZ": 1} and record["data_shapes"] == [[2 * SHAPE[0], SHAPE[2]]]
    assert record["scale"] == [2.0, 1.0, 1.0] and record["slice_axes"] == "ZY"
