"""Saving a Labels layer (e.g. corrected instances) as a TIFF, written through temp + rename."""

from __future__ import annotations

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

    from ..files import atomic_write

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
    with atomic_write(path) as temp:  # temp + fsync + rename: an interrupted save leaves the old file intact
        tifffile.imwrite(temp, labels, compression="zlib", photometric="minisblack", metadata=metadata)
    return path
