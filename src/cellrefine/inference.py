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

Speed (see docs/benchmarks.md): the network runs as an inference-only copy
(:class:`~cellrefine.model.unet.InferenceUNet`: BatchNorm folded into the
convolutions, fused convolution + ReLU, channels-last, bfloat16 on CPUs with
native bf16), built per call so the user's model is never modified; tiles are
balanced over each plane (no tile overlaps more than the halo needs); class
probabilities and the semantic arg-max are written straight into per-plane
buffers; with ``batch_size > 1`` (the CUDA default) planes that fit in one
tile are batched together; and for stacks the watershed of plane *k* runs in
a worker thread while the network predicts plane *k+1*.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import logging
import time
import weakref
from collections.abc import Iterator

import numpy as np

from .axes import check_axes, from_tzyx, to_tzcyx
from .postprocess import PostprocessSettings, probabilities_to_instances, stitch_planes

logger = logging.getLogger(__name__)

__all__ = ["Segmentation", "SegmentProgress", "SegmentationCancelled", "iter_segment", "segment", "predict_probabilities", "default_tile_size"]

#: Post-process plane k in a worker thread while the network predicts plane k+1 (stacks only).
OVERLAP_POSTPROCESS = True
#: Largest block of planes (bytes) read at once from a chunked (dask/zarr) array.
MAX_BLOCK_BYTES = 256 * 2**20


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

    def postprocess(self, **parameters) -> Segmentation:
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
    """Stitch Z planes per frame, then offset ids so they are unique over T (in place).

    Every plane holds ids 1..n (``probabilities_to_instances``) and
    ``stitch_planes`` returns ids 1..n, so offsetting is all the relabelling needed.
    """
    offset = 0
    for t in range(instances_tzyx.shape[0]):
        frame = instances_tzyx[t]
        if frame.shape[0] > 1:
            stitch_planes(frame, settings.stitch_threshold, out=frame)
        n = int(frame.max()) if frame.size else 0
        if offset and n:
            np.add(frame, np.uint32(offset), out=frame, where=frame > 0)
        offset += n
    return instances_tzyx


