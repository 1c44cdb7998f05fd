"""Coarser levels of the labels (a multiscale pyramid), so a viewer shows a huge labels image at any zoom.

Level ``k`` is level ``k - 1`` taken every second pixel in Y and X (labels are
ids: never averaged), chunked like level 0; each task writes one chunk of one
level from the level below, so the pyramid is built block by block too.
"""

from __future__ import annotations

import itertools
import math
import numbers

__all__ = ["pyramid_levels", "level_shapes", "level_chunks", "downsample_chunk", "TOP_LEVEL_SIZE"]

#: Automatic pyramids stop at the first level whose Y and X are both at most this many pixels.
TOP_LEVEL_SIZE = 1024


def pyramid_levels(levels, height: int, width: int) -> int:
    """The number of levels above 0: ``levels`` checked (a whole number >= 0), or for None as many halvings as bring Y and X
    down to :data:`TOP_LEVEL_SIZE` pixels."""
    if levels is None:
        return max(0, math.ceil(math.log2(max(height, width) / TOP_LEVEL_SIZE))) if max(height, width) > TOP_LEVEL_SIZE else 0
    if not isinstance(levels, numbers.Integral) or isinstance(levels, bool) or levels < 0:
        raise ValueError(f"pyramid_levels must be a whole number >= 0 (0: full resolution only) or None (automatic), got {levels!r}.")
    return int(levels)


def level_shapes(shape: tuple, axes: str, levels: int) -> list:
    """Shapes of levels ``1..levels``: Y and X halved (rounded up) at each level."""
    shapes, current = [], tuple(shape)
    for _ in range(levels):
        current = tuple(-(-n // 2) if a in "YX" else n for n, a in zip(current, axes))
        shapes.append(current)
    return shapes


def level_chunks(shape: tuple, chunks: tuple) -> list:
    """Every chunk of an array (as tuples of ``(start, stop)`` per axis), in row-major order."""
    ranges = [[(start, min(start + c, n)) for start in range(0, n, c)] for n, c in zip(shape, chunks)]
    return list(itertools.product(*ranges))


def downsample_chunk(output: str, name: str, level: int, axes: str, box: tuple) -> int:
    """Write chunk ``box`` of level ``level`` from level ``level - 1`` (every second pixel in Y and X); returns ``level``."""
    import zarr

    group = zarr.open_group(output, mode="r+")[f"labels/{name}"]
    below, array = group[str(level - 1)], group[str(level)]
    source = tuple(slice(2 * lo, 2 * hi, 2) if a in "YX" else slice(lo, hi) for (lo, hi), a in zip(box, axes))
    array[tuple(slice(lo, hi) for lo, hi in box)] = below[source]
    return level
