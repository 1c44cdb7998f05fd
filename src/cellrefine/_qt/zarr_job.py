"""napari and big data: the zarr / OME-Zarr reader, and "Segment whole volume to zarr…".

* :func:`get_reader` (napari reader contribution, ``*.zarr``): an OME-Zarr
  image opens lazily (dask, every resolution level, the NGFF pixel size, the
  axes in ``metadata["cellrefine_axes"]``) with its finished labels images as
  Labels layers; a plain zarr array opens as an image; a store holding only
  labels (CellRefine's separate output) opens its labels.
* :func:`start_volume_job` (the Segment widget's button): runs
  :func:`cellrefine.distributed.iter_segment` in a worker on a LocalCluster of
  threads in this process, with the widget's Run/Stop controls and progress;
  when it returns, the labels are opened lazily from the store. Stop (or
  closing the dock) cancels the blocks still queued: running it again on the
  same output resumes.
"""

from __future__ import annotations

from pathlib import Path

from ..zarr_io import is_zarr_path, list_labels, open_labels, open_zarr

__all__ = ["get_reader", "read_zarr", "volume_job", "start_volume_job", "ask_output_path", "labels_layer_data", "VOLUME_WORKERS"]

#: Workers (threads) of the in-process LocalCluster used from napari.
VOLUME_WORKERS = 1


def _single(path):
    if isinstance(path, (list, tuple)):
        return path[0] if len(path) == 1 else None
    return path


def get_reader(path):
    """napari reader hook: :func:`read_zarr` for one zarr store holding an image or labels, else None."""
    path = _single(path)
    if path is None or not is_zarr_path(path):
        return None
    try:
        open_zarr(path)
    except (ValueError, FileNotFoundError, OSError):
        if not list_labels(path):
            return None
    return read_zarr


def _layer_meta(image, name: str) -> dict:
    meta = {"name": name, "metadata": {"cellrefine_axes": image.axes, "cellrefine_zarr": {"path": image.path}}}
    if image.scale is not None:
        meta["scale"] = image.scale
    if len(image.levels) > 1:
        meta["multiscale"] = True
    return meta


def _data(image):
    levels = [image.to_dask(k) for k in range(len(image.levels))]
    return levels if len(levels) > 1 else levels[0]


def read_zarr(path) -> list:
    """Layer data for a zarr store: its image (lazy, all levels) and its finished labels images."""
    path = str(_single(path))
    stem = Path(path.rstrip("/")).name.split(".")[0]
    layers = []
    try:
        image = open_zarr(path)
    except (ValueError, FileNotFoundError):
        image = None
    if image is not None:
        kind = "labels" if image.is_label else "image"
        layers.append((_data(image), _layer_meta(image, stem), kind))
    for name in list_labels(path) if image is None or not image.is_label else []:
        labels = open_labels(path, name)
        layers.append((_data(labels), _layer_meta(labels, f"{stem} {name}"), "labels"))
    return layers


def labels_layer_data(labels, labels_axes: str, image_axes: str):
    """Lazy labels in ``labels_axes`` (NGFF order, length-1 T/Z dropped) arranged like the image's axes without C."""
    import dask.array as da

    target = [a for a in image_axes if a != "C"]
    present = list(labels_axes)
    for axis in target:
        if axis not in present:
            labels = da.expand_dims(labels, axis=len([a for a in "TZYX" if a in present and "TZYX".index(a) < "TZYX".index(axis)]))
            present = [a for a in "TZYX" if a in present or a == axis]
    return labels.transpose([present.index(a) for a in target])


def ask_output_path(parent, suggestion: str) -> str | None:
    """Ask where to write the labels (a ``.zarr`` store); None when cancelled."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, "Write the labels to a zarr store", suggestion, "Zarr store (*.zarr)")
    if not path:
        return None
    return path if path.lower().endswith(".zarr") else f"{path}.zarr"


def volume_job(source, output: str, model, axes: str, settings, device: str, block_size=None, pyramid_levels=None):
    """:func:`cellrefine.distributed.iter_segment` on an in-process LocalCluster (threads), leaving a core to the GUI."""
    from ..device import limit_torch_threads
    from ..distributed import iter_segment

    with limit_torch_threads():
        return (
            yield from iter_segment(
                source,
                output,
                model,
                axes=axes,
                postprocess=settings,
                device=device,
                workers=VOLUME_WORKERS,
                processes=False,
                block_size=block_size,
                pyramid_levels=pyramid_levels,
            )
        )


def _default_output(layer) -> str:
    zarr_source = (layer.metadata or {}).get("cellrefine_zarr") or {}
    path = zarr_source.get("path")
    if path:
        base = Path(str(path).rstrip("/"))
        return str(base.with_name(base.name.split(".")[0] + "_labels.zarr"))
    return str(Path.home() / f"{layer.name}_labels.zarr")


def start_volume_job(widget, output: str | None = None, block_size=None, pyramid_levels=None):
    """Segment the widget's image layer block by block into OME-Zarr labels; returns the worker (None if not started).

    The source is the layer's zarr store when it was opened from one (the
    workers read it block by block), else the layer's data. ``output``
    None asks for a path; ``block_size`` and ``pyramid_levels`` None are
    the defaults (see :func:`cellrefine.distributed.segment`).
    """
    import dataclasses

    from ..postprocess import PostprocessSettings
    from .layers import layer_axes, result_geometry, unique_name
    from .workers import UserError

    started = {}

    def starter():
        layer = widget.image_combo.current_layer()
        if layer is None:
            raise UserError("No image layer to segment: open an image (File > Open, or a .zarr store) first.")
        axes, _ = layer_axes(widget.viewer, layer, widget.axes.value)
        target = output or ask_output_path(widget, _default_output(layer))
        if target is None:
            raise UserError("No output chosen; nothing was segmented.")
        model = widget.session.get_model()
        settings = dataclasses.replace(PostprocessSettings(**model.config.get("postprocess", {})), **widget.postprocess_parameters()).validate()
        zarr_source = (layer.metadata or {}).get("cellrefine_zarr") or {}
        source = zarr_source.get("path") or (layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
        started.update(layer=layer, axes=axes, unit=widget.controls.unit)
        widget.controls.unit = "block tasks"
        return widget.jobs.start(
            volume_job,
            source,
            target,
            model,
            axes,
            settings,
            widget.device.value,
            block_size,
            pyramid_levels,
            on_returned=returned,
            on_finished=restore_unit,
        )

    def restore_unit():
        widget.controls.unit = started["unit"]

    def returned(result):
        layer, axes = started["layer"], started["axes"]
        labels = open_labels(result.output, result.name)
        levels = [labels_layer_data(labels.to_dask(k), result.axes, axes) for k in range(len(labels.levels))]
        widget.viewer.add_labels(
            levels if len(levels) > 1 else levels[0],
            multiscale=len(levels) > 1,
            name=unique_name(widget.viewer, f"{layer.name} {result.name}"),
            metadata={"cellrefine_axes": "".join(a for a in axes if a != "C"), "cellrefine_zarr": {"path": result.labels_path}},
            **result_geometry(layer, axes),
        )
        widget.controls.status.setText(
            f"{result.n_objects} objects in {result.blocks} blocks ({result.resumed} resumed); wrote {result.labels_path}."
        )

    worker = widget.controls.launch("A segmentation", starter)
    if worker is not None:
        widget.controls.status.setText("Segmenting the whole volume block by block…")
    return worker
