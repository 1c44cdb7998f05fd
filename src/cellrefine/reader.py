"""Reading images for the network: input checks and normalised planes.

:func:`check_image` validates what a user passes at the public boundary
(numpy, dask, zarr, h5py, nested lists; torch tensors are converted).
:class:`PlaneReader` reads an image (numpy, dask, zarr, h5py) one (t, z)
plane at a time as normalised (C, Y, X) float32: the *one* grey + normalise
path shared by inference, fine-tuning and from-scratch training
(:func:`normalised_plane` wraps it for a single 2D image).

Normalisation is per stack (see :mod:`cellrefine.normalize`): the percentile
range is computed once over a strided subsample of the whole image, then each
plane is scaled with :func:`cellrefine.normalize.to_float32`. For a
one-channel model, colour/multichannel images are averaged over their
channels (alpha dropped) before normalisation (:func:`average_channels`).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from .axes import check_axes, to_tzcyx, user_stacklevel
from .normalize import BlankImageWarning, percentile_range, strided_sample, to_float32

__all__ = [
    "check_image",
    "LazyView",
    "PlaneReader",
    "average_channels",
    "normalised_plane",
    "user_stacklevel",
    "DEFAULT_MAX_BLOCK_BYTES",
    "check_planes",
]

#: Default largest block of planes (bytes) read at once from a chunked (dask/zarr) array.
DEFAULT_MAX_BLOCK_BYTES = 256 * 2**20


def _from_torch(image):
    """A torch tensor as a numpy array (detached, on the CPU; bfloat16 as float32); other objects unchanged."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(image, torch.Tensor):
        return image
    if image.is_complex():
        raise TypeError(f"complex images are not supported (torch dtype {image.dtype}); pass tensor.abs() or tensor.real.")
    try:
        tensor = image.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    except (TypeError, RuntimeError, NotImplementedError) as error:
        raise TypeError(
            f"cannot use this torch tensor (dtype {image.dtype}, device {image.device}) as an image ({error}); pass tensor.float().cpu().numpy()."
        ) from error


def check_image(image):
    """Validate an image at the public boundary; return it (as a numpy array if it was not array-like).

    Parameters
    ----------
    image : array-like (numpy, dask, zarr, h5py, torch tensor, nested lists)
        A torch tensor is converted with ``tensor.detach().cpu().numpy()``
        (bfloat16 as float32).

    Returns
    -------
    image : array-like with ``shape`` and ``dtype``
        Never copied when it already has a numpy ``shape`` and ``dtype``.

    Raises
    ------
    TypeError
        Complex or non-numeric dtype, or an object that is not an image.
    ValueError
        Empty image, fewer than 2 / more than 5 axes, or nested lists of
        unequal lengths.
    """
    image = _from_torch(image)
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        given = type(image).__name__
        try:
            image = np.asarray(image)
        except (ValueError, TypeError, OverflowError) as error:
            raise ValueError(f"image could not be read as an array ({given}: {error}); pass a numpy array with 2 to 5 axes.") from error
        if image.dtype.kind == "O" and given not in ("list", "tuple"):
            raise TypeError(f"image must be an array of numbers (numpy, dask, zarr, torch or nested lists), got {given}.")
    try:
        dtype = np.dtype(image.dtype)
        shape = tuple(int(n) for n in image.shape)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"image of type {type(image).__name__} has no numpy dtype/shape ({error}); pass a numpy array, e.g. np.asarray(image)."
        ) from error
    if dtype.kind == "c":
        raise TypeError(f"complex images are not supported (dtype {dtype}); pass np.abs(image) or image.real.")
    if dtype.kind not in "biuf":
        raise TypeError(f"image must be numeric (integer, float or bool), got dtype {dtype}; convert it with image.astype(np.float32).")
    if 0 in shape:
        raise ValueError(f"image is empty (shape {shape}); pass an image with at least one pixel per axis.")
    if len(shape) > 5 or len(shape) < 2:
        raise ValueError(f"image must have 2 to 5 axes out of 'TZCYX', got {len(shape)} (shape {shape}).")
    return image


