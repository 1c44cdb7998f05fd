"""The segmentation pipeline: image → probabilities → semantic classes and instances.

:func:`iter_segment` is a generator: it yields a :class:`SegmentProgress` after
every batch of tiles and returns a :class:`Segmentation`; closing it cancels.
:func:`segment` runs it to the end (:func:`cellrefine.progress.run_to_end`).

The layers underneath: :mod:`cellrefine.reader` reads normalised planes
(numpy, dask, zarr), :mod:`cellrefine.tiling` predicts them by overlap-tile
inference through a cached inference-only copy of the network (the user's
model is never modified), :mod:`cellrefine.postprocess` turns probabilities
into instances. Class probabilities and the semantic arg-max are written
straight into per-plane buffers; with ``batch_size > 1`` (the CUDA default)
planes that fit in one tile are batched together; and for stacks the
watershed of plane *k* runs in a worker thread while the network predicts
plane *k+1* (``overlap_postprocess``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time

import numpy as np

from .axes import check_axes, check_scale, from_tzyx, to_tzcyx
from .orthogonal import MIN_3D_PLANES, STACK_MODES, iter_segment_3d, resolve_stack_mode
from .postprocess import PostprocessSettings, offset_frames, probabilities_to_instances, probabilities_to_instances_3d, stitch_planes
from .progress import Cancelled, run_to_end
from .reader import PlaneReader, check_image, check_planes
from .tiling import (
    check_batch_size,
    check_tile_size,
    default_batch_size,
    default_tile_size,
    inference_network,
    predict_planes,
    tile_layout,
)

__all__ = [
    "Segmentation",
    "SegmentProgress",
    "SegmentationCancelled",
    "iter_segment",
    "segment",
    "check_planes",
    "model_and_postprocess",
    "STACK_MODES",
    "MIN_3D_PLANES",
    "resolve_stack_mode",
]


class SegmentationCancelled(Cancelled):
    """Raised by :func:`segment` when its ``progress`` callback returns ``False``."""


@dataclasses.dataclass
class SegmentProgress:
    """Yielded by :func:`iter_segment` after each batch of tiles.

    ``done``/``total`` count tiles over the whole image or stack (all three
    views in the 3D mode); ``plane`` is the (t, index) of the plane being
    predicted, ``index`` along the axis that ``view`` does not show (Z for
    ``"YX"``, Y for ``"ZX"``, X for ``"ZY"``); ``seconds`` the time so far.
    """

    done: int
    total: int
    plane: tuple
    seconds: float
    view: str = "YX"


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
    stack_mode : {"2d", "stitch", "3d"}
        How Z was handled: a 2D image or a single plane per frame (``"2d"``),
        planes linked by IoU (``"stitch"``), or views fused in 3D (``"3d"``).
    scale : (float, float, float)
        The voxel size (z, y, x) used (only ratios matter).
    """

    semantic: np.ndarray
    instances: np.ndarray
    probabilities: np.ndarray | None
    axes: str
    device: str
    settings: PostprocessSettings
    stack_mode: str = "2d"
    scale: tuple = (1.0, 1.0, 1.0)

    def postprocess(self, **parameters) -> Segmentation:
        """Re-run the watershed on the cached probabilities with new parameters.

        Parameters are those of :class:`~cellrefine.postprocess.PostprocessSettings`.
        Needs ``probabilities`` (segment with ``return_probabilities=True``).
        """
        if self.probabilities is None:
            raise ValueError("this Segmentation has no cached probabilities; call segment(..., return_probabilities=True) to re-run post-processing.")
        settings = dataclasses.replace(self.settings, **parameters).validate()
        probabilities_tzcyx = to_tzcyx(np.moveaxis(self.probabilities, 0, -1), self.axes + "C")
        n_t, n_z = probabilities_tzcyx.shape[:2]
        instances = np.zeros((n_t, n_z) + probabilities_tzcyx.shape[-2:], np.uint32)
        if self.stack_mode == "3d":
            for t in range(n_t):
                instances[t] = probabilities_to_instances_3d(np.moveaxis(probabilities_tzcyx[t], 1, 0), settings, self.scale)
            instances = offset_frames(instances)
        else:
            work = [(np.asarray(probabilities_tzcyx[t, z], np.float32), instances[t, z]) for t in range(n_t) for z in range(n_z)]
            _postprocess_planes(work, settings)
            instances = _link_stack(instances, settings)
        return dataclasses.replace(self, instances=from_tzyx(instances, self.axes), settings=settings)


