"""The Fine-tune widget's "Export for bioimage.io…": ask for a ``.zip`` path, write the package in a worker.

The package is built by the core (:func:`cellrefine.export.export_bioimageio`,
validated with bioimageio.spec when installed), the same as ``cellrefine export``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ask_export_path", "export_job", "start_export"]


def ask_export_path(parent, suggestion: str = "model.zip") -> str | None:
    """Save dialog for a bioimage.io package; the path ends in ``.zip`` (None when cancelled)."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, "Export for bioimage.io", suggestion, "bioimage.io model package (*.zip)")
    if not path:
        return None
    return path if path.lower().endswith(".zip") else path + ".zip"


def export_job(model, path):
    """Worker generator: yields what it does, returns the written package's path."""
    from ..export import export_bioimageio

    yield f"Exporting {model.name} for bioimage.io (weights, TorchScript copy, test data, model card)…"
    return export_bioimageio(model, path)


def start_export(jobs, model, path, *, on_yielded=None, on_done=None, on_finished=None):
    """Export a copy of ``model`` to ``path`` in a worker of ``jobs``; ``on_done(path)`` runs on the GUI thread.

    Raises
    ------
    ValueError
        ``path`` does not end in ``.zip``.
    OSError
        ``path`` cannot be written (checked before the worker starts).
    """
    from ..files import check_writable

    path = Path(path).expanduser()
    if path.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file; got {path.name!r}, use {path.with_suffix('.zip').name!r}.")
    check_writable(path)
    return jobs.start(export_job, model.copy(), path, on_yielded=on_yielded, on_returned=on_done, on_finished=on_finished)
