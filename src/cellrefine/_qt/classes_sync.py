"""Keep the ``classes`` layer in step with edits of its ``instances`` layer.

When the user paints, fills or erases in ``<image> instances`` (or undoes
that), the planes that changed are recomputed in ``<image> classes`` with
:func:`cellrefine.targets.instances_to_semantic` (cell interior + boundary
band), 300 ms after the last edit. If the user has edited the classes layer
itself, it is not overwritten: it is renamed ``… (stale)`` and a warning
says so.
"""

from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import QObject, QTimer

from ..targets import instances_to_semantic
from .corrections import tzyx

__all__ = ["ClassesFollower", "STALE_SUFFIX"]

STALE_SUFFIX = " (stale)"


class ClassesFollower(QObject):
    """Recompute a session's classes layers from edited instances layers (debounced)."""

    def __init__(self, session, delay_ms: int = 300):
        super().__init__(session)
        self._session = weakref.ref(session)
        self._derived = weakref.WeakKeyDictionary()  # instances layer -> the instances its classes were made from
        self._image_of = weakref.WeakKeyDictionary()  # instances layer -> weakref to its image layer
        self._pending = weakref.WeakSet()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.sync_pending)

    def follow(self, image_layer, record) -> None:
        """Start (or restart, after a new segmentation was written) following ``record``'s instances layer."""
        instances = record.layer("instances")
        if instances is None:
            return
        if instances not in self._image_of:
            for name in ("paint", "data", "set_data", "reload"):
                emitter = getattr(instances.events, name, None)
                if emitter is not None:
                    emitter.connect(self._on_edit)
        self._image_of[instances] = weakref.ref(image_layer)
        self._derived[instances] = np.array(instances.data, copy=True)

    def _on_edit(self, event) -> None:
        layer = getattr(event, "source", None)
        if layer is not None and layer in self._image_of:
            self._pending.add(layer)
            self._timer.start()

    def sync_pending(self) -> list:
        """Bring the classes layers of the edited instances layers up to date now; returns the planes recomputed."""
        planes = []
        for instances in list(self._pending):
            planes += self.sync(instances)
        self._pending = weakref.WeakSet()
        return planes

    def sync(self, instances) -> list:
        """Recompute the classes planes whose instances changed; returns their (t, z) indices."""
        session = self._session()
        image_ref = self._image_of.get(instances)
        image = image_ref() if image_ref is not None else None
        record = session.record_for(image) if session is not None and image is not None else None
        derived = self._derived.get(instances)
        if record is None or record.layer("instances") is not instances or derived is None:
            return []
        classes = record.layer("classes")
        data = np.asarray(instances.data)
        if classes is None or data.shape != derived.shape or np.asarray(classes.data).shape != data.shape:
            return []
        axes = record.segmentation.axes
        now, before = tzyx(data, axes), tzyx(derived, axes)
        changed = [(int(t), int(z)) for t, z in zip(*np.nonzero((now != before).any(axis=(2, 3))))]
        if not changed:
            return []
        self._derived[instances] = np.array(data, copy=True)
        tracker = session.tracker_for(classes)
        if tracker is not None and tracker.is_edited():
            self._mark_stale(classes, instances)
            return []
        target = tzyx(classes.data, axes)  # a view: written in place
        for t, z in changed:
            target[t, z] = instances_to_semantic(now[t, z])
        classes.refresh()
        if tracker is not None:
            tracker.set_prediction(classes.data)
        return changed

    @staticmethod
    def _mark_stale(classes, instances) -> None:
        if classes.name.endswith(STALE_SUFFIX):
            return
        from .workers import report_warning

        classes.name = classes.name + STALE_SUFFIX
        classes.metadata["cellrefine_stale"] = True
        report_warning(
            f"{instances.name!r} was edited but {classes.name!r} has edits of its own, so it was not updated; "
            "it is marked stale. Delete it, or re-run Segment, to get classes that match the instances."
        )
