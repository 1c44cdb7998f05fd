"""Training planes in three orientations: which planes of a stack are cut, and how XZ/YZ planes are resampled.

``slice_axes`` names the axes training planes are cut *along*: ``"Z"`` gives
XY planes (one per z), ``"Y"`` XZ planes (one per y, rows along Z), ``"X"``
YZ planes (one per x, rows along Z). ``"auto"`` is ``"ZYX"`` for an image
with a Z axis of two planes or more and a reviewed mask, else ``"Z"``.

The rule for a plane of a stack to become a training plane: its reviewed
pixels hold at least one :data:`MIN_SPAN` x :data:`MIN_SPAN` square (2 x 2:
two adjacent rows reviewed at two adjacent columns). A correction painted in
an XY plane (one z) is then an XY training plane and not a one-row line in
every XZ plane it crosses; one painted in an XZ plane (one y) is an XZ
training plane and not a one-row line in the XY planes; and whole slices
reviewed at z = 15, 30, 45 stay three XY planes instead of also making every
XZ and YZ plane a training plane of three scattered rows (a projection rule,
"two rows and two columns somewhere", did that). Corrections on adjacent XY
planes still make the XZ/YZ strips through them training planes: their pixels
are reviewed in those views too. Without a mask every plane of every chosen orientation
counts. A 2D image (or a stack of one plane) keeps the plain rule: an XY plane
with any reviewed pixel is a training plane.

XZ/YZ planes are resampled along Z to the in-plane spacing
(:func:`cellrefine.resample.resample_axis`, the helper 3D segmentation uses):
by ``scale_z / scale_x`` for XZ planes, ``scale_z / scale_y`` for YZ planes;
linear for the image, nearest for labels and masks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..resample import isotropic_length, resample_axis

__all__ = ["SLICE_AXES", "PLANE_NAMES", "MIN_SPAN", "check_slice_axes", "resolve_slice_axes", "training_positions", "z_factor", "cut_plane"]

SLICE_AXES = "ZYX"
#: the plane each slice axis gives, as users name it
PLANE_NAMES = {"Z": "XY", "Y": "XZ", "X": "YZ"}
MIN_SPAN = 2


def check_slice_axes(slice_axes) -> str:
    """Validate ``slice_axes``; return ``"auto"`` or its letters in ``"ZYX"`` order (upper case).

    Raises
    ------
    TypeError
        Not a string.
    ValueError
        Empty, a letter other than Z, Y, X, or a repeated letter.

    Examples
    --------
    >>> check_slice_axes("xz"), check_slice_axes("AUTO")
    ('ZX', 'auto')
    """
    allowed = "'auto', 'Z' (XY planes), 'Y' (XZ planes), 'X' (YZ planes) or a combination such as 'ZYX'"
    if not isinstance(slice_axes, str):
        raise TypeError(f"slice_axes must be a string: {allowed}; got {type(slice_axes).__name__}.")
    if slice_axes.lower() == "auto":
        return "auto"
    letters = slice_axes.upper()
    if not letters or set(letters) - set(SLICE_AXES) or len(set(letters)) != len(letters):
        raise ValueError(f"slice_axes must be {allowed}, each letter once; got {slice_axes!r}.")
    return "".join(letter for letter in SLICE_AXES if letter in letters)


def resolve_slice_axes(slice_axes: str, axes: str, n_z: int, index: int = 0, has_mask: bool = True) -> str:
    """The slice axes for one image (``slice_axes`` from :func:`check_slice_axes`): ``"auto"`` resolved, Y/X only with a Z axis.

    ``"auto"`` is ``"ZYX"`` for a stack with a reviewed mask (its corrections may have been painted
    in any view) and ``"Z"`` for a stack without one (full labels: every XZ and YZ plane would be a
    training plane, Z-resampled copies of the whole stack twice over; pass ``"ZYX"`` to want that).

    Raises
    ------
    ValueError
        ``slice_axes`` holds Y or X but the image (``axes``) has no Z axis.
    """
    if slice_axes == "auto":
        return SLICE_AXES if "Z" in axes and n_z >= 2 and has_mask else "Z"
    if "Z" not in axes and set(slice_axes) & {"Y", "X"}:
        raise ValueError(
            f"slice_axes {slice_axes!r} asks for XZ/YZ planes, which need a Z axis, but image {index} has axes {axes!r}; "
            "use slice_axes='Z' (or 'auto') for 2D images and time series."
        )
    return slice_axes


def _holds_square(mask: np.ndarray, plane_axes: tuple) -> np.ndarray:
    """Per position along the third axis: does that plane of ``mask`` hold a MIN_SPAN x MIN_SPAN square of reviewed pixels?"""
    structure = np.ones([MIN_SPAN if axis in plane_axes else 1 for axis in range(3)], bool)
    squares = ndi.binary_erosion(mask, structure=structure, border_value=0)  # outside the stack is not reviewed
    return squares.any(axis=plane_axes)


def training_positions(mask, shape: tuple, slice_axes: str) -> dict:
    """Which planes of one (Z, Y, X) volume are training planes (the rule in the module docstring).

    Parameters
    ----------
    mask : (Z, Y, X) bool array or None
        Reviewed pixels of one time point; None = every pixel.
    shape : (int, int, int)
        (Z, Y, X).
    slice_axes : str
        Resolved (:func:`resolve_slice_axes`).

    Returns
    -------
    dict
        ``"Z"``: (Z,) bool, the XY planes; ``"Y"``: the y of the XZ planes,
        ``"X"``: the x of the YZ planes (int arrays, empty when not chosen).

    Examples
    --------
    >>> mask = np.zeros((4, 5, 6), bool); mask[1:3, 2, 1:4] = True  # painted in the XZ plane y = 2
    >>> positions = training_positions(mask, mask.shape, "ZYX")
    >>> positions["Z"].tolist(), positions["Y"].tolist(), positions["X"].tolist()
    ([False, False, False, False], [2], [])
    """
    n_z, n_y, n_x = shape
    none = np.zeros(0, np.intp)
    if mask is None:
        stack = n_z >= MIN_SPAN
        return {
            "Z": np.full(n_z, "Z" in slice_axes),
            "Y": np.arange(n_y) if "Y" in slice_axes and stack and n_x >= MIN_SPAN else none,
            "X": np.arange(n_x) if "X" in slice_axes and stack and n_y >= MIN_SPAN else none,
        }
    if n_z < MIN_SPAN:  # a 2D image: any reviewed pixel makes an XY plane
        return {"Z": mask.any(axis=(1, 2)) & ("Z" in slice_axes), "Y": none, "X": none}
    none_z = np.zeros(n_z, bool)
    xy = _holds_square(mask, (1, 2)) if "Z" in slice_axes else none_z
    xz = np.flatnonzero(_holds_square(mask, (0, 2))) if "Y" in slice_axes else none
    yz = np.flatnonzero(_holds_square(mask, (0, 1))) if "X" in slice_axes else none
    return {"Z": xy, "Y": xz, "X": yz}


def z_factor(scale: tuple, orientation: str) -> float:
    """How much Z is stretched in planes cut along ``orientation`` (``scale`` is (z, y, x)): z/x for XZ, z/y for YZ, 1 for XY."""
    z, y, x = scale
    return {"Z": 1.0, "Y": z / x, "X": z / y}[orientation]


def cut_plane(volume: np.ndarray, orientation: str, position: int, factor: float, order: int) -> np.ndarray:
    """One XZ (``"Y"``) or YZ (``"X"``) plane of a (Z, ..., Y, X) ``volume``, Z resampled by ``factor``.

    Leading axes between Z and Y (e.g. channels) come first in the result:
    a (Z, C, Y, X) image gives (C, Z', X) or (C, Z', Y); a (Z, Y, X) label
    volume gives (Z', X) or (Z', Y), with ``Z' = isotropic_length(Z, factor)``.
    ``order`` 1 (image, linear) or 0 (labels and masks, nearest).
    """
    plane = volume[..., position, :] if orientation == "Y" else volume[..., position]  # a view: (Z, ..., X) or (Z, ..., Y)
    plane = np.moveaxis(plane, 0, -2)
    return np.ascontiguousarray(resample_axis(plane, -2, isotropic_length(volume.shape[0], factor), order))
