"""Saving a Labels layer (e.g. corrected instances) as a TIFF, written through temp + rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["save_labels"]


def save_labels(labels, path, axes: str | None = None) -> Path:
    """Write a label image to ``path`` as a zlib-compressed TIFF.

    The file appears complete or not at all: it is written to a temporary
    file in the same folder and renamed over ``path``.

    Parameters
    ----------
    labels : array
        Integer labels (instance ids, or classes 0/1/2).
    path : str or Path
        Target file; ``.tif`` / ``.tiff``.
    axes : str, optional
        Axes of ``labels`` (e.g. ``"TYX"``), stored in the TIFF metadata so
        ``tifffile.imread`` users and Fiji see which axis is which.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    TypeError
        ``labels`` is not an integer array.
    ValueError
        ``path`` does not end in .tif/.tiff, or ``axes`` does not fit.
    """
    import tifffile

    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels must be an integer array (instance ids or classes), got dtype {labels.dtype}.")
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"save labels to a .tif or .tiff file, got {path.name!r}.")
    if axes is not None and len(axes) != labels.ndim:
        raise ValueError(f"axes {axes!r} has {len(axes)} letters but the labels have {labels.ndim} dimensions (shape {labels.shape}).")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    metadata = {"axes": axes} if axes else None
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack", metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
