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


def test_to_float32_in_place_only_when_asked_and_float32():
    image = np.arange(6, dtype=np.float32).reshape(2, 3)
    scaled = to_float32(image, 1.0, 5.0, copy=False)
    assert scaled is image
    np.testing.assert_allclose(image, (np.arange(6).reshape(2, 3) - 1) / 4)
    integers = np.arange(6, dtype=np.uint16)
    out = to_float32(integers, 0.0, 5.0, copy=False)  # another dtype: a new array
    assert out.dtype == np.float32 and not np.shares_memory(out, integers)
    np.testing.assert_array_equal(integers, np.arange(6))


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


# ----------------------------------------------------------------------------- sparse objects and blank images (issue 11)


def _nucleus(shape=(512, 512), centre=(200, 300), radius=8, value=3000, dtype=np.uint16):
    """One bright disc on zeros, as after background subtraction: 201 of 262144 pixels (0.08 %)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    return np.where(disc, value, 0).astype(dtype), disc


def test_sparse_bright_object_is_not_erased():
    image, disc = _nucleus()
    assert disc.mean() < 0.002 and tuple(np.percentile(image, (1, 99.8))) == (0, 0)  # the plain percentiles collapse
    assert percentile_range(image) == (0.0, 3000.0)  # the 99.8th percentile of the brighter pixels
    out = normalize(image)
    np.testing.assert_array_equal(out[disc], 1)
    np.testing.assert_array_equal(out[~disc], 0)


def test_sparse_object_range_uses_the_high_percentile_of_the_brighter_pixels():
    image = np.zeros((100, 100), np.float32)
    image[0, :10] = np.arange(1, 11)  # 0.1 % of the pixels, values 1..10
    lo, hi = percentile_range(image, 1, 90)
    assert lo == 0 and hi == pytest.approx(np.percentile(np.arange(1, 11), 90))


def test_sparse_dark_object_on_a_flat_background():
    image = np.full((100, 100), 200, np.uint8)
    image[:2, :2] = 10  # nothing is brighter than the background: the darker pixels give the low end
    assert percentile_range(image) == (10.0, 200.0)
    out = normalize(image)
    assert out[0, 0] == 0 and out[50, 50] == 1


def test_bright_background_value_with_a_few_darker_and_brighter_pixels():
    image = np.full((100, 100), 100, np.uint16)
    image[0, :5] = 3000  # sparse nuclei
    image[1, :3] = 0  # dead pixels
    lo, hi = percentile_range(image)
    assert (lo, hi) == (100.0, 3000.0)  # the background stays 0, the nuclei 1


def test_sparse_nucleus_is_found_by_the_bundled_model():
    from cellrefine import load_model, segment

    image, disc = _nucleus()
    result = segment(image, model=load_model(), device="cpu")
    assert result.instances.max() == 1
    found = result.instances > 0
    assert (found & disc).sum() / (found | disc).sum() > 0.8  # the nucleus, not something else


def test_constant_image_warns_in_segment_but_not_in_normalize(tiny_model):
    from cellrefine import segment
    from cellrefine.normalize import BlankImageWarning

    with pytest.warns(BlankImageWarning, match=r"the image is constant \(every pixel is 7\), so it is treated as blank") as record:
        segment(np.full((16, 16), 7, np.uint16), model=tiny_model, device="cpu")
    assert len(record) == 1 and record[0].filename == __file__  # points at the caller, not inside cellrefine
    assert issubclass(BlankImageWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalize(np.full((16, 16), 7, np.uint16))


def test_stack_with_one_blank_plane_is_not_blank(tiny_model):
    from cellrefine import segment

    stack = np.zeros((2, 16, 16), np.uint16)
    stack[1, 4:8, 4:8] = 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segment(stack, model=tiny_model, axes="ZYX", device="cpu")


def test_all_nan_image_raises_without_a_blank_warning(tiny_model):
    from cellrefine import segment

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="contains NaN or infinite values"):
            segment(np.full((8, 8), np.nan, np.float32), model=tiny_model, device="cpu")


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (np.array([0, 1e-45], np.float32), [0, 1]),  # a subnormal range: 1 / span is not a float32
        (np.array([-3e38, 3e38], np.float32), [0, 1]),  # the span is not a float32
        (np.array([-1e308, 1e308], np.float64), [0, 1]),  # not even a float64
        (np.array([1e6, 1e6 + 0.01], np.float64), [0, 1]),  # a large offset: float32 would cancel the range
        (np.array([2**40, 2**40 + 3], np.int64), [0, 1]),
        (np.array([60000, 60001], np.uint16), [0, 1]),
    ],
)
def test_extreme_values_scale_finitely_and_exactly(image, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(image, 0, 100)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_values_beyond_float32_are_clipped_not_infinite():
    image = np.array([0.0, 1.0, 1e300])  # 1e300 maps far beyond the float32 range
    out = to_float32(image, 0.0, 1.0)
    assert np.isfinite(out).all() and out[2] == np.finfo(np.float32).max
    float32_overflow = to_float32(np.array([0, 1, 3e38], np.float32), 0.0, 0.5)
    assert np.isfinite(float32_overflow).all() and float32_overflow[1] == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_to_float32_refuses_a_non_finite_range(bad):
    with pytest.raises(ValueError, match="lo and hi must be finite"):
        to_float32(np.zeros(3), bad, 1.0)
    with pytest.raises(ValueError, match="lo and hi must be finite"):
        to_float32(np.zeros(3), 0.0, bad)


def test_to_float32_in_place_on_the_float64_path():
    image = np.array([1e6, 1e6 + 0.5, 1e6 + 1], np.float32)  # narrow range far from zero: scaled in float64
    scaled = to_float32(image, 1e6, 1e6 + 1, copy=False)
    assert scaled is image
    np.testing.assert_allclose(image, [0, 0.5, 1])


@pytest.mark.parametrize(("low", "high"), [(True, 99), (1, "99"), (None, 99)])
def test_percentile_range_rejects_non_numbers(low, high):
    with pytest.raises(TypeError, match="must be a number in"):
        percentile_range(np.arange(10), low, high)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_full_range_signed_integers_do_not_overflow(dtype):
    info = np.iinfo(dtype)
    image = np.array([info.min, 0, info.max], dtype)  # max - min does not fit the dtype
    lo, hi = percentile_range(image, 0, 100)
    assert (lo, hi) == (float(info.min), float(info.max))
    out = normalize(image, 0, 100)
    np.testing.assert_allclose(out, [0, -float(info.min) / (float(info.max) - float(info.min)), 1], atol=1e-6)


def test_subnormal_float64_range_gives_no_nan():
    image = np.array([0.0, -2.225073858507203e-309, -2.225073858507203e-309])  # found by the property tests
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(image)
    assert np.isfinite(out).all() and out[1] == out[2] < out[0]
