"""Tests for cellrefine.axes: inference, validation and the (T, Z, C, Y, X) view."""

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cellrefine
from cellrefine.axes import AxesGuessWarning, axes_doubt, check_axes, from_tzyx, infer_axes, spatial_shape, to_tzcyx


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((32, 48), "YX"),
        ((32, 48, 3), "YXC"),  # RGB
        ((32, 48, 4), "YXC"),  # RGBA
        ((5, 32, 48), "ZYX"),
        ((32, 48, 5), "ZYX"),  # last axis not 3/4: not colour
        ((7, 32, 48, 3), "ZYXC"),
        ((2, 5, 32, 48), "TZYX"),
        ((2, 5, 32, 48, 3), "TZYXC"),
        ((2, 5, 2, 32, 48), "TZCYX"),
    ],
)
def test_infer_axes_table(shape, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AxesGuessWarning)  # (32, 48, 5) and (2, 5, 32, 48) are doubtful guesses: see below
        assert infer_axes(shape) == expected
        assert check_axes(shape, None) == expected


@pytest.mark.parametrize("shape", [(10,), (1, 2, 3, 4, 5, 6)])
def test_infer_axes_rejects_unsupported_ndim(shape):
    with pytest.raises(ValueError, match=f"{len(shape)} dimensions"):
        infer_axes(shape)


def test_check_axes_upper_cases():
    assert check_axes((4, 5, 6), "zyx") == "ZYX"
    assert check_axes((3, 5, 6), "cyx") == "CYX"


@pytest.mark.parametrize(
    ("shape", "axes", "match"),
    [
        ((5, 6), "ZYX", r"3 letters but the image has 2 dimensions"),
        ((4, 5, 6), "YX", r"2 letters but the image has 3 dimensions"),
        ((4, 5, 6), "QYX", r"unknown letters \['Q'\]"),
        ((4, 5, 6), "YYX", "repeats a letter"),
        ((4, 5, 6), "ZYC", "must contain both 'Y' and 'X'"),
        ((4, 5), "XZ", "must contain both 'Y' and 'X'"),
    ],
)
def test_check_axes_errors(shape, axes, match):
    with pytest.raises(ValueError, match=match):
        check_axes(shape, axes)


def test_check_axes_length_error_names_the_shape():
    with pytest.raises(ValueError, match=r"shape \(5, 6\)"):
        check_axes((5, 6), "ZYX")


def test_check_axes_rejects_non_string():
    with pytest.raises(TypeError, match="axes must be a string"):
        check_axes((5, 6), ["Y", "X"])


def _all_axes():
    for k in range(4):
        for extra in itertools.combinations("TZC", k):
            for order in itertools.permutations(extra + ("Y", "X")):
                yield "".join(order)


ALL_AXES = list(_all_axes())
SIZES = {"T": 2, "Z": 3, "C": 4, "Y": 5, "X": 6}


def test_all_axes_enumerated():
    # 2! + 3 * 3! + 3 * 4! + 5! orderings of YX plus any subset of TZC
    assert len(ALL_AXES) == 2 + 18 + 72 + 120
    assert {"CYX", "YXC", "TZCYX", "XY"} <= set(ALL_AXES)


@pytest.mark.parametrize("axes", ALL_AXES)
def test_to_tzcyx_and_back(axes):
    shape = tuple(SIZES[a] for a in axes)
    array = np.arange(int(np.prod(shape))).reshape(shape)
    assert check_axes(shape, axes) == axes
    view = to_tzcyx(array, axes)
    assert view.shape == tuple(SIZES[a] if a in axes else 1 for a in "TZCYX")
    # element-wise: view[t, z, c, y, x] is the array element at those indices
    index = {"T": 1, "Z": 2, "C": 3, "Y": 4, "X": 5}
    expected = array[tuple(min(index[a], SIZES[a] - 1) for a in axes)]
    got = view[tuple(min(index[a], SIZES[a] - 1) if a in axes else 0 for a in "TZCYX")]
    assert got == expected
    # from_tzyx undoes it for the non-channel axes (channel 1 of the input, if any)
    channel = 1 if "C" in axes else 0
    back = from_tzyx(view[:, :, channel], axes)
    reference = np.take(array, channel, axis=axes.index("C")) if "C" in axes else array
    assert back.shape == spatial_shape(shape, axes)
    np.testing.assert_array_equal(back, reference)
    assert back.flags.c_contiguous


def test_to_tzcyx_is_a_view():
    array = np.zeros((3, 5, 6))
    view = to_tzcyx(array, "ZYX")
    assert np.shares_memory(view, array)


def test_spatial_shape_drops_channel():
    assert spatial_shape((5, 6, 3), "YXC") == (5, 6)
    assert spatial_shape((2, 3, 4, 5, 6), "TZCYX") == (2, 3, 5, 6)
    assert spatial_shape((3, 5, 6), "ZYX") == (3, 5, 6)


