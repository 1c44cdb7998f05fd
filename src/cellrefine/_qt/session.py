"""Per-viewer state shared by the Segment and Fine-tune widgets.

One :class:`Session` per viewer, kept in a module-level
``WeakKeyDictionary`` keyed by the viewer (:func:`get_session`): when the
viewer goes away, so does its session. A session holds

* the current model and where it came from (``model_source``: ``("bundled", name)``,
  ``("file", path)`` or ``("memory", name)``); a bundled model (``nuclei`` until
  another is chosen, see :mod:`cellrefine.model.bundled`) is loaded lazily, on
  first use, so the widgets open even when its weights are not installed;
* the last segmentation of each Image layer (:class:`SegmentationRecord`,
  with cached probabilities for re-running the watershed);
* a :class:`~cellrefine._qt.corrections.CorrectionTracker` per result Labels
  layer;
* a :class:`~cellrefine._qt.classes_sync.ClassesFollower` that keeps each
  ``classes`` layer in step with edits of its ``instances`` layer.

Layers are referenced weakly throughout; the session never holds the viewer
or a widget strongly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Signal

from .classes_sync import ClassesFollower
from .corrections import CorrectionTracker
from .recent import add_recent_model

if TYPE_CHECKING:
    import napari

    from ..inference import Segmentation
    from ..model.io import Model

logger = logging.getLogger(__name__)

__all__ = ["Session", "SegmentationRecord", "get_session", "unwrap_viewer", "layer_ref"]

_SESSIONS: weakref.WeakKeyDictionary[napari.Viewer, Session] = weakref.WeakKeyDictionary()


def unwrap_viewer(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer itself when napari handed a widget a ``PublicOnlyProxy`` of it.

    The proxy wraps every attribute it returns in a new proxy, which would
    break identity (``layer is other``) and weak-keyed bookkeeping.
    """
    return getattr(viewer, "__wrapped__", viewer)