def _link_stack(instances_tzyx: np.ndarray, settings: PostprocessSettings) -> np.ndarray:
    """Stitch Z planes per frame, then offset ids so they are unique over T (in place).

    Every plane holds ids 1..n (``probabilities_to_instances``) and
    ``stitch_planes`` returns ids 1..n, so offsetting is all the relabelling needed.
    """
    for t in range(instances_tzyx.shape[0]):
        if instances_tzyx.shape[1] > 1:
            stitch_planes(instances_tzyx[t], settings.stitch_threshold, out=instances_tzyx[t])
    return offset_frames(instances_tzyx)


def _postprocess_planes(work: list, settings: PostprocessSettings) -> None:
    """Watershed of each ``(probabilities, instances view)`` pair, in order (written in place)."""
    for probabilities, instances in work:
        instances[...] = probabilities_to_instances(probabilities, settings)


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
    overlap_postprocess: bool = True,
    scale=None,
    stack_mode: str = "auto",
):
    """Generator form of :func:`cellrefine.segment`: yields :class:`SegmentProgress`
    after every batch of tiles, returns the :class:`Segmentation`.

    ``planes`` optionally restricts prediction to a list of ``(t, z)`` indices
    (the others stay background) — used to segment only the current slice.
    ``overlap_postprocess`` (default True) runs the watershed of a plane in a
    worker thread while the network predicts the next one (stacks only);
    False runs everything in the calling thread (same result).
    ``scale`` and ``stack_mode`` choose the 3D mode for stacks (see
    :func:`cellrefine.segment` and :mod:`cellrefine.orthogonal`); ``planes``
    implies the stitching mode.
    See :func:`cellrefine.segment` for the other parameters.
    """
    from .device import inference_dtypes, resolve_device

    image = check_image(image)
    axes = check_axes(image.shape, axes)
    tile_size, batch_size = check_tile_size(tile_size), check_batch_size(batch_size)
    for name, value in (("return_probabilities", return_probabilities), ("overlap_postprocess", overlap_postprocess)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    model, settings = model_and_postprocess(model, postprocess)
    torch_device = resolve_device(device)
    inference_dtypes(torch_device, precision)  # validates precision before any work
    tile_size = tile_size or default_tile_size(torch_device)

    scale = check_scale(scale, axes)
    reader = PlaneReader(image, axes, model)
    n_t, n_z, height, width = reader.shape
    plane_list = [(t, z) for t in range(n_t) for z in range(n_z)] if planes is None else check_planes(planes, n_t, n_z)
    mode = resolve_stack_mode(stack_mode, n_z, planes)
    network, amp = inference_network(model.network, torch_device, precision)
    batch_size = batch_size or default_batch_size(torch_device)
    if mode == "3d":
        steps = iter_segment_3d(reader, network, amp, torch_device, tile_size, batch_size, scale, settings, return_probabilities)
        semantic, instances, probabilities = yield from _as_progress(steps)
    else:
        semantic, instances, probabilities = yield from _iter_segment_planes(
            reader, plane_list, network, amp, torch_device, tile_size, batch_size, settings, return_probabilities, overlap_postprocess
        )
    return Segmentation(
        semantic=from_tzyx(semantic, axes),
        instances=from_tzyx(instances, axes),
        probabilities=None if probabilities is None else from_tzyx(probabilities, axes),
        axes="".join(a for a in axes if a != "C"),
        device=str(torch_device),
        settings=settings,
        stack_mode=mode,
        scale=scale,
    )


def _as_progress(steps):
    """Yield :class:`SegmentProgress` for the ``(done, total, plane, view)`` tuples of ``steps``; return what it returns."""
    started = time.perf_counter()
    try:
        while True:
            try:
                done, total, plane, view = next(steps)
            except StopIteration as stop:
                return stop.value
            yield SegmentProgress(done, total, plane, time.perf_counter() - started, view)
    finally:
        steps.close()


def _iter_segment_planes(reader, plane_list, network, amp, device, tile_size, batch_size, settings, return_probabilities, overlap_postprocess):
    """Plane by plane (2D images, and the stitching mode): yields :class:`SegmentProgress`, returns
    ``(semantic, instances, probabilities or None)`` as (T, Z, Y, X) arrays, planes linked over Z."""
    n_t, n_z, height, width = reader.shape
    starts_y, _, starts_x, _, _, _ = tile_layout(height, width, tile_size, network.grid)
    tiles_per_plane = len(starts_y) * len(starts_x)
    total = tiles_per_plane * len(plane_list)
    group = batch_size if tiles_per_plane == 1 else 1  # planes predicted together

    semantic = np.zeros((n_t, n_z, height, width), np.uint8)
    instances = np.zeros((n_t, n_z, height, width), np.uint32)
    probabilities = np.zeros((3, n_t, n_z, height, width), np.float16) if return_probabilities else None
    started = time.perf_counter()
    done = 0
    overlap = overlap_postprocess and len(plane_list) > group
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cellrefine-postprocess") if overlap else None
    pending = None
    try:
        for first in range(0, len(plane_list), group):
            indices = plane_list[first : first + group]
            outs = [np.empty((network.out_channels, height, width), np.float32) for _ in indices]
            inputs = [reader.plane(t, z) for t, z in indices]
            for tiles_done, _, k in predict_planes(network, amp, inputs, tile_size, device, batch_size, outs, [semantic[t, z] for t, z in indices]):
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
            del outs, inputs, work
        if pending is not None:
            pending.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return semantic, _link_stack(instances, settings), probabilities


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
        Largest core tile size in pixels, 1 to 65536 (default by device, see
        :func:`cellrefine.tiling.default_tile_size`); planes are cut into equal tiles no larger
        than this, and memory stays bounded by it.
    batch_size : int, optional
        Tiles per forward pass, 1 to 4096 (default: :func:`cellrefine.tiling.default_batch_size`);
        planes that fit in one tile are batched together.
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
    overlap_postprocess : bool
        Run the watershed of a plane in a worker thread while the network
        predicts the next one (stitching mode only; default True, same result).
    scale : sequence of float, optional
        Voxel size, with the meaning of a napari layer's ``scale``: ``(z, y,
        x)`` (or one entry per non-channel axis, e.g. ``(t, z, y, x)``); only
        ratios matter. The 3D mode resamples Z to the XY spacing for its XZ
        and YZ views and sizes its 3D thresholds by it. None: isotropic.
    stack_mode : {"auto", "3d", "stitch"}
        Z stacks only. ``"3d"``: class probabilities predicted on the XY, XZ
        and YZ planes, averaged, and a 3D seeded watershed
        (:mod:`cellrefine.orthogonal`; about 3x the network time of
        ``"stitch"``). ``"stitch"``: plane by plane, objects linked between
        planes by IoU (``postprocess.stitch_threshold``). ``"auto"``: ``"3d"``
        for stacks of at least :data:`MIN_3D_PLANES` planes, else ``"stitch"``
        (see docs/benchmarks.md for the measurement behind it).

    Returns
    -------
    Segmentation
        ``semantic`` (uint8), ``instances`` (uint32), ``probabilities``.

    Raises
    ------
    TypeError
        Non-numeric or complex image, wrong model type, an argument of the
        wrong type (``tile_size=True``, ``batch_size=2.5``, ``planes=[(0, "1")]``).
    ValueError
        Empty image, wrong number of axes, axes not matching the shape,
        NaN/Inf pixels, unavailable device, an argument out of its range
        (``tile_size <= 0``, ``batch_size <= 0``, an unknown ``precision``,
        a plane outside the stack), or a network that gives NaN probabilities.
    SegmentationCancelled
        ``progress`` returned ``False``.

    Warns
    -----
    BlankImageWarning
        The image is constant: it is treated as blank (no objects).

    Examples
    --------
    >>> seg = segment(image)                     # doctest: +SKIP
    >>> seg.instances.max()                      # number of objects  # doctest: +SKIP
    """
    generator = iter_segment(image, model, axes, device, **kwargs)
    return run_to_end(generator, progress, cancelled=SegmentationCancelled, message="segmentation cancelled after {done} of {total} tiles.")


def model_and_postprocess(model=None, postprocess=None):
    """The model to run (the bundled one when None) and its validated post-processing settings.

    Parameters
    ----------
    model : Model or None
    postprocess : PostprocessSettings, dict of its fields, or None
        None: the model's own settings (``model.config["postprocess"]``).

    Returns
    -------
    (Model, PostprocessSettings)

    Raises
    ------
    TypeError
        ``model`` is not a cellrefine Model, or ``postprocess`` has the wrong type.
    ValueError
        An invalid post-processing value.
    """
    from .model.io import Model, load_model

    if model is None:
        model = load_model()
    if not isinstance(model, Model):
        raise TypeError(f"model must be a cellrefine Model (from cellrefine.load_model), got {type(model).__name__}.")
    if isinstance(postprocess, dict):
        postprocess = PostprocessSettings(**postprocess)
    elif postprocess is not None and not isinstance(postprocess, PostprocessSettings):
        raise TypeError(f"postprocess must be a PostprocessSettings, a dict of its fields or None, got {type(postprocess).__name__}.")
    return model, (postprocess or PostprocessSettings(**model.config.get("postprocess", {}))).validate()
