"""The Fine-tune widget: training on painted corrections, Stop, closing mid-run, model and label files."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cellrefine._qt.finetune_widget import FinetuneWidget
from cellrefine._qt.segment_widget import SegmentWidget
from cellrefine._qt.session import get_session

from .conftest import finish


def _weights(model):
    return {k: v.detach().clone() for k, v in model.network.state_dict().items() if v.dtype.is_floating_point}


def _segment_and_correct(qtbot, viewer, blobs):
    image = viewer.add_image(blobs[0], name="img")
    finish(qtbot, SegmentWidget(viewer).run())
    instances = viewer.layers["img instances"]
    instances.brush_size = 9
    for (y, x), label in zip(np.argwhere(blobs[1] > 0)[::40][:3], (101, 102, 103)):
        instances.paint((int(y), int(x)), label)
    return image, instances


def test_finetune_on_painted_corrections(qtbot, viewer, blobs):
    session = get_session(viewer)
    image, instances = _segment_and_correct(qtbot, viewer, blobs)
    painted = instances.data.copy()
    before = _weights(session.get_model())

    widget = FinetuneWidget(viewer)
    assert widget.image_combo.current_layer() is image
    assert widget.labels_combo.current_layer() is instances  # the corrected layer of the last segmentation
    qtbot.waitUntil(lambda: "Corrected: 3 objects" in widget.corrections.summary.text(), timeout=5_000)
    widget.steps.value = 10
    worker = widget.run()
    assert not widget.controls.run_button.isEnabled() and widget.controls.stop_button.isEnabled()
    finish(qtbot, worker, timeout=120_000)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)  # the follow-up re-segmentation

    tuned = session.model
    assert tuned.name == "tiny-finetuned"
    after = _weights(tuned)
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)
    record = tuned.config["provenance"][-1]
    assert record["steps"] == 10 and record["metrics_before"] and record["metrics_after"]
    assert "→" in widget.result.text()
    assert len(widget.curve.losses) == 10
    # the painted corrections are still there, and the re-segmentation went to a new layer
    assert viewer.layers["img instances"] is instances
    np.testing.assert_array_equal(instances.data, painted)
    assert "img instances [2]" in viewer.layers
    # the next default is still the corrected layer
    widget.apply_defaults()
    assert widget.labels_combo.current_layer() is instances


def test_nothing_reviewed_is_a_message(qtbot, viewer, blobs, errors):
    viewer.add_image(blobs[0], name="img")
    finish(qtbot, SegmentWidget(viewer).run())
    widget = FinetuneWidget(viewer)
    assert widget.run() is None
    assert "Nothing in 'img instances' is reviewed" in errors["error"][-1]
    tracker = get_session(viewer).tracker_for(viewer.layers["img instances"])
    viewer.add_shapes([[[2, 2], [2, 12], [12, 12], [12, 2]]], shape_type="rectangle", name="reviewed")
    widget.corrections.shapes_combo.refresh()
    widget.corrections.mark_shapes_reviewed()
    assert tracker.reviewed_mask().sum() == 11 * 11
    qtbot.waitUntil(lambda: "Training on 121 reviewed px" in widget.corrections.summary.text(), timeout=5_000)
    widget.corrections.mark_slice_reviewed()  # now the whole slice counts
    assert tracker.reviewed_mask().all()


def test_stop_returns_the_calibrated_model_from_the_core(qtbot, viewer, blobs):
    """Stop sets the core's stop event: training ends after the step and the core still returns its model.

    (How responsive the GUI stays while training is measured in benchmarks/ui_responsiveness.py --widgets.)
    """
    session = get_session(viewer)
    _segment_and_correct(qtbot, viewer, blobs)
    original = session.model
    widget = FinetuneWidget(viewer)
    widget.steps.value = 2_000
    widget.resegment.value = False
    updates = []

    torch_threads = torch.get_num_threads()
    worker = widget.run()
    worker.yielded.connect(updates.append)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        qtbot.waitUntil(lambda: any(u.phase == "training" for u in updates), timeout=60_000)
        first_step = time.perf_counter()
        qtbot.waitUntil(lambda: time.perf_counter() - first_step > 3.5, timeout=20_000)
        training_seconds = time.perf_counter() - first_step
        widget.stop()
    steps = [u.step for u in updates if u.phase == "training"]
    assert training_seconds >= 3.0 and len(steps) < 2_000
    assert torch.get_num_threads() == torch_threads  # restored after training
    # Stop kept the model trained so far, calibrated by the core
    tuned = session.model
    assert tuned is not original and tuned.name == "tiny-finetuned"
    record = tuned.config["provenance"][-1]
    assert record["stopped_early"] and record["steps"] == max(steps) and "thresholds_after" in record
    assert [u.phase for u in updates][-1] != "training"  # the core went on to finalise after Stop
    assert "stopped" in widget.result.text()
    assert widget.controls.run_button.isEnabled()
    assert widget.controls.progress.format() == "stopped early"


def test_closing_the_viewer_mid_finetune_stops_the_worker(qtbot, make_napari_viewer, tiny_model, blobs, capfd):
    """Closing the viewer while training stops the worker; no handler touches a deleted Qt object."""
    from napari.utils import notifications

    viewer = make_napari_viewer(show=True)
    session = get_session(viewer)
    session.set_model(tiny_model)
    _segment_and_correct(qtbot, viewer, blobs)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.steps.value = 5_000
    received = []
    original = notifications.notification_manager.receive_error
    notifications.notification_manager.receive_error = lambda *exc_info: received.append(exc_info)
    try:
        updates = []
        worker = widget.run()
        worker.yielded.connect(updates.append)
        with qtbot.waitSignal(worker.finished, timeout=120_000):
            qtbot.waitUntil(lambda: sum(u.phase == "training" for u in updates) >= 2, timeout=60_000)
            viewer.close()
        qtbot.wait(200)  # let queued signals and deferred deletes run
    finally:
        notifications.notification_manager.receive_error = original
    assert max(u.step for u in updates) < 5_000  # stopped, not run to the end
    assert widget.jobs.closed and len(widget.jobs) == 0
    assert received == [], received
    assert "has been deleted" not in capfd.readouterr().err


def test_closing_the_dock_stops_the_worker(qtbot, viewer, blobs):
    _segment_and_correct(qtbot, viewer, blobs)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.steps.value = 5_000
    updates = []
    worker = widget.run()
    worker.yielded.connect(updates.append)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        qtbot.waitUntil(lambda: sum(u.phase == "training" for u in updates) >= 1, timeout=60_000)
        viewer.window.remove_dock_widget(widget)
    assert widget.jobs.closed and max(u.step for u in updates) < 5_000


def test_save_load_and_revert(qtbot, viewer, tmp_path, errors, monkeypatch):
    import cellrefine.model.io as model_io
    from cellrefine._qt.recent import load_recent_models

    session = get_session(viewer)
    widget = FinetuneWidget(viewer)
    path = widget.save_model(tmp_path / "mine.safetensors")
    assert path.exists()
    assert load_recent_models() == [str(path.resolve())]
    assert session.model_source == ("file", str(path))

    loaded = widget.load_model(path)
    assert session.model is loaded and loaded.name == "tiny"
    assert "mine.safetensors" in widget.model_label.text()
    segment = SegmentWidget(viewer)
    assert segment.model_picker.combo.currentText() == "mine.safetensors"

    assert widget.load_model(tmp_path / "nope.safetensors") is None
    assert "does not exist" in errors["error"][-1]

    monkeypatch.setattr(model_io, "bundled_model_path", lambda: tmp_path / "missing.safetensors")
    assert widget.revert_model() is None
    assert "bundled CellRefine model is not installed" in errors["error"][-1]
    assert session.model is loaded


@pytest.mark.parametrize("steps", [3])
def test_semantic_corrections_train_on_classes(qtbot, viewer, blobs, steps):
    viewer.add_image(blobs[0], name="img")
    finish(qtbot, SegmentWidget(viewer).run())
    classes = viewer.layers["img classes"]
    classes.brush_size = 7
    classes.paint((30, 30), 1)
    widget = FinetuneWidget(viewer)
    assert widget.labels_combo.current_layer() is classes  # most recently painted
    widget.steps.value = steps
    widget.resegment.value = False
    finish(qtbot, widget.run(), timeout=120_000)
    assert get_session(viewer).model.config["provenance"][-1]["steps"] == steps


def test_labels_drawn_from_scratch_count_where_they_have_objects(viewer):
    from .conftest import make_blobs

    stack = np.stack([make_blobs(seed=k)[0] for k in range(3)])
    viewer.add_image(stack, name="stack", metadata={"cellrefine_axes": "TYX"})
    drawn = np.zeros((3, 64, 64), np.uint32)
    drawn[1, 10:20, 10:20] = 1
    viewer.add_labels(drawn, name="drawn")
    widget = FinetuneWidget(viewer)
    widget.labels_combo.set_layer(viewer.layers["drawn"])
    inputs = widget.training_inputs()
    assert inputs.kind == "instances"
    assert inputs.reviewed_mask[1].all() and not inputs.reviewed_mask[0].any() and not inputs.reviewed_mask[2].any()
    assert "not a CellRefine result" in widget.corrections.summary.text()


def test_gui_and_api_return_the_same_model(qtbot, viewer, blobs):
    """The widget adds no policy: cellrefine.finetune on the same inputs and settings gives the same model."""
    from cellrefine.training import FinetuneSettings, finetune

    session = get_session(viewer)
    _segment_and_correct(qtbot, viewer, blobs)
    parent = session.model
    widget = FinetuneWidget(viewer)
    widget.steps.value = 6
    widget.resegment.value = False
    inputs = widget.training_inputs()
    finish(qtbot, widget.run(), timeout=120_000)
    gui = session.model
    api = finetune(
        parent,
        [inputs.image],
        [inputs.labels],
        [inputs.reviewed_mask],
        axes=inputs.axes,
        kind=inputs.kind,
        steps=6,
        device=widget.device.value,
        settings=FinetuneSettings(learning_rate=widget.learning_rate.value),
    )
    assert gui is not parent
    gui_weights, api_weights = _weights(gui), _weights(api)
    assert gui_weights.keys() == api_weights.keys()
    for key in gui_weights:  # same run; only the torch thread count (and so float summation order) may differ
        np.testing.assert_allclose(gui_weights[key].numpy(), api_weights[key].numpy(), atol=1e-4, err_msg=key)
    assert gui.config["postprocess"] == api.config["postprocess"]
    gui_record, api_record = gui.config["provenance"][-1], api.config["provenance"][-1]
    for key in ("steps", "checkpoint", "thresholds_after", "data_sha256", "reviewed_pixels"):
        assert gui_record[key] == api_record[key], key


def test_result_shows_the_core_summary_and_segment_shows_the_calibration(qtbot, viewer, blobs):
    from cellrefine.training import finetune_summary

    _segment_and_correct(qtbot, viewer, blobs)
    segment = SegmentWidget(viewer)
    widget = FinetuneWidget(viewer)
    widget.steps.value = 4
    widget.resegment.value = False
    finish(qtbot, widget.run(), timeout=120_000)
    tuned = get_session(viewer).model
    lines = finetune_summary(tuned)
    assert lines and all(line in widget.result.text() for line in lines)
    calibration = next(line for line in lines if line.startswith(("thresholds re-picked", "thresholds checked")))
    assert calibration in segment.thresholds_label.text()
    thresholds = tuned.config["postprocess"]
    assert (segment.foreground_threshold.value, segment.seed_threshold.value) == (thresholds["foreground_threshold"], thresholds["seed_threshold"])


def test_save_labels_writes_a_tiff_atomically(qtbot, viewer, blobs, tmp_path, errors):
    import tifffile

    _, instances = _segment_and_correct(qtbot, viewer, blobs)
    folder = tmp_path / "out"
    folder.mkdir()
    widget = FinetuneWidget(viewer)
    assert widget.labels_combo.current_layer() is instances
    path = widget.save_labels(folder / "corrected.tif")
    assert path == folder / "corrected.tif"
    np.testing.assert_array_equal(tifffile.imread(path), instances.data)
    with tifffile.TiffFile(path) as tif:
        assert tif.shaped_metadata[0]["axes"] == "YX"
    assert [p.name for p in folder.iterdir()] == ["corrected.tif"]  # no temporary file left behind
    assert "Saved 'img instances'" in widget.controls.status.text()
    assert widget.save_labels(folder / "corrected.png") is None
    assert ".tif or .tiff" in errors["error"][-1]
