"""Overlap-tile prediction and the cached inference-only network.

Tiling follows the U-Net paper: each 2D plane is mirror-padded (numpy
``reflect``) by a *halo* of at least the network's receptive radius, cut into
tiles whose cores lie on the ``2**depth`` down-sampling grid, and only each
tile's core is kept. Because the bundled network is local at inference
(BatchNorm with fixed statistics, no global pooling), the tiled result equals
whole-image inference up to float rounding, whatever the tile size. Tiles are
balanced over each plane (all of one size, no tile overlapping its neighbour
by more than the halo needs).

Speed (see docs/benchmarks.md): a plain :class:`~cellrefine.model.unet.UNet`
runs as an inference-only copy (:class:`~cellrefine.model.unet.InferenceUNet`:
BatchNorm folded into the convolutions, fused convolution + ReLU,
channels-last, bfloat16 on CPUs with native bf16). The copy is built in a few
milliseconds and cached per network (:func:`inference_network`) under the
key ``(device, dtype, weights_fingerprint(network))``: a hash of the weights'
*content* (:func:`weights_fingerprint`), so any change of the weights (an
optimizer step, fused or not, ``load_state_dict``, a replaced layer) builds a
new copy, and the network passed in is never modified.
"""

from __future__ import annotations

import copy
import hashlib
import math
import numbers
import weakref
from collections.abc import Iterator

import numpy as np

from .progress import run_to_end

__all__ = [
    "check_tile_size",
    "check_batch_size",
    "MAX_TILE_SIZE",
    "MAX_BATCH_SIZE",
    "default_tile_size",
    "default_batch_size",
    "tile_starts",
    "tile_layout",
    "weights_fingerprint",
    "check_finite_weights",
    "inference_network",
    "argmax_classes",
    "predict_planes",
    "iter_tiles",
    "predict_probabilities",
]


#: Largest ``tile_size`` accepted (pixels per side; a plane smaller than the tile is one tile anyway).
MAX_TILE_SIZE = 65536
#: Largest ``batch_size`` accepted (tiles per forward pass).
MAX_BATCH_SIZE = 4096


def _check_count(name: str, value, largest: int, what: str):
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number ({what}) or None for the default, got {value!r} ({type(value).__name__}).")
    if not 1 <= value <= largest:
        raise ValueError(f"{name} must be between 1 and {largest} ({what}) or None for the default, got {value}.")
    return int(value)


def check_tile_size(tile_size) -> int | None:
    """``tile_size`` checked at the public boundary: None (the device default) or an integer in 1..:data:`MAX_TILE_SIZE`;
    a non-integer (``True``, ``64.0``) raises TypeError, zero/negative/too large raises ValueError."""
    return _check_count("tile_size", tile_size, MAX_TILE_SIZE, "pixels per side of a tile, e.g. 512; rounded up to the network's grid")


def check_batch_size(batch_size) -> int | None:
    """``batch_size`` checked at the public boundary: None (the device default) or an integer in 1..:data:`MAX_BATCH_SIZE`;
    a non-integer (``True``, ``4.0``) raises TypeError, zero/negative/too large raises ValueError."""
    return _check_count("batch_size", batch_size, MAX_BATCH_SIZE, "tiles per forward pass, e.g. 4")


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


def default_batch_size(device, tile_pixels: int | None = None, tiles_per_plane: int | None = None) -> int:
    """Tiles per forward pass: 4 on CUDA (planes that fit in one tile are
    batched together); 1 on the CPU/MPS, where batching measured slower on an
    idle machine (8 x 384² tiles: 0.32 s batched vs 0.24 s one by one;
    it only helps when other jobs share the cores)."""
    if device.type == "cuda":
        return 4
    return 1


