"""The fast paths give the answers of the plain ones: fused/bf16 network, balanced tiles,
faster watershed and stitching, overlapped post-processing, chunk-by-chunk dask/zarr reading."""

import collections
import copy
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from cellrefine import inference
from cellrefine.device import cpu_bf16_supported, inference_dtypes
from cellrefine.inference import iter_segment, segment
from cellrefine.model.unet import NORMALIZATIONS, InferenceUNet, UNet
from cellrefine.postprocess import relabel_sequential, seeded_watershed, stitch_planes
from cellrefine.tiling import (
    argmax_classes,
    default_batch_size,
    default_tile_size,
    inference_network,
    predict_probabilities,
    tile_starts,
    weights_fingerprint,
)


def _randomise_batchnorm(network, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=generator))
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator))
    return network


# ----------------------------------------------------------------------------- the inference network


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_inference_unet_float32_equals_unet(norm):
    torch.manual_seed(0)
    network = _randomise_batchnorm(UNet(depth=2, base_channels=4, norm=norm)).eval()
    x = torch.rand(2, 1, 37, 45)
    fast = network.for_inference(dtype=torch.float32)
    with torch.inference_mode():
        assert torch.allclose(fast(x), network(x), atol=1e-4, rtol=1e-4)
    assert fast.grid == network.grid and fast.halo == network.halo


@pytest.mark.parametrize(("fused", "split"), [(False, False), (True, False), (False, True)])
def test_inference_unet_options_give_the_same_result(fused, split):
    torch.manual_seed(0)
    network = _randomise_batchnorm(UNet(depth=2, base_channels=4)).eval()
    x = torch.rand(1, 1, 40, 48)
    default = network.for_inference(dtype=torch.float32)
    variant = network.for_inference(dtype=torch.float32, fused=fused, split_skip_concat=split)
    assert (variant.fused, variant.split_skip_concat) == (fused, split)
    with torch.inference_mode():
        torch.testing.assert_close(variant(x), default(x), atol=1e-5, rtol=1e-5)


def test_inference_unet_bfloat16_is_close():
    torch.manual_seed(0)
    network = UNet(depth=2, base_channels=4).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        reference = network(x).softmax(dim=1)
        fast = network.for_inference(dtype=torch.bfloat16)(x).float().softmax(dim=1)
    assert (fast - reference).abs().max() < 0.05
    assert (fast.argmax(dim=1) == reference.argmax(dim=1)).float().mean() > 0.97


def test_inference_unet_is_inference_only(tiny_model):
    fast = tiny_model.network.for_inference()
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()
    assert not any(p.requires_grad for p in fast.parameters())
    with pytest.raises(ValueError, match=r"expects \(N, 1, Y, X\)"):
        fast(torch.zeros(1, 2, 8, 8))
    with pytest.raises(TypeError, match="needs a UNet"):
        InferenceUNet(torch.nn.Conv2d(1, 1, 1))


def test_segment_never_modifies_the_model(tiny_model):
    network = _randomise_batchnorm(tiny_model.network)
    network.train()  # a network left in training mode stays so
    before = {k: v.clone() for k, v in network.state_dict().items()}
    layouts = {k: v.stride() for k, v in network.state_dict().items()}
    segment(np.random.default_rng(0).random((2, 40, 40), dtype=np.float32), model=tiny_model, device="cpu", tile_size=16)
    assert network.training
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key
        assert value.stride() == layouts[key], key  # no channels-last conversion in place
        assert value.device.type == "cpu"


def test_weights_changed_after_a_segment_are_used_next_time(tiny_model):
    image = np.random.default_rng(0).random((24, 24), dtype=np.float32)
    first = segment(image, model=tiny_model, device="cpu", return_probabilities=True).probabilities
    with torch.no_grad():
        tiny_model.network.head.bias += torch.tensor([5.0, 0.0, 0.0])
    second = segment(image, model=tiny_model, device="cpu", return_probabilities=True).probabilities
    assert second[0].astype(np.float32).mean() > first[0].astype(np.float32).mean() + 0.1


