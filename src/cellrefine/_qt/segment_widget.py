"""The Segment widget: run the U-Net on an Image layer, in the background."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..inference import MIN_3D_PLANES, resolve_stack_mode
from ..postprocess import PostprocessSettings
from .controls import LayerCombo
from .dock import Panel
from .forms import Field, build_form, device_field, disable_unavailable_devices
from .job_controls import JobControls
from .jobs import SegmentRequest, start_segmentation, start_update_instances
from .layers import axes_warning, current_plane, layer_axes, result_geometry
from .model_picker import ModelPicker
from .review_panel import ReviewPanel
from .summaries import calibration_text, written_text
from .workers import UserError, format_seconds, report_error, report_warning

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget"]

POSTPROCESS_FIELDS = ("foreground_threshold", "seed_threshold", "min_size", "stitch_threshold")
#: The "Stack mode" choices: (shown text, ``stack_mode`` of :func:`cellrefine.segment`).
STACK_MODE_CHOICES = (("Auto", "auto"), ("3D (orthogonal views)", "3d"), ("2D + stitch", "stitch"))


class SegmentWidget(Panel):
    """Segment an Image layer into "<image> classes" and "<image> instances" Labels layers.

    ``run()`` does what the Run button does and returns the napari worker
    (None when the inputs are not valid; the reason is shown to the user).
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        from napari.layers import Image

        napari_viewer = self.viewer
        self.update_worker = None
        self._update_again = False
        self._warned_axes: set = set()

        self.image_combo = LayerCombo(napari_viewer, Image, "(no image layer)", events=self.events)
        self.input_form = build_form(
            [
                Field("axes", "Axes", "", str, tooltip="Axes of the image, letters from TZCYX (e.g. TYX, ZYX, YXC); empty = read from the layer"),
                Field("current_slice", "Current slice only", False, bool, tooltip="Segment only the T/Z slice shown in the viewer"),
                Field(
                    "stack_mode",
                    "Stack mode",
                    "auto",
                    None,
                    "ComboBox",
                    {"choices": list(STACK_MODE_CHOICES)},
                    "Z stacks: 3D = XY, XZ and YZ views fused (Z resampled by the layer's scale) and a 3D watershed; "
                    f"2D + stitch = plane by plane, objects linked across Z; Auto = 3D for whole stacks of {MIN_3D_PLANES} planes or more",
                ),
            ]
        )
        self.axes, self.current_slice, self.stack_mode = self.input_form.axes, self.input_form.current_slice, self.input_form.stack_mode
        self.axes.native.setPlaceholderText("auto")
        self.axes_label = QLabel()
        self.axes_label.setWordWrap(True)
        self.model_picker = ModelPicker(self.session)
        self.model_form = build_form(
            [
                device_field(),
                Field(
                    "tile_size",
                    "Tile size",
                    0,
                    int,
                    "SpinBox",
                    {"min": 0, "max": 8192, "step": 64},
                    "Tile size in pixels (memory grows with it); 0 = auto",
                ),
            ]
        )
        self.device, self.tile_size = self.model_form.device, self.model_form.tile_size
        self.tile_size.native.setSpecialValueText("auto")  # 0 means the device's default tile size
        disable_unavailable_devices(self.device)
        self.device_used = QLabel("")
        defaults = PostprocessSettings()
        self.post_form = build_form(
            [
                Field(
                    "foreground_threshold",
                    "Foreground threshold",
                    defaults.foreground_threshold,
                    float,
                    "FloatSpinBox",
                    {"min": 0.0, "max": 1.0, "step": 0.05},
                    "Cell + boundary probability above which a pixel is foreground (the boundary counted by the model's boundary weight, shown below)",
                ),
                Field(
                    "seed_threshold",
                    "Seed threshold",
                    defaults.seed_threshold,
                    float,
                    "FloatSpinBox",
                    {"min": 0.0, "max": 1.0, "step": 0.05},
                    "Cell probability above which a pixel seeds an object",
                ),
                Field(
                    "min_size", "Minimum size (px)", defaults.min_size, int, "SpinBox", {"min": 0, "max": 1_000_000}, "Smaller objects are removed"
                ),
                Field(
                    "stitch_threshold",
                    "Z stitch threshold",
                    defaults.stitch_threshold,
                    float,
                    "FloatSpinBox",
                    {"min": 0.01, "max": 1.0, "step": 0.05},
                    "Minimum IoU to link objects of neighbouring Z planes",
                ),
                Field("show_probabilities", "Show probabilities layer", False, bool),
                Field("auto_update", "Update instances automatically", True, bool, tooltip="Re-run the watershed when a parameter changes"),
            ]
        )
        for name in ("foreground_threshold", "seed_threshold", "min_size", "stitch_threshold", "show_probabilities", "auto_update"):
            setattr(self, name, getattr(self.post_form, name))
        self.thresholds_label = QLabel()
        self.thresholds_label.setWordWrap(True)
        self.update_button = QPushButton("Update instances")
        self.update_button.setToolTip("Re-run only the watershed on the cached probabilities")
        self.volume_button = QPushButton("Segment whole volume to zarr…")
        self.volume_button.setToolTip("Segment block by block (dask) into OME-Zarr labels on disk, opened lazily; run again to resume")
        self.controls = JobControls(self.jobs, "Run", "Cancel", "Stop at the next tile; no layer is changed", "tiles", "Cancelling…")
        self.review = ReviewPanel(napari_viewer, self.session, self.image_combo.current_layer)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(400)
        self._build_layout()

        self.controls.run_button.clicked.connect(self.run)
        self.update_button.clicked.connect(self.update_instances)
        self.volume_button.clicked.connect(lambda: self.segment_volume())
        self._debounce.timeout.connect(self.update_instances)
        for name in POSTPROCESS_FIELDS:
            getattr(self, name).changed.connect(self._on_parameter_changed)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.axes.changed.connect(self._show_axes)
        self.stack_mode.changed.connect(self._show_axes)
        self.current_slice.changed.connect(self._show_axes)
        self.session.model_changed.connect(self._on_model_changed)
        self.events.connect(napari_viewer.layers.selection.events.active, self._on_active_layer)
        self._on_active_layer()
        self._show_axes()
        try:  # show the model's own thresholds from the start
            self.session.get_model()
        except FileNotFoundError as error:
            self.model_picker.description.setText(str(error))
        self._on_model_changed(announce=False)

    # -- layout ------------------------------------------------------------------------
    def _build_layout(self) -> None:
        inputs = QGroupBox("Input")
        box = QVBoxLayout(inputs)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        box.addLayout(form)
        box.addWidget(self.input_form.native)
        box.addWidget(self.axes_label)
        model = QGroupBox("Model")
        box = QVBoxLayout(model)
        box.addWidget(self.model_picker)
        box.addWidget(self.model_form.native)
        box.addWidget(self.device_used)
        post = QGroupBox("Post-processing")
        box = QVBoxLayout(post)
        box.addWidget(self.thresholds_label)
        box.addWidget(self.post_form.native)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.update_button)
        box.addLayout(row)
        review = QGroupBox("Review next")
        box = QVBoxLayout(review)
        box.addWidget(self.review)
        self.set_sections([inputs, model, post, self.controls, self.volume_button, review])

    # -- state -------------------------------------------------------------------------
    @property
    def worker(self):
        """The running segmentation's worker (None when idle)."""
        return self.controls.worker

    def _on_active_layer(self, event=None) -> None:
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and (active.metadata or {}).get("cellrefine_kind") != "probabilities":
            self.image_combo.set_layer(active)

    def _on_image_changed(self, *_) -> None:
        self._show_axes()
        self.review.refresh()

    def _show_axes(self, *_) -> None:
        layer = self.image_combo.current_layer()
        if layer is None:
            self.axes_label.setText("")
            self.stack_mode.visible = False
            return
        try:
            axes, source = layer_axes(self.viewer, layer, self.axes.value)
        except UserError as error:
            self.axes_label.setText(str(error))
            self.axes_label.setStyleSheet("color: #e05050")
            return
        self.stack_mode.visible = "Z" in axes  # only stacks have a stack mode
        self.stitch_threshold.visible = self._stitches(layer, axes)
        warning = axes_warning(layer, axes, source)
        self.axes_label.setText(f"{axes} ({source})" + (f"\n{warning}" if warning else ""))
        self.axes_label.setStyleSheet("color: #e0a030" if warning else "")
        if warning and id(layer) not in self._warned_axes:
            self._warned_axes.add(id(layer))
            report_warning(warning)

    def _stitches(self, layer, axes: str) -> bool:
        """Will Run link planes by IoU (so the Z stitch threshold matters)? Not for 2D images, one slice, or the 3D mode."""
        if "Z" not in axes or self.current_slice.value:
            return False
        shape = (layer.data[0] if layer.multiscale else layer.data).shape
        n_z = shape[axes.index("Z")] if len(shape) == len(axes) else MIN_3D_PLANES
        return resolve_stack_mode(self.stack_mode.value, n_z) == "stitch"

    def _on_model_changed(self, announce: bool = True) -> None:
        model = self.session.model
        if model is None:
            return
        settings = PostprocessSettings(**model.config.get("postprocess", {}))
        for name in POSTPROCESS_FIELDS:
            box = getattr(self, name)
            with box.changed.blocked():
                box.value = getattr(settings, name)
        text = f"Thresholds of {model.name}: foreground {settings.foreground_threshold:.2f}, seed {settings.seed_threshold:.2f}"
        if settings.boundary_weight != 1:  # the foreground is cell + w x boundary: say so, or the threshold reads wrong
            text += f" (foreground = cell + {settings.boundary_weight:g} x boundary)"
        text += "."
        calibration = calibration_text(model)
        self.thresholds_label.setText(f"{text}\n{calibration}" if calibration else text)
        if announce and calibration:
            self.controls.status.setText(calibration)

    def postprocess_parameters(self) -> dict:
        return {
            "foreground_threshold": float(self.foreground_threshold.value),
            "seed_threshold": float(self.seed_threshold.value),
            "min_size": int(self.min_size.value),
            "stitch_threshold": float(self.stitch_threshold.value),
        }

    # -- segmentation ------------------------------------------------------------------
    def request(self) -> SegmentRequest:
        """The run the widget would start now (raises UserError on invalid input)."""
        layer = self.image_combo.current_layer()
        if layer is None:
            raise UserError("No image layer to segment: open an image (File > Open, or the CellRefine sample) first.")
        axes, _ = layer_axes(self.viewer, layer, self.axes.value)
        model = self.session.get_model()
        settings = dataclasses.replace(PostprocessSettings(**model.config.get("postprocess", {})), **self.postprocess_parameters()).validate()
        planes = [current_plane(self.viewer, layer, axes)] if self.current_slice.value else None
        stack_mode = self.stack_mode.value if "Z" in axes else "auto"
        if planes is not None and stack_mode == "3d":
            raise UserError("3D (orthogonal views) segments whole stacks: untick 'Current slice only', or choose Auto or 2D + stitch.")
        return SegmentRequest(
            image_layer=layer,
            axes=axes,
            device=self.device.value,
            tile_size=self.tile_size.value or None,
            planes=planes,
            postprocess=settings,
            show_probabilities=bool(self.show_probabilities.value),
            scale=self.layer_scale(layer, axes),
            stack_mode=stack_mode,
        )

    @staticmethod
    def layer_scale(layer, axes: str) -> tuple[float, ...]:
        """The layer's ``scale`` for the axes of ``axes`` other than C (the voxel size the core reads; T is ignored there).

        Raises
        ------
        UserError
            A Z, Y or X entry is not a positive number.
        """
        from ..axes import check_scale

        scale = tuple(float(value) for value in result_geometry(layer, axes)["scale"])  # the non-C entries, as the result layers get
        try:
            check_scale(scale, axes)
        except (TypeError, ValueError) as error:
            raise UserError(f"layer {layer.name!r} has scale {scale}, which CellRefine cannot use as a voxel size: {error}") from None
        return scale

    def run(self):
        """Start segmenting the selected image; returns the worker (None if the inputs are invalid)."""
        started = {}

        def starter():
            request = self.request()
            worker = start_segmentation(self.jobs, self.viewer, self.session, request, on_done=self._on_done)
            started["request"] = request
            return worker

        worker = self.controls.launch("A segmentation", starter)
        if worker is None:
            return None
        request = started["request"]
        self._started = time.perf_counter()
        where = f" (slice t={request.planes[0][0]}, z={request.planes[0][1]})" if request.planes else ""
        self.controls.status.setText(f"Segmenting {request.image_layer.name!r}{where}…")
        self.jobs.watch(worker, on_finished=self._on_finished)
        return worker

    def segment_volume(self, output: str | None = None, block_size=None):
        """What "Segment whole volume to zarr…" does (see :mod:`.zarr_job`); returns the worker (None if not started)."""
        from .zarr_job import start_volume_job

        return start_volume_job(self, output, block_size)

    def cancel(self) -> None:
        """Stop the running segmentation at the next tile (no layers are written)."""
        self.controls.stop()

    def _on_done(self, record) -> None:
        segmentation = record.segmentation
        self.device_used.setText(f"Ran on: {segmentation.device}")
        instances = record.layer("instances")
        n_objects = int(instances.data.max()) if instances is not None and instances.data.size else 0
        seconds = format_seconds(time.perf_counter() - self._started)
        self.controls.status.setText(f"{n_objects} objects in {seconds} on {segmentation.device}.\n{written_text(record)}")

    def _on_finished(self) -> None:
        if self.controls.stop_requested and self.controls.progress.format() == "cancelled":
            self.controls.status.setText("Segmentation cancelled; no layers were changed.")

    # -- post-processing ---------------------------------------------------------------
    def _on_parameter_changed(self, *_) -> None:
        if self.auto_update.value and self.session.record_for(self.image_combo.current_layer()) is not None:
            self._debounce.start()

    def update_instances(self):
        """Re-run the watershed with the current parameters; returns the worker (or None)."""
        if self.update_worker is not None:
            self._update_again = True
            return self.update_worker
        layer = self.image_combo.current_layer()
        try:
            if layer is None or self.session.record_for(layer) is None:
                raise UserError("Nothing to update: segment the image first (Run).")
            parameters = self.postprocess_parameters()
            PostprocessSettings(**parameters).validate()
            self.update_worker = start_update_instances(
                self.jobs, self.viewer, self.session, layer, parameters, on_done=self._on_instances_updated, on_finished=self._on_update_finished
            )
        except (UserError, ValueError) as error:
            report_error(error)
            return None
        self.controls.status.setText("Updating instances…")
        return self.update_worker

    def _on_instances_updated(self, layer) -> None:
        how = self.session.record_for(self.image_combo.current_layer())
        where = f" ({how.written.get('instances')})" if how is not None and how.written.get("instances") else ""
        self.controls.status.setText(f"{int(layer.data.max())} objects in {layer.name!r}{where}.")

    def _on_update_finished(self) -> None:
        self.update_worker = None
        if self._update_again:
            self._update_again = False
            self.update_instances()
