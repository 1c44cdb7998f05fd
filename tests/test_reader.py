"""Tests for cellrefine.reader: input checks, the one grey + normalise path, chunked reading."""

import numpy as np
import pytest

from cellrefine.normalize import normalize
from cellrefine.reader import LazyView, PlaneReader, average_channels, check_image, normalised_plane


def test_check_image_passes_arrays_through_and_converts_lists():
    image = np.zeros((4, 5), np.uint8)
    assert check_image(image) is image
    converted = check_image([[1, 2], [3, 4]])
    assert isinstance(converted, np.ndarray) and converted.shape == (2, 2)
    with pytest.raises(TypeError, match="complex"):
        check_image(np.zeros((2, 2), complex))
    with pytest.raises(ValueError, match="empty"):
        check_image(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="2 to 5 axes"):
        check_image(np.zeros(3))


def test_grey_plane_equals_percentile_normalisation():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 4000, size=(40, 50)).astype(np.uint16)
    np.testing.assert_array_equal(normalised_plane(grey), normalize(grey)[None])
    rgba = rng.integers(0, 255, size=(40, 50, 4)).astype(np.uint8)
    expected = normalize(rgba[..., :3].astype(np.float32).mean(axis=-1))[None]  # alpha dropped
    np.testing.assert_allclose(normalised_plane(rgba), expected, rtol=1e-6, atol=1e-6)
    assert normalised_plane(rgba).dtype == np.float32 and normalised_plane(rgba).shape == (1, 40, 50)


def test_average_channels_drops_alpha_on_any_axis():
    rgba = np.stack([np.full((3, 4), v, np.uint8) for v in (10, 20, 60, 255)])
    np.testing.assert_array_equal(average_channels(rgba, axis=0), np.full((1, 3, 4), 30, np.float32))
    two = np.stack([np.zeros((3, 4)), np.ones((3, 4))], axis=-1)
    np.testing.assert_array_equal(average_channels(two, axis=-1), np.full((3, 4, 1), 0.5, np.float32))


def test_normalised_plane_wants_one_plane():
    with pytest.raises(ValueError, match="one 2D image"):
        normalised_plane(np.zeros((3, 8, 8), np.float32), "ZYX")


def test_plane_never_modifies_the_input():
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    original = image.copy()
    plane = PlaneReader(image, "YX").plane(0, 0)
    np.testing.assert_array_equal(image, original)
    assert not np.shares_memory(plane, image)


class _CountingArray:
    """numpy-indexable array (no transpose/reshape, like zarr) that counts reads, chunked 4 planes deep."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim, self.chunks = data, data.shape, data.dtype, data.ndim, (4,) + data.shape[1:]
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return self.data[key]


@pytest.mark.parametrize(("max_block_bytes", "block_reads"), [(2**20, 2), (100, 8)])
def test_max_block_bytes_bounds_the_planes_read_together(max_block_bytes, block_reads):
    volume = np.random.default_rng(0).random((8, 16, 16)).astype(np.float32)
    source = _CountingArray(volume)
    reader = PlaneReader(source, "ZYX", max_block_bytes=max_block_bytes)
    assert isinstance(reader.view, LazyView) and reader.max_block_bytes == max_block_bytes
    source.reads = 0
    planes = [reader.plane(0, z) for z in range(8)]
    assert source.reads == block_reads  # one read per 4-plane chunk, or one per plane when a chunk is over the limit
    expected = PlaneReader(volume, "ZYX")
    for z, plane in enumerate(planes):
        np.testing.assert_array_equal(plane, expected.plane(0, z))


# ----------------------------------------------------------------------------- torch tensors and odd objects (issue 11)


def test_torch_tensor_is_converted():
    torch = pytest.importorskip("torch")
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    for tensor in (torch.from_numpy(values), torch.from_numpy(values).requires_grad_(True), torch.from_numpy(values).to(torch.bfloat16)):
        image = check_image(tensor)
        assert isinstance(image, np.ndarray) and image.dtype == np.float32
        np.testing.assert_array_equal(image, values)
    assert check_image(torch.zeros((2, 3), dtype=torch.uint8)).dtype == np.uint8
    assert check_image(torch.zeros((2, 3), dtype=torch.bool)).dtype == np.bool_


def test_torch_tensor_segments_like_numpy(pointwise_model, blobs):
    torch = pytest.importorskip("torch")
    from cellrefine import segment

    image, _ = blobs
    from_numpy = segment(image, model=pointwise_model, device="cpu").instances
    from_torch = segment(torch.from_numpy(image).requires_grad_(True), model=pointwise_model, device="cpu").instances
    np.testing.assert_array_equal(from_torch, from_numpy)
    assert from_torch.max() == 6


@pytest.mark.parametrize(
    ("candidate", "error", "match"),
    [
        (None, TypeError, "image must be an array of numbers .* got NoneType"),
        ({"a": 1}, TypeError, "got dict"),
        ("image.tif", TypeError, r"image must be numeric .* got dtype <U9"),
        ([[1, 2], [3]], ValueError, r"image could not be read as an array \(list: .*\); pass a numpy array with 2 to 5 axes"),
        (np.zeros((2, 2), "datetime64[s]"), TypeError, "image must be numeric"),
        (np.zeros((2, 2), "V4"), TypeError, "image must be numeric"),
    ],
)
def test_check_image_refuses_non_images_clearly(candidate, error, match):
    with pytest.raises(error, match=match):
        check_image(candidate)


def test_check_image_refuses_complex_and_dataless_tensors():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"complex images are not supported \(torch dtype torch.complex64\)"):
        check_image(torch.zeros((2, 2), dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"cannot use this torch tensor \(dtype torch.float32, device meta\)"):
        check_image(torch.empty((2, 2), device="meta"))


def test_constant_image_warns_once_and_reads_zeros():
    from cellrefine.normalize import BlankImageWarning

    with pytest.warns(BlankImageWarning, match=r"every pixel is 3") as record:
        reader = PlaneReader(np.full((3, 8, 8), 3, np.uint8), "ZYX")
    assert len(record) == 1
    for z in range(3):
        np.testing.assert_array_equal(reader.plane(0, z), np.zeros((1, 8, 8), np.float32))
