"""Sample data shipped with CellRefine (sources and licences: SOURCES.txt beside this file)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["sample_nuclei_path", "load_sample_nuclei", "sample_nuclei", "sample_cells_path", "load_sample_cells", "sample_cells"]


def _data_path(file_name: str) -> Path:
    return Path(str(resources.files("cellrefine.data") / file_name))


def sample_nuclei_path() -> Path:
    """Path of ``nuclei_sample.tif``: 4 BBBC039 fields, (4, 520, 696) uint16, axes TYX."""
    return _data_path("nuclei_sample.tif")


def load_sample_nuclei() -> np.ndarray:
    """The sample stack as a (4, 520, 696) uint16 array (4 independent fields: axes TYX)."""
    import tifffile

    return tifffile.imread(sample_nuclei_path())


def sample_nuclei():
    """napari sample-data contribution: the nuclei stack as an Image layer (axes labelled T, Y, X)."""
    return [
        (
            load_sample_nuclei(),
            {"name": "nuclei (BBBC039)", "colormap": "gray", "axis_labels": ("T", "Y", "X"), "metadata": {"cellrefine_axes": "TYX"}},
            "image",
        )
    ]


def sample_cells_path(labels: bool = False) -> Path:
    """Path of ``cells_sample.tif``: a 512 x 512 uint16 phase-contrast crop of Usiigaci set1 (MIT licence), axes YX.

    The crop is rows 0:512, columns 128:640 of the 1022 x 1024 field (SOURCES.txt).

    Parameters
    ----------
    labels : bool
        True: the crop's hand-drawn instance labels instead (``cells_sample_labels.tif``, uint16,
        ids 1..N consecutive, each object reduced to its largest connected piece).
    """
    return _data_path("cells_sample_labels.tif" if labels else "cells_sample.tif")


def load_sample_cells(labels: bool = False) -> np.ndarray:
    """The cells sample as a (512, 512) uint16 array (axes YX), or its instance labels with ``labels=True``."""
    import tifffile

    return tifffile.imread(sample_cells_path(labels))


def sample_cells():
    """napari sample-data contribution: the phase-contrast cells crop as an Image layer (axes Y, X); segment it with the ``cells`` model."""
    return [
        (
            load_sample_cells(),
            {"name": "Cells (phase contrast)", "colormap": "gray", "axis_labels": ("Y", "X"), "metadata": {"cellrefine_axes": "YX"}},
            "image",
        )
    ]