class LazyView:
    """(T, Z, C, Y, X) view of an array that has numpy-style indexing but no
    ``transpose``/``reshape`` (zarr, h5py): indexing reads only what is asked for.

    Parameters
    ----------
    array : array-like with ``shape``, ``dtype`` and ``__getitem__``
    axes : str
        The array's axes (validated, see :func:`cellrefine.axes.check_axes`).
    """

    def __init__(self, array, axes: str):
        self.array = array
        self.axes = axes
        self.dtype = np.dtype(array.dtype)
        self.shape = tuple(int(array.shape[axes.index(a)]) if a in axes else 1 for a in "TZCYX")
        self.ndim = 5
        chunks = getattr(array, "chunks", None)
        self.chunks = None
        if chunks is not None and len(chunks) == len(axes) and all(isinstance(c, (int, np.integer)) for c in chunks):
            self.chunks = tuple(_regular_chunks(self.shape[k], int(chunks[axes.index(a)]) if a in axes else 1) for k, a in enumerate("TZCYX"))

    def __array__(self, dtype=None, copy=None):
        data = self[(slice(None),) * 5]
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (5 - len(key))
        index, keep = [], []
        for a in self.axes:
            item = key["TZCYX".index(a)]
            index.append(item)
            if not isinstance(item, (int, np.integer)):
                keep.append(a)
        data = np.asarray(self.array[tuple(index)])
        present = [a for a in "TZCYX" if a in keep]
        data = np.transpose(data, [keep.index(a) for a in present]) if keep != present else data
        shape = []
        for k, a in enumerate("TZCYX"):
            if isinstance(key[k], (int, np.integer)):
                continue
            shape.append(data.shape[present.index(a)] if a in present else 1)
        return data.reshape(shape)


def _regular_chunks(length: int, chunk: int) -> tuple:
    chunk = max(1, min(chunk, length))
    return tuple(min(chunk, length - start) for start in range(0, length, chunk))


def average_channels(array, axis: int = -3) -> np.ndarray:
    """Grey float32 image: the mean over the channel ``axis`` (kept, length 1), alpha dropped when there are 4 channels."""
    array = np.asarray(array)
    channels = np.take(array, range(3), axis=axis) if array.shape[axis] == 4 else array
    return channels.astype(np.float32).mean(axis=axis, keepdims=True)


class PlaneReader:
    """Reads normalised (C, Y, X) float32 planes of an image for a model.

    The percentile range is computed once over the whole image/stack (a
    strided subsample; see :mod:`cellrefine.normalize`). For a one-channel
    model, colour/multichannel images are averaged over their channels (alpha
    dropped) before normalisation. Planes are read one at a time, so dask and
    zarr arrays are never loaded whole; when such an array is chunked over
    several planes (T or Z), the block of planes of one chunk (at most
    ``max_block_bytes``) is read once and kept until its last plane is used,
    so each chunk is computed/decompressed once rather than once per plane.

    Parameters
    ----------
    image : array-like
        Checked with :func:`check_image`.
    axes : str
        The image's axes (validated, see :func:`cellrefine.axes.check_axes`).
    model : Model, optional
        Gives the input channels (``model.network.in_channels``) and the
        percentiles (``model.config["normalization"]``). None: a one-channel
        model with the default percentiles (1, 99.8).
    max_block_bytes : int
        Largest block of planes read at once from a chunked array.

    Warns
    -----
    BlankImageWarning
        The image is constant, so every plane normalises to zeros (see
        :func:`cellrefine.normalize.percentile_range`).

    Attributes
    ----------
    shape : tuple
        (T, Z, Y, X).
    """

    def __init__(self, image, axes: str, model=None, *, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES):
        if isinstance(image, np.ndarray) or (hasattr(image, "transpose") and hasattr(image, "reshape")):
            self.view = to_tzcyx(image, axes)
        else:
            self.view = LazyView(image, axes)
        n_t, n_z, n_c, height, width = self.view.shape
        self.shape = (n_t, n_z, height, width)
        self.in_channels = 1 if model is None else model.network.in_channels
        self.n_channels = n_c
        if n_c != self.in_channels and self.in_channels != 1:
            raise ValueError(
                f"the model expects {self.in_channels} channels but the image has {n_c} (axes {axes!r}); pick a matching model or channels."
            )
        self.max_block_bytes = int(max_block_bytes)
        self.check_finite = np.dtype(image.dtype).kind == "f"
        norm = {} if model is None else model.config.get("normalization", {})
        low, high = float(norm.get("low_percentile", 1.0)), float(norm.get("high_percentile", 99.8))
        sample = self._grey(strided_sample(self.view))
        self.lo, self.hi = percentile_range(sample, low, high)
        if self.hi <= self.lo and (not self.check_finite or np.isfinite(sample).all()):  # NaN/Inf images are refused by plane()
            warnings.warn(
                BlankImageWarning(
                    f"the image is constant (every pixel is {self.lo:g}), so it is treated as blank and no object can be found; "
                    "check that this is the right image, channel and axes."
                ),
                stacklevel=user_stacklevel(),
            )
        self._block = None  # (t range, z range, array) of the planes read together
        self._plane_chunks = self._chunk_bounds()

    def _chunk_bounds(self):
        """(T chunk starts, Z chunk starts) when the array is chunked over several planes, else None."""
        if isinstance(self.view, np.ndarray):
            return None
        chunks = getattr(self.view, "chunks", None)
        if not chunks or len(chunks) != 5 or not all(isinstance(c, tuple) for c in chunks[:2]):
            return None
        if max(chunks[0]) == 1 and max(chunks[1]) == 1:
            return None
        plane_bytes = int(np.prod(self.view.shape[2:])) * np.dtype(self.view.dtype).itemsize
        if max(chunks[0]) * max(chunks[1]) * plane_bytes > self.max_block_bytes:
            return None
        return tuple(np.cumsum((0,) + tuple(int(c) for c in axis_chunks)) for axis_chunks in chunks[:2])

    def _raw(self, t: int, z: int) -> np.ndarray:
        if self._plane_chunks is None:
            return np.asarray(self.view[t, z])
        block = self._block
        if block is None or not (block[0][0] <= t < block[0][1] and block[1][0] <= z < block[1][1]):
            bounds = []
            for index, starts in zip((t, z), self._plane_chunks):
                k = int(np.searchsorted(starts, index, side="right")) - 1
                bounds.append((int(starts[k]), int(starts[k + 1])))
            (t0, t1), (z0, z1) = bounds
            self._block = block = (bounds[0], bounds[1], np.asarray(self.view[t0:t1, z0:z1]))
        return block[2][t - block[0][0], z - block[1][0]]

    def _grey(self, array) -> np.ndarray:
        array = np.asarray(array)
        if self.in_channels == 1 and self.n_channels > 1:
            return average_channels(array, axis=-3)
        return array

    def plane(self, t: int, z: int) -> np.ndarray:
        """The normalised (C, Y, X) float32 plane at (t, z)."""
        plane = self._grey(self._raw(t, z))
        if self.check_finite and not np.isfinite(plane).all():
            raise ValueError(
                f"image plane (t={t}, z={z}) contains NaN or infinite values; replace them first, e.g. np.nan_to_num(image), or crop them out."
            )
        # a plane that is a fresh float32 array (channel mean) is scaled in place; the caller's data is copied
        owned = plane.dtype == np.float32 and plane.base is None and plane.flags.writeable
        return to_float32(plane, self.lo, self.hi, copy=not owned)