def default_tile_size(device) -> int:
    """Largest core tile (pixels per side) for ``device``: 768 on CPU/MPS; on CUDA
    scaled with free memory (2048 with >= 8 GiB free, else 1024).

    Planes larger than this are cut into equal tiles no larger than it. On
    the CPU, 768 (at most 896² with the halo) is the measured optimum: a
    bfloat16 activation of such a tile stays under 32 MiB, which glibc serves
    from its heap and reuses, whereas larger ones are fresh ``mmap``s that
    page-fault on every tile and spill the caches (bare network on one tile:
    5.2 MPix/s at 768², 4.0 at 1152², 3.4 at 2176²; the whole 2048² pipeline
    1.42 s with 768 vs 1.70 s with 1024, see docs/benchmarks.md)."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return 2048 if free >= 8 * 2**30 else 1024
    return 768


def _starts(length: int, tile: int, grid: int = 1) -> tuple[list, int]:
    """Tile starts and tile length covering ``length`` (a multiple of ``grid``) with
    as few tiles of at most ``tile`` pixels as possible, all of the same length
    (a multiple of ``grid``), so no tile overlaps its neighbour by more than needed."""
    if length <= tile:
        return [0], length
    count = -(-length // tile)
    size = min(tile, -(-length // (count * grid)) * grid)
    return list(range(0, length - size, size)) + [length - size], size


def _tile_layout(height: int, width: int, tile_size: int, grid: int):
    """``(starts_y, tile_h, starts_x, tile_w, padded_h, padded_w)`` for a plane."""
    tile_size = max(grid, int(np.ceil(tile_size / grid) * grid))
    padded_h, padded_w = (int(np.ceil(n / grid) * grid) for n in (height, width))
    starts_y, tile_h = _starts(padded_h, tile_size, grid)
    starts_x, tile_w = _starts(padded_w, tile_size, grid)
    return starts_y, tile_h, starts_x, tile_w, padded_h, padded_w


def _inference_network(network, device, precision: str = "auto"):
    """``(network to call, autocast dtype or None)`` for inference on ``device``.

    A plain :class:`UNet` gets an :class:`InferenceUNet` copy (folded
    BatchNorm, fused convolution + ReLU, channels-last, bf16 where the CPU
    has it), built in a few milliseconds and cached per network until its
    weights change; the network passed in is never modified. Other networks (subclasses with their own ``forward``, or a
    patched ``forward``) run as they are, under autocast when bf16 is chosen;
    they are copied to ``device`` if they live elsewhere.
    """
    import torch

    from .device import inference_dtypes
    from .model.unet import InferenceUNet, UNet

    weights_dtype, amp = inference_dtypes(device, precision)
    if isinstance(network, InferenceUNet):
        return network, amp
    if isinstance(network, UNet) and type(network).forward is UNet.forward and "forward" not in vars(network):
        return _cached_inference_unet(network, device, weights_dtype), amp
    if amp is None and weights_dtype != torch.float32:
        amp = weights_dtype
    tensors = list(network.parameters()) + list(network.buffers())
    if tensors and tensors[0].device != device:
        network = copy.deepcopy(network).to(device).eval()
    return network, amp


_INFERENCE_COPIES = weakref.WeakKeyDictionary()  # UNet -> (weights key, InferenceUNet)


def _weights_key(network, device, dtype) -> tuple:
    """What the inference copy depends on: device, dtype, and every parameter and
    buffer by identity (weak reference) and in-place version counter, so an
    optimizer step, ``load_state_dict`` or a replaced layer all invalidate it."""
    tensors = [*network.parameters(), *network.buffers()]
    return (str(device), dtype, len(tensors)), [(weakref.ref(t), t._version) for t in tensors]


def _cached_inference_unet(network, device, dtype):
    """The :class:`InferenceUNet` copy of ``network`` for ``device``/``dtype``, rebuilt
    (in a few ms) whenever its weights changed; one per live network."""
    from .model.unet import InferenceUNet

    head, versions = _weights_key(network, device, dtype)
    cached = _INFERENCE_COPIES.get(network)
    if cached is not None:
        (cached_head, cached_versions), fast = cached
        if cached_head == head and all(a() is not None and a() is b() and va == vb for (a, va), (b, vb) in zip(cached_versions, versions)):
            return fast
    fast = InferenceUNet(network, device=device, dtype=dtype)
    _INFERENCE_COPIES[network] = ((head, versions), fast)
    return fast


def _predict_planes(network, amp, planes: list, tile_size: int, device, batch_size: int, outs: list, semantics: list | None = None):
    """Generator over forward passes of the tiles of one or more (C, Y, X) planes of one shape;
    yields ``(tiles done, tiles total, index of the plane of the last tile)``.

    A batch holds ``batch_size`` tiles, taken in order over the planes (so
    planes that are one tile each are batched together). Writes each plane's
    class probabilities into ``outs[i]`` ((n_classes, Y, X) float32) and, if
    given, their arg-max into ``semantics[i]`` ((Y, X) uint8).
    """
    import torch

    grid, halo = network.grid, network.halo
    _, height, width = planes[0].shape
    starts_y, tile_h, starts_x, tile_w, padded_h, padded_w = _tile_layout(height, width, tile_size, grid)
    pad = ((0, 0), (halo, halo + padded_h - height), (halo, halo + padded_w - width))
    padded = [np.pad(plane, pad, mode="reflect") for plane in planes]
    tiles = [(i, y, x) for i in range(len(planes)) for y in starts_y for x in starts_x]
    outs_t = [torch.from_numpy(out) for out in outs]
    for first in range(0, len(tiles), batch_size):
        batch = tiles[first : first + batch_size]
        crops = [padded[i][:, y : y + tile_h + 2 * halo, x : x + tile_w + 2 * halo] for i, y, x in batch]
        inputs = crops[0][None] if len(crops) == 1 else np.stack(crops)
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = network(torch.from_numpy(inputs).to(device))
            probabilities = logits[:, :, halo : halo + tile_h, halo : halo + tile_w].float().softmax(dim=1).cpu()
            del logits
            for k, (i, y, x) in enumerate(batch):
                rows, cols = min(tile_h, height - y), min(tile_w, width - x)
                outs_t[i][:, y : y + rows, x : x + cols] = probabilities[k, :, :rows, :cols]
                if semantics is not None:
                    _argmax_classes(outs[i][:, y : y + rows, x : x + cols], semantics[i][y : y + rows, x : x + cols])
            del probabilities
        yield first + len(batch), len(tiles), batch[-1][0]


def _predict_plane(network, amp, plane: np.ndarray, tile_size: int, device, batch_size: int, out: np.ndarray, semantic: np.ndarray | None = None):
    """:func:`_predict_planes` for one plane; yields ``(done, total)``."""
    for done, total, _ in _predict_planes(network, amp, [plane], tile_size, device, batch_size, [out], None if semantic is None else [semantic]):
        yield done, total


def default_batch_size(device, tile_pixels: int, tiles_per_plane: int) -> int:
    """Tiles per forward pass: 4 on CUDA (planes that fit in one tile are
    batched together); 1 on the CPU/MPS, where batching measured slower on an
    idle machine (8 x 384² tiles: 0.32 s batched vs 0.24 s one by one;
    it only helps when other jobs share the cores)."""
    if device.type == "cuda":
        return 4
    return 1


def _argmax_classes(probabilities: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = probabilities.argmax(axis=0)`` (first maximum wins), by comparisons for 3 classes
    (several times faster than an arg-max over the short class axis)."""
    if probabilities.shape[0] != 3:
        out[...] = probabilities.argmax(axis=0)
        return
    background, cell, boundary = probabilities
    np.greater(cell, background, out=out, casting="unsafe")
    out[boundary > np.maximum(background, cell)] = 2


