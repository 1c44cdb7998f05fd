"""The 3D mode for Z stacks: class probabilities fused from three orthogonal views.

One (Z, Y, X) frame is predicted three times by the 2D network:

* ``YX``: every Z plane, at its own resolution (as the 2D mode);
* ``ZX``: every Y row's (Z, X) plane, with Z resampled to the X spacing
  (``scale_z / scale_x`` times as many rows, linear interpolation), predicted,
  and its probabilities resampled back to the Z planes;
* ``ZY``: every X column's (Z, Y) plane, likewise with the Y spacing.

Each view adds a third of its probabilities into one float16 accumulator of
the frame's shape, so memory stays at the output (2 bytes x 3 classes per
voxel) plus the normalised frame (4 bytes per voxel and channel) and one block
of planes; the views are streamed in blocks of planes, never as resampled
volumes. The fused probabilities then go through the 3D seeded watershed
(:func:`cellrefine.postprocess.probabilities_to_instances_3d`).

The ZX and ZY planes are thin (a few dozen rows for most stacks), so they are
cut into wide tiles of the same area as the 2D tiles, and their edges are
mirror-padded by :data:`THIN_PLANE_BORDER` pixels instead of the full halo
(the seams between tiles keep the full halo): the network was trained on
crops whose edges it sees zero-padded, and the full halo would triple the
work of a 64-row plane.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from .postprocess import offset_frames, probabilities_to_instances_3d
from .resample import isotropic_length, resample_axis
from .tiling import argmax_classes, predict_planes, tile_layout

__all__ = [
    "STACK_MODES",
    "MIN_3D_PLANES",
    "resolve_stack_mode",
    "VIEWS",
    "THIN_PLANE_BORDER",
    "ViewPlan",
    "plan_views",
    "iter_fused_probabilities",
    "iter_segment_3d",
]

#: The three views, named by the axes of their planes.
VIEWS = ("YX", "ZX", "ZY")
#: Mirror padding (pixels) at the edges of the ZX and ZY planes (the YX planes use the full halo).
THIN_PLANE_BORDER = 16
#: ``stack_mode`` values: ``"auto"`` picks by :func:`resolve_stack_mode`.
STACK_MODES = ("auto", "3d", "stitch")
#: ``stack_mode="auto"`` segments stacks with at least this many Z planes in 3D (see docs/benchmarks.md).
MIN_3D_PLANES = 4
#: Planes of the ZX/ZY views gathered into one block (one strided read of the frame, one write back).
BLOCK_PLANES = 32
#: ... and at most about this many bytes of float32 planes (input, probabilities, their stack) per block.
BLOCK_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class ViewPlan:
    """How one view of a (Z, Y, X) frame is predicted.

    Attributes
    ----------
    view : {"YX", "ZX", "ZY"}
    planes : int
        Number of planes (Z, Y or X).
    rows, columns : int
        Size of each plane as the network sees it (rows resampled to isotropic spacing for ZX/ZY).
    tile_size : int or (int, int)
        Core tile size passed to :func:`cellrefine.tiling.predict_planes`.
    tiles_per_plane : int
    border : int or None
        Mirror padding at the plane edges (None: the network's halo).
    """

    view: str
    planes: int
    rows: int
    columns: int
    tile_size: object
    tiles_per_plane: int
    border: int | None

    @property
    def tiles(self) -> int:
        return self.planes * self.tiles_per_plane


def resolve_stack_mode(stack_mode: str, n_z: int, planes=None) -> str:
    """The mode that runs: ``"2d"`` (one plane per frame), ``"stitch"`` or ``"3d"``.

    ``"auto"`` is ``"3d"`` for frames of at least :data:`MIN_3D_PLANES` Z planes
    when all planes are segmented, else ``"stitch"``.

    Raises
    ------
    TypeError, ValueError
        ``stack_mode`` is not one of :data:`STACK_MODES`, or ``"3d"`` was asked
        for a subset of ``planes`` (the 3D mode needs whole frames).
    """
    if not isinstance(stack_mode, str):
        raise TypeError(f"stack_mode must be a string, one of {', '.join(map(repr, STACK_MODES))}; got {type(stack_mode).__name__}.")
    if stack_mode not in STACK_MODES:
        raise ValueError(f"stack_mode must be one of {', '.join(map(repr, STACK_MODES))}, got {stack_mode!r}.")
    if n_z == 1:
        return "2d"
    if stack_mode == "3d" and planes is not None:
        raise ValueError("stack_mode='3d' segments whole frames; pass planes=None, or stack_mode='stitch' to segment only some planes.")
    if stack_mode == "auto":
        return "3d" if planes is None and n_z >= MIN_3D_PLANES else "stitch"
    return stack_mode


def _thin_tile(rows: int, tile_size: int, grid: int) -> tuple[int, int]:
    """A tile for a thin plane: all its rows (when they fit) and as many columns as keep the tile's area at ``tile_size``**2."""
    rows_on_grid = int(np.ceil(rows / grid) * grid)
    if rows_on_grid >= tile_size:
        return tile_size, tile_size
    return rows_on_grid, max(tile_size, (tile_size * tile_size) // rows_on_grid)


def plan_views(shape_zyx: tuple, scale_zyx: tuple, tile_size: int, grid: int) -> list[ViewPlan]:
    """The three :class:`ViewPlan` of a frame of ``shape_zyx`` with voxel size ``scale_zyx``.

    Parameters
    ----------
    shape_zyx : (int, int, int)
    scale_zyx : (float, float, float)
        Voxel size (only ratios matter), as from :func:`cellrefine.axes.check_scale`.
    tile_size : int
        The 2D core tile size (see :func:`cellrefine.tiling.default_tile_size`).
    grid : int
        The network's down-sampling grid.
    """
    n_z, n_y, n_x = shape_zyx
    scale_z, scale_y, scale_x = scale_zyx
    plans = []
    for view, planes, rows, columns, border in (
        ("YX", n_z, n_y, n_x, None),
        ("ZX", n_y, isotropic_length(n_z, scale_z / scale_x), n_x, THIN_PLANE_BORDER),
        ("ZY", n_x, isotropic_length(n_z, scale_z / scale_y), n_y, THIN_PLANE_BORDER),
    ):
        size = tile_size if view == "YX" else _thin_tile(rows, tile_size, grid)
        starts_y, _, starts_x, _, _, _ = tile_layout(rows, columns, size, grid)
        plans.append(ViewPlan(view, planes, rows, columns, size, len(starts_y) * len(starts_x), border))
    return plans


def _view_block(volume: np.ndarray, view: str, first: int, last: int) -> np.ndarray:
    """Planes ``first:last`` of a view of the (C, Z, Y, X) frame as (planes, C, rows, columns), contiguous."""
    if view == "YX":
        return np.ascontiguousarray(np.moveaxis(volume[:, first:last], 1, 0))
    if view == "ZX":
        return np.ascontiguousarray(np.moveaxis(volume[:, :, first:last], 2, 0))
    return np.ascontiguousarray(np.moveaxis(volume[:, :, :, first:last], 3, 0))


def _add_block(out: np.ndarray, view: str, first: int, last: int, probabilities: np.ndarray, assign: bool) -> None:
    """Add (or assign) a third of a block's (planes, classes, rows, columns) probabilities into the (classes, Z, Y, X) accumulator."""
    third = (probabilities * np.float32(1 / 3)).astype(out.dtype)
    if view == "YX":
        target, block = out[:, first:last], np.moveaxis(third, 0, 1)
    elif view == "ZX":
        target, block = out[:, :, first:last], np.moveaxis(third, 0, 2)
    else:
        target, block = out[:, :, :, first:last], np.moveaxis(third, 0, 3)
    if assign:
        target[...] = block
    else:
        target += block


def iter_fused_probabilities(volume: np.ndarray, network, amp, device, plans: list[ViewPlan], batch_size: int, out: np.ndarray) -> Iterator:
    """Predict the three views of one frame and average them into ``out``.

    Parameters
    ----------
    volume : (C, Z, Y, X) float32
        The normalised frame (:class:`cellrefine.reader.PlaneReader` planes).
    network, amp
        From :func:`cellrefine.tiling.inference_network`.
    device : torch.device
    plans : list of ViewPlan
        From :func:`plan_views` (the YX plan first: it initialises ``out``).
    batch_size : int
        Tiles per forward pass.
    out : (classes, Z, Y, X) float16 array
        Receives the mean of the three views' probabilities (overwritten).

    Yields
    ------
    (tiles done, view, plane index)
        After every forward pass; tiles count over all views of this frame.
    """
    done = 0
    for plan in plans:
        plane_bytes = 4 * plan.rows * plan.columns * (volume.shape[0] + 2 * out.shape[0])
        block_planes = 1 if plan.view == "YX" and plan.tiles_per_plane > 1 else max(1, min(BLOCK_PLANES, BLOCK_BYTES // plane_bytes))
        for first in range(0, plan.planes, block_planes):
            last = min(first + block_planes, plan.planes)
            block = _view_block(volume, plan.view, first, last)
            native_rows = block.shape[2]
            if plan.rows != native_rows:
                block = resample_axis(block, 2, plan.rows, order=1)
            planes = list(block)
            outs = [np.empty((out.shape[0], plan.rows, plan.columns), np.float32) for _ in planes]
            for tiles_done, _, k in predict_planes(network, amp, planes, plan.tile_size, device, batch_size, outs, border=plan.border):
                yield done + tiles_done, plan.view, first + k
            done += plan.tiles_per_plane * len(planes)
            probabilities = np.stack(outs)
            del outs, planes, block
            if plan.rows != native_rows:
                probabilities = resample_axis(probabilities, 2, native_rows, order=1)
            _add_block(out, plan.view, first, last, probabilities, assign=plan.view == "YX")


def iter_segment_3d(reader, network, amp, device, tile_size: int, batch_size: int, scale: tuple, settings, return_probabilities: bool):
    """The 3D mode over every frame of a :class:`cellrefine.reader.PlaneReader`: fused views, arg-max, 3D watershed.

    Yields ``(tiles done, tiles total, (t, plane index), view)``; returns
    ``(semantic, instances, probabilities or None)`` as (T, Z, Y, X) arrays
    ((3, T, Z, Y, X) float16 for the probabilities), instance ids unique over T.
    :func:`cellrefine.inference.iter_segment` drives it.
    """
    n_t, n_z, height, width = reader.shape
    plans = plan_views((n_z, height, width), scale, tile_size, network.grid)
    frame_tiles = sum(plan.tiles for plan in plans)
    total = frame_tiles * n_t
    semantic = np.zeros((n_t, n_z, height, width), np.uint8)
    instances = np.zeros((n_t, n_z, height, width), np.uint32)
    probabilities = np.zeros((3, n_t, n_z, height, width), np.float16) if return_probabilities else None
    for t in range(n_t):
        volume = np.stack([reader.plane(t, z) for z in range(n_z)], axis=1)  # (C, Z, Y, X), normalised
        fused = probabilities[:, t] if probabilities is not None else np.empty((3, n_z, height, width), np.float16)
        for done, view, index in iter_fused_probabilities(volume, network, amp, device, plans, batch_size, fused):
            yield t * frame_tiles + done, total, (t, index), view
        del volume
        for z in range(n_z):
            argmax_classes(fused[:, z], semantic[t, z])
        probabilities_to_instances_3d(fused, settings, scale, out=instances[t])
        del fused
    return semantic, offset_frames(instances), probabilities
