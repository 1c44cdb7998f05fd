"""The Fine-tune widget: train the current model on the user's corrections, in the background.

The widget only collects inputs and displays: which checkpoint to keep, when
to stop and the threshold calibration are decided by the core
(:func:`cellrefine.training.iter_finetune`), so the GUI, the CLI and the API
return the same model for the same corrections.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..axes import spatial_shape
from ..training import FinetuneSettings, finetune_summary, reviewed_mask_from_labelled_planes
from .controls import LayerCombo, ask_labels_path, ask_model_path, ask_save_path
from .corrections_panel import CorrectionsPanel
from .dock import Panel
from .export_action import ask_export_path, start_export
from .forms import Field, build_form, device_field, disable_unavailable_devices
from .job_controls import JobControls
from .jobs import SegmentRequest, finetune_job, start_segmentation
from .label_files import save_labels
from .layers import current_plane, layer_array, layer_axes
from .plots import LossCurve
from .recent import add_recent_model
from .segment_widget import SegmentWidget
from .workers import UserError, format_seconds, report_error, report_warning

if TYPE_CHECKING:
    import napari

__all__ = ["FinetuneWidget", "TrainingInputs"]


@dataclasses.dataclass
class TrainingInputs:
    """Copies of the layer data to train on (made on the GUI thread)."""

    image_layer: object
    axes: str
    image: np.ndarray
    labels: np.ndarray
    reviewed_mask: np.ndarray
    kind: str
    scale: tuple | None = None  # the image layer's scale for its non-C axes (XZ/YZ training planes are resampled by it)
    slice_axes: str = "Z"  # XY planes, plus XZ ("Y") / YZ ("X") planes where corrections were painted in those views


class FinetuneWidget(Panel):
    """Fine-tune the session's model on a corrected labels layer (reviewed pixels only).

    ``run()`` does what the Fine-tune button does and returns the napari
    worker (None when the inputs are not valid; the reason is shown).
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        from napari.layers import Image, Labels

        napari_viewer = self.viewer
        self.followup_worker = None
        self._run: dict = {}

        self.image_combo = LayerCombo(napari_viewer, Image, "(no image layer)", events=self.events)
        self.labels_combo = LayerCombo(napari_viewer, Labels, "(no labels layer)", events=self.events)
        self.save_labels_button = QPushButton("Save labels…")
        self.save_labels_button.setToolTip("Save the corrected labels layer as a TIFF (axes in its metadata)")
        self.corrections = CorrectionsPanel(napari_viewer, self.session, self.labels_combo.current_layer, events=self.events)
        defaults = FinetuneSettings()
        self.form = build_form(
            [
                Field(
                    "steps",
                    "Steps",
                    defaults.steps,
                    int,
                    "SpinBox",
                    {"min": 1, "max": 100_000},
                    "Optimisation steps (each a batch of random crops around reviewed pixels)",
                ),
                Field("learning_rate", "Learning rate", defaults.learning_rate, float, "FloatSpinBox", {"min": 1e-5, "max": 1e-1, "step": 1e-4}),
                device_field(),
                Field("resegment", "Re-segment the current slice when done", True, bool),
            ]
        )
        self.steps, self.learning_rate, self.device, self.resegment = (self.form[name] for name in ("steps", "learning_rate", "device", "resegment"))
        disable_unavailable_devices(self.device)
        self.controls = JobControls(
            self.jobs, "Fine-tune", "Stop", "Stop after this step; the core keeps its best checkpoint and calibrates it", "step"
        )
        self.curve = LossCurve()
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.save_button = QPushButton("Save…")
        self.load_button = QPushButton("Load…")
        self.revert_button = QPushButton("Revert to bundled")
        self.export_button = QPushButton("Export for bioimage.io…")
        self.export_button.setToolTip("Write the current model as a bioimage.io package (.zip) that other tools run without CellRefine")
        self._build_layout()

        self.controls.run_button.clicked.connect(self.run)
        self.save_labels_button.clicked.connect(lambda: self.save_labels())
        self.save_button.clicked.connect(lambda: self.save_model())
        self.load_button.clicked.connect(lambda: self.load_model())
        self.revert_button.clicked.connect(self.revert_model)
        self.export_button.clicked.connect(lambda: self.export_model())
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        self.session.results_changed.connect(self.apply_defaults)
        self.session.model_changed.connect(self._show_model)
        self.apply_defaults()
        self._on_labels_changed()
        self._show_model()

    def _build_layout(self) -> None:
        data = QGroupBox("Training data")
        box = QVBoxLayout(data)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Corrected labels", self.labels_combo)
        box.addLayout(form)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.save_labels_button)
        box.addLayout(row)
        box.addWidget(self.corrections)
        training = QGroupBox("Training")
        box = QVBoxLayout(training)
        box.addWidget(self.form.native)
        box.addWidget(self.controls)
        box.addWidget(self.curve)
        box.addWidget(self.result)
        model = QGroupBox("Model")
        box = QVBoxLayout(model)
        box.addWidget(self.model_label)
        row = QHBoxLayout()
        for button in (self.save_button, self.load_button, self.revert_button):
            row.addWidget(button)
        box.addLayout(row)
        box.addWidget(self.export_button)
        self.set_sections([data, training, model])

    # -- state -------------------------------------------------------------------------
    @property
    def worker(self):
        """The running fine-tune's worker (None when idle)."""
        return self.controls.worker

    @property
    def busy(self) -> bool:
        """True while fine-tuning or the follow-up re-segmentation runs."""
        return self.controls.busy or self.followup_worker is not None

    def apply_defaults(self) -> None:
        """Select the image and corrected labels of the last segmentation (most recently painted first)."""
        if self.controls.busy:
            return
        image, labels = self.session.default_training_layers()
        if image is not None:
            self.image_combo.set_layer(image)
        if labels is not None:
            self.labels_combo.set_layer(labels)

    def _on_labels_changed(self, *_) -> None:
        self.corrections.watch(self.labels_combo.current_layer())

    def _show_model(self) -> None:
        self.model_label.setText(f"Current model: {self.session.model_description()}")

    # -- training ----------------------------------------------------------------------
    def training_inputs(self) -> TrainingInputs:
        """Copies of the chosen image, labels and reviewed pixels (raises UserError when unusable)."""
        image_layer, labels_layer = self.image_combo.current_layer(), self.labels_combo.current_layer()
        if image_layer is None or labels_layer is None:
            raise UserError("Choose an image and its corrected labels layer (segment the image first, then correct the result).")
        record = self.session.record_for(image_layer)
        axes = record.axes if record is not None else layer_axes(self.viewer, image_layer)[0]
        image, labels = layer_array(image_layer), layer_array(labels_layer)
        expected = spatial_shape(image.shape, axes)
        if labels.shape != expected:
            raise UserError(
                f"{labels_layer.name!r} has shape {labels.shape} but {image_layer.name!r} (axes {axes}) needs labels of shape {expected}."
            )
        tracker = self.session.tracker_for(labels_layer)
        if tracker is None:
            # not a CellRefine result (e.g. drawn from scratch): the core decides what counts as reviewed
            mask, kind, slice_axes = reviewed_mask_from_labelled_planes(labels, axes.replace("C", "")), "instances", "Z"
            if not mask.any():
                raise UserError(f"{labels_layer.name!r} is empty: paint some objects first.")
        else:
            mask, kind, slice_axes = tracker.reviewed_mask(), tracker.kind, tracker.slice_axes()
            if not mask.any():
                raise UserError(
                    f"Nothing in {labels_layer.name!r} is reviewed yet: correct some objects with the Labels tools, "
                    "or use 'Mark current slice reviewed', then fine-tune."
                )
        return TrainingInputs(image_layer, axes, image, labels, mask, kind, SegmentWidget.layer_scale(image_layer, axes), slice_axes)

    def run(self):
        """Start fine-tuning; returns the worker (None if the inputs are invalid)."""
        if self.followup_worker is not None:
            report_warning("The re-segmentation after the last fine-tune is still running; try again in a moment.")
            return None
        stop = threading.Event()

        def starter():
            inputs = self.training_inputs()
            model = self.session.get_model()
            settings = FinetuneSettings(learning_rate=float(self.learning_rate.value))
            steps = int(self.steps.value)
            worker = self.jobs.start(
                finetune_job,
                model,
                inputs.image,
                inputs.labels,
                inputs.reviewed_mask,
                inputs.axes,
                inputs.kind,
                steps,
                self.device.value,
                settings,
                stop,
                scale=inputs.scale,
                slice_axes=inputs.slice_axes,
                stop_event=stop,
                on_yielded=self._on_update,
                on_returned=self._on_returned,
            )
            self._run = {"inputs": inputs, "model": model, "steps": steps, "started": time.perf_counter(), "step": 0}
            return worker

        worker = self.controls.launch("Fine-tuning", starter, stop_event=stop, starting="preparing…")
        if worker is None:
            return None
        inputs, model = self._run["inputs"], self._run["model"]
        self.curve.clear()
        self.curve.set_total(self._run["steps"])
        self.result.setText("")
        self._run["training_text"] = f"Fine-tuning {model.name} on {int(inputs.reviewed_mask.sum())} reviewed pixels of {inputs.image_layer.name!r}…"
        self.controls.status.setText(self._run["training_text"])
        return worker

    def stop(self) -> None:
        """Stop after the current step; the core still returns its calibrated model."""
        if self.controls.busy:
            self.controls.stop()
            self.controls.status.setText("Stopping after this step… (the core then picks its checkpoint and calibrates it)")

    def _on_update(self, update) -> None:
        if update.phase == "training":
            self._run["step"] = update.step
            self.curve.add(update.step, update.loss, update.metrics.get("loss_smoothed"))
            if self._run.get("phase") != "training":
                self.controls.status.setText(self._run["training_text"])
        elif update.message:  # preparing, scoring, calibrating: what the core is doing, in its words
            self.controls.status.setText(update.message)
        self._run["phase"] = update.phase

    def _on_returned(self, model) -> None:
        self.session.set_model(model, ("memory", model.name))
        seconds = format_seconds(time.perf_counter() - self._run["started"])
        record = (model.config.get("provenance") or [{}])[-1]
        if self.controls.stop_requested or record.get("stopped_early"):
            how = f"Fine-tuning stopped at step {record.get('steps', self._run['step'])} of {self._run['steps']} after {seconds}."
        else:
            how = f"Fine-tuning finished after {seconds}."
        lines = finetune_summary(model)
        self.result.setText("\n".join([how, *lines]))
        for line in lines:
            if line.lower().startswith("warning"):
                report_warning(f"{model.name}: {line}")
        self.controls.status.setText(f"The current model is now {model.name} (in memory: Save… keeps it).")
        if self.resegment.value:
            self._resegment()

    def _resegment(self) -> None:
        """Segment the current slice of the training image with the new model (edited layers are kept)."""
        inputs = self._run["inputs"]
        layer = inputs.image_layer
        if not any(existing is layer for existing in self.viewer.layers):
            return
        record = self.session.record_for(layer)
        request = SegmentRequest(  # postprocess None: the new model's own (calibrated) thresholds
            image_layer=layer,
            axes=inputs.axes,
            device=self.device.value,
            planes=[current_plane(self.viewer, layer, inputs.axes)],
            show_probabilities=bool(record and record.show_probabilities),
        )
        try:
            self.followup_worker = start_segmentation(
                self.jobs, self.viewer, self.session, request, on_done=self._on_resegmented, on_finished=self._on_resegment_finished
            )
        except (OSError, ValueError, TypeError, UserError) as error:
            report_error(error)

    def _on_resegmented(self, record) -> None:
        layer = record.layer("instances")
        name = layer.name if layer is not None else "instances"
        how = record.written.get("instances", "")
        self.result.setText(
            self.result.text() + f"\nRe-segmented the current slice with the new model into {name!r}" + (f" ({how})." if how else ".")
        )

    def _on_resegment_finished(self) -> None:
        self.followup_worker = None

    # -- files -------------------------------------------------------------------------
    def _write(self, path, ask, write):
        """``write(path)`` (asking for ``path`` with ``ask()`` when None); a failure is shown. Returns what ``write`` returned or None."""
        path = path or ask()
        if not path:
            return None
        try:
            return write(path)
        except (OSError, ValueError, TypeError) as error:
            report_error(error)
            return None

    def save_labels(self, path=None):
        """Save the chosen labels layer as a TIFF; asks for a path when None. Returns the path (or None)."""
        layer = self.labels_combo.current_layer()
        if layer is None:
            report_warning("No labels layer to save.")
            return None
        axes = (layer.metadata or {}).get("cellrefine_axes")
        written = self._write(path, lambda: ask_labels_path(self, f"{layer.name}.tif"), lambda target: save_labels(layer_array(layer), target, axes))
        if written is not None:
            self.controls.status.setText(f"Saved {layer.name!r} to {written}.")
        return written

    def save_model(self, path=None):
        """Save the current model (with its provenance); asks for a path when None."""
        model = self.session.model
        if model is None:
            report_warning("No model to save yet: fine-tune or load one first.")
            return None
        written = self._write(path, lambda: ask_save_path(self, f"{model.name}.safetensors"), model.save)
        if written is not None:
            add_recent_model(written)
            self.session.set_model(model, ("file", str(written)))
            self.controls.status.setText(f"Saved {model.name} to {written}.")
        return written

    def load_model(self, path=None):
        """Load a saved model into the session; asks for a path when None."""
        path = path or ask_model_path(self)
        if not path:
            return None
        try:
            return self.session.load_model_file(path)
        except (OSError, ValueError, TypeError) as error:
            report_error(error)
            return None

    def export_model(self, path=None):
        """Export the current model as a bioimage.io package in a worker; asks for a path when None. Returns the worker (or None)."""
        try:
            model = self.session.get_model()
            path = path or ask_export_path(self, f"{model.name}.zip")
            if not path:
                return None
            worker = start_export(
                self.jobs,
                model,
                path,
                on_yielded=self.controls.status.setText,
                on_done=lambda written: self.controls.status.setText(f"Exported {model.name} for bioimage.io to {written}."),
                on_finished=lambda: self.export_button.setEnabled(True),
            )
        except (OSError, ValueError, TypeError, UserError) as error:
            report_error(error)
            return None
        self.export_button.setEnabled(False)
        return worker

    def revert_model(self):
        """Go back to the bundled model."""
        try:
            return self.session.use_bundled()
        except (OSError, ValueError) as error:
            report_error(error)
            return None