def test_float32_precision_matches_the_plain_network(tiny_model):
    network = _randomise_batchnorm(tiny_model.network).eval()
    plane = np.random.default_rng(0).random((1, 61, 53), dtype=np.float32)
    with torch.inference_mode():
        plain = network(torch.from_numpy(np.pad(plane, ((0, 0), (network.halo,) * 2, (network.halo,) * 2), mode="reflect"))[None])
    plain = plain.softmax(dim=1)[0, :, network.halo : -network.halo, network.halo : -network.halo].numpy()
    fast = predict_probabilities(network, plane, tile_size=16, precision="float32")
    assert np.abs(fast - plain).max() < 1e-5


def test_default_precision_is_close_to_float32(tiny_model):
    _randomise_batchnorm(tiny_model.network)
    image = np.random.default_rng(0).random((50, 60), dtype=np.float32)
    exact = segment(image, model=tiny_model, device="cpu", precision="float32", return_probabilities=True)
    fast = segment(image, model=tiny_model, device="cpu", return_probabilities=True)
    assert np.abs(exact.probabilities.astype(np.float32) - fast.probabilities.astype(np.float32)).max() < 0.05
    assert (exact.semantic == fast.semantic).mean() > 0.97


def test_bfloat16_tiling_stays_consistent(tiny_model):
    network = _randomise_batchnorm(tiny_model.network).eval()
    plane = np.random.default_rng(0).random((1, 70, 90), dtype=np.float32)
    whole = predict_probabilities(network, plane, tile_size=1024, precision="bfloat16")
    tiled = predict_probabilities(network, plane, tile_size=16, batch_size=3, precision="bfloat16")
    assert np.abs(whole - tiled).max() < 1e-2
    assert (whole.argmax(axis=0) == tiled.argmax(axis=0)).mean() > 0.999


def test_precision_is_validated(tiny_model):
    with pytest.raises(ValueError, match="precision must be one of"):
        segment(np.zeros((8, 8), np.float32), model=tiny_model, device="cpu", precision="half")


def test_auto_precision_on_the_cpu():
    weights, amp = inference_dtypes(torch.device("cpu"), "auto")
    assert amp is None
    assert weights == (torch.bfloat16 if cpu_bf16_supported() else torch.float32)
    assert inference_dtypes(torch.device("cpu"), "float32") == (torch.float32, None)


def test_custom_forward_runs_as_is(pointwise_model, tiny_model, monkeypatch):
    network, _ = inference_network(pointwise_model.network, torch.device("cpu"))
    assert network is pointwise_model.network
    fast, _ = inference_network(tiny_model.network, torch.device("cpu"))
    assert isinstance(fast, InferenceUNet)
    monkeypatch.setattr(tiny_model.network, "forward", lambda x: x)
    patched, _ = inference_network(tiny_model.network, torch.device("cpu"))
    assert patched is tiny_model.network


# ----------------------------------------------------------------------------- tiles


@pytest.mark.parametrize(
    ("length", "tile", "grid"), [(40, 16, 4), (2048, 1024, 8), (2048, 1536, 8), (2056, 1024, 8), (696, 2048, 8), (8, 8, 8), (1000, 64, 8)]
)
def test_tiles_are_balanced(length, tile, grid):
    starts, size = tile_starts(length, tile, grid)
    assert size <= max(tile, grid) and size % grid == 0 or size == length
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= size for a, b in zip(starts, starts[1:]))  # covered, no gaps
    assert len(starts) == -(-length // tile)  # as few tiles as the size limit allows


def test_tiles_on_the_cpu(tiny_model):
    assert default_tile_size(torch.device("cpu")) == 768
    assert tile_starts(2048, 768, 8) == ([0, 688, 1360], 688)
    assert tile_starts(2048, 1024, 8) == ([0, 1024], 1024)
    starts, size = tile_starts(2048, 1536, 8)
    assert (starts, size) == ([0, 1024], 1024)  # two equal tiles, not 1536 + a mostly overlapping one


# ----------------------------------------------------------------------------- post-processing


def _plateau_probabilities(seed=0, shape=(80, 90)):
    rng = np.random.default_rng(seed)
    logits = ndi.gaussian_filter(rng.normal(size=(3,) + shape), (0, 3, 3)) * 8
    logits = np.round(logits, 1)  # plateaus: ties in the flooding order
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    return probabilities.astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_seeded_watershed_equals_skimage(seed):
    from skimage.segmentation import watershed

    probabilities = _plateau_probabilities(seed)
    mask = probabilities[0] < 0.5
    seeds, _ = ndi.label((probabilities[1] > 0.4) & mask)
    expected = watershed(probabilities[2], markers=seeds, mask=mask)
    np.testing.assert_array_equal(seeded_watershed(probabilities[2], seeds, mask), expected)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.uint32, np.int64])
