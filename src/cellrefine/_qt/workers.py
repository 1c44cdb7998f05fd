"""Thread-worker helpers: start core generators in napari workers, report errors.

Every long job (segmentation, fine-tuning, re-running the watershed) is a core
generator run by :meth:`JobSet.start` in a napari ``GeneratorWorker``:

* the worker is created on the GUI thread and started on the next event-loop
  turn, so callers (and tests) can connect to its signals before it runs;
* ``worker.quit()`` stops it at the next ``yield`` (per tile / per step) and
  the generator is then *closed in the worker thread*, so ``finally`` blocks in
  the core (thread pools, torch thread limits) run there, not on the GUI;
* errors reach the user: expected problems (``ValueError``, ``TypeError``,
  ``FileNotFoundError``, :class:`UserError`) as a plain message, anything else
  as an error notification with its traceback;
* a :class:`JobSet` holds the workers of one widget: :meth:`JobSet.close`
  (called when the viewer or the dock closes) stops them all and disconnects
  the widget's handlers, so no handler ever runs on a deleted Qt object.
"""

from __future__ import annotations

import contextlib
import logging

from napari.qt.threading import GeneratorWorker, create_worker
from qtpy.QtCore import QTimer

logger = logging.getLogger(__name__)

__all__ = [
    "EXPECTED_ERRORS",
    "UserError",
    "JobError",
    "JobSet",
    "report_error",
    "report_warning",
    "format_seconds",
]

EXPECTED_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError)


class UserError(Exception):
    """A problem the user can fix (no layer selected, bad axes, ...): shown as a message."""


class JobError(Exception):
    """A ``RuntimeError`` raised inside a job.

    superqt treats a ``RuntimeError`` coming out of a generator as "the worker
    was deleted" and only warns; re-raising it under this type makes sure it is
    reported like any other error.
    """


def report_error(error: BaseException) -> None:
    """Show ``error`` to the user: a message for expected problems, else a full error notification."""
    from napari.utils import notifications

    if isinstance(error, (UserError, *EXPECTED_ERRORS)):
        notifications.show_error(str(error))
    else:
        cause = error.__cause__ if isinstance(error, JobError) and error.__cause__ is not None else error
        notifications.notification_manager.receive_error(type(cause), cause, cause.__traceback__)


def report_warning(message: str) -> None:
    """Show ``message`` as a napari warning notification."""
    from napari.utils import notifications

    notifications.show_warning(message)


class JobWorker(GeneratorWorker):
    """A napari ``GeneratorWorker`` that closes its generator in the worker thread
    and reports errors itself (see the module docstring)."""

    def work(self):
        try:
            return super().work()
        finally:
            try:
                self._gen.close()
            except Exception:
                logger.exception("error while closing a CellRefine job")

    # napari's mixin may relay errors/warnings itself; JobSet connects them explicitly instead
    def _relay_error(self, exc: Exception) -> None:
        pass

    def _relay_warning(self, show_warn_args: tuple) -> None:
        pass


def _guarded(function, *args, **kwargs):
    """Run the generator ``function`` and turn its ``RuntimeError`` into :class:`JobError`."""
    generator = function(*args, **kwargs)
    try:
        return (yield from generator)
    except RuntimeError as error:
        raise JobError(f"{type(error).__name__}: {error}") from error
    finally:
        generator.close()


class JobSet:
    """The background jobs of one widget.

    A plain Python object (not a Qt object), so :meth:`close` can run from
    the widget's ``destroyed`` signal, after its Qt side is gone.
    """

    def __init__(self):
        self.closed = False
        self._jobs: dict = {}  # worker -> (stop event or None, [(signal, slot)])

    def __len__(self) -> int:
        return len(self._jobs)

    def start(self, function, *args, stop_event=None, on_yielded=None, on_returned=None, on_finished=None, **kwargs) -> JobWorker:
        """Run the generator ``function(*args, **kwargs)`` in a napari worker.

        Handlers run on the GUI thread, are connected before the worker starts
        (on the next event-loop turn) and are skipped once the set is closed;
        an exception in a handler becomes a notification. ``stop_event`` (a
        ``threading.Event`` the job watches) is set by :meth:`close`.

        Raises
        ------
        UserError
            The set is closed (its widget is gone).
        """
        if self.closed:
            raise UserError("this CellRefine panel was closed; open it again from the Plugins menu.")
        worker = create_worker(_guarded, function, *args, _worker_class=JobWorker, _ignore_errors=True, _start_thread=False, **kwargs)
        self._jobs[worker] = (stop_event, [])
        worker.finished.connect(lambda: self._jobs.pop(worker, None))
        self.watch(worker, on_yielded=on_yielded, on_returned=on_returned, on_finished=on_finished)
        self.watch(worker, on_errored=report_error, on_warned=lambda args: report_warning(str(args[0])))
        QTimer.singleShot(0, worker.start)
        return worker

    def watch(self, worker, *, on_yielded=None, on_returned=None, on_finished=None, on_errored=None, on_warned=None) -> None:
        """Connect more GUI-thread handlers to a worker of this set (same rules as in :meth:`start`)."""
        if worker not in self._jobs:
            raise ValueError("this worker was not started by this JobSet, or it has finished already.")
        connections = self._jobs[worker][1]
        for name, handler in (
            ("yielded", on_yielded),
            ("returned", on_returned),
            ("finished", on_finished),
            ("errored", on_errored),
            ("warned", on_warned),
        ):
            if handler is not None:
                signal = getattr(worker, name)
                slot = self._reporting(handler)
                signal.connect(slot)
                connections.append((signal, slot))

    def _reporting(self, handler):
        """Wrap a GUI-thread handler: skipped after :meth:`close`; an exception becomes a notification."""

        def wrapped(*args):
            if self.closed:
                return
            try:
                handler(*args)
            except Exception as error:
                report_error(error)

        return wrapped

    def close(self) -> None:
        """Stop every job and disconnect the handlers (the widget is going away)."""
        if self.closed:
            return
        self.closed = True
        for worker, (stop_event, connections) in list(self._jobs.items()):
            for signal, slot in connections:
                with contextlib.suppress(TypeError, RuntimeError):
                    signal.disconnect(slot)
            if stop_event is not None:
                stop_event.set()
            with contextlib.suppress(RuntimeError):
                worker.quit()


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
