"""Model packages for the BioImage Model Zoo (bioimage.io, spec 0.5).

:func:`export_bioimageio` writes a CellRefine model as a ``.zip`` package
that bioimage.io consumers (bioimageio.core, deepImageJ, ilastik, ...) run
without CellRefine; :func:`cellrefine.load_model` reads such a package back
(through :func:`read_cellrefine_package`). :func:`validate_package` and
:func:`run_test_model` check a package with ``bioimageio.spec`` /
``bioimageio.core`` (``pip install "napari-cellrefine[bioimageio]"``).

Importing this module imports neither torch nor bioimageio.
"""

from .checks import core_installed, run_test_model, spec_installed, validate_package
from .package import ARCHITECTURE_CALLABLE, CELLREFINE_FILE, default_test_image, export_bioimageio, read_cellrefine_package

__all__ = [
    "export_bioimageio",
    "read_cellrefine_package",
    "validate_package",
    "run_test_model",
    "default_test_image",
    "spec_installed",
    "core_installed",
    "CELLREFINE_FILE",
    "ARCHITECTURE_CALLABLE",
]
