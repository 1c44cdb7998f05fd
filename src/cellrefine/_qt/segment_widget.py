"""The Segment widget: run the U-Net on an Image layer, in the background."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..postprocess import PostprocessSettings
from .controls import DeviceCombo, LayerCombo
from .jobs import SegmentRequest, start_segmentation, start_update_instances
from .layers import current_plane, layer_axes
from .model_picker import ModelPicker
from .session import get_session, unwrap_viewer
from .workers import UserError, eta_text, format_seconds, report_error, report_warning

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget"]

POSTPROCESS_FIELDS = ("foreground_threshold", "seed_threshold", "min_size", "stitch_threshold")


class SegmentWidget(QWidget):
    """Segment an Image layer into "<image> classes" and "<image> instances" Labels layers.

    ``run()`` does what the Run button does and returns the napari worker
    (None when the inputs are not valid; the reason is shown to the user).
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        from napari.layers import Image

        napari_viewer = unwrap_viewer(napari_viewer)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.worker = None
        self.update_worker = None
        self._update_again = False

        self.image_combo = LayerCombo(napari_viewer, Image, "(no image layer)")
        self.axes_edit = QLineEdit()
        self.axes_edit.setPlaceholderText("auto")
        self.axes_edit.setToolTip("Axes of the image, letters from TZCYX (e.g. TYX, ZYX, YXC); empty = read from the layer")
        self.axes_label = QLabel()
        self.axes_label.setWordWrap(True)
        self.current_slice = QCheckBox("Current slice only")
        self.current_slice.setToolTip("Segment only the T/Z slice shown in the viewer")
        self.model_picker = ModelPicker(self.session)
        self.device_combo = DeviceCombo()
        self.device_used = QLabel("")
        self.tile_size = QSpinBox()
        self.tile_size.setRange(0, 8192)
        self.tile_size.setSingleStep(64)
        self.tile_size.setSpecialValueText("auto")
        self.tile_size.setToolTip("Tile size in pixels (memory grows with it); auto picks one for the device")

        defaults = PostprocessSettings()
        self.foreground_threshold = self._double(
            defaults.foreground_threshold, 0.0, 1.0, "Cell + boundary probability above which a pixel is foreground"
        )
        self.seed_threshold = self._double(defaults.seed_threshold, 0.0, 1.0, "Cell probability above which a pixel seeds an object")
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 1_000_000)
        self.min_size.setValue(defaults.min_size)
        self.min_size.setToolTip("Objects smaller than this (pixels) are removed")
        self.stitch_threshold = self._double(defaults.stitch_threshold, 0.01, 1.0, "Minimum IoU to link objects of neighbouring Z planes")
        self.show_probabilities = QCheckBox("Show probabilities layer")
        self.auto_update = QCheckBox("Update instances automatically")
        self.auto_update.setChecked(True)
        self.update_button = QPushButton("Update instances")
        self.update_button.setToolTip("Re-run only the watershed on the cached probabilities")

        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(400)
        self._build_layout()

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.update_button.clicked.connect(self.update_instances)
        self._debounce.timeout.connect(self.update_instances)
        for box in (self.foreground_threshold, self.seed_threshold, self.min_size, self.stitch_threshold):
            box.valueChanged.connect(self._on_parameter_changed)
        self.image_combo.currentIndexChanged.connect(self._show_axes)
        self.axes_edit.textChanged.connect(self._show_axes)
        self.session.model_changed.connect(self._on_model_changed)
        napari_viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._on_active_layer()
        self._show_axes()

    # -- layout ------------------------------------------------------------------------
    @staticmethod
    def _double(value, low, high, tip) -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(low, high)
        box.setSingleStep(0.05)
        box.setDecimals(2)
        box.setValue(value)
        box.setToolTip(tip)
        return box

    def _build_layout(self) -> None:
        inputs = QGroupBox("Input")
        form = QFormLayout(inputs)
        form.addRow("Image", self.image_combo)
        form.addRow("Axes", self.axes_edit)
        form.addRow("", self.axes_label)
        form.addRow("", self.current_slice)
        model = QGroupBox("Model")
        form = QFormLayout(model)
        form.addRow("Model", self.model_picker)
        form.addRow("Device", self.device_combo)
        form.addRow("", self.device_used)
        form.addRow("Tile size", self.tile_size)
        post = QGroupBox("Post-processing")
        form = QFormLayout(post)
        form.addRow("Foreground threshold", self.foreground_threshold)
        form.addRow("Seed threshold", self.seed_threshold)
        form.addRow("Minimum size (px)", self.min_size)
        form.addRow("Z stitch threshold", self.stitch_threshold)
        form.addRow("", self.show_probabilities)
        row = QHBoxLayout()
        row.addWidget(self.auto_update)
        row.addWidget(self.update_button)
        form.addRow(row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        for widget in (inputs, model, post):
            layout.addWidget(widget)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # -- state -------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def _on_active_layer(self, event=None) -> None:
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and (active.metadata or {}).get("cellrefine_kind") != "probabilities":
            self.image_combo.set_layer(active)

    def _show_axes(self, *_) -> None:
        layer = self.image_combo.current_layer()
        if layer is None:
            self.axes_label.setText("")
            return
        try:
            axes, source = layer_axes(self.viewer, layer, self.axes_edit.text())
            self.axes_label.setText(f"{axes} ({source})")
            self.axes_label.setStyleSheet("")
        except UserError as error:
            self.axes_label.setText(str(error))
            self.axes_label.setStyleSheet("color: #e05050")

    def _on_model_changed(self) -> None:
        model = self.session.model
        if model is None:
            return
        settings = PostprocessSettings(**model.config.get("postprocess", {}))
        for name in POSTPROCESS_FIELDS:
            box = getattr(self, name)
            box.blockSignals(True)
            box.setValue(getattr(settings, name))
            box.blockSignals(False)

    def postprocess_parameters(self) -> dict:
        return {
            "foreground_threshold": float(self.foreground_threshold.value()),
            "seed_threshold": float(self.seed_threshold.value()),
            "min_size": int(self.min_size.value()),
            "stitch_threshold": float(self.stitch_threshold.value()),
        }

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    # -- segmentation ------------------------------------------------------------------
    def request(self) -> SegmentRequest:
        """The run the widget would start now (raises UserError on invalid input)."""
        layer = self.image_combo.current_layer()
        if layer is None:
            raise UserError("No image layer to segment: open an image (File > Open, or the CellRefine sample) first.")
        axes, _ = layer_axes(self.viewer, layer, self.axes_edit.text())
        model = self.session.get_model()
        settings = dataclasses.replace(PostprocessSettings(**model.config.get("postprocess", {})), **self.postprocess_parameters()).validate()
        planes = [current_plane(self.viewer, layer, axes)] if self.current_slice.isChecked() else None
        return SegmentRequest(
            image_layer=layer,
            axes=axes,
            device=self.device_combo.device(),
            tile_size=self.tile_size.value() or None,
            planes=planes,
            postprocess=settings,
            show_probabilities=self.show_probabilities.isChecked(),
        )

    def run(self):
        """Start segmenting the selected image; returns the worker (None if the inputs are invalid)."""
        if self.worker is not None:
            report_warning("A segmentation is already running; cancel it first.")
            return None
        try:
            request = self.request()
            self.worker = start_segmentation(
                self.viewer, self.session, request, on_progress=self._on_progress, on_done=self._on_done, on_finished=self._on_finished
            )
        except (UserError, OSError, ValueError, TypeError) as error:
            report_error(error)
            return None
        self._cancelled = self._done = False
        self._started = time.perf_counter()
        self._set_running(True)
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting…")
        where = f" (slice t={request.planes[0][0]}, z={request.planes[0][1]})" if request.planes else ""
        self.status.setText(f"Segmenting {request.image_layer.name}{where}…")
        return self.worker

    def cancel(self) -> None:
        """Stop the running segmentation at the next tile (no layers are written)."""
        if self.worker is not None:
            self._cancelled = True
            self.worker.quit()
            self.status.setText("Cancelling…")

    def _on_progress(self, update) -> None:
        self.progress.setRange(0, max(1, update.total))
        self.progress.setValue(update.done)
        eta = eta_text(update.done, update.total, update.seconds)
        self.progress.setFormat(f"{update.done}/{update.total} tiles  {eta}".rstrip())

    def _on_done(self, record) -> None:
        self._done = True
        segmentation = record.segmentation
        self.device_used.setText(f"Ran on: {segmentation.device}")
        n_objects = int(segmentation.instances.max()) if segmentation.instances.size else 0
        self.progress.setFormat("done")
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.status.setText(f"{n_objects} objects in {format_seconds(time.perf_counter() - self._started)} on {segmentation.device}.")

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        if self._cancelled and not self._done:
            self.progress.setFormat("cancelled")
            self.status.setText("Segmentation cancelled; no layers were changed.")
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            if self.progress.format() == "starting…":
                self.progress.setFormat("failed")

    # -- post-processing ---------------------------------------------------------------
    def _on_parameter_changed(self, *_) -> None:
        if self.auto_update.isChecked() and self.session.record_for(self.image_combo.current_layer()) is not None:
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
                self.viewer, self.session, layer, parameters, on_done=self._on_instances_updated, on_finished=self._on_update_finished
            )
        except (UserError, ValueError) as error:
            report_error(error)
            return None
        self.status.setText("Updating instances…")
        return self.update_worker

    def _on_instances_updated(self, layer) -> None:
        self.status.setText(f"{int(layer.data.max())} objects in {layer.name!r} (updated).")

    def _on_update_finished(self) -> None:
        self.update_worker = None
        if self._update_again:
            self._update_again = False
            self.update_instances()
