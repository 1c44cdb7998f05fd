"""Checking a package with the bioimage.io libraries (``pip install "napari-cellrefine[bioimageio]"``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["spec_installed", "core_installed", "validate_package", "run_test_model"]


def spec_installed() -> bool:
    """Whether ``bioimageio.spec`` is installed (then :func:`export_bioimageio` validates by default)."""
    import importlib.util

    return importlib.util.find_spec("bioimageio") is not None and importlib.util.find_spec("bioimageio.spec") is not None


def core_installed() -> bool:
    """Whether ``bioimageio.core`` is installed (needed by :func:`run_test_model`)."""
    import importlib.util

    return spec_installed() and importlib.util.find_spec("bioimageio.core") is not None


def _import_spec():
    try:
        import bioimageio.spec
    except ImportError as error:
        raise ImportError("checking a bioimage.io package needs bioimageio.spec: pip install 'napari-cellrefine[bioimageio]'") from error
    return bioimageio.spec


def validate_package(path) -> str:
    """Validate a package with ``bioimageio.spec`` (format and files, no model run); returns its status ('valid-format').

    Raises
    ------
    ValueError
        The package is invalid; the message lists the errors.
    ImportError
        ``bioimageio.spec`` is not installed.
    """
    spec = _import_spec()
    description = spec.load_description(str(path), perform_io_checks=True)
    summary = description.validation_summary
    if summary.status not in ("valid-format", "passed"):
        raise ValueError(f"{Path(path).name} is not a valid bioimage.io package: {_errors(summary)}")
    return summary.status


def run_test_model(path, devices=None) -> dict:
    """Run ``bioimageio.core``'s ``test_model`` on a package (reproduces the test output with every weight format).

    Returns
    -------
    dict
        ``status`` ('passed' or 'failed') and ``details`` (list of ``(name, status)``).

    Raises
    ------
    ImportError
        ``bioimageio.core`` is not installed.
    """
    try:
        from bioimageio.core import test_model
    except ImportError as error:
        raise ImportError("testing a bioimage.io package needs bioimageio.core: pip install 'napari-cellrefine[bioimageio]'") from error
    summary = test_model(str(path), devices=devices)
    return {"status": summary.status, "details": [(d.name, d.status) for d in summary.details], "errors": _errors(summary)}


def _errors(summary) -> str:
    errors = [f"{'.'.join(map(str, error.loc))}: {error.msg}" for detail in summary.details for error in detail.errors]
    return "; ".join(errors) or "no error details"
