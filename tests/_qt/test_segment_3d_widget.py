"""The Segment widget on Z stacks: the "Stack mode" choice and the layer's scale reach the core; results keep the scale."""

from __future__ import annotations

import numpy as np
import pytest

from cellrefine._qt import jobs
from cellrefine._qt.segment_widget import SegmentWidget
from cellrefine._qt.session import get_session

from .conftest import finish, make_blobs


@pytest.fixture
def core_calls(monkeypatch):
    """Record the keyword arguments of every core call the widget's worker makes, then run the real core."""
    real_iter_segment = jobs.iter_segment
    calls = []

    def recording_iter_segment(image, model, axes, device, **kwargs):
        calls.append({"axes": axes, "shape": image.shape, **kwargs})
        return (yield from real_iter_segment(image, model, axes, device, **kwargs))

    monkeypatch.setattr(jobs, "iter_segment", recording_iter_segment)
    return calls


def _stack(n=4):
    return np.stack([make_blobs((32, 32), seed=k)[0] for k in range(n)])


def _shown(widget) -> bool:
    return not widget.stack_mode.native.isHidden()


@pytest.mark.parametrize(("choice", "ran"), [("auto", "3d"), ("3d", "3d"), ("stitch", "stitch")])
def test_stack_mode_and_layer_scale_reach_the_core(qtbot, viewer, core_calls, choice, ran):
    image = viewer.add_image(_stack(), name="stack", scale=(2, 1, 1))
    widget = SegmentWidget(viewer)
    assert _shown(widget)
    assert widget.stack_mode.choices == ("auto", "3d", "stitch")
    box = widget.stack_mode.native
    assert [box.itemText(i) for i in range(box.count())] == ["Auto", "3D (orthogonal views)", "2D + stitch"]
    widget.stack_mode.value = choice
    finish(qtbot, widget.run())

    assert len(core_calls) == 1
    assert core_calls[0]["axes"] == "ZYX" and core_calls[0]["shape"] == (4, 32, 32)
    assert core_calls[0]["scale"] == (2.0, 1.0, 1.0) and all(type(v) is float for v in core_calls[0]["scale"])
    assert core_calls[0]["stack_mode"] == choice
    segmentation = get_session(viewer).record_for(image).segmentation
    assert segmentation.stack_mode == ran and segmentation.scale == (2.0, 1.0, 1.0)  # what the core ran
    for kind in ("classes", "instances"):
        layer = viewer.layers[f"stack {kind}"]
        assert layer.data.shape == (4, 32, 32)
        np.testing.assert_allclose(layer.scale, (2, 1, 1))


def test_time_series_of_stacks_passes_every_non_channel_entry(qtbot, viewer, core_calls):
    data = np.stack([_stack(2), _stack(2)])[:, :, None]  # T, Z, C=1, Y, X
    viewer.add_image(data, name="tzcyx", scale=(5, 3, 1, 0.5, 0.5), metadata={"cellrefine_axes": "TZCYX"})
    widget = SegmentWidget(viewer)
    widget.stack_mode.value = "stitch"
    finish(qtbot, widget.run())
    assert core_calls[0]["scale"] == (5.0, 3.0, 0.5, 0.5)  # T, Z, Y, X: the layer's scale without the C entry
    assert get_session(viewer).record_for(viewer.layers["tzcyx"]).segmentation.scale == (3.0, 0.5, 0.5)
    np.testing.assert_allclose(viewer.layers["tzcyx instances"].scale, (5, 3, 0.5, 0.5))


def test_stack_mode_is_shown_for_images_with_z_only(viewer):
    viewer.add_image(make_blobs((32, 32))[0], name="plane")
    widget = SegmentWidget(viewer)
    assert not _shown(widget)
    assert widget.request().stack_mode == "auto"  # ignored by the core for 2D, whatever the hidden box says
    stack = viewer.add_image(_stack(), name="stack")
    widget.image_combo.set_layer(stack)
    assert _shown(widget)
    widget.axes.value = "TYX"  # the same layer read as a time series: no Z
    assert not _shown(widget)
    widget.axes.value = ""
    assert _shown(widget)


def test_3d_with_current_slice_only_is_refused(viewer, core_calls, errors):
    viewer.add_image(_stack(), name="stack", scale=(2, 1, 1))
    widget = SegmentWidget(viewer)
    widget.current_slice.value = True
    widget.stack_mode.value = "3d"
    assert widget.run() is None
    assert errors["error"] == ["3D (orthogonal views) segments whole stacks: untick 'Current slice only', or choose Auto or 2D + stitch."]
    assert core_calls == []


def test_unusable_layer_scale_is_a_message(viewer, core_calls, errors):
    viewer.add_image(_stack(), name="stack", scale=(-2, 1, 1))
    widget = SegmentWidget(viewer)
    assert widget.run() is None
    assert len(errors["error"]) == 1 and "layer 'stack' has scale (-2.0, 1.0, 1.0)" in errors["error"][0]
    assert "must be a finite positive number" in errors["error"][0]
    assert core_calls == []


def test_z_stitch_threshold_is_shown_only_when_planes_are_stitched(viewer):
    def stitch_shown(widget) -> bool:
        return not widget.stitch_threshold.native.isHidden()

    viewer.add_image(make_blobs((32, 32))[0], name="plane")
    widget = SegmentWidget(viewer)
    assert not stitch_shown(widget)  # a 2D image: nothing to stitch
    stack = viewer.add_image(_stack(6), name="stack")
    widget.image_combo.set_layer(stack)
    assert widget.stack_mode.value == "auto" and not stitch_shown(widget)  # auto runs 6 planes in 3D
    widget.stack_mode.value = "stitch"
    assert stitch_shown(widget)
    widget.current_slice.value = True  # one plane: nothing to link
    assert not stitch_shown(widget)
    widget.current_slice.value = False
    widget.stack_mode.value = "auto"
    thin = viewer.add_image(_stack(3), name="thin")  # fewer planes than the 3D mode needs: auto stitches
    widget.image_combo.set_layer(thin)
    assert stitch_shown(widget)