def test_relabel_sequential_large_and_small_ids(dtype):
    rng = np.random.default_rng(0)
    for high in (20, 2**30):
        labels = rng.choice(np.array([0, 3, 7, high - 1], dtype=np.int64), size=(30, 40)).astype(dtype) if high < np.iinfo(dtype).max else None
        if labels is None:
            continue
        out, n = relabel_sequential(labels, offset=5)
        ids = np.unique(labels[labels > 0])
        expected = np.zeros(labels.shape, np.uint32)
        for k, old in enumerate(ids):
            expected[labels == old] = 5 + k
        np.testing.assert_array_equal(out, expected)
        assert n == len(ids) and out.dtype == np.uint32


def test_stitch_planes_in_place_equals_a_new_array():
    rng = np.random.default_rng(0)
    stack = np.stack([ndi.label(ndi.gaussian_filter(rng.random((40, 40)), 2) > 0.5)[0] for _ in range(5)]).astype(np.uint32)
    stack[2] = np.roll(stack[1], 1, axis=0)  # overlapping objects get linked
    expected = stitch_planes(stack.copy())
    in_place = stack.copy()
    assert stitch_planes(in_place, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, expected)
    ids = np.unique(expected)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))  # sequential 0..n


def test_overlapped_postprocessing_equals_serial(pointwise_model, blobs):
    image, _ = blobs
    stack = np.stack([image, image[::-1], image[:, ::-1], image])
    serial = segment(stack, model=pointwise_model, axes="ZYX", device="cpu", overlap_postprocess=False)
    overlapped = segment(stack, model=pointwise_model, axes="ZYX", device="cpu", overlap_postprocess=True)
    np.testing.assert_array_equal(overlapped.instances, serial.instances)
    np.testing.assert_array_equal(overlapped.semantic, serial.semantic)


def test_closing_mid_stack_stops_the_postprocessing_thread(tiny_model):
    before = {t.name for t in threading.enumerate()}
    generator = iter_segment(np.zeros((4, 40, 40), np.float32), tiny_model, axes="ZYX", device="cpu", tile_size=16)
    for _ in range(12):  # into the second plane: the first one's watershed is in flight
        next(generator)
    generator.close()
    assert {t.name for t in threading.enumerate()} - before == set()


def test_postprocess_error_in_the_thread_is_raised(pointwise_model, blobs, monkeypatch):
    image, _ = blobs

    def broken(*args, **kwargs):
        raise RuntimeError("watershed failed")

    monkeypatch.setattr(inference, "probabilities_to_instances", broken)
    with pytest.raises(RuntimeError, match="watershed failed"):
        segment(np.stack([image, image]), model=pointwise_model, axes="ZYX", device="cpu")


# ----------------------------------------------------------------------------- chunked inputs


