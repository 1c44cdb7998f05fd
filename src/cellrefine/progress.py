"""One way to drive CellRefine's generators to the end, with progress and cancel.

The compute functions are generators (:func:`cellrefine.iter_segment`,
:func:`cellrefine.iter_finetune`): they yield a progress dataclass with
``done`` and ``total`` and return their result. A napari worker iterates them
in a thread; :func:`run_to_end` runs them inline for the API and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

__all__ = ["Cancelled", "run_to_end"]


class Cancelled(RuntimeError):
    """Raised by :func:`run_to_end` when ``progress`` returned ``False`` and the run cannot stop early with a result."""


def run_to_end(
    generator: Generator,
    progress=None,
    *,
    on_cancel: Callable[[], None] | None = None,
    cancelled: type[Cancelled] = Cancelled,
    message: str = "cancelled after {done} of {total}.",
) -> Any:
    """Run ``generator`` to the end and return its return value.

    Parameters
    ----------
    generator : generator
        Yields objects with ``done`` and ``total`` attributes (counts of work
        units) and returns the result.
    progress : callable or tqdm-like, optional
        ``progress(done, total)`` after every yield; returning ``False``
        cancels. An object with ``update(n)`` (tqdm) is advanced by the work
        done since the last yield instead (its ``total`` is set if unset).
    on_cancel : callable, optional
        What cancelling means for runs that can stop early *with* a result
        (fine-tuning): it is called once (e.g. ``stop_event.set``), progress
        reports stop, and the generator is run to its end, which then returns
        the result early. Without it the generator is closed and ``cancelled``
        is raised.
    cancelled : type, optional
        The :class:`Cancelled` subclass to raise.
    message : str, optional
        Its message, formatted with ``done`` and ``total``.

    Returns
    -------
    object
        The generator's return value.

    Raises
    ------
    Cancelled
        ``progress`` returned ``False`` and ``on_cancel`` is None.
    """
    last = 0
    while True:
        try:
            update = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is None:
            continue
        done, total = int(update.done), int(update.total)
        if hasattr(progress, "update"):
            if getattr(progress, "total", None) in (None, 0):
                progress.total = total
            if done > last:
                progress.update(done - last)
                last = done
        elif progress(done, total) is False:
            if on_cancel is None:
                generator.close()
                raise cancelled(message.format(done=done, total=total))
            on_cancel()
            progress = None