def normalised_plane(image, axes: str | None = None, model=None) -> np.ndarray:
    """One 2D image → the normalised (C, Y, X) float32 plane the network sees.

    Exactly how :func:`cellrefine.segment` prepares a plane (see
    :class:`PlaneReader`); for training data. ``axes`` None infers it
    (a (Y, X, 3|4) image is colour); pass ``"YXC"`` for other channel counts.

    Raises
    ------
    ValueError
        The image holds more than one (t, z) plane, or NaN/Inf pixels.
    """
    image = check_image(image)
    axes = check_axes(image.shape, axes)
    reader = PlaneReader(image, axes, model)
    if reader.shape[:2] != (1, 1):
        raise ValueError(f"expected one 2D image (optionally with channels), got axes {axes!r} with shape {image.shape}.")
    return reader.plane(0, 0)


def check_planes(planes, n_t: int, n_z: int) -> list[tuple[int, int]]:
    """Validate ``planes`` (``(t, z)`` index pairs inside a stack of ``n_t`` x ``n_z`` planes); return them as int pairs,
    in the given order, each once.

    Raises
    ------
    TypeError
        Not a sequence of pairs of integers (``True`` is not an index).
    ValueError
        Empty, or an index outside the stack.
    """
    if isinstance(planes, (str, bytes)) or not hasattr(planes, "__iter__"):
        raise TypeError(f"planes must be a list of (t, z) index pairs, e.g. [(0, 3)], or None for all planes; got {type(planes).__name__}.")
    checked = []
    for plane in planes:
        pair = tuple(plane) if hasattr(plane, "__iter__") and not isinstance(plane, (str, bytes)) else (plane,)
        if len(pair) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in pair):
            raise TypeError(f"planes must hold (t, z) pairs of integers, got {plane!r}.")
        t, z = int(pair[0]), int(pair[1])
        if not (0 <= t < n_t and 0 <= z < n_z):
            raise ValueError(f"plane index {(t, z)} is outside the stack (T={n_t}, Z={n_z}); indices start at 0.")
        if (t, z) not in checked:
            checked.append((t, z))
    if not checked:
        raise ValueError("planes is empty; pass None to segment every plane, or a list of (t, z) pairs.")
    return checked
