"""cellrefine.resample: one axis resampled at pixel centres (linear for images, nearest for labels)."""

from __future__ import annotations

import numpy as np
import pytest

from cellrefine.resample import isotropic_length, resample_axis, sample_positions


@pytest.mark.parametrize("new_length", [1, 7, 10, 23, 40])
@pytest.mark.parametrize("order", [0, 1])
def test_constant_in_constant_out(new_length, order):
    array = np.full((10, 3, 5), 4.25, np.float32)
    out = resample_axis(array, 0, new_length, order)
    assert out.shape == (new_length, 3, 5)
    np.testing.assert_array_equal(out, np.float32(4.25))


@pytest.mark.parametrize("old_length, new_length", [(10, 20), (10, 25), (16, 5), (7, 8)])
def test_linear_ramp_is_exact(old_length, new_length):
    """Linear interpolation of a ramp along the axis is the ramp at the sample positions, clipped at the ends."""
    ramp = np.broadcast_to(np.arange(old_length, dtype=np.float64)[None, :, None] * 3.0 + 1.0, (2, old_length, 4))
    out = resample_axis(ramp, 1, new_length, order=1)
    positions = np.clip((np.arange(new_length) + 0.5) * old_length / new_length - 0.5, 0, old_length - 1)
    np.testing.assert_allclose(out, np.broadcast_to(positions[None, :, None] * 3.0 + 1.0, out.shape), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sample_positions(old_length, new_length), positions)
    assert out.dtype == np.float64 and out.flags.c_contiguous


def test_worked_values_and_dtypes():
    np.testing.assert_allclose(resample_axis(np.array([0.0, 2.0], np.float32), 0, 4), [0.0, 0.5, 1.5, 2.0])
    assert resample_axis(np.zeros((3, 2), np.float32), 0, 6).dtype == np.float32
    assert resample_axis(np.zeros((3, 2), np.uint16), 0, 6).dtype == np.float32  # linear: floating point
    np.testing.assert_array_equal(resample_axis(np.array([[3], [7]], np.uint32), 0, 5, order=0)[:, 0], [3, 3, 7, 7, 7])


@pytest.mark.parametrize("n_z, factor", [(10, 2.0), (10, 3.0), (13, 4.0), (5, 7.0)])
def test_round_trip_length_and_nearest_identity(n_z, factor):
    labels = np.random.default_rng(n_z).integers(0, 2**31 - 1, size=(n_z, 6, 4), dtype=np.int64)
    up_length = isotropic_length(n_z, factor)
    up = resample_axis(labels, 0, up_length, order=0)
    back = resample_axis(up, 0, n_z, order=0)
    assert up.shape == (up_length, 6, 4) and back.shape == labels.shape
    np.testing.assert_array_equal(back, labels)  # integer up-sampling and back is the identity for nearest
    image = np.random.default_rng(1).random((n_z, 6, 4))
    assert resample_axis(resample_axis(image, 0, up_length), 0, n_z).shape == image.shape


def test_order_zero_keeps_label_values_and_dtype():
    labels = np.zeros((9, 8), np.uint32)
    labels[2:5, 1:6] = 2**31 - 1
    labels[6:8, 3:7] = 5
    for new_length in (4, 13, 18, 27):
        out = resample_axis(labels, 0, new_length, order=0)
        assert out.dtype == np.uint32
        assert set(np.unique(out).tolist()) <= {0, 5, 2**31 - 1}
    np.testing.assert_array_equal(resample_axis(labels, 0, 18, order=0), np.repeat(labels, 2, axis=0))
    mask = np.zeros((4, 3), bool)
    mask[1] = True
    np.testing.assert_array_equal(resample_axis(mask, 0, 8, order=0), np.repeat(mask, 2, axis=0))


def test_same_length_returns_the_input():
    array = np.arange(12.0).reshape(3, 4)
    assert resample_axis(array, 1, 4) is array


def test_isotropic_length():
    assert isotropic_length(10, 2.0) == 20
    assert isotropic_length(10, 0.5) == 5
    assert isotropic_length(3, 0.1) == 1  # never empty
    assert isotropic_length(7, 1.25) == 9  # round(8.75)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"axis": 0, "new_length": 4, "order": 3}, "order must be 0"),
        ({"axis": 0, "new_length": 0}, "positive whole number"),
        ({"axis": 0, "new_length": 2.5}, "positive whole number"),
        ({"axis": 2, "new_length": 4}, "out of range"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resample_axis(np.zeros((3, 4)), **kwargs)
