"""The background jobs behind the widgets: segmentation, watershed update, fine-tuning.

Each ``*_job`` is a generator run in a worker of a widget's
:class:`~.workers.JobSet`; each ``start_*`` prepares its inputs *on the GUI
thread* (copies of layer data, the model), starts the worker and writes
layers from its ``returned`` handler, also on the GUI thread. Workers never
touch layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..device import limit_torch_threads
from ..inference import iter_segment
from ..training import iter_finetune
from ..uncertainty import rank_segmentation
from .layers import layer_array
from .results import write_instances, write_segmentation

if TYPE_CHECKING:
    import napari

    from ..postprocess import PostprocessSettings
    from .session import Session
    from .workers import JobSet

__all__ = ["SegmentRequest", "start_segmentation", "start_update_instances", "finetune_job", "rank_for_review"]


@dataclasses.dataclass
class SegmentRequest:
    """What to segment and how (validated by the widget)."""

    image_layer: object
    axes: str
    device: str = "auto"
    tile_size: int | None = None
    planes: list | None = None
    postprocess: PostprocessSettings | None = None
    show_probabilities: bool = False
    scale: tuple | None = None
    stack_mode: str = "auto"


def rank_for_review(segmentation, planes=None) -> list:
    """Objects and missed-object candidates of ``segmentation``, most likely wrong first
    (:func:`cellrefine.uncertainty.rank_segmentation`), keeping only the (t, z) ``planes``
    that were segmented (None = all): the others hold no prediction to judge."""
    ranking = rank_segmentation(segmentation, include_missed=True)
    if planes is None:
        return ranking
    axes, wanted = segmentation.axes, {tuple(plane) for plane in planes}

    def plane_of(obj) -> tuple:
        return tuple(int(round(obj.centroid[axes.index(letter)])) if letter in axes else 0 for letter in "TZ")

    return [obj for obj in ranking if plane_of(obj) in wanted]


def segment_job(image, model, axes, device, tile_size, planes, settings, scale=None, stack_mode="auto"):
    """:func:`cellrefine.inference.iter_segment` keeping probabilities (for "Update instances"),
    then the objects ranked for review (:func:`rank_for_review`).

    Returns ``(segmentation, ranking)``.
    """
    with limit_torch_threads():
        segmentation = yield from iter_segment(
            image,
            model,
            axes,
            device,
            tile_size=tile_size,
            return_probabilities=True,
            postprocess=settings,
            planes=planes,
            scale=scale,
            stack_mode=stack_mode,
        )
    return segmentation, rank_for_review(segmentation, planes)


def start_segmentation(
    jobs: JobSet,
    viewer: napari.Viewer,
    session: Session,
    request: SegmentRequest,
    on_progress: Callable | None = None,
    on_done: Callable | None = None,
    on_finished: Callable | None = None,
):
    """Segment ``request.image_layer`` in a worker of ``jobs``; results are written when it returns.

    Raises (on the GUI thread, before starting) FileNotFoundError /
    ModelFileError when no model can be loaded.
    """
    model = session.get_model()
    image = layer_array(request.image_layer)

    def returned(result):
        segmentation, ranking = result
        record = write_segmentation(
            viewer, session, request.image_layer, segmentation, request.axes, request.planes, request.show_probabilities, ranking
        )
        if on_done is not None:
            on_done(record)

    return jobs.start(
        segment_job,
        image,
        model,
        request.axes,
        request.device,
        request.tile_size,
        request.planes,
        request.postprocess,
        request.scale,
        request.stack_mode,
        on_yielded=on_progress,
        on_returned=returned,
        on_finished=on_finished,
    )


def postprocess_job(segmentation, parameters: dict, planes=None):
    """Re-run only the watershed on cached probabilities, then re-rank; returns ``(segmentation, ranking)``."""
    if False:  # pragma: no cover - the bare yield makes this a generator function for GeneratorWorker
        yield
    segmentation = segmentation.postprocess(**parameters)
    return segmentation, rank_for_review(segmentation, planes)


def start_update_instances(jobs: JobSet, viewer, session, image_layer, parameters: dict, on_done=None, on_finished=None):
    """Re-run the watershed of ``image_layer``'s last segmentation with ``parameters``."""
    record = session.record_for(image_layer)
    if record is None:
        raise ValueError(f"layer {image_layer.name!r} has not been segmented yet; press Run first.")

    def returned(result):
        segmentation, ranking = result
        layer = write_instances(viewer, session, image_layer, segmentation, ranking)
        if on_done is not None:
            on_done(layer)

    return jobs.start(postprocess_job, record.segmentation, parameters, record.planes, on_returned=returned, on_finished=on_finished)


def finetune_job(model, image, labels, mask, axes: str, kind: str, steps: int, device: str, settings, stop, scale=None, slice_axes: str = "auto"):
    """:func:`cellrefine.training.iter_finetune` on one image, leaving a core to the GUI
    (:func:`cellrefine.device.limit_torch_threads`; ``CELLREFINE_NUM_THREADS`` overrides it).

    ``stop`` (a ``threading.Event``) ends training after the current step;
    the core then finalises (checkpoint choice, threshold calibration) and
    returns the calibrated model either way. ``scale`` (the image layer's
    voxel size) and ``slice_axes`` (the orientations painted in) are passed on.
    """
    with limit_torch_threads():
        return (
            yield from iter_finetune(
                model,
                [image],
                [labels],
                [mask],
                axes=axes,
                kind=kind,
                steps=steps,
                device=device,
                settings=settings,
                stop=stop,
                scale=scale,
                slice_axes=slice_axes,
            )
        )
