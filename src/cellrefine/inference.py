"""Overlap-tile inference and the segmentation pipeline.

Tiling follows the U-Net paper: each 2D plane is mirror-padded (numpy
``reflect``) by a *halo* of at least the network's receptive radius, cut into
tiles whose cores lie on the ``2**depth`` down-sampling grid, and only each
tile's core is kept. Because the bundled network is local at inference
(BatchNorm with fixed statistics, no global pooling), the tiled result equals
whole-image inference up to float rounding, whatever the tile size.

:func:`iter_segment` is a generator: it yields a :class:`SegmentProgress` after
every batch of tiles and returns a :class:`Segmentation`; closing it cancels.
:func:`cellrefine.segment` runs it to the end.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Iterator

import numpy as np

from .axes import check_axes, from_tzyx, spatial_shape, to_tzcyx
from .postprocess import PostprocessSettings, probabilities_to_instances, relabel_sequential, stitch_planes

logger = logging.getLogger(__name__)

__all__ = ["Segmentation", "SegmentProgress", "SegmentationCancelled", "iter_segment", "segment", "predict_probabilities", "default_tile_size"]


class SegmentationCancelled(RuntimeError):
    """Raised by :func:`segment` when its ``progress`` callback returns ``False``."""


@dataclasses.dataclass
class SegmentProgress:
    """Yielded by :func:`iter_segment` after each batch of tiles.

    ``done``/``total`` count tiles over the whole image or stack; ``plane`` is
    the (t, z) index being predicted; ``seconds`` the time so far.
    """

    done: int
    total: int
    plane: tuple
    seconds: float


@dataclasses.dataclass
class Segmentation:
    """Result of :func:`cellrefine.segment`.

    Attributes
    ----------
    semantic : uint8 array
        0 background, 1 cell, 2 boundary; shape = the image's shape without C.
    instances : uint32 array
        0 background, objects 1..n, unique over the whole stack (Z planes
        linked into 3D objects, T frames independent).
    probabilities : float16 array or None
        Class probabilities with the class axis first, ``(3, *semantic.shape)``,
        when requested (``return_probabilities=True``).
    axes : str
        Axes of ``semantic``/``instances`` (the input's axes without C).
    device : str
        The device the network ran on.
    settings : PostprocessSettings
        The watershed parameters used.
    """

    semantic: np.ndarray
    instances: np.ndarray
    probabilities: np.ndarray | None
    axes: str
    device: str
    settings: PostprocessSettings

    def postprocess(self, **parameters) -> "Segmentation":
        """Re-run the watershed on the cached probabilities with new parameters.

        Parameters are those of :class:`~cellrefine.postprocess.PostprocessSettings`.
        Needs ``probabilities`` (segment with ``return_probabilities=True``).
        """
        if self.probabilities is None:
            raise ValueError("this Segmentation has no cached probabilities; call segment(..., return_probabilities=True) to re-run post-processing.")
        settings = dataclasses.replace(self.settings, **parameters).validate()
        probabilities_tzcyx = to_tzcyx(np.moveaxis(self.probabilities, 0, -1), self.axes + "C")
        instances = _instances_from_probabilities(probabilities_tzcyx, settings)
        return dataclasses.replace(self, instances=from_tzyx(instances, self.axes), settings=settings)


def _instances_from_probabilities(probabilities_tzcyx, settings: PostprocessSettings) -> np.ndarray:
    """(T, Z, 3, Y, X) probabilities → (T, Z, Y, X) uint32 instances, ids unique over the stack."""
    n_t, n_z = probabilities_tzcyx.shape[:2]
    out = np.zeros((n_t, n_z) + probabilities_tzcyx.shape[-2:], np.uint32)
    for t in range(n_t):
        for z in range(n_z):
            out[t, z] = probabilities_to_instances(np.asarray(probabilities_tzcyx[t, z], np.float32), settings)
    return _link_stack(out, settings)


def _link_stack(instances_tzyx: np.ndarray, settings: PostprocessSettings) -> np.ndarray:
    """Stitch Z planes per frame, then offset ids so they are unique over T."""
    offset = 0
    for t in range(instances_tzyx.shape[0]):
        frame = instances_tzyx[t]
        if frame.shape[0] > 1:
            frame = stitch_planes(frame, settings.stitch_threshold)
        frame, n = relabel_sequential(frame, offset=offset + 1)
        instances_tzyx[t] = frame
        offset += n
    return instances_tzyx


def default_tile_size(device) -> int:
    """Core tile size (pixels per side) for ``device``: 1024 on CPU/MPS; on CUDA
    scaled with free memory (2048 with >= 8 GiB free, else 1024)."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return 2048 if free >= 8 * 2**30 else 1024
    return 1024


def _starts(length: int, tile: int) -> tuple[list, int]:
    if length <= tile:
        return [0], length
    return list(range(0, length - tile, tile)) + [length - tile], tile


def iter_tiles(network, plane: np.ndarray, tile_size: int, device, batch_size: int = 1) -> Iterator:
    """Generator over batches of tiles of one plane; yields ``(done, total)`` and
    returns the (n_classes, Y, X) float32 probabilities.

    Parameters
    ----------
    network : UNet
        In eval mode, on ``device``.
    plane : (C, Y, X) float32
        Normalised image.
    tile_size : int
        Core size per side (rounded up to the network's grid).
    """
    import torch

    from .device import autocast_dtype

    grid, halo = network.grid, network.halo
    tile_size = max(grid, int(np.ceil(tile_size / grid) * grid))
    _, height, width = plane.shape
    padded_h, padded_w = (int(np.ceil(n / grid) * grid) for n in (height, width))
    padded = np.pad(plane, ((0, 0), (halo, halo + padded_h - height), (halo, halo + padded_w - width)), mode="reflect")
    starts_y, tile_h = _starts(padded_h, tile_size)
    starts_x, tile_w = _starts(padded_w, tile_size)
    tiles = [(y, x) for y in starts_y for x in starts_x]
    out = np.empty((network.out_channels, padded_h, padded_w), np.float32)
    amp = autocast_dtype(device)
    for first in range(0, len(tiles), batch_size):
        batch = tiles[first : first + batch_size]
        inputs = np.stack([padded[:, y : y + tile_h + 2 * halo, x : x + tile_w + 2 * halo] for y, x in batch])
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = network(torch.from_numpy(inputs).to(device))
            probabilities = logits.float().softmax(dim=1)[:, :, halo : halo + tile_h, halo : halo + tile_w].cpu().numpy()
        for (y, x), tile in zip(batch, probabilities):
            out[:, y : y + tile_h, x : x + tile_w] = tile
        yield first + len(batch), len(tiles)
    return out[:, :height, :width]


def predict_probabilities(network, plane: np.ndarray, tile_size: int = 1024, device=None, batch_size: int = 1) -> np.ndarray:
    """Class probabilities of one normalised (C, Y, X) plane by overlap-tile inference."""
    import torch

    device = device or next(network.parameters()).device
    generator = iter_tiles(network, np.asarray(plane, np.float32), tile_size, torch.device(device), batch_size)
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def _check_image(image):
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    dtype = np.dtype(image.dtype)
    if dtype.kind == "c":
        raise TypeError(f"complex images are not supported (dtype {dtype}); pass np.abs(image) or image.real.")
    if dtype.kind not in "biuf":
        raise TypeError(f"image must be numeric (integer, float or bool), got dtype {dtype}; convert it with image.astype(np.float32).")
    if 0 in image.shape:
        raise ValueError(f"image is empty (shape {image.shape}); pass an image with at least one pixel per axis.")
    if image.ndim > 5 or image.ndim < 2:
        raise ValueError(f"image must have 2 to 5 axes out of 'TZCYX', got {image.ndim} (shape {image.shape}).")
    return image


class PlaneReader:
    """Reads normalised (C, Y, X) float32 planes of an image for a model.

    The percentile range is computed once over the whole image/stack (a
    strided subsample; see :mod:`cellrefine.normalize`). For a one-channel
    model, colour/multichannel images are averaged over their channels (alpha
    dropped) before normalisation. Planes are read one at a time, so dask and
    zarr arrays are never loaded whole.
    """

    def __init__(self, image, axes: str, model):
        from .normalize import _subsample, percentile_range

        self.view = to_tzcyx(image, axes)
        n_t, n_z, n_c, height, width = self.view.shape
        self.shape = (n_t, n_z, height, width)
        self.in_channels = model.network.in_channels
        self.n_channels = n_c
        if n_c != self.in_channels and self.in_channels != 1:
            raise ValueError(f"the model expects {self.in_channels} channels but the image has {n_c} (axes {axes!r}); pick a matching model or channels.")
        self.check_finite = np.dtype(image.dtype).kind == "f"
        norm = model.config.get("normalization", {})
        low, high = float(norm.get("low_percentile", 1.0)), float(norm.get("high_percentile", 99.8))
        self.lo, hi = percentile_range(self._grey(_subsample(self.view)), low, high)
        self.scale = np.float32(1.0 / (hi - self.lo)) if hi > self.lo else np.float32(0.0)

    def _grey(self, array) -> np.ndarray:
        array = np.asarray(array)
        if self.in_channels == 1 and self.n_channels > 1:
            channels = array[..., :3, :, :] if self.n_channels == 4 else array
            return channels.astype(np.float32).mean(axis=-3, keepdims=True)
        return array

    def plane(self, t: int, z: int) -> np.ndarray:
        """The normalised (C, Y, X) float32 plane at (t, z)."""
        plane = self._grey(self.view[t, z])
        if self.check_finite and not np.isfinite(plane).all():
            raise ValueError(
                f"image plane (t={t}, z={z}) contains NaN or infinite values; replace them first, e.g. np.nan_to_num(image), or crop them out."
            )
        return (plane.astype(np.float32) - np.float32(self.lo)) * self.scale


def iter_segment(
    image,
    model=None,
    axes: str | None = None,
    device="auto",
    *,
    tile_size: int | None = None,
    batch_size: int | None = None,
    return_probabilities: bool = False,
    postprocess: PostprocessSettings | dict | None = None,
    planes=None,
):
    """Generator form of :func:`cellrefine.segment`: yields :class:`SegmentProgress`
    after every batch of tiles, returns the :class:`Segmentation`.

    ``planes`` optionally restricts prediction to a list of ``(t, z)`` indices
    (the others stay background) — used to segment only the current slice.
    See :func:`cellrefine.segment` for the other parameters.
    """
    import torch

    from .device import resolve_device
    from .model.io import Model, load_model

    image = _check_image(image)
    axes = check_axes(image.shape, axes)
    if model is None:
        model = load_model()
    if not isinstance(model, Model):
        raise TypeError(f"model must be a cellrefine Model (from cellrefine.load_model), got {type(model).__name__}.")
    if isinstance(postprocess, dict):
        postprocess = PostprocessSettings(**postprocess)
    settings = (postprocess or PostprocessSettings(**model.config.get("postprocess", {}))).validate()
    torch_device = resolve_device(device)
    network = model.network.to(torch_device).eval()
    if torch_device.type == "cpu":
        network = network.to(memory_format=torch.channels_last)
    tile_size = tile_size or default_tile_size(torch_device)
    batch_size = batch_size or (4 if torch_device.type == "cuda" else 1)

    reader = PlaneReader(image, axes, model)
    n_t, n_z, height, width = reader.shape
    plane_list = [(t, z) for t in range(n_t) for z in range(n_z)] if planes is None else [tuple(p) for p in planes]
    for t, z in plane_list:
        if not (0 <= t < n_t and 0 <= z < n_z):
            raise ValueError(f"plane index {(t, z)} is outside the stack (T={n_t}, Z={n_z}).")
    grid = network.grid
    tile_core = max(grid, int(np.ceil(tile_size / grid) * grid))
    tiles_per_plane = len(_starts(int(np.ceil(height / grid) * grid), tile_core)[0]) * len(_starts(int(np.ceil(width / grid) * grid), tile_core)[0])
    total = tiles_per_plane * len(plane_list)

    semantic = np.zeros((n_t, n_z, height, width), np.uint8)
    instances = np.zeros((n_t, n_z, height, width), np.uint32)
    probabilities = np.zeros((n_t, n_z, 3, height, width), np.float16) if return_probabilities else None
    started = time.perf_counter()
    done = 0
    for t, z in plane_list:
        plane = reader.plane(t, z)
        generator = iter_tiles(network, plane, tile_core, torch_device, batch_size)
        while True:
            try:
                tiles_done, _ = next(generator)
            except StopIteration as stop:
                plane_probabilities = stop.value
                break
            yield SegmentProgress(done + tiles_done, total, (t, z), time.perf_counter() - started)
        done += tiles_per_plane
        semantic[t, z] = plane_probabilities.argmax(axis=0)
        instances[t, z] = probabilities_to_instances(plane_probabilities, settings)
        if probabilities is not None:
            probabilities[t, z] = plane_probabilities
    instances = _link_stack(instances, settings)
    out_axes = "".join(a for a in axes if a != "C")
    if probabilities is not None:
        probabilities = np.stack([from_tzyx(probabilities[:, :, k], axes) for k in range(probabilities.shape[2])])
    return Segmentation(
        semantic=np.ascontiguousarray(from_tzyx(semantic, axes)),
        instances=np.ascontiguousarray(from_tzyx(instances, axes)),
        probabilities=None if probabilities is None else np.ascontiguousarray(probabilities),
        axes=out_axes,
        device=str(torch_device),
        settings=settings,
    )


def segment(image, model=None, axes: str | None = None, device="auto", progress=None, **kwargs) -> Segmentation:
    """Segment a 2D image or a stack into cell / boundary / background and instances.

    Parameters
    ----------
    image : array-like (numpy, dask, zarr)
        2 to 5 axes out of ``TZCYX``; any integer or float dtype. Never modified.
    model : Model, optional
        From :func:`cellrefine.load_model`; None loads the bundled model.
    axes : str, optional
        E.g. ``"YX"``, ``"YXC"``, ``"CYX"``, ``"ZYX"``, ``"TYX"``, ``"TZCYX"``.
        None infers it (see :mod:`cellrefine.axes`).
    device : {"auto", "cpu", "cuda", "mps"}
    progress : callable or tqdm-like, optional
        ``progress(done, total)`` after each batch of tiles; returning
        ``False`` cancels with :class:`SegmentationCancelled`. An object with
        ``update(n)`` (tqdm) is advanced instead.
    tile_size : int, optional
        Core tile size in pixels (default by device); memory stays bounded by it.
    batch_size : int, optional
        Tiles per forward pass.
    return_probabilities : bool
        Keep per-class probabilities (float16) for display and re-thresholding.
    postprocess : PostprocessSettings or dict, optional
        Watershed and stitching parameters.
    planes : list of (t, z), optional
        Only segment these planes.

    Returns
    -------
    Segmentation
        ``semantic`` (uint8), ``instances`` (uint32), ``probabilities``.

    Raises
    ------
    TypeError
        Non-numeric or complex image, wrong model type.
    ValueError
        Empty image, wrong number of axes, axes not matching the shape,
        NaN/Inf pixels, unavailable device.

    Examples
    --------
    >>> seg = segment(image)                     # doctest: +SKIP
    >>> seg.instances.max()                      # number of objects  # doctest: +SKIP
    """
    generator = iter_segment(image, model, axes, device, **kwargs)
    last = 0
    while True:
        try:
            update = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is None:
            continue
        if hasattr(progress, "update"):
            if getattr(progress, "total", None) in (None, 0):
                progress.total = update.total
            progress.update(update.done - last)
            last = update.done
        elif progress(update.done, update.total) is False:
            generator.close()
            raise SegmentationCancelled(f"segmentation cancelled after {update.done} of {update.total} tiles.")