def _counting_dask(volume, chunk):
    da = pytest.importorskip("dask.array")
    counts = collections.Counter()

    def load(block_id=None):
        counts[block_id[0]] += 1
        return volume[block_id[0] * chunk : (block_id[0] + 1) * chunk]

    chunks = ((chunk,) * (volume.shape[0] // chunk),) + tuple((n,) for n in volume.shape[1:])
    return da.map_blocks(load, dtype=volume.dtype, chunks=chunks), counts


def test_dask_chunks_are_computed_once_per_use(pointwise_model, blobs):
    image, _ = blobs
    volume = np.stack([image, image[::-1], image[:, ::-1], image] * 2)
    lazy, counts = _counting_dask(volume, 4)
    result = segment(lazy, model=pointwise_model, axes="ZYX", device="cpu")
    np.testing.assert_array_equal(result.instances, segment(volume, model=pointwise_model, axes="ZYX", device="cpu").instances)
    # once for the stack-wide percentile subsample, once for the planes (not once per plane)
    assert set(counts) == {0, 1} and max(counts.values()) <= 2


def test_dask_planes_subset_reads_only_their_chunks(pointwise_model, blobs):
    image, _ = blobs
    volume = np.stack([image] * 8)
    lazy, counts = _counting_dask(volume, 2)
    segment(lazy, model=pointwise_model, axes="ZYX", device="cpu", planes=[(0, 5)])
    stats_reads = {k: v for k, v in counts.items()}
    assert stats_reads[2] <= 2 and all(v <= 1 for k, v in stats_reads.items() if k != 2)


def test_zarr_input_matches_numpy(pointwise_model, blobs):
    zarr = pytest.importorskip("zarr")
    image, _ = blobs
    volume = (np.stack([image, image[::-1], image[:, ::-1]]) * 1000).astype(np.uint16)
    store = (
        zarr.create_array(store={}, shape=volume.shape, chunks=(2, 32, 64), dtype=volume.dtype)
        if hasattr(zarr, "create_array")
        else zarr.zeros(volume.shape, chunks=(2, 32, 64), dtype=volume.dtype)
    )
    store[:] = volume
    expected = segment(volume, model=pointwise_model, axes="ZYX", device="cpu", return_probabilities=True)
    result = segment(store, model=pointwise_model, axes="ZYX", device="cpu", return_probabilities=True)
    np.testing.assert_array_equal(result.instances, expected.instances)
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)
    transposed = segment(np.ascontiguousarray(volume.transpose(1, 2, 0)), model=pointwise_model, axes="YXZ", device="cpu")
    store_t = (
        zarr.create_array(store={}, shape=transposed.instances.shape, chunks=(32, 64, 1), dtype=volume.dtype)
        if hasattr(zarr, "create_array")
        else None
    )
    if store_t is not None:
        store_t[:] = volume.transpose(1, 2, 0)
        np.testing.assert_array_equal(segment(store_t, model=pointwise_model, axes="YXZ", device="cpu").instances, transposed.instances)


def test_semantic_argmax_by_comparisons_breaks_ties_like_argmax():
    rng = np.random.default_rng(0)
    probabilities = rng.integers(0, 3, size=(3, 50, 60)).astype(np.float32)  # many ties
    out = np.empty((50, 60), np.uint8)
    argmax_classes(probabilities, out)
    np.testing.assert_array_equal(out, probabilities.argmax(axis=0))
    four = rng.random((4, 10, 10)).astype(np.float32)
    out = np.empty((10, 10), np.uint8)
    argmax_classes(four, out)
    np.testing.assert_array_equal(out, four.argmax(axis=0))


def test_small_planes_are_batched_and_give_the_same_answer(tiny_model, monkeypatch):
    _randomise_batchnorm(tiny_model.network)
    stack = np.random.default_rng(0).random((5, 30, 26), dtype=np.float32)
    shapes = []
    make = inference_network

    def recording(*args, **kwargs):
        network, amp = make(*args, **kwargs)

        class Recorder:
            grid, halo, out_channels = network.grid, network.halo, network.out_channels

            def __call__(self, x):
                shapes.append(tuple(x.shape))
                return network(x)

        return Recorder(), amp

    monkeypatch.setattr(inference, "inference_network", recording)
    progress = []
    batched = segment(
        stack,
        model=tiny_model,
        axes="ZYX",
        device="cpu",
        return_probabilities=True,
        batch_size=8,
        stack_mode="stitch",
        progress=lambda d, t: progress.append((d, t)),
    )
    assert shapes[0][0] == 5  # every plane in one forward pass
    assert progress == [(5, 5)]
    shapes.clear()
    single = segment(stack, model=tiny_model, axes="ZYX", device="cpu", return_probabilities=True, stack_mode="stitch")
    assert [s[0] for s in shapes] == [1] * 5  # the CPU default: one tile per pass
    np.testing.assert_array_equal(batched.instances, single.instances)
    np.testing.assert_allclose(batched.probabilities.astype(np.float32), single.probabilities.astype(np.float32), atol=2e-3)
    two = segment(stack, model=tiny_model, axes="ZYX", device="cpu", batch_size=2, stack_mode="stitch", progress=lambda d, t: progress.append((d, t)))
    assert progress[1:] == [(2, 5), (4, 5), (5, 5)]
    np.testing.assert_array_equal(two.instances, single.instances)


def test_default_batch_size():
    assert default_batch_size(torch.device("cpu"), 640 * 640, 1) == 1
    assert default_batch_size(torch.device("cuda"), 640 * 640, 1) == 4


def test_inference_copy_is_cached_until_the_weights_change(tiny_model):
    cpu = torch.device("cpu")

    def fast():
        return inference_network(tiny_model.network, cpu)[0]

    first = fast()
    assert fast() is first
    with torch.no_grad():
        tiny_model.network.head.bias.add_(1.0)  # in place
    second = fast()
    assert second is not first and fast() is second
    state = {k: v.clone() for k, v in tiny_model.network.state_dict().items()}
    tiny_model.network.load_state_dict(state)  # the same values: the copy is still right
    assert fast() is second
    state["head.bias"] += 1.0
    tiny_model.network.load_state_dict(state)
    third = fast()
    assert third is not second and fast() is third
    tiny_model.network.head = torch.nn.Conv2d(4, 3, 1)  # a replaced layer
    fourth = fast()
    assert fourth is not third and fast() is fourth
    torch.testing.assert_close(
        fourth.head.weight, tiny_model.network.head.weight.detach().to(fourth.head.weight.dtype).contiguous(memory_format=torch.channels_last)
    )
    assert inference_network(tiny_model.network, cpu, "float32")[0].dtype == torch.float32  # another dtype: another copy


def test_inference_copy_follows_a_fused_optimizer_step(tiny_model):
    # fused AdamW writes the weights without bumping Tensor._version: the cache must still see the new weights
    network = _randomise_batchnorm(tiny_model.network).eval()
    plane = np.random.default_rng(0).random((1, 40, 40), dtype=np.float32)
    before = predict_probabilities(network, plane, tile_size=64, device="cpu", precision="float32")
    fingerprint = weights_fingerprint(network)
    optimizer = torch.optim.AdamW(network.parameters(), lr=0.05, fused=True)
    for _ in range(3):
        optimizer.zero_grad()
        logits = network(torch.from_numpy(plane)[None])
        torch.nn.functional.cross_entropy(logits, torch.zeros((1, 40, 40), dtype=torch.long)).backward()
        optimizer.step()
    assert weights_fingerprint(network) != fingerprint
    after = predict_probabilities(network, plane, tile_size=64, device="cpu", precision="float32")
    halo = network.halo
    with torch.inference_mode():
        padded = np.pad(plane, ((0, 0), (halo,) * 2, (halo,) * 2), mode="reflect")
        expected = network(torch.from_numpy(padded)[None]).softmax(dim=1)[0, :, halo:-halo, halo:-halo].numpy()
    assert np.abs(after - expected).max() < 1e-4  # the tuned weights, not the cached parent's
    assert after[0].mean() > before[0].mean() + 0.05  # trained towards background


def test_weights_fingerprint_is_a_content_hash(tiny_model):
    network = tiny_model.network
    fingerprint = weights_fingerprint(network)
    assert len(fingerprint) == 32 and int(fingerprint, 16) >= 0
    twin = copy.deepcopy(network)
    assert weights_fingerprint(twin) == fingerprint  # equal content, another object
    with torch.no_grad():
        twin.head.weight.view(-1)[0] += 1e-6  # one value of one tensor
    assert weights_fingerprint(twin) != fingerprint
    assert weights_fingerprint(copy.deepcopy(network).double()) != fingerprint  # dtype counts
    assert weights_fingerprint(network) == fingerprint  # hashing changes nothing


def test_segment_leaves_the_global_random_state_alone(tiny_model):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    segment(np.random.default_rng(0).random((20, 20), dtype=np.float32), model=tiny_model, device="cpu", precision="float32")
    assert torch.equal(torch.rand(3), expected)
