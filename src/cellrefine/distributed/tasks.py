"""What a worker does: read a block, segment it, find the labels it shares with its neighbours, relabel it.

Every function here runs on a dask worker and talks to the output store
through zarr (each chunk written to a temporary file and renamed), so a
killed worker never leaves a torn chunk. The working area of a run lives in
the labels group, ``labels/<name>/_cellrefine`` (see :class:`WorkArea`):

* ``extended``: each block's labels over its extended box (core + halo),
  ids ``1..k`` for objects present in the core, ``k+1..n`` for objects seen
  only in the halo;
* ``counts``: per block ``(k, n, blank)``; written *last*, so a block with
  counts is finished (``-1`` = not yet);
* ``mapping``: final id of every core object of every block, in block order;
* ``written``: 1 once a block's core is written to the output array.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..axes import to_tzcyx
from ..normalize import SAMPLE_PIXELS, percentile_range, to_float32
from ..reader import LazyView, average_channels

__all__ = ["BlockSource", "WorkArea", "BlockOptions", "sample_range", "segment_block", "block_pairs", "relabel_block", "is_blank", "WORK_GROUP"]

#: Name of the working group inside ``labels/<name>`` (removed when a run completes).
WORK_GROUP = "_cellrefine"
#: A block is blank when no 5 x 5 local mean of its normalised intensity reaches this (see :func:`is_blank`).
BLANK_LEVEL = 0.2


@dataclasses.dataclass
class BlockSource:
    """Where blocks are read from: a zarr array by path (opened by each worker) or an array object.

    Attributes
    ----------
    axes : str
        The array's axes over TZCYX.
    path, dataset : str
        A zarr store and the array's path inside it (``path`` None: use ``array``).
    array : array-like
        numpy, dask or zarr (used when ``path`` is None).
    """

    axes: str
    path: str | None = None
    dataset: str = ""
    array: object = None

    def open(self):
        """The array (opened lazily when given by path)."""
        if self.path is None:
            return self.array
        import zarr

        root = zarr.open(store=self.path, mode="r")
        return root[self.dataset] if self.dataset else root

    def view(self):
        """The array as (T, Z, C, Y, X) (a lazy view for zarr)."""
        array = self.open()
        if isinstance(array, np.ndarray) or (hasattr(array, "transpose") and hasattr(array, "reshape")):
            return to_tzcyx(array, self.axes)
        return LazyView(array, self.axes)

    def read(self, t: int, box: tuple) -> np.ndarray:
        """Raw (Z, C, Y, X) pixels of frame ``t`` inside ``box`` (((z0, z1), (y0, y1), (x0, x1)))."""
        (z0, z1), (y0, y1), (x0, x1) = box
        data = self.view()[t, z0:z1, :, y0:y1, x0:x1]
        if hasattr(data, "compute"):
            data = data.compute(scheduler="synchronous")
        return np.asarray(data)


@dataclasses.dataclass
class BlockOptions:
    """How every block is segmented (the same for all blocks of a run)."""

    low: float
    high: float
    in_channels: int
    settings: object
    device: str = "auto"
    tile_size: int | None = None
    batch_size: int | None = None
    precision: str = "auto"
    skip_blank: bool = False


class WorkArea:
    """The output store's labels group and working arrays, opened on a worker or the driver."""

    def __init__(self, output: str, name: str):
        import zarr

        self.output, self.name = output, name
        self.group = zarr.open_group(output, mode="r+")[f"labels/{name}"]

    @property
    def work(self):
        return self.group[WORK_GROUP]

    def labels(self):
        return self.group["0"]


def _grey(block: np.ndarray, in_channels: int) -> np.ndarray:
    """(..., C, Y, X) raw pixels as the network's channels (mean over C for one-channel models)."""
    if in_channels == 1 and block.shape[-3] > 1:
        return average_channels(block, axis=-3)
    return block


