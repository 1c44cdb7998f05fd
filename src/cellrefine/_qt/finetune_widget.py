"""The Fine-tune widget: train the current model on the user's corrections, in the background."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..axes import from_tzyx, spatial_shape
from ..training import FinetuneSettings
from .controls import DeviceCombo, LayerCombo, ask_model_path, ask_save_path
from .corrections import tzyx
from .corrections_panel import CorrectionsPanel
from .jobs import SegmentRequest, finetune_job, start_segmentation
from .layers import current_plane, layer_array, layer_axes
from .plots import LossCurve
from .recent import add_recent_model
from .session import get_session, unwrap_viewer
from .workers import UserError, eta_text, format_seconds, report_error, report_warning, start_job

if TYPE_CHECKING:
    import napari

__all__ = ["FinetuneWidget", "metrics_summary"]


def metrics_summary(model) -> str:
    """ "reviewed accuracy 0.81 → 0.93 …" from the last provenance record of ``model``."""
    records = model.config.get("provenance") or []
    if not records:
        return ""
    record = records[-1]
    before, after = record.get("metrics_before") or {}, record.get("metrics_after") or {}
    lines = []
    for key, label in (
        ("reviewed_accuracy", "reviewed pixel accuracy"),
        ("reviewed_iou_cell", "cell IoU"),
        ("reviewed_iou_boundary", "boundary IoU"),
    ):
        if key in before or key in after:
            b, a = before.get(key), after.get(key)
            fmt = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"
            lines.append(f"{label}: {fmt(b)} → {fmt(a)}")
    return "\n".join(lines)


class FinetuneWidget(QWidget):
    """Fine-tune the session's model on a corrected labels layer (reviewed pixels only).

    ``run()`` does what the Fine-tune button does and returns the napari
    worker (None when the inputs are not valid; the reason is shown).
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        from napari.layers import Image, Labels

        napari_viewer = unwrap_viewer(napari_viewer)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.worker = None
        self.followup_worker = None
        self._best = None
        self._stopped: dict = {}
        self._adopted = False

        self.image_combo = LayerCombo(napari_viewer, Image, "(no image layer)")
        self.labels_combo = LayerCombo(napari_viewer, Labels, "(no labels layer)")
        self.corrections = CorrectionsPanel(napari_viewer, self.session, self.labels_combo.current_layer)
        defaults = FinetuneSettings()
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(defaults.steps)
        self.steps.setToolTip("Optimisation steps (each a batch of random crops around reviewed pixels)")
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1e-1)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(defaults.learning_rate)
        self.device_combo = DeviceCombo()
        self.resegment = QCheckBox("Re-segment the current slice when done")
        self.resegment.setChecked(True)
        self.train_button = QPushButton("Fine-tune")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop now and keep the best model so far")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.curve = LossCurve()
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.save_button = QPushButton("Save…")
        self.load_button = QPushButton("Load…")
        self.revert_button = QPushButton("Revert to bundled")
        self._build_layout()

        self.train_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(lambda: self.save_model())
        self.load_button.clicked.connect(lambda: self.load_model())
        self.revert_button.clicked.connect(self.revert_model)
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        self.session.results_changed.connect(self.apply_defaults)
        self.session.model_changed.connect(self._show_model)
        self.apply_defaults()
        self._on_labels_changed()
        self._show_model()

    def _build_layout(self) -> None:
        data = QGroupBox("Training data")
        form = QFormLayout(data)
        form.addRow("Image", self.image_combo)
        form.addRow("Corrected labels", self.labels_combo)
        form.addRow(self.corrections)
        training = QGroupBox("Training")
        form = QFormLayout(training)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.learning_rate)
        form.addRow("Device", self.device_combo)
        form.addRow(self.resegment)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.stop_button)
        form.addRow(buttons)
        form.addRow(self.progress)
        form.addRow(self.curve)
        form.addRow(self.result)
        model = QGroupBox("Model")
        box = QVBoxLayout(model)
        box.addWidget(self.model_label)
        row = QHBoxLayout()
        for button in (self.save_button, self.load_button, self.revert_button):
            row.addWidget(button)
        box.addLayout(row)
        layout = QVBoxLayout(self)
        for widget in (data, training, model):
            layout.addWidget(widget)
        layout.addStretch(1)

    # -- state -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while fine-tuning or the follow-up re-segmentation runs."""
        return self.worker is not None or self.followup_worker is not None

    def apply_defaults(self) -> None:
        """Select the image and corrected labels of the last segmentation (most recently painted first)."""
        if self.worker is not None:
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
    def _inputs(self) -> dict:
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
        kind = "instances"
        if tracker is None:
            # not a CellRefine result (e.g. drawn from scratch): every slice holding labels counts as reviewed
            planes = tzyx(labels, axes.replace("C", "")).any(axis=(2, 3))
            if not planes.any():
                raise UserError(f"{labels_layer.name!r} is empty: paint some objects first.")
            mask = from_tzyx(np.broadcast_to(planes[:, :, None, None], tzyx(labels, axes.replace("C", "")).shape).copy(), axes)
        else:
            mask, kind = tracker.reviewed_mask(), tracker.kind
            if not mask.any():
                raise UserError(
                    f"Nothing in {labels_layer.name!r} is reviewed yet: correct some objects with the Labels tools, "
                    "or use 'Mark current slice reviewed', then fine-tune."
                )
        return {"image_layer": image_layer, "axes": axes, "image": image, "labels": labels, "mask": mask, "kind": kind}

    def run(self):
        """Start fine-tuning; returns the worker (None if the inputs are invalid)."""
        if self.busy:
            report_warning("Fine-tuning is already running; stop it first.")
            return None
        try:
            inputs = self._inputs()
            model = self.session.get_model()
            settings = FinetuneSettings(learning_rate=float(self.learning_rate.value()))
            self._stopped, self._best, self._adopted = {}, None, False
            self._image_layer, self._axes = inputs["image_layer"], inputs["axes"]
            self.worker = start_job(
                finetune_job,
                model,
                [inputs["image"]],
                [inputs["labels"]],
                [inputs["mask"]],
                inputs["axes"],
                inputs["kind"],
                int(self.steps.value()),
                self.device_combo.device(),
                settings,
                self._stopped,
                on_yielded=self._on_update,
                on_returned=self._on_returned,
                on_finished=self._on_finished,
            )
        except (UserError, OSError, ValueError, TypeError) as error:
            report_error(error)
            return None
        self._started = time.perf_counter()
        self._aborted = False
        self.curve.clear()
        self.curve.set_total(int(self.steps.value()))
        self.progress.setRange(0, 0)
        self.progress.setFormat("preparing…")
        self.result.setText("")
        self.train_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        reviewed = f"{int(inputs['mask'].sum())} reviewed pixels"
        self.result.setText(f"Fine-tuning {model.name} on {reviewed}…")
        return self.worker

    def stop(self) -> None:
        """Stop after the current step and keep the best model so far."""
        if self.worker is not None:
            self._aborted = True  # also when the last step is already done: "returned" is not sent after quit()
            self.worker.quit()
            self.result.setText("Stopping… (the best model so far is kept)")

    def _on_update(self, update) -> None:
        self.curve.add(update.step, update.loss, update.metrics.get("loss_smoothed"))
        self.progress.setRange(0, update.total)
        self.progress.setValue(update.step)
        eta = eta_text(update.step, update.total, update.metrics.get("seconds", 0.0))
        self.progress.setFormat(f"step {update.step}/{update.total}  {eta}".rstrip())
        accuracy = update.metrics.get("reviewed_accuracy")
        if update.model is not None and accuracy is not None and (self._best is None or accuracy > self._best[1]):
            self._best = (update.model, accuracy)

    def _on_returned(self, final) -> None:
        after = (final.config.get("provenance") or [{}])[-1].get("metrics_after", {})
        chosen = final
        if self._best is not None and self._best[1] > after.get("reviewed_accuracy", -1.0):
            chosen = self._best[0]
        self._adopt(chosen, "finished")

    def _on_finished(self) -> None:
        self.worker = None
        self.train_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setFormat("failed")
        if self._aborted and not self._adopted:
            # the worker closed its generator before `finished`: the stop snapshot is in place
            if self._best is not None:
                self._adopt(self._best[0], "stopped, best checkpoint kept")
            elif self._stopped.get("model") is not None:
                self._adopt(self._stopped["model"], f"stopped at step {self._stopped.get('step')}, not validated")
            else:
                self.result.setText("Stopped before the first step; the model is unchanged.")

    def _adopt(self, model, how: str) -> None:
        self._adopted = True
        self.session.set_model(model, ("memory", model.name))
        seconds = format_seconds(time.perf_counter() - self._started)
        summary = metrics_summary(model)
        record = (model.config.get("provenance") or [{}])[-1]
        before = (record.get("metrics_before") or {}).get("reviewed_accuracy")
        after = (record.get("metrics_after") or {}).get("reviewed_accuracy")
        if before is not None and after is not None and after < before - 0.01:
            warning = (
                f"The fine-tuned model is less accurate on the reviewed pixels than the one it started from ({before:.3f} → {after:.3f}). "
                "Correct more objects or mark whole reviewed slices, or go back with Load…/Revert."
            )
            report_warning(warning)
            summary += "\nWarning: worse than before on the reviewed pixels."
        self.result.setText(f"Fine-tuning {how} after {seconds}.\n{summary}".strip())
        self.progress.setFormat(how)
        if self.resegment.isChecked():
            self._resegment()

    def _resegment(self) -> None:
        """Segment the current slice of the training image with the new model (edited layers are kept)."""
        layer = self._image_layer
        if not any(existing is layer for existing in self.viewer.layers):
            return
        record = self.session.record_for(layer)
        settings = record.segmentation.settings if record is not None else None
        request = SegmentRequest(
            image_layer=layer,
            axes=self._axes,
            device=self.device_combo.device(),
            planes=[current_plane(self.viewer, layer, self._axes)],
            postprocess=settings,
            show_probabilities=bool(record and record.show_probabilities),
        )
        try:
            self.followup_worker = start_segmentation(
                self.viewer, self.session, request, on_done=self._on_resegmented, on_finished=self._on_resegment_finished
            )
        except (OSError, ValueError, TypeError) as error:
            report_error(error)

    def _on_resegmented(self, record) -> None:
        layer = record.layer("instances")
        name = layer.name if layer is not None else "instances"
        self.result.setText(self.result.text() + f"\nRe-segmented the current slice with the new model into {name!r}.")

    def _on_resegment_finished(self) -> None:
        self.followup_worker = None

    # -- model files -------------------------------------------------------------------
    def save_model(self, path=None):
        """Save the current model (with its provenance); asks for a path when None."""
        model = self.session.model
        if model is None:
            report_warning("No model to save yet: fine-tune or load one first.")
            return None
        path = path or ask_save_path(self, f"{model.name}.safetensors")
        if not path:
            return None
        try:
            written = model.save(path)
        except (OSError, ValueError) as error:
            report_error(error)
            return None
        add_recent_model(written)
        self.session.set_model(model, ("file", str(written)))
        self.result.setText(f"Saved {model.name} to {written}.")
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

    def revert_model(self):
        """Go back to the bundled model."""
        try:
            return self.session.use_bundled()
        except (OSError, ValueError) as error:
            report_error(error)
            return None