def tile_starts(length: int, tile: int, grid: int = 1) -> tuple[list, int]:
    """Tile starts and tile length covering ``length`` (a multiple of ``grid``) with
    as few tiles of at most ``tile`` pixels as possible, all of the same length
    (a multiple of ``grid``), so no tile overlaps its neighbour by more than needed."""
    if length <= tile:
        return [0], length
    count = -(-length // tile)
    size = min(tile, -(-length // (count * grid)) * grid)
    return list(range(0, length - size, size)) + [length - size], size


def tile_layout(height: int, width: int, tile_size, grid: int) -> tuple:
    """``(starts_y, tile_h, starts_x, tile_w, padded_h, padded_w)`` of the tile cores of a ``height`` x ``width`` plane.

    The plane is padded up to the network's ``grid``; ``tile_size`` (one
    number, or a ``(rows, columns)`` pair for thin planes) is rounded up to
    the grid (see :func:`tile_starts`).
    """
    size_y, size_x = (tile_size, tile_size) if np.isscalar(tile_size) else tile_size
    size_y, size_x = (max(grid, int(np.ceil(n / grid) * grid)) for n in (size_y, size_x))
    padded_h, padded_w = (int(np.ceil(n / grid) * grid) for n in (height, width))
    starts_y, tile_h = tile_starts(padded_h, size_y, grid)
    starts_x, tile_w = tile_starts(padded_w, size_x, grid)
    return starts_y, tile_h, starts_x, tile_w, padded_h, padded_w


def weights_fingerprint(network) -> str:
    """A hash of the *content* of ``network``'s weights: what its inference copy depends on.

    BLAKE2b (16-byte digest, hex) over, for every parameter and buffer in
    ``state_dict`` order: its name, dtype, shape, device and raw bytes. Equal
    weights give equal fingerprints; any change of a value (an optimizer step,
    including fused/foreach optimizers that do not bump ``Tensor._version``,
    ``load_state_dict``, an in-place edit under ``torch.no_grad``) or of a
    shape, dtype or device changes it. It costs one pass over the weights:
    about 3 ms for the bundled network (0.48 M parameters, 1.9 MB) on a CPU,
    against about 6 ms to build its inference copy; CUDA weights are copied
    to the host first. (``Tensor._version`` is not a substitute: fused
    optimizers such as ``AdamW(fused=True)`` write the weights without
    bumping it.)

    Parameters
    ----------
    network : torch.nn.Module

    Returns
    -------
    str
        32 hexadecimal digits.
    """
    import torch

    digest = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, tensor in network.state_dict(keep_vars=True).items():
            tensor = tensor.detach()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{tensor.device}|".encode())
            data = tensor.reshape(-1).contiguous()
            if data.numel():
                digest.update(data.view(torch.uint8).cpu().numpy().data)
    return digest.hexdigest()


def check_finite_weights(network) -> None:
    """Raise ``ValueError`` if any weight or buffer of ``network`` is NaN or infinite (it would segment nothing, silently)."""
    import torch

    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"the network's weights are not finite ({name} holds NaN or Inf), e.g. after fine-tuning with too high a learning "
                    "rate; load the model again or use another one."
                )


_INFERENCE_COPIES = weakref.WeakKeyDictionary()  # UNet -> ((device, dtype, weights fingerprint), InferenceUNet)


def inference_network(network, device, precision: str = "auto") -> tuple:
    """``(network to call, autocast dtype or None)`` for inference on ``device``.

    A plain :class:`~cellrefine.model.unet.UNet` gets an
    :class:`~cellrefine.model.unet.InferenceUNet` copy (folded BatchNorm, fused
    convolution + ReLU, channels-last, bf16 where the CPU has it), built in a
    few milliseconds and cached per network (at most one copy per live
    network) under the key ``(device, dtype, weights_fingerprint(network))``,
    so it is rebuilt whenever the weights' content changed (see
    :func:`weights_fingerprint`). An ``InferenceUNet`` is used as it is. Other
    networks (subclasses with their own ``forward``, or a patched ``forward``)
    run as they are, under autocast when bf16 is chosen; they are copied to
    ``device`` if they live elsewhere. The network passed in is never modified.

    Parameters
    ----------
    network : torch.nn.Module
    device : torch.device
    precision : {"auto", "float32", "bfloat16"}
        See :func:`cellrefine.device.inference_dtypes`.

    Raises
    ------
    ValueError
        A UNet's weights hold NaN/Inf (:func:`check_finite_weights`; other
        networks are caught by the NaN check on their probabilities).
    """
    import torch

    from .device import inference_dtypes
    from .model.unet import InferenceUNet, UNet

    weights_dtype, amp = inference_dtypes(device, precision)
    if isinstance(network, InferenceUNet):
        return network, amp
    if isinstance(network, UNet) and type(network).forward is UNet.forward and "forward" not in vars(network):
        key = (str(device), weights_dtype, weights_fingerprint(network))
        cached = _INFERENCE_COPIES.get(network)
        if cached is None or cached[0] != key:
            check_finite_weights(network)  # the fused copy could turn NaN into zeros (ReLU), i.e. silently nothing found
            cached = (key, InferenceUNet(network, device=device, dtype=weights_dtype))
            _INFERENCE_COPIES[network] = cached
        return cached[1], amp
    if amp is None and weights_dtype != torch.float32:
        amp = weights_dtype
    tensors = list(network.parameters()) + list(network.buffers())
    if tensors and tensors[0].device != device:
        network = copy.deepcopy(network).to(device).eval()
    return network, amp


def argmax_classes(probabilities: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = probabilities.argmax(axis=0)`` (first maximum wins), by comparisons for 3 classes
    (several times faster than an arg-max over the short class axis)."""
    if probabilities.shape[0] != 3:
        out[...] = probabilities.argmax(axis=0)
        return
    background, cell, boundary = probabilities
    np.greater(cell, background, out=out, casting="unsafe")
    out[boundary > np.maximum(background, cell)] = 2


def predict_planes(
    network, amp, planes: list, tile_size, device, batch_size: int, outs: list, semantics: list | None = None, border: int | None = None
) -> Iterator:
    """Generator over forward passes of the tiles of one or more (C, Y, X) planes of one shape;
    yields ``(tiles done, tiles total, index of the plane of the last tile)``.

    ``network``/``amp`` come from :func:`inference_network`. A batch holds
    ``batch_size`` tiles, taken in order over the planes (so planes that are
    one tile each are batched together). Writes each plane's class
    probabilities into ``outs[i]`` ((n_classes, Y, X) float32) and, if given,
    their arg-max into ``semantics[i]`` ((Y, X) uint8). ``tile_size`` is one
    number or a ``(rows, columns)`` pair. ``border`` is the mirror padding at
    the plane's edges (default: the halo, as between tiles); a smaller one
    saves work on thin planes (the network saw zero-padded crop edges in
    training), the seams between tiles always get the full halo.
    """
    import torch

    grid, halo = network.grid, network.halo
    border = halo if border is None else min(int(border), halo)
    _, height, width = planes[0].shape
    starts_y, tile_h, starts_x, tile_w, padded_h, padded_w = tile_layout(height, width, tile_size, grid)
    pad = ((0, 0), (halo, halo + padded_h - height), (halo, halo + padded_w - width))
    padded = [np.pad(plane, pad, mode="reflect") for plane in planes]
    tiles = [(i, y, x) for i in range(len(planes)) for y in starts_y for x in starts_x]
    outs_t = [torch.from_numpy(out) for out in outs]
    last_y, last_x = starts_y[-1], starts_x[-1]

    def window(start: int, size: int, last: int) -> tuple[int, int, int]:
        """(first, end, core offset) of the padded rows (or columns) a tile reads: the full halo inside, ``border`` at the plane's edges."""
        before = border if start == 0 else halo
        after = border if start == last else halo
        return start + halo - before, start + halo + size + after, before

    # batches of at most batch_size tiles that read windows of one geometry (with border < halo, edge tiles differ)
    batches, geometry = [], None
    for i, y, x in tiles:
        (y0, y1, oy), (x0, x1, ox) = window(y, tile_h, last_y), window(x, tile_w, last_x)
        tile_geometry = (y1 - y0, x1 - x0, oy, ox)
        if not batches or tile_geometry != geometry or len(batches[-1]) == batch_size:
            batches.append([])
            geometry = tile_geometry
        batches[-1].append((i, y, x, y0, y1, x0, x1, oy, ox))
    done = 0
    for batch in batches:
        crops = [padded[i][:, y0:y1, x0:x1] for i, _, _, y0, y1, x0, x1, _, _ in batch]
        oy, ox = batch[0][7], batch[0][8]
        inputs = crops[0][None] if len(crops) == 1 else np.stack(crops)
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = network(torch.from_numpy(inputs).to(device))
            probabilities = logits[:, :, oy : oy + tile_h, ox : ox + tile_w].float().softmax(dim=1).cpu()
            del logits
            if not math.isfinite(float(probabilities.sum())):  # softmax is in [0, 1] or NaN; a sum is ~60x cheaper than isfinite().all()
                raise ValueError(
                    "the network produced NaN or infinite probabilities: its weights are not finite (e.g. fine-tuned with too high a "
                    "learning rate); load the model again or use another one."
                )
            for k, (i, y, x, *_) in enumerate(batch):
                rows, cols = min(tile_h, height - y), min(tile_w, width - x)
                outs_t[i][:, y : y + rows, x : x + cols] = probabilities[k, :, :rows, :cols]
                if semantics is not None:
                    argmax_classes(outs[i][:, y : y + rows, x : x + cols], semantics[i][y : y + rows, x : x + cols])
            del probabilities
        done += len(batch)
        yield done, len(tiles), batch[-1][0]


def iter_tiles(network, plane: np.ndarray, tile_size: int, device, batch_size: int = 1, precision: str = "auto") -> Iterator:
    """Generator over batches of tiles of one plane; yields ``(done, total)`` and
    returns the (n_classes, Y, X) float32 probabilities.

    Parameters
    ----------
    network : UNet
        Any UNet (never modified; see :func:`inference_network`).
    plane : (C, Y, X) float32
        Normalised image.
    tile_size : int
        Largest core size per side (rounded up to the network's grid); the
        plane is cut into equal tiles no larger than this.
    device : torch.device
    batch_size : int
        Tiles per forward pass.
    precision : {"auto", "float32", "bfloat16"}
        See :func:`cellrefine.device.inference_dtypes`.
    """
    tile_size, batch_size = check_tile_size(tile_size), check_batch_size(batch_size)
    if tile_size is None or batch_size is None:
        raise TypeError("iter_tiles needs tile_size and batch_size (integers); see default_tile_size and default_batch_size.")
    network, amp = inference_network(network, device, precision)
    out = np.empty((network.out_channels,) + plane.shape[1:], np.float32)
    for done, total, _ in predict_planes(network, amp, [plane], tile_size, device, batch_size, [out]):
        yield done, total
    return out


def predict_probabilities(
    network, plane: np.ndarray, tile_size: int | None = None, device=None, batch_size: int = 1, precision: str = "auto"
) -> np.ndarray:
    """Class probabilities of one normalised plane by overlap-tile inference.

    Parameters
    ----------
    network : UNet
        Never modified; runs through its cached inference copy (:func:`inference_network`).
    plane : (C, Y, X) array
        Normalised image (see :class:`cellrefine.reader.PlaneReader`).
    tile_size : int, optional
        None: :func:`default_tile_size` of the device (see :func:`check_tile_size`).
    device : torch.device or str, optional
        None: the network's device.
    batch_size : int
        Tiles per forward pass (see :func:`check_batch_size`).
    precision : {"auto", "float32", "bfloat16"}

    Returns
    -------
    (n_classes, Y, X) float32 array
    """
    import torch

    tile_size, batch_size = check_tile_size(tile_size), check_batch_size(batch_size) or 1
    device = torch.device(device or next(network.parameters()).device)
    tile_size = tile_size or default_tile_size(device)
    return run_to_end(iter_tiles(network, np.asarray(plane, np.float32), tile_size, device, batch_size, precision))
