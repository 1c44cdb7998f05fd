"""Property-based tests (Hypothesis) for axes, normalisation and image checks: the rules hold for any shape, axes and dtype.

Kept fast (small examples, few of them): the whole file runs in a few seconds.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cellrefine.axes import AXES, check_axes, from_tzyx, infer_axes, to_tzcyx
from cellrefine.normalize import BlankImageWarning, normalize, percentile_range, to_float32
from cellrefine.reader import PlaneReader, check_image

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.filterwarnings("ignore::cellrefine.axes.AxesGuessWarning")


# ----------------------------------------------------------------------------- axes


@st.composite
def shapes_and_axes(draw, with_channel=True):
    """A shape and valid axes for it: Y and X always, T/Z/C (C only if ``with_channel``) sometimes, in any order."""
    extra = draw(st.lists(st.sampled_from("TZC" if with_channel else "TZ"), unique=True, max_size=3 if with_channel else 2))
    axes = "".join(draw(st.permutations(["Y", "X", *extra])))
    shape = tuple(draw(st.integers(1, 4)) for _ in axes)
    return shape, axes


@FAST
@given(shapes_and_axes())
def test_to_tzcyx_puts_every_pixel_where_its_axes_say(shape_axes):
    shape, axes = shape_axes
    array = np.arange(int(np.prod(shape))).reshape(shape)
    view = to_tzcyx(array, check_axes(shape, axes))
    assert view.shape == tuple(shape[axes.index(a)] if a in axes else 1 for a in AXES)
    for index in np.ndindex(*shape):  # every pixel of the input, at its place in the (T, Z, C, Y, X) view
        position = tuple(index[axes.index(a)] if a in axes else 0 for a in AXES)
        assert view[position] == array[index]


@FAST
@given(shapes_and_axes(), st.integers(0, 2))
def test_from_tzyx_inverts_to_tzcyx_for_results(shape_axes, leading):
    shape, axes = shape_axes
    spatial_axes = "".join(a for a in axes if a != "C")
    spatial = np.arange(int(np.prod([n for n, a in zip(shape, axes) if a != "C"]))).reshape([n for n, a in zip(shape, axes) if a != "C"])
    tzyx = to_tzcyx(spatial, spatial_axes)[:, :, 0]  # (T, Z, Y, X), as the pipeline computes results
    np.testing.assert_array_equal(from_tzyx(tzyx, axes), spatial)  # back in the input's order, C dropped
    stacked = np.stack([tzyx + k for k in range(leading)]) if leading else tzyx
    back = from_tzyx(stacked, axes)
    assert back.shape == ((leading,) if leading else ()) + spatial.shape and back.flags.c_contiguous


@FAST
@given(st.lists(st.integers(1, 6), min_size=2, max_size=5))
def test_inferred_axes_follow_the_documented_rule(shape):
    axes = infer_axes(shape)
    assert check_axes(shape, None) == axes
    assert len(axes) == len(shape) and len(set(axes)) == len(axes) and set(axes) <= set(AXES)
    colour = len(shape) >= 3 and shape[-1] in (3, 4)
    assert ("C" in axes) == (colour or len(shape) == 5)
    assert axes.replace("C", "").endswith("YX")  # the last two non-channel axes are always YX
    if colour:
        assert axes.endswith("C")
    if len(shape) - colour >= 3:
        assert "Z" in axes  # a third spatial axis is Z, not T


@FAST
@given(st.lists(st.integers(1, 5), min_size=0, max_size=7), st.one_of(st.none(), st.text(max_size=7), st.integers(), st.lists(st.text(max_size=1))))
def test_any_axes_argument_is_accepted_valid_or_refused_clearly(shape, axes):
    try:
        checked = check_axes(shape, axes)
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    assert len(checked) == len(shape) and len(set(checked)) == len(checked)
    assert set(checked) <= set(AXES) and {"Y", "X"} <= set(checked)


# ----------------------------------------------------------------------------- normalisation

_DTYPES = [np.bool_, np.uint8, np.uint16, np.int16, np.int32, np.uint64, np.float16, np.float32, np.float64]


@st.composite
def images(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7))
    elements = hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False) if dtype.kind == "f" else hnp.from_dtype(dtype)
    image = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.booleans()):  # often: a constant image, or a few values on a flat background
        fill = image.flat[0]
        mask = draw(hnp.arrays(np.bool_, shape))
        image = np.where(mask, image, fill).astype(dtype)
    return image


def _checked_normalize(image, low, high):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero, overflow or invalid-value warnings
        return normalize(image, low, high)


@FAST
@given(images(), st.sampled_from([(1.0, 99.8), (0.0, 100.0), (10.0, 90.0), (49.0, 51.0)]))
def test_normalise_is_finite_monotonic_and_never_erases_an_image(image, percentiles):
    out = _checked_normalize(image, *percentiles)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.isfinite(out).all()
    values = image.astype(np.float64).ravel()
    order = np.argsort(values, kind="stable")
    assert (np.diff(out.ravel()[order].astype(np.float64)) >= 0).all()  # monotonic: a brighter pixel never maps lower
    if values.min() == values.max():
        np.testing.assert_array_equal(out, 0)  # constant: blank, no division by zero
    else:  # not constant: the brightest pixels reach 1 and the darkest 0 (sparse objects are never scaled away)
        assert out.max() >= 1 - 1e-3 and out.min() <= 1e-3


@FAST
@given(images())
def test_full_range_normalisation_stays_in_zero_one(image):
    out = _checked_normalize(image, 0.0, 100.0)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-5


@FAST
@given(images(), st.sampled_from([(1.0, 99.8), (0.0, 100.0)]))
def test_percentile_range_is_inside_the_data(image, percentiles):
    lo, hi = percentile_range(image, *percentiles)
    values = image.astype(np.float64)
    assert np.isfinite([lo, hi]).all() and lo <= hi
    assert values.min() <= lo and hi <= values.max()
    assert (lo == hi) == (values.min() == values.max())


@FAST
@given(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    hnp.arrays(np.float32, 6, elements=st.floats(allow_nan=False, allow_infinity=False, width=32)),
)
def test_to_float32_with_any_range_is_finite_and_monotonic(lo, hi, image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_float32(image, lo, hi)
    assert np.isfinite(out).all()
    if hi <= lo:
        np.testing.assert_array_equal(out, 0)
    else:
        order = np.argsort(image, kind="stable")
        assert (np.diff(out[order].astype(np.float64)) >= 0).all()


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(_DTYPES), st.integers(0, 1))
def test_constant_stack_warns_blank_once_and_reads_zeros(dtype, value):
    image = np.full((2, 5, 6), value, dtype)
    with pytest.warns(BlankImageWarning, match="constant") as record:
        reader = PlaneReader(image, "ZYX")
    assert len(record) == 1
    np.testing.assert_array_equal(reader.plane(0, 1), 0)


# ----------------------------------------------------------------------------- image checks


def _torch_tensors():
    torch = pytest.importorskip("torch")
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.uint8, torch.bool, torch.complex64]
    return st.builds(
        lambda dtype, shape: torch.zeros(shape, dtype=dtype),
        st.sampled_from(dtypes),
        st.lists(st.integers(0, 3), max_size=6),
    )


_ODD_DTYPES = st.sampled_from(["complex64", "object", "U3", "S2", "datetime64[s]", "timedelta64[ms]", "V4", "bool", "uint16", "float32"])
_BAD_INPUTS = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.integers(),
    st.floats(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.recursive(
        st.one_of(st.integers(-5, 5), st.floats(), st.text(max_size=1), st.none()), lambda inner: st.lists(inner, max_size=3), max_leaves=12
    ),
    st.builds(lambda dtype, shape: np.zeros(shape, dtype=dtype), _ODD_DTYPES, st.lists(st.integers(0, 3), max_size=7)),
    _torch_tensors(),
)


@settings(max_examples=150, deadline=None)
@given(_BAD_INPUTS)
def test_check_image_accepts_an_image_or_raises_value_or_type_error(candidate):
    try:
        image = check_image(candidate)
    except (ValueError, TypeError) as error:
        message = str(error)
        assert message and "\n" not in message
        return
    dtype = np.dtype(image.dtype)
    assert dtype.kind in "biuf"
    assert 2 <= len(image.shape) <= 5 and 0 not in image.shape
