"""Thread-worker helpers: start core generators in napari workers, report errors.

Every long job (segmentation, fine-tuning, re-running the watershed) is a core
generator run by :func:`start_job` in a napari ``GeneratorWorker``:

* the worker is created on the GUI thread and started on the next event-loop
  turn, so callers (and tests) can connect to its signals before it runs;
* ``worker.quit()`` stops it at the next ``yield`` (per tile / per step) and
  the generator is then *closed in the worker thread*, so ``finally`` blocks in
  the core (thread pools, torch thread limits) run there, not on the GUI;
* errors reach the user: expected problems (``ValueError``, ``TypeError``,
  ``FileNotFoundError``, :class:`UserError`) as a plain message, anything else
  as an error notification with its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from napari.qt.threading import GeneratorWorker, create_worker
from qtpy.QtCore import QTimer

logger = logging.getLogger(__name__)

__all__ = ["UserError", "JobError", "start_job", "report_error", "format_seconds", "eta_text", "limit_torch_threads"]

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

    # napari's mixin may relay errors/warnings itself; start_job connects them explicitly instead
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


def start_job(function, *args, on_yielded=None, on_returned=None, on_aborted=None, on_finished=None, **kwargs) -> JobWorker:
    """Run the generator ``function(*args, **kwargs)`` in a napari worker.

    Handlers are connected before the worker starts (on the next event-loop
    turn) and run on the GUI thread. Returns the worker.
    """
    worker = create_worker(_guarded, function, *args, _worker_class=JobWorker, _ignore_errors=True, _start_thread=False, **kwargs)
    for signal, handler in (
        (worker.yielded, on_yielded),
        (worker.returned, on_returned),
        (worker.aborted, on_aborted),
        (worker.finished, on_finished),
    ):
        if handler is not None:
            signal.connect(_reporting(handler))
    worker.errored.connect(report_error)
    worker.warned.connect(lambda args: report_warning(str(args[0])))
    QTimer.singleShot(0, worker.start)
    return worker


def _reporting(handler):
    """Wrap a GUI-thread handler so an exception in it becomes a notification."""

    def wrapped(*args):
        try:
            handler(*args)
        except Exception as error:
            report_error(error)

    return wrapped


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def eta_text(done: int, total: int, seconds: float) -> str:
    """``"ETA 12 s"`` from progress so far (empty before the first unit is done)."""
    if done <= 0 or total <= 0 or done >= total:
        return ""
    return f"ETA {format_seconds(seconds / done * (total - done))}"


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = None


@contextlib.contextmanager
def limit_torch_threads():
    """Leave a core to the GUI: at most ``cpu_count - 1`` torch threads while
    any job is inside this block; the previous value is restored when the last
    one leaves."""
    import torch

    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(min(_threads_saved, max(1, (os.cpu_count() or 2) - 1)))
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_saved is not None:
                torch.set_num_threads(_threads_saved)
                _threads_saved = None
