"""Block-wise segmentation of big images on a dask.distributed cluster, written as OME-Zarr labels.

``cellrefine.distributed.segment(source, output)`` segments a zarr / OME-Zarr
image (or any numpy/dask/zarr array) that need not fit in memory, on a
``LocalCluster`` or on any running dask scheduler (``scheduler="tcp://…"``:
dask-jobqueue, dask-kubernetes, Coiled…), and writes ``labels/<name>`` as an
OME-Zarr labels image, block by block.

Method (see docs/user-guide.md, "Big data"):

1. **Statistics once.** The normalisation range (the model's percentiles) is
   computed once for the whole array from a subsample (the whole array when
   it has at most 4 M pixels, as :func:`cellrefine.segment` does; else
   chunk-sized tiles spread over it), so every block is scaled alike.
2. **Blocks with a halo.** The volume is cut into cores (``block_size``);
   each block is segmented over its core plus a halo of the network's
   receptive radius *and* the largest object (``object_size``), by the same
   tiling, watershed and Z linking as :func:`cellrefine.segment` in its
   stitching mode (``stack_mode="stitch"``: the 3D mode's orthogonal views
   need whole frames, so it runs on one machine only). The model
   is scattered once to each worker. Blocks can be skipped as blank
   (``skip_blank``).
3. **Merge.** Where a block's halo covers a neighbour's core, a core object of
   each that overlap there by more than half of each one's area there are
   the same object: those label pairs are joined by one global
   connected-components pass (union-find) on the driver, giving consecutive
   final ids.
4. **Relabel.** A second block-wise pass writes each core with its final ids
   into the labels array (chunks = cores).
5. **Pyramid.** Coarser levels (Y and X halved, every second pixel) are
   written chunk by chunk from the level below, for viewers
   (:mod:`cellrefine.distributed.pyramid`); the NGFF metadata is written
   last, so readers see the labels image only when it is complete.

**Resumable:** the run's parameters and phase live in the labels group's
``cellrefine`` attribute and each block's state in small arrays of
``labels/<name>/_cellrefine`` (removed at the end); a rerun with the same
settings skips every block already segmented or written.
"""

from __future__ import annotations

from .blocks import DEFAULT_BLOCK_SIZE, DEFAULT_OBJECT_SIZE, BlockGrid, plan_blocks
from .run import MANIFEST_KEY, DistributedProgress, DistributedResult, iter_segment, merge_pairs, segment

__all__ = [
    "segment",
    "iter_segment",
    "DistributedProgress",
    "DistributedResult",
    "BlockGrid",
    "plan_blocks",
    "merge_pairs",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_OBJECT_SIZE",
    "MANIFEST_KEY",
]