def iter_tiles(network, plane: np.ndarray, tile_size: int, device, batch_size: int = 1, precision: str = "auto") -> Iterator:
    """Generator over batches of tiles of one plane; yields ``(done, total)`` and
    returns the (n_classes, Y, X) float32 probabilities.

    Parameters
    ----------
    network : UNet
        Any UNet (never modified; see :func:`_inference_network`).
    plane : (C, Y, X) float32
        Normalised image.
    tile_size : int
        Largest core size per side (rounded up to the network's grid); the
        plane is cut into equal tiles no larger than this.
    precision : {"auto", "float32", "bfloat16"}
        See :func:`cellrefine.device.inference_dtypes`.
    """
    network, amp = _inference_network(network, device, precision)
    out = np.empty((network.out_channels,) + plane.shape[1:], np.float32)
    yield from _predict_plane(network, amp, plane, tile_size, device, batch_size, out)
    return out


def predict_probabilities(
    network, plane: np.ndarray, tile_size: int | None = None, device=None, batch_size: int = 1, precision: str = "auto"
) -> np.ndarray:
    """Class probabilities of one normalised (C, Y, X) plane by overlap-tile inference
    (``tile_size`` None: :func:`default_tile_size` of the device)."""
    import torch

    device = torch.device(device or next(network.parameters()).device)
    tile_size = tile_size or default_tile_size(device)
    generator = iter_tiles(network, np.asarray(plane, np.float32), tile_size, device, batch_size, precision)
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


class _LazyView:
    """(T, Z, C, Y, X) view of an array that has numpy-style indexing but no
    ``transpose``/``reshape`` (zarr, h5py): indexing reads only what is asked for."""

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


