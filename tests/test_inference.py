"""Tests for cellrefine.inference: overlap-tile equivalence, axes, dtypes, progress and cancellation."""

import numpy as np
import pytest

import cellrefine
from cellrefine.inference import (
    Segmentation,
    SegmentationCancelled,
    SegmentProgress,
    iter_segment,
    segment,
)
from cellrefine.metrics import match_instances
from cellrefine.postprocess import PostprocessSettings, probabilities_to_instances
from cellrefine.tiling import predict_probabilities

# ----------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("tile_size", [16, 32, 50])
def test_tiled_equals_whole_image(tiny_model, tile_size):
    network = tiny_model.network.eval()
    rng = np.random.default_rng(0)
    plane = rng.random((1, 150, 210), dtype=np.float32)
    whole = predict_probabilities(network, plane, tile_size=1024)
    tiled = predict_probabilities(network, plane, tile_size=tile_size)
    assert whole.shape == tiled.shape == (3, 150, 210)
    assert whole.dtype == np.float32
    assert np.abs(whole - tiled).max() < 1e-5


def test_tiling_equivalence_with_trained_like_batchnorm_statistics(tiny_model):
    # non-trivial running statistics: still local in eval mode, so tiling stays exact
    import torch

    generator = torch.Generator().manual_seed(1)
    for module in tiny_model.network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    network = tiny_model.network.eval()
    rng = np.random.default_rng(0)
    plane = rng.random((1, 67, 45), dtype=np.float32)
    whole = predict_probabilities(network, plane, tile_size=1024)
    tiled = predict_probabilities(network, plane, tile_size=16, batch_size=3)
    assert np.abs(whole - tiled).max() < 1e-5


def test_probabilities_sum_to_one(tiny_model):
    rng = np.random.default_rng(0)
    plane = rng.random((1, 33, 21), dtype=np.float32)
    probabilities = predict_probabilities(tiny_model.network.eval(), plane, tile_size=16)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()


# ----------------------------------------------------------------------------- shapes and axes