def get_session(viewer: napari.Viewer) -> Session:
    """The session of ``viewer`` (created on first use; proxies are unwrapped)."""
    viewer = unwrap_viewer(viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = Session(viewer)
        _SESSIONS[viewer] = session
    return session


def _load_bundled(name: str) -> Model:
    from ..model.io import load_model

    return load_model(f"bundled:{name}")


def layer_ref(layer):
    """A weak reference to ``layer`` (None stays None)."""
    return None if layer is None else weakref.ref(layer)


@dataclasses.dataclass
class SegmentationRecord:
    """The last segmentation of one Image layer and the layers it was written to."""

    segmentation: Segmentation
    axes: str  # axes of the image data (with C)
    planes: list | None  # (t, z) planes segmented, None = all
    show_probabilities: bool
    classes: weakref.ref | None = None
    instances: weakref.ref | None = None
    probabilities: weakref.ref | None = None
    ranking: list | None = None  # cellrefine.uncertainty.ObjectUncertainty, most uncertain first
    written: dict = dataclasses.field(default_factory=dict)  # kind -> how it was written ("new layer", "updated", ...)

    def layer(self, kind: str):
        ref = getattr(self, kind)
        return None if ref is None else ref()


class Session(QObject):
    """Shared state of one viewer (see the module docstring)."""

    model_changed = Signal()
    results_changed = Signal()
    corrections_changed = Signal()

    def __init__(self, viewer: napari.Viewer):
        super().__init__()
        self._viewer = weakref.ref(viewer)
        from ..model.bundled import DEFAULT_BUNDLED

        self._model: Model | None = None
        self.model_source: tuple[str, str | None] = ("bundled", DEFAULT_BUNDLED)
        self._bundled_name = DEFAULT_BUNDLED  # the bundled model chosen last: what lazy loading and Revert use
        self._records: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._trackers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._last_image = None
        self._tracker_edit_time: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.classes_follower = ClassesFollower(self)

    @property
    def viewer(self):
        return self._viewer()

    # -- model -----------------------------------------------------------------------
    def get_model(self) -> Model:
        """The current model; loads the chosen bundled one (``nuclei`` by default) on first use.

        Raises
        ------
        FileNotFoundError
            The bundled weights are not installed (load a saved model instead).
        """
        if self._model is None:
            try:
                self._model = _load_bundled(self._bundled_name)
            except FileNotFoundError as error:
                raise FileNotFoundError(f"the bundled CellRefine model is not installed ({error}); load a saved model with 'Load…'.") from None
            self.model_source = ("bundled", self._bundled_name)
            self.model_changed.emit()
        return self._model

    @property
    def model(self) -> Model | None:
        """The current model if one is loaded (None until the bundled one is needed)."""
        return self._model

    def set_model(self, model: Model, source: tuple[str, str | None] | None = None) -> None:
        """Make ``model`` the current model (used by Load, fine-tuning and tests)."""
        from ..model.io import Model

        if not isinstance(model, Model):
            raise TypeError(f"expected a cellrefine Model, got {type(model).__name__}.")
        self._model = model
        self.model_source = source or ("memory", model.name)
        self.model_changed.emit()

    def load_model_file(self, path) -> Model:
        """Load a saved model, make it current and remember it in the recent list."""
        from ..model.io import load_model

        model = load_model(path)
        add_recent_model(path)
        self.set_model(model, ("file", str(path)))
        return model

    def use_bundled(self, name: str | None = None) -> Model:
        """Make a bundled model current (loaded now, so a missing file is reported now).

        Parameters
        ----------
        name : str, optional
            A bundled model's name (``"nuclei"``, ``"cells"``; see
            :func:`cellrefine.model.bundled.bundled_names`); None: the bundled
            model chosen last (``"nuclei"`` if none was), which is what
            "Revert to bundled" goes back to.

        Raises
        ------
        ValueError
            ``name`` is not a bundled model.
        FileNotFoundError
            Its weights are not installed.
        """
        from ..model.bundled import BUNDLED_MODELS, describe_bundled

        name = self._bundled_name if name is None else name
        if name not in BUNDLED_MODELS:
            raise ValueError(f"{name!r} is not a bundled CellRefine model; choose one of {describe_bundled()}.")
        try:
            model = _load_bundled(name)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"the bundled CellRefine model is not installed ({error}).") from None
        self._bundled_name = name
        self.set_model(model, ("bundled", name))
        return model

    def model_description(self) -> str:
        kind, value = self.model_source
        if self._model is None:
            return f"bundled {self._bundled_name} model (loaded on first use)"
        if kind == "file":
            return f"{self._model.name} ({value})"
        if kind == "bundled":
            return f"{self._model.name} (bundled)"
        return f"{self._model.name} (in memory, unsaved)"

    # -- segmentations ---------------------------------------------------------------
    def record_for(self, image_layer) -> SegmentationRecord | None:
        return None if image_layer is None else self._records.get(image_layer)

    def set_record(self, image_layer, record: SegmentationRecord) -> None:
        self._records[image_layer] = record
        self._last_image = weakref.ref(image_layer)
        self.classes_follower.follow(image_layer, record)
        self.results_changed.emit()

    @property
    def last_image(self):
        return None if self._last_image is None else self._last_image()

    # -- corrections -----------------------------------------------------------------
    def tracker_for(self, labels_layer) -> CorrectionTracker | None:
        return None if labels_layer is None else self._trackers.get(labels_layer)

    def track(self, labels_layer, prediction, axes: str, kind: str, image_layer=None) -> CorrectionTracker:
        """Start (or restart, after a new prediction was written) tracking ``labels_layer``."""
        tracker = self._trackers.get(labels_layer)
        if tracker is None:
            tracker = CorrectionTracker(labels_layer, prediction, axes, kind)
            self._trackers[labels_layer] = tracker
            labels_layer.events.paint.connect(self._on_paint)
        else:
            tracker.reset(prediction)
            tracker.axes, tracker.kind = axes, kind
        tracker.image = layer_ref(image_layer)
        return tracker

    def _on_paint(self, event) -> None:
        layer = getattr(event, "source", None)
        if layer is not None:
            self._tracker_edit_time[layer] = time.monotonic()
        self.corrections_changed.emit()

    def default_training_layers(self):
        """(image layer, labels layer) to fine-tune on by default.

        The most recently painted result layer wins (with its image); else the
        instances layer of the last segmentation.
        """
        viewer = self.viewer
        alive = set(map(id, viewer.layers)) if viewer is not None else set()
        painted = [(t, layer) for layer, t in self._tracker_edit_time.items() if id(layer) in alive]
        for _, labels in sorted(painted, key=lambda item: -item[0]):
            tracker = self._trackers.get(labels)
            image = tracker.image() if tracker is not None and tracker.image is not None else None
            if image is not None and id(image) in alive and tracker.is_edited():
                return image, labels
        image = self.last_image
        if image is None or id(image) not in alive:
            return None, None
        record = self._records.get(image)
        labels = record.layer("instances") if record else None
        return image, labels if labels is not None and id(labels) in alive else None