class PlaneReader:
    """Reads normalised (C, Y, X) float32 planes of an image for a model.

    The percentile range is computed once over the whole image/stack (a
    strided subsample; see :mod:`cellrefine.normalize`). For a one-channel
    model, colour/multichannel images are averaged over their channels (alpha
    dropped) before normalisation. Planes are read one at a time, so dask and
    zarr arrays are never loaded whole; when such an array is chunked over
    several planes (T or Z), the block of planes of one chunk (at most
    ``MAX_BLOCK_BYTES``) is read once and kept until its last plane is used,
    so each chunk is computed/decompressed once rather than once per plane.
    """

    def __init__(self, image, axes: str, model):
        from .normalize import _subsample, percentile_range

        if isinstance(image, np.ndarray) or (hasattr(image, "transpose") and hasattr(image, "reshape")):
            self.view = to_tzcyx(image, axes)
        else:
            self.view = _LazyView(image, axes)
        n_t, n_z, n_c, height, width = self.view.shape
        self.shape = (n_t, n_z, height, width)
        self.in_channels = model.network.in_channels
        self.n_channels = n_c
        if n_c != self.in_channels and self.in_channels != 1:
            raise ValueError(
                f"the model expects {self.in_channels} channels but the image has {n_c} (axes {axes!r}); pick a matching model or channels."
            )
        self.check_finite = np.dtype(image.dtype).kind == "f"
        norm = model.config.get("normalization", {})
        low, high = float(norm.get("low_percentile", 1.0)), float(norm.get("high_percentile", 99.8))
        self.lo, hi = percentile_range(self._grey(_subsample(self.view)), low, high)
        self.scale = np.float32(1.0 / (hi - self.lo)) if hi > self.lo else np.float32(0.0)
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
        if max(chunks[0]) * max(chunks[1]) * plane_bytes > MAX_BLOCK_BYTES:
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
            channels = array[..., :3, :, :] if self.n_channels == 4 else array
            return channels.astype(np.float32).mean(axis=-3, keepdims=True)
        return array

    def plane(self, t: int, z: int) -> np.ndarray:
        """The normalised (C, Y, X) float32 plane at (t, z)."""
        plane = self._grey(self._raw(t, z))
        if self.check_finite and not np.isfinite(plane).all():
            raise ValueError(
                f"image plane (t={t}, z={z}) contains NaN or infinite values; replace them first, e.g. np.nan_to_num(image), or crop them out."
            )
        # one float32 array, scaled in place (a plane that is a view of the caller's data is copied first)
        out = plane.astype(np.float32, copy=plane.dtype != np.float32 or plane.base is not None or not plane.flags.writeable)
        out -= np.float32(self.lo)
        out *= self.scale
        return out


def _postprocess_plane(probabilities: np.ndarray, instances: np.ndarray, settings: PostprocessSettings) -> None:
    instances[...] = probabilities_to_instances(probabilities, settings)