@pytest.mark.parametrize(
    ("shape", "axes", "expected_shape", "expected_axes"),
    [
        ((20, 24), None, (20, 24), "YX"),
        ((20, 24, 3), None, (20, 24), "YX"),  # RGB
        ((20, 24, 4), "YXC", (20, 24), "YX"),  # RGBA
        ((2, 20, 24), "CYX", (20, 24), "YX"),
        ((3, 20, 24), None, (3, 20, 24), "ZYX"),
        ((2, 20, 24), "TYX", (2, 20, 24), "TYX"),
        ((2, 2, 2, 20, 24), None, (2, 2, 20, 24), "TZYX"),  # TZCYX
        ((20, 3, 24), "YZX", (20, 3, 24), "YZX"),
        ((5, 7), None, (5, 7), "YX"),
        ((1, 1), None, (1, 1), "YX"),
    ],
)
def test_segment_shapes_and_dtypes(tiny_model, shape, axes, expected_shape, expected_axes):
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    result = segment(image, model=tiny_model, axes=axes, device="cpu", return_probabilities=True)
    assert isinstance(result, Segmentation)
    assert result.semantic.shape == expected_shape and result.semantic.dtype == np.uint8
    assert result.instances.shape == expected_shape and result.instances.dtype == np.uint32
    assert result.probabilities.shape == (3,) + expected_shape and result.probabilities.dtype == np.float16
    assert result.axes == expected_axes
    assert result.device == "cpu"
    assert result.semantic.flags.c_contiguous and result.instances.flags.c_contiguous
    np.testing.assert_allclose(result.probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    # semantic is the arg-max class (checked where float16 rounding leaves no tie)
    top_two = np.sort(result.probabilities, axis=0)[-2:]
    unique = top_two[1] > top_two[0]
    np.testing.assert_array_equal(result.semantic[unique], result.probabilities.argmax(axis=0)[unique])


def test_no_probabilities_by_default(tiny_model):
    result = segment(np.zeros((8, 8), np.uint8), model=tiny_model, device="cpu")
    assert result.probabilities is None
    with pytest.raises(ValueError, match="return_probabilities=True"):
        result.postprocess(min_size=3)


def test_lazy_public_api_is_the_same_function():
    assert cellrefine.segment is segment
    assert cellrefine.Segmentation is Segmentation
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cellrefine.nope  # noqa: B018


def test_pointwise_model_segments_blobs(pointwise_model, blobs):
    image, truth = blobs
    result = segment(image, model=pointwise_model, device="cpu")
    scores = match_instances(truth, result.instances, 0.9)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (6, 0, 0)
    assert sorted(np.unique(result.instances).tolist()) == list(range(7))


def test_rgb_and_channel_first_use_the_channel_mean(pointwise_model, blobs):
    image, _ = blobs
    grey = segment(image, model=pointwise_model, device="cpu")
    rgb = np.stack([image * 0.5, image, image * 1.5], axis=-1)  # mean == image
    rgba = np.concatenate([rgb, np.full(image.shape + (1,), 99.0, np.float32)], axis=-1)  # alpha dropped
    for array, axes in ((rgb, None), (rgb.transpose(2, 0, 1), "CYX"), (rgba, "YXC")):
        result = segment(array, model=pointwise_model, axes=axes, device="cpu")
        np.testing.assert_array_equal(result.instances, grey.instances)


def test_stack_z_links_and_t_is_independent(pointwise_model, blobs):
    image, _ = blobs
    single = segment(image, model=pointwise_model, device="cpu").instances
    stack = np.stack([image] * 3)
    z = segment(stack, model=pointwise_model, axes="ZYX", device="cpu").instances
    for plane in z:  # the same object on each Z plane is one 3D object
        np.testing.assert_array_equal(plane, single)
    t = segment(stack, model=pointwise_model, axes="TYX", device="cpu").instances
    np.testing.assert_array_equal(t[0], single)
    for k in (1, 2):  # frames are independent: ids offset to stay unique
        np.testing.assert_array_equal(t[k], np.where(single > 0, single + 6 * k, 0))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_all_dtypes_give_the_same_result(pointwise_model, blobs, dtype):
    image, _ = blobs
    values = np.clip(np.round(image * 100), 0, None).astype(np.int64)  # 0..~115, representable in every dtype
    reference = segment(values.astype(np.float64), model=pointwise_model, device="cpu", return_probabilities=True)
    array = values.astype(dtype)
    original = array.copy()
    result = segment(array, model=pointwise_model, device="cpu", return_probabilities=True)
    np.testing.assert_array_equal(array, original)  # input not modified
    np.testing.assert_array_equal(result.instances, reference.instances)
    np.testing.assert_array_equal(result.probabilities, reference.probabilities)
    assert result.instances.max() == 6


def test_shifted_and_scaled_intensity_gives_same_result(pointwise_model, blobs):
    image, _ = blobs
    a = segment(image, model=pointwise_model, device="cpu").instances
    b = segment(image * 300 + 1000, model=pointwise_model, device="cpu").instances
    np.testing.assert_array_equal(a, b)


def test_input_not_modified(tiny_model):
    rng = np.random.default_rng(0)
    for image in (rng.random((2, 3, 16, 20), dtype=np.float32), rng.integers(0, 4000, (16, 20, 3)).astype(np.uint16)):
        original = image.copy()
        segment(image, model=tiny_model, device="cpu", tile_size=8)
        np.testing.assert_array_equal(image, original)


def test_bool_image(pointwise_model):
    image = np.zeros((16, 16), bool)
    image[4:12, 4:12] = True
    result = segment(image, model=pointwise_model, device="cpu", postprocess={"min_size": 1})
    assert result.instances.max() == 1
    assert (result.instances > 0).sum() == 64


def test_tile_size_does_not_change_the_result(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.random((45, 38), dtype=np.float32)
    a = segment(image, model=tiny_model, device="cpu", tile_size=1024, return_probabilities=True)
    b = segment(image, model=tiny_model, device="cpu", tile_size=16, batch_size=2, return_probabilities=True)
    assert np.abs(a.probabilities.astype(np.float32) - b.probabilities.astype(np.float32)).max() <= 1e-3


# ----------------------------------------------------------------------------- post-processing


def test_postprocess_reruns_without_the_network(pointwise_model, blobs, monkeypatch):
    image, _ = blobs
    result = segment(image, model=pointwise_model, device="cpu", return_probabilities=True)
    assert result.instances.max() == 6

    def broken(*args, **kwargs):
        raise AssertionError("the network must not run during post-processing")

    monkeypatch.setattr(pointwise_model.network, "forward", broken)
    same = result.postprocess()
    np.testing.assert_array_equal(same.instances, result.instances)
    none = result.postprocess(min_size=200)  # every disc is ~113 pixels
    assert none.instances.max() == 0
    assert none.settings.min_size == 200
    assert result.settings.min_size == PostprocessSettings().min_size  # original untouched
    np.testing.assert_array_equal(none.semantic, result.semantic)
    expected = probabilities_to_instances(result.probabilities.astype(np.float32), min_size=110)
    np.testing.assert_array_equal(result.postprocess(min_size=110).instances, expected)
    with pytest.raises(ValueError, match="seed_threshold must be in"):
        result.postprocess(seed_threshold=2.0)


def test_postprocess_on_stack(pointwise_model, blobs, monkeypatch):
    image, _ = blobs
    result = segment(np.stack([image, image]), model=pointwise_model, axes="TYX", device="cpu", return_probabilities=True)
    monkeypatch.setattr(pointwise_model.network, "forward", None)
    again = result.postprocess()
    np.testing.assert_array_equal(again.instances, result.instances)
    assert again.instances.shape == (2, 64, 64)


def test_postprocess_settings_as_dict(pointwise_model, blobs):
    image, _ = blobs
    result = segment(image, model=pointwise_model, device="cpu", postprocess={"min_size": 200})
    assert result.instances.max() == 0
    assert result.settings == PostprocessSettings(min_size=200)


# ----------------------------------------------------------------------------- progress and cancellation


def test_progress_callback_counts_tiles(tiny_model):
    calls = []
    image = np.random.default_rng(0).random((2, 40, 40), dtype=np.float32)
    segment(image, model=tiny_model, axes="ZYX", device="cpu", tile_size=16, progress=lambda done, total: calls.append((done, total)))
    # 40 px -> padded to 40 -> tiles start at 0, 16, 24: 3 x 3 tiles per plane, 2 planes
    assert len(calls) == 18
    assert {total for _, total in calls} == {18}
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and len(set(dones)) == len(dones)
    assert dones[-1] == 18


def test_progress_returning_false_cancels(tiny_model):
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        return done < 2

    with pytest.raises(SegmentationCancelled, match="cancelled after 2 of 9 tiles"):
        segment(np.zeros((40, 40), np.float32), model=tiny_model, device="cpu", tile_size=16, progress=stop_after_two)
    assert calls == [1, 2]
    assert issubclass(cellrefine.SegmentationCancelled, RuntimeError)


def test_progress_returning_none_does_not_cancel(tiny_model):
    result = segment(np.zeros((20, 20), np.float32), model=tiny_model, device="cpu", tile_size=8, progress=lambda d, t: None)
    assert result.instances.shape == (20, 20)


def test_tqdm_like_progress(tiny_model):
    class Bar:
        def __init__(self):
            self.total = None
            self.n = 0
            self.steps = []

        def update(self, n):
            self.n += n
            self.steps.append(n)

    bar = Bar()
    segment(np.zeros((40, 40), np.float32), model=tiny_model, device="cpu", tile_size=16, batch_size=2, progress=bar)
    assert bar.total == 9
    assert bar.n == 9
    assert all(step > 0 for step in bar.steps)


def test_real_tqdm(tiny_model):
    tqdm = pytest.importorskip("tqdm").tqdm
    import io

    with tqdm(total=0, file=io.StringIO()) as bar:
        segment(np.zeros((40, 40), np.float32), model=tiny_model, device="cpu", tile_size=16, progress=bar)
        assert bar.total == 9 and bar.n == 9


def test_iter_segment_yields_progress_and_returns_segmentation(tiny_model):
    generator = iter_segment(np.zeros((40, 40), np.float32), tiny_model, device="cpu", tile_size=16, batch_size=4)
    updates = []
    with pytest.raises(StopIteration) as stop:
        while True:
            updates.append(next(generator))
    assert all(isinstance(u, SegmentProgress) for u in updates)
    assert [u.done for u in updates] == [4, 8, 9]
    assert updates[-1].plane == (0, 0) and updates[-1].seconds >= 0
    assert isinstance(stop.value.value, Segmentation)


def test_iter_segment_can_be_closed_early(tiny_model, monkeypatch):
    calls = []
    forward = tiny_model.network.forward

    def counting(x):
        calls.append(x.shape)
        return forward(x)

    monkeypatch.setattr(tiny_model.network, "forward", counting)
    generator = iter_segment(np.zeros((3, 40, 40), np.float32), tiny_model, device="cpu", tile_size=16)
    first = next(generator)
    assert (first.done, first.total) == (1, 27)
    generator.close()
    assert len(calls) == 1
    with pytest.raises(StopIteration):
        next(generator)
    assert len(calls) == 1
    # the model is still usable afterwards
    assert segment(np.zeros((8, 8), np.float32), model=tiny_model, device="cpu").instances.shape == (8, 8)


def test_planes_restricts_prediction(pointwise_model, blobs):
    image, _ = blobs
    stack = np.stack([image, image, image])
    progress = []
    result = segment(stack, model=pointwise_model, axes="ZYX", device="cpu", planes=[(0, 1)], progress=lambda d, t: progress.append((d, t)))
    full = segment(stack, model=pointwise_model, axes="ZYX", device="cpu")  # same stack-wide normalisation
    np.testing.assert_array_equal(result.instances[1], full.instances[1])
    np.testing.assert_array_equal(result.semantic[1], full.semantic[1])
    assert result.instances.max() == 6
    assert not result.instances[0].any() and not result.instances[2].any()
    assert not result.semantic[0].any() and not result.semantic[2].any()
    assert progress[-1] == (1, 1)


def test_planes_out_of_range(tiny_model):
    with pytest.raises(ValueError, match=r"plane index \(0, 3\) is outside the stack \(T=1, Z=3\)"):
        segment(np.zeros((3, 8, 8), np.float32), model=tiny_model, device="cpu", planes=[(0, 3)])


def test_dask_input_matches_numpy(pointwise_model, blobs):
    da = pytest.importorskip("dask.array")
    image, _ = blobs
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    lazy = da.from_array(stack, chunks=(1, 32, 32))
    expected = segment(stack, model=pointwise_model, axes="TYX", device="cpu", return_probabilities=True)
    result = segment(lazy, model=pointwise_model, axes="TYX", device="cpu", return_probabilities=True)
    assert isinstance(result.instances, np.ndarray)
    np.testing.assert_array_equal(result.instances, expected.instances)
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)
    assert result.instances.max() == 18


def test_dask_input_tiny_model(tiny_model):
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(0)
    image = (rng.random((2, 20, 24, 3)) * 255).astype(np.uint8)
    expected = segment(image, model=tiny_model, device="cpu", return_probabilities=True)
    result = segment(da.from_array(image, chunks=(1, 10, 24, 3)), model=tiny_model, device="cpu", return_probabilities=True)
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)
    assert result.axes == "ZYX"


def test_auto_device_runs_here(tiny_model):
    import torch

    result = segment(np.zeros((8, 8), np.float32), model=tiny_model, device="auto")
    if torch.cuda.is_available():
        assert result.device.startswith("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        assert result.device in ("mps", "cpu")  # MPS only when its probe forward pass works
    else:
        assert result.device == "cpu"


def test_model_must_be_a_model(tiny_model):
    with pytest.raises(TypeError, match="model must be a cellrefine Model"):
        segment(np.zeros((8, 8)), model=tiny_model.network, device="cpu")
