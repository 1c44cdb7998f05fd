"""Sample data shipped with CellRefine (CC0; see SOURCES.txt beside this file)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["sample_nuclei_path", "load_sample_nuclei", "sample_nuclei"]


def sample_nuclei_path() -> Path:
    """Path of ``nuclei_sample.tif``: 4 BBBC039 fields, (4, 520, 696) uint16, axes TYX."""
    return Path(str(resources.files("cellrefine.data") / "nuclei_sample.tif"))


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