def _postprocess_planes(work: list, settings: PostprocessSettings) -> None:
    """Watershed of each ``(probabilities, instances view)`` pair, in order."""
    for probabilities, instances in work:
        _postprocess_plane(probabilities, instances, settings)


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
    precision: str = "auto",
):
    """Generator form of :func:`cellrefine.segment`: yields :class:`SegmentProgress`
    after every batch of tiles, returns the :class:`Segmentation`.

    ``planes`` optionally restricts prediction to a list of ``(t, z)`` indices
    (the others stay background) — used to segment only the current slice.
    See :func:`cellrefine.segment` for the other parameters.
    """
    from .device import inference_dtypes, resolve_device
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
    inference_dtypes(torch_device, precision)  # validates precision before any work
    tile_size = tile_size or default_tile_size(torch_device)

    reader = PlaneReader(image, axes, model)
    n_t, n_z, height, width = reader.shape
    plane_list = [(t, z) for t in range(n_t) for z in range(n_z)] if planes is None else [tuple(p) for p in planes]
    for t, z in plane_list:
        if not (0 <= t < n_t and 0 <= z < n_z):
            raise ValueError(f"plane index {(t, z)} is outside the stack (T={n_t}, Z={n_z}).")
    network, amp = _inference_network(model.network, torch_device, precision)
    starts_y, tile_h, starts_x, tile_w, _, _ = _tile_layout(height, width, tile_size, network.grid)
    tiles_per_plane = len(starts_y) * len(starts_x)
    total = tiles_per_plane * len(plane_list)
    tile_pixels = (tile_h + 2 * network.halo) * (tile_w + 2 * network.halo)
    batch_size = batch_size or default_batch_size(torch_device, tile_pixels, tiles_per_plane)
    group = batch_size if tiles_per_plane == 1 else 1  # planes predicted together

    semantic = np.zeros((n_t, n_z, height, width), np.uint8)
    instances = np.zeros((n_t, n_z, height, width), np.uint32)
    probabilities = np.zeros((3, n_t, n_z, height, width), np.float16) if return_probabilities else None
    started = time.perf_counter()
    done = 0
    pool = (
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cellrefine-postprocess")
        if OVERLAP_POSTPROCESS and len(plane_list) > group
        else None
    )
    pending = None
    try:
        for first in range(0, len(plane_list), group):
            indices = plane_list[first : first + group]
            outs = [np.empty((network.out_channels, height, width), np.float32) for _ in indices]
            generator = _predict_planes(
                network,
                amp,
                [reader.plane(t, z) for t, z in indices],
                tile_size,
                torch_device,
                batch_size,
                outs,
                [semantic[t, z] for t, z in indices],
            )
            for tiles_done, _, k in generator:
                yield SegmentProgress(done + tiles_done, total, indices[k], time.perf_counter() - started)
            done += tiles_per_plane * len(indices)
            if probabilities is not None:
                for (t, z), out in zip(indices, outs):
                    probabilities[:, t, z] = out
            if pending is not None:
                pending.result()
                pending = None
            work = [(out, instances[t, z]) for (t, z), out in zip(indices, outs)]
            if pool is None:
                _postprocess_planes(work, settings)
            else:
                pending = pool.submit(_postprocess_planes, work, settings)
            del outs, work
        if pending is not None:
            pending.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    instances = _link_stack(instances, settings)
    out_axes = "".join(a for a in axes if a != "C")
    if probabilities is not None:
        probabilities = _classes_first(probabilities, axes)
    return Segmentation(
        semantic=np.ascontiguousarray(from_tzyx(semantic, axes)),
        instances=np.ascontiguousarray(from_tzyx(instances, axes)),
        probabilities=probabilities,
        axes=out_axes,
        device=str(torch_device),
        settings=settings,
    )


def _classes_first(probabilities_ctzyx: np.ndarray, axes: str) -> np.ndarray:
    """(n_classes, T, Z, Y, X) → (n_classes, *spatial shape in the input's axis order), without a copy when the order allows."""
    target = [a for a in axes if a != "C"]
    kept = [a for a in "TZYX" if a in target]
    if target == kept:
        return probabilities_ctzyx.reshape((probabilities_ctzyx.shape[0],) + tuple(probabilities_ctzyx.shape[1 + "TZYX".index(a)] for a in kept))
    return np.ascontiguousarray(np.stack([from_tzyx(p, axes) for p in probabilities_ctzyx]))


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
        Largest core tile size in pixels (default by device, see
        :func:`default_tile_size`); planes are cut into equal tiles no larger
        than this, and memory stays bounded by it.
    batch_size : int, optional
        Tiles per forward pass (default: :func:`default_batch_size`); planes
        that fit in one tile are batched together.
    precision : {"auto", "float32", "bfloat16"}
        ``"auto"`` runs the network in bfloat16 on CPUs with native bf16
        instructions (object F1 on the nuclei validation set unchanged, see
        docs/benchmarks.md) and under autocast on CUDA; ``"float32"`` forces
        full precision.
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