def sample_range(source: BlockSource, in_channels: int, low: float, high: float) -> tuple:
    """``(lo, hi)``: the normalisation range of the whole array, from a subsample.

    Arrays of at most :data:`~cellrefine.normalize.SAMPLE_PIXELS` elements are
    read whole (the same range as :func:`cellrefine.segment`); larger ones
    are sampled as whole Y/X tiles (chunk-sized, evenly spread over all
    planes and positions) adding up to about that many pixels, so only those
    chunks are read.
    """
    view = source.view()
    n_t, n_z, n_c, height, width = view.shape
    if int(np.prod(view.shape)) <= SAMPLE_PIXELS:
        sample = _grey(np.asarray(view[(slice(None),) * 5]), in_channels)
        return percentile_range(sample, low, high)
    chunks = getattr(view, "chunks", None)
    tile_y = int(max(chunks[3])) if chunks else min(height, 256)
    tile_x = int(max(chunks[4])) if chunks else min(width, 256)
    tiles_y, tiles_x = -(-height // tile_y), -(-width // tile_x)
    candidates = n_t * n_z * tiles_y * tiles_x
    wanted = min(candidates, max(1, -(-SAMPLE_PIXELS // (tile_y * tile_x * n_c))))
    values = []
    for flat in np.unique(np.linspace(0, candidates - 1, wanted).round().astype(np.int64)):
        t, z, ty, tx = np.unravel_index(int(flat), (n_t, n_z, tiles_y, tiles_x))
        box = ((int(z), int(z) + 1), (ty * tile_y, min((ty + 1) * tile_y, height)), (tx * tile_x, min((tx + 1) * tile_x, width)))
        values.append(_grey(source.read(int(t), box), in_channels).ravel())
    return percentile_range(np.concatenate(values), low, high)


def is_blank(normalised_planes: list) -> bool:
    """True when no 5 x 5 local mean of any normalised (C, Y, X) plane reaches :data:`BLANK_LEVEL`
    (20 % of the way from the low to the high percentile): nothing there for the network to find."""
    from scipy import ndimage as ndi

    for plane in normalised_planes:
        smooth = ndi.uniform_filter(plane.mean(axis=0), size=5, mode="nearest")
        if float(smooth.max()) >= BLANK_LEVEL:
            return False
    return True


def _core_first(labels: np.ndarray, core: tuple) -> tuple:
    """Relabel ``labels`` so the ids present in the ``core`` slices are ``1..k`` and the others ``k+1..n``; returns (labels, k, n)."""
    present = np.unique(labels)
    present = present[present != 0]
    in_core = np.unique(labels[core])
    in_core = in_core[in_core != 0]
    lookup = np.zeros(int(present[-1]) + 1 if present.size else 1, np.uint32)
    others = np.setdiff1d(present, in_core, assume_unique=True)
    lookup[in_core] = np.arange(1, in_core.size + 1, dtype=np.uint32)
    lookup[others] = np.arange(in_core.size + 1, present.size + 1, dtype=np.uint32)
    return lookup[labels], int(in_core.size), int(present.size)


def segment_block(source: BlockSource, model, grid, index: int, options: BlockOptions, output: str, name: str) -> tuple:
    """Segment block ``index`` over its extended box and store its labels and counts; returns ``(index, k, n, blank)``.

    Planes are normalised with the run's range (``options.low``/``high``),
    predicted by overlap-tile inference, turned into instances by the
    watershed and linked across Z (:func:`cellrefine.postprocess.stitch_planes`),
    exactly as :func:`cellrefine.segment` does for a whole image.
    """
    from ..device import resolve_device
    from ..postprocess import probabilities_to_instances, stitch_planes
    from ..tiling import default_batch_size, default_tile_size, inference_network, predict_planes

    area = WorkArea(output, name)
    work = area.work
    t, box = grid.extended(index)
    _, core = grid.core(index)
    raw = _grey(source.read(t, box), options.in_channels)
    if np.dtype(raw.dtype).kind == "f" and not np.isfinite(raw).all():
        raise ValueError(f"block {index} (frame {t}, box {box}) contains NaN or infinite values; replace them first, e.g. with np.nan_to_num.")
    planes = [to_float32(plane, options.low, options.high) for plane in raw]
    shape = tuple(hi - lo for lo, hi in box)
    if options.skip_blank and is_blank(planes):
        work["counts"][index] = np.array([0, 0, 1], np.int64)
        return index, 0, 0, True
    device = resolve_device(options.device)
    network, amp = inference_network(model.network, device, options.precision)
    tile_size = options.tile_size or default_tile_size(device)
    batch_size = options.batch_size or default_batch_size(device)
    labels = np.zeros(shape, np.uint32)
    for z, plane in enumerate(planes):
        probabilities = np.empty((network.out_channels,) + plane.shape[1:], np.float32)
        for _ in predict_planes(network, amp, [plane], tile_size, device, batch_size, [probabilities]):
            pass
        labels[z] = probabilities_to_instances(probabilities, options.settings)
    if shape[0] > 1:
        stitch_planes(labels, options.settings.stitch_threshold, out=labels)
    core_slices = tuple(slice(lo - elo, hi - elo) for (lo, hi), (elo, _) in zip(core, box))
    labels, k, n = _core_first(labels, core_slices)
    if n:
        work["extended"][(index,) + tuple(slice(0, s) for s in shape)] = labels
    work["counts"][index] = np.array([k, n, 0], np.int64)
    return index, k, n, False


def _overlap_pairs(ours: np.ndarray, theirs: np.ndarray, our_core: int, their_core: int) -> np.ndarray:
    """(m, 2) pairs ``(our id, their id)`` of core objects that overlap by a majority both ways within this region."""
    ours, theirs = ours.ravel().astype(np.int64), theirs.ravel().astype(np.int64)
    ours = np.where(ours <= our_core, ours, 0)
    theirs = np.where(theirs <= their_core, theirs, 0)
    both = (ours > 0) & (theirs > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    stride = their_core + 1
    keys, overlap = np.unique(ours[both] * stride + theirs[both], return_counts=True)
    a, b = keys // stride, keys % stride
    area_ours = np.bincount(ours, minlength=our_core + 1)
    area_theirs = np.bincount(theirs, minlength=their_core + 1)
    keep = (2 * overlap > area_ours[a]) & (2 * overlap > area_theirs[b])
    return np.stack([a[keep], b[keep]], axis=1)


def _crop(labels: np.ndarray, box: tuple, region: tuple) -> np.ndarray:
    return labels[tuple(slice(lo - blo, hi - blo) for (lo, hi), (blo, _) in zip(region, box))]


def _intersect(first: tuple, second: tuple) -> tuple | None:
    region = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(first, second))
    return None if any(lo >= hi for lo, hi in region) else region


def block_pairs(grid, index: int, counts: np.ndarray, output: str, name: str) -> np.ndarray:
    """The objects block ``index`` shares with its later neighbours: (m, 4) rows ``(block, id, other block, other id)``.

    In the part of a neighbour's core that this block's halo covers (and the
    other way round), a core object of each block is paired with a core
    object of the other when their overlap there is more than half of each
    one's area there: the same object, seen whole by both blocks.
    """
    work = WorkArea(output, name).work
    extended = work["extended"]
    rows = []
    k = int(counts[index, 0])
    if k == 0:
        return np.zeros((0, 4), np.int64)
    _, box = grid.extended(index)
    _, core = grid.core(index)
    ours = extended[(index,) + tuple(slice(0, hi - lo) for lo, hi in box)]
    for other in grid.neighbours(index):
        k_other = int(counts[other, 0])
        if k_other == 0:
            continue
        _, other_box = grid.extended(other)
        _, other_core = grid.core(other)
        theirs = extended[(other,) + tuple(slice(0, hi - lo) for lo, hi in other_box)]
        for region, flip in ((_intersect(box, other_core), False), (_intersect(other_box, core), True)):
            if region is None:
                continue
            mine, yours = _crop(ours, box, region), _crop(theirs, other_box, region)
            pairs = _overlap_pairs(yours, mine, k_other, k)[:, ::-1] if flip else _overlap_pairs(mine, yours, k, k_other)
            if len(pairs):
                rows.append(np.column_stack([np.full(len(pairs), index), pairs[:, 0], np.full(len(pairs), other), pairs[:, 1]]))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)


def relabel_block(grid, index: int, k: int, offset: int, output: str, name: str, output_axes: str) -> int:
    """Write block ``index``'s core to the output array with final ids (``mapping[offset : offset + k]``); returns ``index``."""
    area = WorkArea(output, name)
    work = area.work
    t, box = grid.extended(index)
    _, core = grid.core(index)
    if k:
        extended = work["extended"][(index,) + tuple(slice(0, hi - lo) for lo, hi in box)]
        lookup = np.zeros(k + 1, np.uint32)
        lookup[1:] = work["mapping"][offset : offset + k]
        labels = lookup[_crop(extended, box, core)]
        key = tuple(t if axis == "T" else slice(*core["ZYX".index(axis)]) for axis in output_axes)
        keep = [axis for axis in "ZYX" if axis in output_axes]
        area.labels()[key] = labels.reshape(tuple(hi - lo for (lo, hi), axis in zip(core, "ZYX") if axis in keep))
    work["written"][index] = 1
    return index
