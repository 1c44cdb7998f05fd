"""``cellrefine export``: write a model as a bioimage.io package (see :mod:`cellrefine.export`).

Examples::

    cellrefine export -o nuclei_v1.zip                          # the bundled model
    cellrefine export --model my_model.safetensors -o my_model.zip --author "Ada Lovelace"
    cellrefine export --model my_model -o my_model.zip --test-image plane.tif --test

The package is checked with ``bioimageio.spec`` when it is installed
(``pip install "napari-cellrefine[bioimageio]"``) before it replaces the
output; ``--test`` also runs ``bioimageio.core``'s ``test_model``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_files import CLIError, open_image

__all__ = ["add_export_command", "cmd_export"]


def add_export_command(sub) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command to the ``cellrefine`` parser's sub-parsers ``sub``."""
    parser = sub.add_parser(
        "export",
        help="write a model as a bioimage.io model package (.zip)",
        description="Write a CellRefine model as a bioimage.io model package (spec 0.5): pytorch_state_dict weights with the "
        "architecture source, a TorchScript copy, percentile preprocessing in the spec's terms, a test input and its expected "
        "output, a cover, and a README with the model card, provenance, licence and citations. Other bioimage.io tools "
        "(bioimageio.core, deepImageJ, ilastik, ...) run it without CellRefine; 'cellrefine.load_model(\"NAME.zip\")' loads it back. "
        "The package is validated with bioimageio.spec when installed, and written to a temporary name and renamed.",
    )
    parser.set_defaults(func=cmd_export)
    parser.add_argument(
        "--model", help="a saved model (.safetensors file, model folder or exported .zip) or 'nuclei_v1' (default: the bundled model)"
    )
    parser.add_argument("-o", "--output", required=True, help="the package to write: a name ending in .zip")
    parser.add_argument("--test-image", help="a 2D grey image (TIFF or .npy) for the test input (default: a crop of the bundled nuclei sample)")
    parser.add_argument("--author", action="append", help="an author's name (repeat for several; default: 'CellRefine developers')")
    parser.add_argument("--license", default="BSD-3-Clause", help="SPDX identifier of the weights' licence (default: BSD-3-Clause)")
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--test", action="store_true", help="also run bioimageio.core's test_model on the package (needs the [bioimageio] extra)")
    checks.add_argument("--no-validate", action="store_true", help="skip the bioimageio.spec validation")
    return parser


def _read_test_image(path: str):
    image_file = open_image(Path(path).expanduser())
    if image_file.axes != "YX":
        raise CLIError(
            f"--test-image {path}: a 2D grey image (axes YX) is needed, got shape {image_file.shape} with axes {image_file.axes}; save one plane."
        )
    return image_file.read()


def cmd_export(args) -> int:
    """Run ``cellrefine export`` with the parsed ``args``; returns the exit status."""
    from . import load_model
    from .export import core_installed, export_bioimageio, run_test_model, spec_installed
    from .files import check_writable
    from .model.io import BUNDLED_MODEL

    output = Path(args.output).expanduser()
    if output.suffix.lower() != ".zip":
        raise CLIError(f"-o {args.output}: a bioimage.io package is a .zip file; use {output.with_suffix('.zip').name!r}.")
    check_writable(output)
    if args.test and not core_installed():
        raise CLIError("--test needs bioimageio.core: pip install 'napari-cellrefine[bioimageio]' (or leave out --test).")
    test_image = _read_test_image(args.test_image) if args.test_image else None
    bundled = args.model in (None, BUNDLED_MODEL) and not (args.model and Path(args.model).exists())
    model = load_model(None if bundled else args.model)
    path = export_bioimageio(
        model, output, test_image=test_image, authors=args.author, license=args.license, validate=False if args.no_validate else None
    )
    checked = (
        "" if args.no_validate else " (validated with bioimageio.spec)" if spec_installed() else " (not validated: bioimageio.spec is not installed)"
    )
    print(f"exported {model.name} to {path}{checked}", flush=True)
    if args.test:
        result = run_test_model(path)
        passed = sum(status == "passed" for _, status in result["details"])
        print(f"bioimageio.core test_model: {result['status']} ({passed} of {len(result['details'])} checks passed)", flush=True)
        if result["status"] != "passed":
            raise CLIError(f"the package did not pass bioimageio.core's test_model: {result['errors']}")
    return 0
