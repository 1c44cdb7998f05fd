"""The Segment widget: shapes and geometry of results, cancel, re-runs, errors."""

from __future__ import annotations

import numpy as np
import pytest

from cellrefine._qt.results import CLASS_COLORS
from cellrefine._qt.segment_widget import SegmentWidget
from cellrefine._qt.session import get_session

from .conftest import finish, make_blobs


def _stack(n=3):
    return np.stack([make_blobs(seed=k)[0] for k in range(n)])


# (data, add_image kwargs, expected label shape, expected kept scale)
CASES = {
    "2D": (lambda: make_blobs()[0], {"scale": (0.5, 0.25), "translate": (10, 20)}, (64, 64)),
    "RGB": (
        lambda: np.repeat(make_blobs()[0][..., None], 3, axis=-1).astype(np.uint8),
        {"rgb": True, "scale": (0.5, 0.25), "translate": (1, 2)},
        (64, 64),
    ),
    "ZYX": (_stack, {"scale": (2.0, 0.5, 0.5), "translate": (5, 0, 1)}, (3, 64, 64)),
    "TYX": (_stack, {"axis_labels": ("t", "y", "x"), "scale": (1.0, 0.5, 0.5), "translate": (0, 3, 4)}, (3, 64, 64)),
    "multiscale": (lambda: [make_blobs()[0], make_blobs()[0][::2, ::2]], {"multiscale": True, "scale": (2.0, 2.0)}, (64, 64)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_segment_layers_match_image(qtbot, viewer, case):
    make, kwargs, expected = CASES[case]
    image = viewer.add_image(make(), name="img", **kwargs)
    widget = SegmentWidget(viewer)
    assert widget.image_combo.current_layer() is image
    expected_axes = {"2D": "YX", "RGB": "YXC", "ZYX": "ZYX", "TYX": "TYX", "multiscale": "YX"}[case]
    assert widget.request().axes == expected_axes

    worker = widget.run()
    assert not widget.controls.run_button.isEnabled()
    finish(qtbot, worker)

    classes, instances = viewer.layers["img classes"], viewer.layers["img instances"]
    for layer in (classes, instances):
        assert layer.data.shape == expected
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        assert layer.metadata["cellrefine_axes"] == expected_axes.replace("C", "")
    assert set(np.unique(classes.data)) <= {0, 1, 2}
    assert instances.data.dtype == np.uint32
    np.testing.assert_allclose(classes.colormap.map(np.array([1, 2])), [CLASS_COLORS[1], CLASS_COLORS[2]], atol=1e-6)
    assert classes.colormap.map(np.array([0]))[0, 3] == 0  # background transparent
    if case == "TYX":
        assert tuple(classes.axis_labels) == ("t", "y", "x")
    assert "img probabilities" not in viewer.layers  # off by default
    assert widget.controls.run_button.isEnabled()
    assert widget.device_used.text() == "Ran on: cpu"


def test_current_slice_only_and_probabilities(qtbot, viewer):
    image = viewer.add_image(_stack(), name="stack", metadata={"cellrefine_axes": "TYX"})
    viewer.dims.set_current_step(0, 1)
    widget = SegmentWidget(viewer)
    widget.current_slice.value = True
    widget.show_probabilities.value = True
    finish(qtbot, widget.run())

    record = get_session(viewer).record_for(image)
    assert record.planes == [(1, 0)]
    probabilities = record.segmentation.probabilities
    assert probabilities.shape == (3, 3, 64, 64)
    assert probabilities[:, 1].any() and not probabilities[:, 0].any() and not probabilities[:, 2].any()
    layer = viewer.layers["stack probabilities"]
    assert layer.rgb and layer.data.shape == (3, 64, 64, 3)


def test_cancel_stops_without_layers(qtbot, viewer):
    viewer.add_image(np.random.default_rng(0).normal(size=(1536, 1536)).astype(np.float32), name="big")
    widget = SegmentWidget(viewer)
    widget.tile_size.value = 32  # 48 x 48 = 2304 tiles
    progress = []
    worker = widget.run()
    worker.yielded.connect(progress.append)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        qtbot.waitUntil(lambda: len(progress) >= 3, timeout=30_000)
        assert progress[-1].total == 48 * 48
        widget.cancel()
    # how fast Cancel stops is measured in benchmarks/ui_responsiveness.py --widgets
    assert progress[-1].done < progress[-1].total
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert widget.controls.run_button.isEnabled() and not widget.controls.stop_button.isEnabled()
    assert get_session(viewer).record_for(viewer.layers["big"]) is None


def test_edited_layer_survives_rerun(qtbot, viewer, blobs):
    viewer.add_image(blobs[0], name="img")
    widget = SegmentWidget(viewer)
    finish(qtbot, widget.run())
    instances = viewer.layers["img instances"]
    instances.brush_size = 6
    instances.paint((20, 20), 77)  # the paint tool's code path: fires events.paint
    painted = instances.data == 77
    assert painted.sum() > 10

    finish(qtbot, widget.run())
    assert viewer.layers["img instances"] is instances  # still there, untouched
    np.testing.assert_array_equal(instances.data == 77, painted)
    assert "img instances [2]" in viewer.layers  # the re-run went to a new layer
    assert [layer.name for layer in viewer.layers].count("img classes") == 1  # unedited: reused
    assert "img classes [2]" not in viewer.layers
    instances.undo()  # napari's undo still works on the kept layer
    assert not (instances.data == 77).any()


def test_update_instances_reuses_probabilities(qtbot, viewer, blobs):
    image = viewer.add_image(blobs[0], name="img")
    widget = SegmentWidget(viewer)
    widget.auto_update.value = False
    widget.foreground_threshold.value = 0.0
    widget.seed_threshold.value = 0.0
    widget.min_size.value = 0
    finish(qtbot, widget.run())
    session = get_session(viewer)
    probabilities = session.record_for(image).segmentation.probabilities
    assert viewer.layers["img instances"].data.max() >= 1

    widget.foreground_threshold.value = 1.0  # nothing is foreground any more
    finish(qtbot, widget.update_instances())
    record = session.record_for(image)
    assert record.segmentation.probabilities is probabilities  # no new network run
    assert record.segmentation.settings.foreground_threshold == 1.0
    assert viewer.layers["img instances"].data.max() == 0
    assert "img instances [2]" not in viewer.layers

    widget.auto_update.value = True  # debounced automatic update
    widget.foreground_threshold.value = 0.0
    layer = viewer.layers["img instances"]
    qtbot.waitUntil(lambda: layer.data.max() >= 1 and widget.update_worker is None, timeout=10_000)
    assert session.record_for(image).segmentation.settings.foreground_threshold == 0.0


def test_follows_active_layer(viewer, blobs):
    a = viewer.add_image(blobs[0], name="a")
    b = viewer.add_image(blobs[0], name="b")
    widget = SegmentWidget(viewer)
    assert widget.image_combo.current_layer() is b
    viewer.layers.selection.active = a
    assert widget.image_combo.current_layer() is a


def test_errors_reach_the_user(qtbot, viewer, blobs, errors, monkeypatch):
    widget = SegmentWidget(viewer)
    assert widget.run() is None  # no image layer
    assert "No image layer" in errors["error"][-1]

    viewer.add_image(blobs[0], name="img")
    widget.axes.value = "ZZYX"
    assert widget.run() is None
    assert "axes 'ZZYX'" in errors["error"][-1]
    assert "ZZYX" in widget.axes_label.text()

    widget.axes.value = ""
    widget.device.value = "cuda"  # not on this machine: the worker raises ValueError
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    finish(qtbot, widget.run())
    assert "cuda" in errors["error"][-1].lower()
    assert "img classes" not in viewer.layers
    assert widget.controls.run_button.isEnabled()


def test_missing_bundled_model_is_a_message(make_napari_viewer, blobs, errors, monkeypatch, tmp_path):
    import cellrefine.model.io as model_io

    monkeypatch.setattr(model_io, "bundled_model_path", lambda: tmp_path / "missing.safetensors")
    viewer = make_napari_viewer()
    viewer.add_image(blobs[0], name="img")
    widget = SegmentWidget(viewer)  # opens fine without the weights
    assert widget.run() is None
    assert "bundled CellRefine model is not installed" in errors["error"][-1]


def test_unexpected_errors_keep_their_traceback(qtbot, viewer, blobs, monkeypatch):
    """A RuntimeError in the worker (superqt would only warn) reaches napari's error notifications."""
    from napari.utils import notifications

    import cellrefine._qt.jobs as jobs

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("boom")

    received = []
    monkeypatch.setattr(jobs, "iter_segment", broken)
    monkeypatch.setattr(notifications.notification_manager, "receive_error", lambda *exc_info: received.append(exc_info))
    viewer.add_image(blobs[0], name="img")
    widget = SegmentWidget(viewer)
    finish(qtbot, widget.run())
    (exc_info,) = received
    assert exc_info[0] is RuntimeError and str(exc_info[1]) == "boom" and exc_info[2] is not None
    assert widget.controls.progress.format() == "failed" and widget.controls.run_button.isEnabled()


def test_shows_the_loaded_models_thresholds_from_the_start(make_napari_viewer, tiny_model):
    tiny_model.config["postprocess"] = {"foreground_threshold": 0.65, "seed_threshold": 0.75}
    viewer = make_napari_viewer()
    get_session(viewer).set_model(tiny_model)
    widget = SegmentWidget(viewer)
    assert (widget.foreground_threshold.value, widget.seed_threshold.value) == (0.65, 0.75)
    assert "foreground 0.65, seed 0.75." in widget.thresholds_label.text()  # weight 1: nothing more to say


def test_a_models_boundary_weight_is_shown_and_used(make_napari_viewer, tiny_model, blobs):
    tiny_model.config["postprocess"] = {"foreground_threshold": 0.4, "seed_threshold": 0.6, "boundary_weight": 0.3}
    viewer = make_napari_viewer()
    get_session(viewer).set_model(tiny_model)
    widget = SegmentWidget(viewer)
    assert "foreground 0.40, seed 0.60 (foreground = cell + 0.3 x boundary)." in widget.thresholds_label.text()
    viewer.add_image(blobs[0], name="img")
    assert widget.request().postprocess.boundary_weight == 0.3  # the form's thresholds replace only their own fields


def test_bundled_model_is_loaded_with_its_thresholds(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)  # no model set: the bundled one is loaded when the widget opens
    model = get_session(viewer).model
    assert model is not None and model.name == "nuclei_v1"
    expected = model.config["postprocess"]
    assert (widget.foreground_threshold.value, widget.seed_threshold.value) == (expected["foreground_threshold"], expected["seed_threshold"])
    assert (expected["foreground_threshold"], expected["seed_threshold"]) == (0.8, 0.7)
    assert widget.model_picker.description.text() == "Current: nuclei_v1 (bundled)"


def test_status_names_the_layers_it_wrote(qtbot, viewer, blobs):
    viewer.add_image(blobs[0], name="img")
    widget = SegmentWidget(viewer)
    finish(qtbot, widget.run())
    status = widget.controls.status.text()
    assert "Instances → 'img instances' (new layer)" in status and "classes → 'img classes' (new layer)" in status
    finish(qtbot, widget.run())
    assert "Instances → 'img instances' (updated)" in widget.controls.status.text()
    instances = viewer.layers["img instances"]
    instances.paint((20, 20), 77)
    finish(qtbot, widget.run())
    assert "'img instances [2]' (new layer; your edited 'img instances' was kept)" in widget.controls.status.text()


@pytest.mark.parametrize(("shape", "expected"), [((2, 64, 64), "first axis (2 items) was guessed as Z"), ((64, 48, 2), "type YXC in Axes")])
def test_warns_when_a_short_axis_is_guessed(viewer, errors, shape, expected):
    viewer.add_image(np.zeros(shape, np.float32), name="odd")
    widget = SegmentWidget(viewer)
    assert any(expected in message for message in errors["warning"]), errors["warning"]
    assert expected in widget.axes_label.text()
    widget.axes.value = "CYX" if shape[0] == 2 else "YXC"
    assert "guessed" not in widget.axes_label.text()


def test_no_warning_for_labelled_axes(viewer, errors):
    viewer.add_image(np.zeros((2, 64, 64), np.float32), name="two", axis_labels=("t", "y", "x"))
    SegmentWidget(viewer)
    assert errors["warning"] == []


def test_classes_follow_instance_edits(qtbot, viewer, blobs):
    from cellrefine.targets import instances_to_semantic

    viewer.add_image(blobs[0], name="img")
    widget = SegmentWidget(viewer)
    widget.foreground_threshold.value = 0.0
    widget.seed_threshold.value = 0.0
    finish(qtbot, widget.run())
    instances, classes = viewer.layers["img instances"], viewer.layers["img classes"]
    instances.brush_size = 9
    instances.paint((30, 30), 500)
    expected = instances_to_semantic(instances.data)
    qtbot.waitUntil(lambda: np.array_equal(classes.data, expected), timeout=5_000)
    tracker = get_session(viewer).tracker_for(classes)
    assert not tracker.is_edited()  # our own update is not a user correction
    instances.undo()
    qtbot.waitUntil(lambda: np.array_equal(classes.data, instances_to_semantic(instances.data)), timeout=5_000)


def test_classes_edited_by_the_user_are_marked_stale(qtbot, viewer, blobs, errors):
    viewer.add_image(blobs[0], name="img")
    widget = SegmentWidget(viewer)
    finish(qtbot, widget.run())
    instances, classes = viewer.layers["img instances"], viewer.layers["img classes"]
    classes.paint((5, 5), 2)
    before = classes.data.copy()
    instances.paint((30, 30), 500)
    qtbot.waitUntil(lambda: classes.name == "img classes (stale)", timeout=5_000)
    np.testing.assert_array_equal(classes.data, before)  # the user's class edits are kept
    assert "marked stale" in errors["warning"][-1]
