"""The block grid of a distributed run: cores, halos, neighbours.

A (T, Z, Y, X) volume is cut into *cores* of ``block`` pixels per spatial
axis (one frame each: T frames are independent); each block is segmented over
its core grown by ``halo`` on every side (clipped to the volume), its
*extended* box. Cores and halos are multiples of the network's down-sampling
grid, so every block is aligned with the grid of whole-image tiling and the
network sees exactly what it sees in :func:`cellrefine.segment`.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers

import numpy as np

__all__ = ["BlockGrid", "plan_blocks", "DEFAULT_BLOCK_SIZE", "DEFAULT_OBJECT_SIZE"]

#: Default core size (Z, Y, X) in pixels; Z is capped by the stack's depth.
DEFAULT_BLOCK_SIZE = (32, 1024, 1024)
#: Default diameter (Z, Y, X) of the largest object, in pixels: part of the halo.
DEFAULT_OBJECT_SIZE = (16, 64, 64)


def _three(value, name: str, default: tuple) -> tuple:
    """``value`` as (Z, Y, X) positive integers: an int applies to Y and X (Z keeps the default), a 3-tuple as given."""
    if value is None:
        return default
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = (default[0], int(value), int(value))
    elif (
        isinstance(value, (tuple, list)) and len(value) in (2, 3) and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ):
        values = tuple(int(v) for v in value)
        values = (default[0], *values) if len(values) == 2 else values
    else:
        raise TypeError(f"{name} must be a whole number of pixels (Y and X) or a (Z, Y, X) tuple of whole numbers, got {value!r}.")
    if min(values) < 1:
        raise ValueError(f"{name} must be at least 1 pixel per axis, got {values}.")
    return values


def _round_up(value: int, grid: int) -> int:
    return int(-(-value // grid) * grid)


@dataclasses.dataclass(frozen=True)
class BlockGrid:
    """Blocks of a (T, Z, Y, X) volume.

    Attributes
    ----------
    shape : tuple of int
        (T, Z, Y, X).
    block : tuple of int
        Core size (Z, Y, X).
    halo : tuple of int
        Halo (Z, Y, X) added on each side of a core (0 on an axis covered by one block).
    """

    shape: tuple
    block: tuple
    halo: tuple

    @property
    def counts(self) -> tuple:
        """Blocks along (T, Z, Y, X)."""
        return (self.shape[0],) + tuple(-(-n // b) for n, b in zip(self.shape[1:], self.block))

    def __len__(self) -> int:
        return int(np.prod(self.counts))

    @property
    def extended_shape(self) -> tuple:
        """The largest extended box (Z, Y, X)."""
        return tuple(min(b + 2 * h, n) for n, b, h in zip(self.shape[1:], self.block, self.halo))

    def position(self, index: int) -> tuple:
        """``(t, iz, iy, ix)`` of block ``index`` (row-major over :attr:`counts`)."""
        return tuple(int(i) for i in np.unravel_index(int(index), self.counts))

    def core(self, index: int) -> tuple:
        """``(t, ((z0, z1), (y0, y1), (x0, x1)))``: the frame and the core box of block ``index``."""
        t, *cells = self.position(index)
        return t, tuple((c * b, min((c + 1) * b, n)) for c, b, n in zip(cells, self.block, self.shape[1:]))

    def extended(self, index: int) -> tuple:
        """``(t, box)``: the core grown by the halo, clipped to the volume."""
        t, box = self.core(index)
        return t, tuple((max(lo - h, 0), min(hi + h, n)) for (lo, hi), h, n in zip(box, self.halo, self.shape[1:]))

    def neighbours(self, index: int) -> list:
        """Indices of the blocks of the same frame that touch block ``index`` (faces, edges and corners)
        and come after it in row-major order (so each neighbouring pair is listed once)."""
        t, *cells = self.position(index)
        found = []
        for offset in itertools.product((-1, 0, 1), repeat=3):
            if offset <= (0, 0, 0):
                continue
            other = [c + o for c, o in zip(cells, offset)]
            if all(0 <= c < n for c, n in zip(other, self.counts[1:])):
                found.append(int(np.ravel_multi_index((t, *other), self.counts)))
        return found


def plan_blocks(shape_tzyx, block_size=None, object_size=None, network_halo: int = 0, grid: int = 1) -> BlockGrid:
    """The :class:`BlockGrid` for a volume, a network and the largest object.

    Parameters
    ----------
    shape_tzyx : tuple of int
        (T, Z, Y, X).
    block_size : int or (Z, Y, X), optional
        Core size in pixels (an int sets Y and X); default :data:`DEFAULT_BLOCK_SIZE`.
        Y and X are rounded up to the network's ``grid``.
    object_size : int or (Z, Y, X), optional
        Diameter of the largest object in pixels (an int sets Y and X);
        default :data:`DEFAULT_OBJECT_SIZE`.
    network_halo : int
        The network's halo (``network.halo``: its receptive radius on its grid).
    grid : int
        The network's down-sampling grid (``network.grid``).

    Returns
    -------
    BlockGrid
        Halo Y/X = ``network_halo + object_size`` rounded up to ``grid``; halo
        Z = ``object_size`` Z (planes are predicted one by one, then linked);
        no halo along an axis covered by one block.
    """
    shape = tuple(int(n) for n in shape_tzyx)
    block = _three(block_size, "block_size", DEFAULT_BLOCK_SIZE)
    objects = _three(object_size, "object_size", DEFAULT_OBJECT_SIZE)
    block = (min(block[0], shape[1]),) + tuple(_round_up(b, grid) for b in block[1:])
    halo = [objects[0]] + [_round_up(network_halo + o, grid) for o in objects[1:]]
    halo = tuple(0 if b >= n else h for b, h, n in zip(block, halo, shape[1:]))
    return BlockGrid(shape=shape, block=block, halo=halo)
