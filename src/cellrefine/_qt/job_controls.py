"""Run/Stop buttons, a progress bar with ETA and a status line, shared by the widgets.

:class:`JobControls` is the one place for the "already running" guard, error
reporting at start, progress and ETA, and the done / stopped / failed states.
The job itself is started by the widget (through its :class:`~.workers.JobSet`)
inside :meth:`JobControls.launch`.

:class:`ClosingWatcher` stops a widget's jobs when its dock is removed or the
viewer window closes.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QHBoxLayout, QLabel, QMainWindow, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from .workers import EXPECTED_ERRORS, JobSet, UserError, format_seconds, report_error, report_warning

__all__ = ["JobControls", "ClosingWatcher", "EventConnections", "eta_text", "stop_on_close"]


def eta_text(done: int, total: int, seconds: float) -> str:
    """``"ETA 12 s"`` after ``done`` of ``total`` units took ``seconds`` (empty when unknown)."""
    if done <= 0 or total <= 0 or done >= total:
        return ""
    return f"ETA {format_seconds(seconds / done * (total - done))}"


class JobControls(QWidget):
    """Run and Stop buttons, a progress bar and a status line for one kind of job.

    Parameters
    ----------
    jobs : JobSet
        The widget's jobs (closed when the widget goes away).
    run_text, stop_text, stop_tip : str
        Button texts and the Stop tooltip.
    unit : str
        What the progress counts ("tiles", "step").
    stopping : str
        Status line shown when Stop is pressed.
    """

    def __init__(
        self,
        jobs: JobSet,
        run_text: str = "Run",
        stop_text: str = "Stop",
        stop_tip: str = "",
        unit: str = "tiles",
        stopping: str = "Stopping…",
        parent=None,
    ):
        super().__init__(parent)
        self._jobs = jobs
        self.unit = unit
        self._stopping = stopping
        self.worker = None
        self._stop_event = None
        self._stop_requested = False
        self._returned = False
        self._rate_start = None  # (time, done) of the first progress update: the ETA leaves out preparation
        self.run_button = QPushButton(run_text)
        self.stop_button = QPushButton(stop_text)
        self.stop_button.setToolTip(stop_tip)
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.stop_button.clicked.connect(self.stop)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def launch(self, what: str, starter: Callable, stop_event=None, starting: str = "starting…"):
        """Start a job unless one is running; returns its worker or None.

        ``starter()`` prepares the inputs on the GUI thread and returns a
        worker of the widget's JobSet; a :class:`~.workers.UserError`,
        ``OSError``, ``ValueError`` or ``TypeError`` it raises is shown to
        the user. ``stop_event`` (a ``threading.Event`` the job watches) is
        what Stop sets; without one Stop quits the worker at its next yield.
        """
        if self.worker is not None:
            report_warning(f"{what} is already running; stop it first.")
            return None
        try:
            worker = starter()
        except (UserError, OSError, *EXPECTED_ERRORS) as error:
            report_error(error)
            return None
        self.worker, self._stop_event = worker, stop_event
        self._stop_requested = self._returned = False
        self._rate_start = None
        self._jobs.watch(worker, on_yielded=self.show_progress, on_returned=self._on_returned, on_finished=self._on_finished)
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.progress.setFormat(starting)
        return worker

    def stop(self) -> None:
        """Ask the running job to stop (see :meth:`launch`)."""
        if self.worker is None:
            return
        self._stop_requested = True
        self.stop_button.setEnabled(False)
        self.status.setText(self._stopping)
        if self._stop_event is not None:
            self._stop_event.set()
            self.progress.setFormat("stopping…")
        else:
            self.worker.quit()

    @property
    def stop_requested(self) -> bool:
        """Whether Stop was pressed during the current (or last) job."""
        return self._stop_requested

    def show_progress(self, update) -> None:
        """Show an update with ``done``/``total`` (and optionally ``phase``/``message``)."""
        done, total = int(update.done), int(update.total)
        phase = getattr(update, "phase", None)
        message = getattr(update, "message", "") or ""
        if done <= 0 or phase == "preparing":
            self.progress.setRange(0, 0)
            self.progress.setFormat(message or "preparing…")
            return
        now = time.perf_counter()
        if self._rate_start is None:
            self._rate_start = (now, done)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(done, total))
        text = f"{self.unit} {done}/{total}"
        if phase not in (None, "training"):
            text += f"  {message or phase}"
        else:
            started, first = self._rate_start
            text += f"  {eta_text(done - first, total - first, now - started)}"
        self.progress.setFormat(text.rstrip())

    def _on_returned(self, _result) -> None:
        self._returned = True
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("stopped early" if self._stop_requested else "done")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if not self._returned:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("cancelled" if self._stop_requested else "failed")


class EventConnections:
    """napari event connections of one widget, to undo them all when it closes (a plain object)."""

    def __init__(self):
        self._connections: list = []

    def connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def disconnect_all(self) -> None:
        for emitter, callback in self._connections:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(callback)
        self._connections = []


class ClosingWatcher(QObject):
    """Calls ``on_close`` once when ``widget``'s dock is removed or its main window closes.

    Watches the widget and its ancestors: the widget re-parented to nothing
    (napari's dock close button), its top-level main window hidden by a
    close, and the widget's ``destroyed`` signal (the window was deleted
    before any of that was seen, e.g. a viewer that was never shown).
    ``on_close`` must not need the widget's Qt side (it may already be gone).
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]):
        super().__init__(widget)
        self._watched: list = []
        self._window = None
        self._docked = False
        fired = self._fired = {"done": False}

        def fire(*_):  # no reference to the widget or the watcher: it may run from ``destroyed``
            if not fired["done"]:
                fired["done"] = True
                on_close()

        self._fire = fire
        widget.installEventFilter(self)
        widget.destroyed.connect(fire)

    def _rewatch(self) -> None:
        """Watch every ancestor (a dock's own re-parenting moves the widget too)."""
        widget = self.parent()
        for ancestor in self._watched:
            with contextlib.suppress(RuntimeError):
                ancestor.removeEventFilter(self)
        self._watched = []
        ancestor = widget.parentWidget()
        while ancestor is not None:
            ancestor.installEventFilter(self)
            self._watched.append(ancestor)
            ancestor = ancestor.parentWidget()
        window = widget.window()
        self._window = window if isinstance(window, QMainWindow) else None

    def eventFilter(self, watched, event) -> bool:
        kind = event.type()
        widget = self.parent()
        if widget is None or kind not in (QEvent.Type.ParentChange, QEvent.Type.Hide):
            return False
        if kind == QEvent.Type.ParentChange and (watched is widget or watched in self._watched):
            if widget.parentWidget() is None:
                if self._docked:
                    self._fire()
            else:
                self._docked = True
                self._rewatch()
        elif kind == QEvent.Type.Hide and watched is self._window and self._window is not None and not event.spontaneous():
            self._fire()
        return False


def _close_all(jobs: JobSet, events: EventConnections) -> None:
    jobs.close()
    events.disconnect_all()


def stop_on_close(widget: QWidget, jobs: JobSet, events: EventConnections) -> ClosingWatcher:
    """Close ``jobs`` and undo ``events`` when ``widget``'s dock or viewer closes (see :class:`ClosingWatcher`)."""
    return ClosingWatcher(widget, functools.partial(_close_all, jobs, events))
