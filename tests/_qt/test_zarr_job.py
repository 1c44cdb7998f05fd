"""napari and big data: the OME-Zarr reader and the "Segment whole volume to zarr…" button."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")
ome_writer = pytest.importorskip("ome_zarr.writer")

from cellrefine._qt import zarr_job  # noqa: E402
from cellrefine._qt.segment_widget import SegmentWidget  # noqa: E402
from cellrefine._qt.session import get_session  # noqa: E402

from .conftest import finish  # noqa: E402


def _discs(shape=(160, 160), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 0.1, np.float32)
    for y in range(16, shape[0], 32):  # rows of discs, some across the 64-px block faces
        for x in range(16, shape[1], 32):
            image[(yy - y - rng.integers(-3, 4)) ** 2 + (xx - x - rng.integers(-3, 4)) ** 2 <= 7**2] = 1.0
    return np.clip(image + 0.05 * rng.standard_normal(shape), 0, 2).astype(np.float32)


@pytest.fixture
def synchronous_dask():
    """napari reads lazy layers through dask: its synchronous scheduler leaves no thread pool behind (checked by conftest)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture
def ome_image(tmp_path, synchronous_dask):
    """An OME-Zarr image (2 resolution levels, pixel size 0.5) written by the ome-zarr package."""
    path = tmp_path / "img.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    ome_writer.write_image((_discs() * 1000).astype(np.uint16), group, axes="yx", scale_factors=(2,), scale={"y": 0.5, "x": 0.5})
    return path


def test_reader_opens_ome_zarr_lazily_with_axes_and_scale(ome_image, tmp_path):
    assert zarr_job.get_reader(str(ome_image)) is zarr_job.read_zarr
    assert zarr_job.get_reader(str(tmp_path / "image.tif")) is None
    ((data, meta, kind),) = zarr_job.read_zarr(str(ome_image))
    assert kind == "image" and meta["multiscale"] and len(data) == 2
    assert type(data[0]).__name__ == "Array" and data[0].shape == (160, 160)  # dask: nothing read yet
    assert meta["metadata"]["cellrefine_axes"] == "YX" and meta["scale"] == (0.5, 0.5)


def test_segment_whole_volume_button_writes_zarr_and_opens_labels_lazily(
    qtbot, make_napari_viewer, pointwise_model, ome_image, tmp_path, monkeypatch, synchronous_dask
):
    import cellrefine as cr

    viewer = make_napari_viewer()
    get_session(viewer).set_model(pointwise_model)
    (image,) = viewer.open(str(ome_image), plugin="napari-cellrefine")
    assert image.multiscale and image.metadata["cellrefine_axes"] == "YX"
    widget = SegmentWidget(viewer)
    output = tmp_path / "labels.zarr"
    monkeypatch.setattr(zarr_job, "ask_output_path", lambda parent, suggestion: str(output))  # the file dialog

    widget.volume_button.click()
    worker = widget.controls.worker
    finish(qtbot, worker, timeout=120_000)

    layer = viewer.layers["img cells"]
    assert type(layer.data).__name__ == "Array"  # opened lazily from the store (dask)
    assert layer.data.shape == (160, 160)
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    labels = layer.data.compute(scheduler="synchronous")  # no dask thread pool left behind
    expected = cr.segment(np.asarray(zarr.open_group(str(ome_image), mode="r")["s0"]), pointwise_model, axes="YX").instances
    scores = cr.metrics.match_instances(expected, labels, 0.9)
    assert scores["n_true"] >= 20 and scores["precision"] >= 0.99 and scores["recall"] >= 0.99
    assert "objects in" in widget.controls.status.text() and widget.controls.unit == "tiles"
    assert widget.controls.run_button.isEnabled()

    # the output store opens in napari through the reader, as an NGFF labels image
    ((data, meta, kind),) = zarr_job.read_zarr(str(output))
    assert kind == "labels" and meta["name"] == "labels cells"
    np.testing.assert_array_equal(data.compute(scheduler="synchronous"), labels)


def test_labels_layer_data_follows_the_image_axes():
    import dask.array as da

    labels = da.zeros((4, 5, 6), dtype=np.uint32)
    assert zarr_job.labels_layer_data(labels, "ZYX", "ZCYX").shape == (4, 5, 6)
    assert zarr_job.labels_layer_data(labels[0], "YX", "ZYX").shape == (1, 5, 6)  # a length-1 Z dropped by the writer, put back
    assert zarr_job.labels_layer_data(labels, "ZYX", "YXZ").shape == (5, 6, 4)


def test_stop_keeps_finished_blocks_and_running_again_resumes(qtbot, make_napari_viewer, pointwise_model, tmp_path, synchronous_dask):
    viewer = make_napari_viewer()
    get_session(viewer).set_model(pointwise_model)
    viewer.add_image(np.tile(_discs(), (2, 2)), name="big")  # 320², 25 blocks of 64 px
    widget = SegmentWidget(viewer)
    output = str(tmp_path / "big.zarr")

    worker = zarr_job.start_volume_job(widget, output, block_size=64, pyramid_levels=1)
    with qtbot.waitSignal(worker.yielded, timeout=60_000):  # the first block is done
        pass
    widget.controls.stop()
    finish(qtbot, worker, timeout=60_000)
    assert widget.controls.progress.format() == "cancelled" and "big cells" not in viewer.layers

    worker = zarr_job.start_volume_job(widget, output, block_size=64, pyramid_levels=1)
    finish(qtbot, worker, timeout=120_000)
    resumed = int(widget.controls.status.text().split("(")[1].split()[0])
    assert 1 <= resumed < 25
    layer = viewer.layers["big cells"]
    assert layer.multiscale and [level.shape for level in layer.data] == [(320, 320), (160, 160)]  # lazy, with its pyramid