@pytest.mark.parametrize("axes", ["YX", "ZYX", "YXZ", "TZCYX", "CYXT", "XY"])
def test_from_tzyx_keeps_leading_axes_first(axes):
    rng = np.random.default_rng(0)
    shape = tuple(int(n) for n in rng.integers(2, 5, size=len(axes)))
    image = rng.random(shape)
    tzyx = to_tzcyx(image, axes)[:, :, 0]
    stacked = np.stack([tzyx, 2 * tzyx, 3 * tzyx])  # (3, T, Z, Y, X), e.g. class probabilities
    out = from_tzyx(stacked, axes)
    assert out.shape == (3, *spatial_shape(shape, axes)) and out.flags.c_contiguous
    for k in range(3):
        np.testing.assert_array_equal(out[k], (k + 1) * from_tzyx(tzyx, axes))


def test_from_tzyx_does_not_copy_when_the_order_is_kept():
    result = np.zeros((3, 1, 4, 5, 6))
    assert np.shares_memory(from_tzyx(result, "ZYX"), result)


# ----------------------------------------------------------------------------- doubtful guesses warn


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        (
            (2, 64, 64),
            r"shape \(2, 64, 64\) has no axes given: its first axis \(2 items\) was guessed as Z\. If it holds channels or time points, pass axes='CYX' or 'TYX'; pass axes='ZYX' to keep",
        ),
        ((3, 64, 64), r"first axis \(3 items\) was guessed as Z"),
        ((64, 48, 2), r"guessed as ZYX, i\.e\. planes of 48 × 2 pixels .* If the last axis holds 2 channels, pass axes='YXC'"),
        ((5, 64, 48, 2), r"If the last axis holds 2 channels, pass axes='ZYXC'"),
        ((3, 5, 64, 64), r"first axis \(3 items\) was guessed as T\. If it holds channels, pass axes='CZYX'"),
        ((2, 64, 64, 3), r"first axis \(2 items\) was guessed as Z\. If it holds time points, pass axes='TYXC'"),
    ],
)
def test_doubtful_guess_warns(shape, match):
    with pytest.warns(AxesGuessWarning, match=match) as record:
        check_axes(shape, None)
    assert len(record) == 1


@pytest.mark.parametrize("shape", [(64, 64), (5, 64, 64), (64, 64, 3), (64, 64, 4), (4, 5, 64, 64), (2, 5, 2, 64, 64), (7, 5, 3, 64, 64)])
def test_safe_guess_does_not_warn(shape):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AxesGuessWarning)
        check_axes(shape, None)


def test_given_axes_never_warn_and_the_warning_can_be_turned_off():
    with warnings.catch_warnings():
        warnings.simplefilter("error", AxesGuessWarning)
        assert check_axes((2, 64, 64), "ZYX") == "ZYX"  # the guessed reading, said explicitly
        assert check_axes((2, 64, 64), "CYX") == "CYX"
        assert infer_axes((2, 64, 64), warn=False) == "ZYX"


def test_warning_is_public_and_a_user_warning():
    import cellrefine.axes

    assert issubclass(AxesGuessWarning, UserWarning) and "AxesGuessWarning" in cellrefine.axes.__all__


def test_segment_warns_once_for_a_two_plane_guess(tiny_model):
    with pytest.warns(AxesGuessWarning, match="first axis") as record:
        cellrefine.segment(np.random.default_rng(0).random((2, 32, 32), np.float32), model=tiny_model)
    assert len([w for w in record if issubclass(w.category, AxesGuessWarning)]) == 1


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=2, max_size=5))
def test_guess_warns_exactly_when_doubtful_and_suggests_valid_axes(shape):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        axes = infer_axes(shape)
    doubt = axes_doubt(shape, axes)
    assert [w.category for w in record] == ([AxesGuessWarning] if doubt else [])
    if doubt:
        assert doubt.alternatives and axes not in doubt.alternatives
        for alternative in doubt.alternatives:  # every suggestion fits the shape and does not warn itself
            assert check_axes(shape, alternative) == alternative
        first_doubtful = len(shape) >= 3 and axes[0] in "ZT" and shape[0] in (2, 3)
        last_doubtful = len(shape) >= 3 and axes[-1] == "X" and shape[-1] <= 4
        assert first_doubtful or last_doubtful
    else:
        assert len(shape) < 3 or shape[-1] > 4 or axes[-1] == "C"


@st.composite
def explicit_axes(draw):
    """Valid axes (Y, X and some of T, Z, C in any order) and a shape for them."""
    extra = draw(st.lists(st.sampled_from("TZC"), unique=True, max_size=3))
    axes = "".join(draw(st.permutations(["Y", "X", *extra])))
    return tuple(draw(st.integers(1, 5)) for _ in axes), axes


@settings(max_examples=40, deadline=None)
@given(explicit_axes())
def test_explicit_axes_never_warn(shape_axes):
    shape, axes = shape_axes
    with warnings.catch_warnings():
        warnings.simplefilter("error", AxesGuessWarning)
        assert check_axes(shape, axes.lower()) == axes


def test_check_scale_refuses_a_zero_dimensional_array_with_a_message():
    from cellrefine.axes import check_scale

    with pytest.raises(TypeError, match="sequence of numbers"):
        check_scale(np.array(2.0), "ZYX")
