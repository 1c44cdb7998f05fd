"""Writing segmentations into napari layers, without ever losing user edits.

Result layers, placed on the image (its scale, translate, axis labels and
units, minus the channel/colour axis):

``"<image> classes"``
    Labels, 0 background (transparent), 1 cell (green ``#33d933``),
    2 boundary (magenta ``#ff00ff``): :data:`CLASS_COLORS`.
``"<image> instances"``
    Labels, one id per object (napari's default label colours).
``"<image> probabilities"`` (optional)
    RGB Image: red = boundary, green = cell, blue = background probability.

A re-run writes into the previous result layer only if the user has not
edited it (:meth:`CorrectionTracker.is_edited`); otherwise it adds a new layer
(``"<image> instances [2]"``). A "current slice only" run replaces only that
slice of an unedited layer. The record says how each layer was written
(:attr:`SegmentationRecord.written`), for the status line. Must run on the GUI
thread.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from .corrections import tzyx
from .layers import layer_shape, result_geometry, unique_name
from .session import SegmentationRecord, layer_ref

if TYPE_CHECKING:
    import napari

    from ..inference import Segmentation
    from .session import Session

__all__ = ["CLASS_COLORS", "classes_colormap", "write_segmentation", "write_instances"]

CLASS_COLORS = {
    0: (0.0, 0.0, 0.0, 0.0),  # background: transparent
    1: (0.2, 0.85, 0.2, 1.0),  # cell: green
    2: (1.0, 0.0, 1.0, 1.0),  # boundary: magenta
}


def classes_colormap():
    """The fixed colours of the classes layer (:data:`CLASS_COLORS`)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: (0.0, 0.0, 0.0, 0.0), **CLASS_COLORS})


def _in_viewer(viewer, layer) -> bool:
    return layer is not None and any(existing is layer for existing in viewer.layers)


def _merge_planes(old: np.ndarray, new: np.ndarray, planes, axes: str, relabel: bool) -> tuple[np.ndarray, int]:
    """``old`` with the (t, z) ``planes`` taken from ``new``; new ids offset past the kept ones (returns the offset)."""
    merged = np.array(tzyx(old, axes))
    fresh = tzyx(new, axes)
    for t, z in planes:
        merged[t, z] = 0
    offset = int(merged.max()) if relabel and merged.size else 0
    for t, z in planes:
        plane = fresh[t, z]
        merged[t, z] = np.where(plane > 0, plane + offset, 0) if relabel else plane
    from ..axes import from_tzyx

    return from_tzyx(merged, axes), offset


def _write_labels(viewer, session, image_layer, existing, kind: str, data, out_axes: str, planes, geometry: dict):
    """Write ``data`` into ``existing`` if it is unedited, else into a new layer; track it.

    Returns the layer, how it was written, in words ("updated", "new
    layer", "new layer; your edited 'x' was kept"), and the number added to
    the new ids when merged into a partly kept layer.
    """
    tracker = session.tracker_for(existing)
    alive = _in_viewer(viewer, existing)
    edited = alive and tracker is not None and tracker.is_edited()
    reusable = alive and tracker is not None and not edited and layer_shape(existing) == data.shape
    offset = 0
    if reusable:
        if planes is not None:
            data, offset = _merge_planes(np.asarray(existing.data), data, planes, out_axes, relabel=kind == "instances")
        existing.data = data
        layer, how = existing, "updated"
    else:
        base = f"{image_layer.name} {kind}"
        options = {"colormap": classes_colormap()} if kind == "classes" else {}
        metadata = {"cellrefine_axes": out_axes, "cellrefine_source": image_layer.name, "cellrefine_kind": kind}
        layer = viewer.add_labels(data, name=unique_name(viewer, base), metadata=metadata, **geometry, **options)
        how = f"new layer; your edited {existing.name!r} was kept" if edited else "new layer"
    session.track(layer, layer.data, out_axes, "semantic" if kind == "classes" else "instances", image_layer)
    return layer, how, offset


def _shift_labels(ranking, offset: int):
    """``ranking`` with the ids of real objects (positive labels) moved by ``offset``."""
    if not ranking or not offset:
        return ranking
    return [dataclasses.replace(obj, label=obj.label + offset) if obj.label > 0 else obj for obj in ranking]


def _write_probabilities(viewer, image_layer, existing, segmentation: Segmentation, geometry: dict):
    rgb = np.moveaxis(np.asarray(segmentation.probabilities[[2, 1, 0]], np.float32), 0, -1)
    if _in_viewer(viewer, existing) and existing.data.shape == rgb.shape:
        existing.data = rgb
        return existing
    metadata = {"cellrefine_axes": segmentation.axes + "C", "cellrefine_source": image_layer.name, "cellrefine_kind": "probabilities"}
    return viewer.add_image(
        rgb,
        name=unique_name(viewer, f"{image_layer.name} probabilities"),
        rgb=True,
        contrast_limits=(0.0, 1.0),
        metadata=metadata,
        opacity=0.6,
        blending="additive",
        **geometry,
    )


def write_segmentation(
    viewer: napari.Viewer, session: Session, image_layer, segmentation: Segmentation, axes: str, planes, show_probabilities: bool, ranking=None
) -> SegmentationRecord:
    """Add or update the result layers of ``image_layer`` and record the segmentation (and its objects ranked for review)."""
    previous = session.record_for(image_layer)
    geometry = result_geometry(image_layer, axes)
    out_axes = segmentation.axes
    layers, written, offset = {}, {}, 0
    for kind, data in (("classes", segmentation.semantic), ("instances", segmentation.instances)):
        existing = previous.layer(kind) if previous else None
        layers[kind], written[kind], offset = _write_labels(viewer, session, image_layer, existing, kind, data, out_axes, planes, geometry)
    probabilities = previous.layer("probabilities") if previous else None
    if show_probabilities and segmentation.probabilities is not None:
        probabilities = _write_probabilities(viewer, image_layer, probabilities, segmentation, geometry)
    record = SegmentationRecord(
        segmentation=segmentation,
        axes=axes,
        planes=planes,
        show_probabilities=show_probabilities,
        classes=layer_ref(layers["classes"]),
        instances=layer_ref(layers["instances"]),
        probabilities=layer_ref(probabilities),
        ranking=_shift_labels(ranking, offset),
        written=written,
    )
    session.set_record(image_layer, record)
    return record


def write_instances(viewer: napari.Viewer, session: Session, image_layer, segmentation: Segmentation, ranking=None):
    """Write re-post-processed instances (same probabilities, new watershed parameters) and their ranking."""
    record = session.record_for(image_layer)
    if record is None:
        raise ValueError(f"layer {image_layer.name!r} has no segmentation to update; run Segment first.")
    geometry = result_geometry(image_layer, record.axes)
    layer, how, offset = _write_labels(
        viewer, session, image_layer, record.layer("instances"), "instances", segmentation.instances, segmentation.axes, record.planes, geometry
    )
    record.segmentation = segmentation
    record.instances = layer_ref(layer)
    record.written = {**record.written, "instances": how}
    record.ranking = _shift_labels(ranking, offset)
    session.set_record(image_layer, record)
    return layer
