"""The driver of a distributed run: plan, submit blocks to dask workers, merge, relabel, finish.

See :mod:`cellrefine.distributed` for the method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings

import numpy as np

from ..axes import check_axes
from ..inference import SegmentationCancelled
from ..progress import run_to_end
from ..zarr_io import DEFAULT_LABEL_NAME, create_labels_level, finish_labels, open_zarr
from .blocks import BlockGrid, plan_blocks
from .cluster import completed, open_client
from .pyramid import downsample_chunk, level_chunks, level_shapes
from .pyramid import pyramid_levels as count_levels
from .store import MANIFEST_KEY, merge_pairs, output_layout, prepare_store, run_parameters, set_status, write_mapping
from .tasks import WORK_GROUP, BlockOptions, BlockSource, block_pairs, relabel_block, sample_range, segment_block

logger = logging.getLogger(__name__)

__all__ = ["DistributedProgress", "DistributedResult", "iter_segment", "segment", "merge_pairs", "MANIFEST_KEY"]


@dataclasses.dataclass
class DistributedProgress:
    """Yielded by :func:`iter_segment` as blocks finish.

    ``done``/``total`` count block tasks over the three phases (segment,
    merge, relabel; blocks finished by an earlier run count as done);
    ``phase`` is one of ``"segmenting"``, ``"merging"``, ``"relabelling"``, ``"pyramid"``;
    ``message`` says it in words.
    """

    done: int
    total: int
    phase: str
    blocks: int
    resumed: int
    seconds: float
    message: str


@dataclasses.dataclass
class DistributedResult:
    """What :func:`segment` wrote.

    Attributes
    ----------
    output : str
        The store holding ``labels/<name>``.
    name : str
        The labels image's name.
    labels_path : str
        ``output/labels/name``: open it with :func:`cellrefine.zarr_io.open_zarr`.
    axes : str
        Axes of the labels (NGFF order, no C).
    shape : tuple
    n_objects : int
        Objects found; ids are ``1..n_objects``, unique over the volume.
    blocks : int
        Blocks in the volume.
    computed : int
        Blocks segmented by this run.
    resumed : int
        Blocks already segmented by an earlier, interrupted run (not recomputed).
    blank : int
        Blocks skipped as blank (``skip_blank``).
    merged_pairs : int
        Label pairs joined across block faces.
    seconds : dict
        Wall time per phase (``"statistics"``, ``"segmenting"``, ``"merging"``, ``"relabelling"``, ``"pyramid"``, ``"total"``).
    grid : BlockGrid
    """

    output: str
    name: str
    labels_path: str
    axes: str
    shape: tuple
    n_objects: int
    blocks: int
    computed: int
    resumed: int
    blank: int
    merged_pairs: int
    seconds: dict
    grid: BlockGrid


def _source(source, axes: str | None):
    """``(BlockSource, shape, axes, scale by axis, NGFF image path or None, description)`` for a zarr path or an array."""
    from ..reader import check_image

    if isinstance(source, (str, os.PathLike)):
        image = open_zarr(source)
        if image.axes is not None and axes is not None and axes.upper() != image.axes:
            raise ValueError(f"{source} has NGFF axes {image.axes!r} but axes={axes!r} was given; leave axes out for OME-Zarr images.")
        check_image(image.array)
        axes = image.axes or check_axes(image.shape, axes)
        dataset = "/".join(part for part in (image.group or "", image.levels[0]) if part)
        scale = {} if image.scale is None else dict(zip(axes, image.scale))
        ngff_image = None if image.group is None else "/".join(part for part in (image.path.rstrip("/"), image.group) if part)
        path = image.path if "://" in image.path else os.path.abspath(image.path)  # workers may run elsewhere
        return BlockSource(axes=axes, path=path, dataset=dataset), image.shape, axes, scale, ngff_image, f"{path}:{dataset}"
    image = check_image(source)
    axes = check_axes(image.shape, axes)
    return BlockSource(axes=axes, array=image), tuple(int(n) for n in image.shape), axes, {}, None, type(image).__name__


def _check_options(workers, block_size, skip_blank, overwrite, keep_work) -> None:
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}.")
    for flag, value in (("skip_blank", skip_blank), ("overwrite", overwrite), ("keep_work", keep_work)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{flag} must be True or False, got {value!r}.")


def iter_segment(
    source,
    output,
    model=None,
    *,
    axes: str | None = None,
    name: str = DEFAULT_LABEL_NAME,
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = True,
    block_size=None,
    object_size=None,
    device="auto",
    tile_size: int | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    postprocess=None,
    skip_blank: bool = False,
    zarr_format: int | None = None,
    overwrite: bool = False,
    keep_work: bool = False,
    pyramid_levels: int | None = None,
):
    """Generator form of :func:`segment`: yields :class:`DistributedProgress`, returns :class:`DistributedResult`.

    Closing it cancels the blocks still queued (finished blocks stay written, so a rerun resumes).
    """
    from ..files import check_writable
    from ..inference import model_and_postprocess
    from ..normalize import BlankImageWarning
    from ..reader import user_stacklevel
    from ..tiling import check_batch_size, check_tile_size

    started = time.perf_counter()
    _check_options(workers, block_size, skip_blank, overwrite, keep_work)
    tile_size, batch_size = check_tile_size(tile_size), check_batch_size(batch_size)
    spec, shape, axes, scale, ngff_image, described = _source(source, axes)
    model, settings = model_and_postprocess(model, postprocess)
    sizes = dict(zip(axes, shape))
    n_c, in_channels = sizes.get("C", 1), model.network.in_channels
    if n_c != in_channels and in_channels != 1:
        raise ValueError(f"the model expects {in_channels} channels but the image has {n_c} (axes {axes!r}); pick a matching model or channels.")
    output = str(output) if "://" in str(output) else str(check_writable(output, folder=True).absolute())  # workers may run elsewhere
    grid = plan_blocks(tuple(sizes.get(a, 1) for a in "TZYX"), block_size, object_size, model.network.halo, model.network.grid)
    n_levels = count_levels(pyramid_levels, sizes["Y"], sizes["X"])
    n_blocks = len(grid)
    out_axes = output_layout(grid)[0]
    norm = model.config.get("normalization", {})
    low, high = float(norm.get("low_percentile", 1.0)), float(norm.get("high_percentile", 99.8))
    seconds = {}
    live = set()
    with open_client(client, scheduler, workers, processes) as dask_client:
        try:
            source_future = dask_client.scatter(spec, broadcast=True, hash=False)
            lo, hi = dask_client.submit(sample_range, source_future, in_channels, low, high, pure=False).result()
            seconds["statistics"] = time.perf_counter() - started
            if hi <= lo:
                warnings.warn(
                    BlankImageWarning(f"the image is constant (every pixel is {lo:g}), so it is treated as blank and no object can be found."),
                    stacklevel=user_stacklevel(),
                )
            run_options = {"skip_blank": bool(skip_blank), "out_axes": out_axes, "source": described, "pyramid_levels": n_levels}
            parameters = json.loads(json.dumps(run_parameters(grid, axes, lo, hi, model, settings, run_options)))
            status, area = prepare_store(output, name, grid, parameters, zarr_format, overwrite)
            _, labels_shape, labels_chunks = output_layout(grid)
            shapes = level_shapes(labels_shape, out_axes, n_levels)
            total, done = 3 * n_blocks + sum(len(level_chunks(shape, labels_chunks)) for shape in shapes), 0
            if status == "complete":
                return _result(output, name, area, grid, out_axes, 0, n_blocks, seconds, started)
            work = area.work
            counts = work["counts"][:]
            pending = [k for k in range(n_blocks) if counts[k, 0] < 0]
            resumed = n_blocks - len(pending)
            done = resumed
            phase_started = time.perf_counter()
            if pending:
                options = BlockOptions(lo, hi, in_channels, settings, device, tile_size, batch_size, precision, bool(skip_blank))
                model_future = dask_client.scatter(model, broadcast=True, hash=False)  # shipped once per worker
                calls = ((source_future, model_future, grid, k, options, output, name) for k in pending)
                for _ in completed(dask_client, segment_block, calls, live):
                    done += 1
                    yield DistributedProgress(
                        done, total, "segmenting", n_blocks, resumed, time.perf_counter() - started, f"segmented block {done} of {n_blocks}"
                    )
                counts = work["counts"][:]
            seconds["segmenting"] = time.perf_counter() - phase_started
            phase_started = time.perf_counter()
            k_core = counts[:, 0].astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum(k_core)])
            if status in ("segmenting", "merging"):
                set_status(area, "merging")
                counts_future = dask_client.scatter(counts, broadcast=True, hash=False)
                rows = []
                for found in completed(dask_client, block_pairs, ((grid, k, counts_future, output, name) for k in range(n_blocks)), live):
                    rows.append(found)
                    done += 1
                    yield DistributedProgress(
                        done, total, "merging", n_blocks, resumed, time.perf_counter() - started, "merging objects across blocks"
                    )
                rows = np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)
                pairs = np.stack([offsets[rows[:, 0]] + rows[:, 1] - 1, offsets[rows[:, 2]] + rows[:, 3] - 1], axis=1) if len(rows) else rows[:, :2]
                mapping = merge_pairs(int(offsets[-1]), pairs)
                n_objects = int(mapping.max()) if mapping.size else 0
                write_mapping(work, mapping)
                set_status(area, "relabelling", n_objects=n_objects, merged_pairs=len(pairs))
            else:
                done += n_blocks
            seconds["merging"] = time.perf_counter() - phase_started
            phase_started = time.perf_counter()
            written = work["written"][:]
            todo = [k for k in range(n_blocks) if not written[k]]
            done += n_blocks - len(todo)
            calls = ((grid, k, int(k_core[k]), int(offsets[k]), output, name, out_axes) for k in todo)
            for _ in completed(dask_client, relabel_block, calls, live):
                done += 1
                yield DistributedProgress(done, total, "relabelling", n_blocks, resumed, time.perf_counter() - started, "writing final labels")
            seconds["relabelling"] = time.perf_counter() - phase_started
            phase_started = time.perf_counter()
            for level, level_shape in enumerate(shapes, start=1):  # rebuilt whole after an interruption (a small share of the work)
                create_labels_level(output, name, level, level_shape, labels_chunks)
                calls = ((output, name, level, out_axes, box) for box in level_chunks(level_shape, labels_chunks))
                for _ in completed(dask_client, downsample_chunk, calls, live):
                    done += 1
                    yield DistributedProgress(done, total, "pyramid", n_blocks, resumed, time.perf_counter() - started, f"writing level {level}")
            seconds["pyramid"] = time.perf_counter() - phase_started
            manifest = dict(area.group.attrs)[MANIFEST_KEY]
            blank = int((counts[:, 2] == 1).sum())
            record = {**manifest, "status": "complete", "blocks": n_blocks, "blank": blank}
            pixel_size = [scale.get(a, 1.0) for a in out_axes] if scale else None
            finish_labels(output, name, out_axes, scale=pixel_size, source_image=ngff_image, extra={MANIFEST_KEY: record})
            if not keep_work:
                del area.group[WORK_GROUP]
            return _result(output, name, area, grid, out_axes, n_blocks - resumed, resumed, seconds, started, blank)
        finally:
            if live:
                dask_client.cancel(list(live))


def _result(output, name, area, grid, out_axes, computed, resumed, seconds, started, blank=None) -> DistributedResult:
    manifest = dict(area.group.attrs)[MANIFEST_KEY]
    seconds = {**seconds, "total": time.perf_counter() - started}
    return DistributedResult(
        output=output,
        name=name,
        labels_path=f"{output.rstrip('/')}/labels/{name}",
        axes=out_axes,
        shape=tuple(int(n) for n in area.labels().shape),
        n_objects=int(manifest.get("n_objects", 0)),
        blocks=len(grid),
        computed=computed,
        resumed=resumed,
        blank=int(manifest.get("blank", 0) if blank is None else blank),
        merged_pairs=int(manifest.get("merged_pairs", 0)),
        seconds=seconds,
        grid=grid,
    )


def segment(source, output, model=None, *, progress=None, **kwargs) -> DistributedResult:
    """Segment a zarr/OME-Zarr image (or any array) block by block on a dask cluster; write OME-Zarr labels.

    Parameters
    ----------
    source : str, Path or array-like
        A zarr array or OME-Zarr image (path or URL; axes from its NGFF
        metadata), or a numpy/dask/zarr array (then ``axes`` as for
        :func:`cellrefine.segment`). Workers read it block by block.
    output : str or Path
        The zarr store to write ``labels/<name>`` to: the input OME-Zarr image
        itself (labels next to the image) or another store (created when missing).
    model : Model, optional
        None loads the bundled model. Shipped once to each worker.
    progress : callable or tqdm-like, optional
        ``progress(done, total)`` as block tasks finish (returning False
        cancels with :class:`~cellrefine.inference.SegmentationCancelled`);
        an object with ``update(n)`` (tqdm) is advanced instead.
    axes : str, optional
        For arrays without NGFF metadata (see :mod:`cellrefine.axes`).
    name : str
        The labels image's name (default ``"cells"``).
    client : distributed.Client, optional
        An existing client; else ``scheduler`` or a new LocalCluster.
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``), e.g. from
        dask-jobqueue, dask-kubernetes or Coiled. Its workers must be able to
        read ``source`` and write ``output``.
    workers : int, optional
        Workers of the LocalCluster (default 1); each runs one block at a time
        with ``cores // workers`` torch threads.
    processes : bool
        LocalCluster workers as processes (default) or threads of this process.
    block_size : int or (Z, Y, X), optional
        Core of a block in pixels (an int sets Y and X; default (32, 1024, 1024)).
    object_size : int or (Z, Y, X), optional
        Diameter of the largest object in pixels (default (16, 64, 64)). The
        halo of a block is the network's receptive radius plus this, so an
        object crossing a block face is seen whole by both blocks.
    device, tile_size, batch_size, precision, postprocess
        As for :func:`cellrefine.segment` (resolved on each worker).
    skip_blank : bool
        Skip blocks where no 5 x 5 local mean of the normalised intensity
        reaches 0.2 (nothing to find), without running the network.
    zarr_format : {2, 3}, optional
        Of a new output store (default 2: NGFF 0.4; 3: NGFF 0.5).
    overwrite : bool
        Start again even if ``output`` holds a run of ``labels/<name>`` with
        other settings (otherwise refused); a run with the *same* settings is
        always resumed, and a complete one returned as it is.
    keep_work : bool
        Keep the working arrays (``labels/<name>/_cellrefine``) after completion.
    pyramid_levels : int, optional
        Coarser levels of the labels (each halves Y and X, every second pixel),
        for viewers; None (default) adds levels until Y and X are at most 1024
        pixels (none for smaller images), 0 writes full resolution only.

    Returns
    -------
    DistributedResult

    Raises
    ------
    ValueError, TypeError
        Bad arguments (as :func:`cellrefine.segment`), an output holding a run
        with other settings, NGFF axes other than t, c, z, y, x.
    FileNotFoundError
        No zarr array or group at ``source``.
    OSError
        ``output`` cannot be written.
    SegmentationCancelled
        ``progress`` returned False (finished blocks stay written; run again to resume).
    """
    return run_to_end(
        iter_segment(source, output, model, **kwargs),
        progress,
        cancelled=SegmentationCancelled,
        message="distributed segmentation cancelled after {done} of {total} block tasks; run it again to resume.",
    )
