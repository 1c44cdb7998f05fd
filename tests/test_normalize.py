"""Tests for cellrefine.normalize: percentiles, blank images, dtypes, per-plane scaling."""

import warnings

import numpy as np
import pytest

from cellrefine.normalize import normalize, percentile_range, to_float32


def test_percentile_range_known_values():
    ramp = np.arange(101, dtype=np.float64)  # value == percentile
    assert percentile_range(ramp) == pytest.approx((1.0, 99.8))
    assert percentile_range(ramp, 0, 100) == (0.0, 100.0)
    assert percentile_range(ramp, 10, 90) == pytest.approx((10.0, 90.0))


def test_percentile_range_ignores_non_finite():
    values = np.array([np.nan, 1.0, 2.0, np.inf, 3.0, -np.inf])
    assert percentile_range(values, 0, 100) == (1.0, 3.0)


@pytest.mark.parametrize(("low", "high"), [(50, 50), (60, 40), (-1, 99), (1, 101)])
def test_percentile_range_rejects_bad_percentiles(low, high):
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        percentile_range(np.arange(10), low, high)


def test_normalize_maps_percentiles_to_zero_and_one():
    ramp = np.arange(101, dtype=np.float64).reshape(1, 101)
    out = normalize(ramp, 0, 100)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ramp / 100, atol=1e-7)
    # default percentiles: 1 -> 0 and 99.8 -> 1, linear in between (values outside are not clipped)
    out = normalize(ramp)
    np.testing.assert_allclose(out, (ramp - 1) / 98.8, atol=1e-6)
    assert out.min() < 0 and out.max() > 1


def test_docstring_example():
    out = normalize(np.array([[0, 50], [100, 100]], np.uint8), 0, 100)
    np.testing.assert_array_equal(out, np.array([[0, 0.5], [1, 1]], np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("value", [0, 7])
def test_blank_image_gives_zeros_without_warnings(dtype, value):
    image = np.full((6, 5), value, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(image)
        out_planes = normalize(np.full((2, 6, 5), value, dtype), per_plane=True)
    np.testing.assert_array_equal(out, np.zeros((6, 5), np.float32))
    np.testing.assert_array_equal(out_planes, np.zeros((2, 6, 5), np.float32))


def test_all_nan_image_gives_zeros_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(np.full((4, 4), np.nan))
    np.testing.assert_array_equal(out, np.zeros((4, 4), np.float32))


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [(np.uint8, 0, 255), (np.uint16, 0, 65535), (np.int16, -32768, 32767), (np.float32, -2.5, 7.5), (np.float64, -1e6, 1e6)],
)
def test_all_dtypes_scale_to_unit_range(dtype, low, high):
    image = np.array([[low, high], [low, high]], dtype)
    original = image.copy()
    out = normalize(image, 0, 100)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 1], [0, 1]], atol=1e-6)
    np.testing.assert_array_equal(image, original)  # input not modified
    assert image.dtype == original.dtype
    assert not np.shares_memory(out, image)


def test_bool_image():
    image = np.zeros((4, 4), bool)
    image[:2] = True
    out = normalize(image, 0, 100)
    np.testing.assert_array_equal(out, image.astype(np.float32))


def test_float32_input_is_copied_not_modified():
    rng = np.random.default_rng(0)
    image = rng.random((8, 9), dtype=np.float32) * 100
    original = image.copy()
    out = normalize(image)
    np.testing.assert_array_equal(image, original)
    assert not np.shares_memory(out, image)
    out[...] = -1
    np.testing.assert_array_equal(image, original)


def test_to_float32_blank_range_and_copy():
    image = np.arange(6, dtype=np.float32).reshape(2, 3)
    original = image.copy()
    np.testing.assert_array_equal(to_float32(image, 3.0, 3.0), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(to_float32(image, 5.0, 1.0), np.zeros((2, 3), np.float32))
    np.testing.assert_allclose(to_float32(image, 1.0, 5.0), (original - 1) / 4)
    np.testing.assert_array_equal(image, original)


def test_stack_uses_one_range_unless_per_plane():
    dim = np.tile(np.arange(0, 11, dtype=np.float64), (3, 1))  # 0..10
    bright = 100 + 10 * dim  # 100..200
    stack = np.stack([dim, bright])
    together = normalize(stack, 0, 100)
    np.testing.assert_allclose(together[0], dim / 200, atol=1e-6)
    np.testing.assert_allclose(together[1], bright / 200, atol=1e-6)
    separate = normalize(stack, 0, 100, per_plane=True)
    assert separate.shape == stack.shape
    np.testing.assert_allclose(separate[0], dim / 10, atol=1e-6)
    np.testing.assert_allclose(separate[1], (bright - 100) / 100, atol=1e-6)


def test_per_plane_on_4d_stack():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 1000, size=(2, 3, 5, 6)).astype(np.uint16)
    out = normalize(stack, 0, 100, per_plane=True)
    assert out.shape == stack.shape
    for t in range(2):
        for z in range(3):
            plane = out[t, z]
            assert plane.min() == pytest.approx(0.0) and plane.max() == pytest.approx(1.0)


def test_per_plane_on_2d_is_plain_normalize():
    rng = np.random.default_rng(0)
    image = rng.random((7, 5))
    np.testing.assert_array_equal(normalize(image, per_plane=True), normalize(image))


def test_large_array_is_subsampled_but_exact_for_two_levels():
    image = np.zeros((2100, 2100), np.uint8)  # 4.4 M pixels > the 4 M sample limit
    image[:, 1050:] = 200
    assert percentile_range(image) == (0.0, 200.0)
