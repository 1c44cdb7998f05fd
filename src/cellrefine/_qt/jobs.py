"""The background jobs behind the widgets: segmentation, watershed update, fine-tuning.

Each ``*_job`` is a generator run in a worker by :func:`~.workers.start_job`;
each ``start_*`` prepares its inputs *on the GUI thread* (copies of layer
data, the model), starts the worker and writes layers from its ``returned``
handler, also on the GUI thread. Workers never touch layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..inference import iter_segment
from ..training import iter_finetune
from .layers import layer_array
from .results import write_instances, write_segmentation
from .workers import limit_torch_threads, start_job

if TYPE_CHECKING:
    import napari

    from ..postprocess import PostprocessSettings
    from .session import Session

__all__ = ["SegmentRequest", "start_segmentation", "start_update_instances", "finetune_job"]


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


def segment_job(image, model, axes, device, tile_size, planes, settings):
    """:func:`cellrefine.inference.iter_segment`, always keeping probabilities (for "Update instances")."""
    with limit_torch_threads():
        return (
            yield from iter_segment(image, model, axes, device, tile_size=tile_size, return_probabilities=True, postprocess=settings, planes=planes)
        )


def start_segmentation(
    viewer: napari.Viewer,
    session: Session,
    request: SegmentRequest,
    on_progress: Callable | None = None,
    on_done: Callable | None = None,
    on_finished: Callable | None = None,
):
    """Segment ``request.image_layer`` in a worker; results are written when it returns.

    Raises (on the GUI thread, before starting) FileNotFoundError /
    ModelFileError when no model can be loaded.
    """
    model = session.get_model()
    image = layer_array(request.image_layer)

    def returned(segmentation):
        record = write_segmentation(viewer, session, request.image_layer, segmentation, request.axes, request.planes, request.show_probabilities)
        if on_done is not None:
            on_done(record)

    return start_job(
        segment_job,
        image,
        model,
        request.axes,
        request.device,
        request.tile_size,
        request.planes,
        request.postprocess,
        on_yielded=on_progress,
        on_returned=returned,
        on_finished=on_finished,
    )


def postprocess_job(segmentation, parameters: dict):
    """Re-run only the watershed on cached probabilities (a generator with no progress)."""
    if False:  # pragma: no cover - the bare yield makes this a generator function for GeneratorWorker
        yield
    return segmentation.postprocess(**parameters)


def start_update_instances(viewer, session, image_layer, parameters: dict, on_done=None, on_finished=None):
    """Re-run the watershed of ``image_layer``'s last segmentation with ``parameters``."""
    record = session.record_for(image_layer)
    if record is None:
        raise ValueError(f"layer {image_layer.name!r} has not been segmented yet; press Run first.")

    def returned(segmentation):
        layer = write_instances(viewer, session, image_layer, segmentation)
        if on_done is not None:
            on_done(layer)

    return start_job(postprocess_job, record.segmentation, parameters, on_returned=returned, on_finished=on_finished)


def finetune_job(model, images, labels, masks, axes, kind, steps, device, settings, stopped: dict):
    """Run :func:`cellrefine.training.iter_finetune`, yielding its updates.

    When the worker is quit between steps, a snapshot of the model as trained
    so far is put in ``stopped["model"]`` (taken in the worker thread while the
    core generator is paused, which is when a snapshot is safe).
    """
    with limit_torch_threads():
        generator = iter_finetune(model, images, labels, masks, axes=axes, kind=kind, steps=steps, device=device, settings=settings)
        try:
            while True:
                try:
                    update = next(generator)
                except StopIteration as stop:
                    return stop.value
                try:
                    yield update
                except GeneratorExit:
                    stopped["model"] = update.snapshot()
                    stopped["step"] = update.step
                    raise
        finally:
            generator.close()
