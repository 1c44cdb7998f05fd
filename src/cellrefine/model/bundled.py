"""The models shipped with CellRefine, chosen by name.

=========  ====================  =====================================================
name       file (``weights/``)   what for
=========  ====================  =====================================================
nuclei     nuclei_v1.safetensors fluorescent/stained nuclei (BBBC039, DSB2018); default
cells      cells_v1.safetensors  whole cells in phase contrast (Usiigaci)
=========  ====================  =====================================================

:func:`cellrefine.load_model` takes a name where it takes a path. A plain name
(``"cells"``) means the bundled model only when no file or folder of that name
exists (relative names are looked up in the current folder): an existing path
always wins, so a model saved as ``cells`` is never shadowed. ``"bundled:cells"``
always means the bundled model. The versioned file stems (``"cells_v1"``,
``"bundled:cells_v1"``, what :attr:`Model.path` records) are accepted too.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

__all__ = ["BundledModel", "BUNDLED_MODELS", "DEFAULT_BUNDLED", "bundled_names", "bundled_model_path", "bundled_name", "describe_bundled"]

PREFIX = "bundled:"


@dataclasses.dataclass(frozen=True)
class BundledModel:
    """One shipped model: its short ``name``, the ``stem`` of its weights file (= its config name) and what it is for."""

    name: str
    stem: str
    description: str

    @property
    def file_name(self) -> str:
        return f"{self.stem}.safetensors"


BUNDLED_MODELS: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel("nuclei", "nuclei_v1", "fluorescent/stained nuclei (BBBC039, DSB2018)"),
        BundledModel("cells", "cells_v1", "whole cells in phase contrast (Usiigaci)"),
    )
}
#: The model ``load_model()`` loads without a path.
DEFAULT_BUNDLED = "nuclei"


def bundled_names() -> tuple[str, ...]:
    """The bundled models' names, default first: ``("nuclei", "cells")``."""
    return tuple(BUNDLED_MODELS)


def describe_bundled() -> str:
    """One line naming every bundled model and what it is for (for error and help messages)."""
    return "; ".join(f"{model.name!r}: {model.description}" for model in BUNDLED_MODELS.values())


def _lookup(text: str) -> BundledModel | None:
    for model in BUNDLED_MODELS.values():
        if text in (model.name, model.stem):
            return model
    return None


def bundled_model_path(name: str = DEFAULT_BUNDLED) -> Path:
    """Path of a bundled weights file inside the installed package (it may be missing from a broken install).

    Parameters
    ----------
    name : str
        A bundled model's name (``"nuclei"``, ``"cells"``) or file stem (``"nuclei_v1"``), optionally
        prefixed with ``"bundled:"``.

    Raises
    ------
    ValueError
        ``name`` is not a bundled model (the message lists them).
    """
    model = _lookup(name.removeprefix(PREFIX)) if isinstance(name, str) else None
    if model is None:
        raise ValueError(f"{name!r} is not a bundled CellRefine model; the bundled models are {describe_bundled()}.")
    return Path(str(resources.files("cellrefine.model") / "weights" / model.file_name))


def bundled_name(value) -> str | None:
    """The bundled model's name that ``value`` (an argument of ``load_model``) stands for, or None for a path.

    ``"bundled:NAME"`` is always a bundled name (an unknown one raises). A plain
    string that is a name or stem is one only when no file or folder of that
    name exists; anything else (a ``Path``, an existing path, another string) is
    a path.

    Raises
    ------
    ValueError
        ``"bundled:NAME"`` with a ``NAME`` that is not bundled (the message lists them).
    """
    if not isinstance(value, str):
        return None
    if value.startswith(PREFIX):
        model = _lookup(value[len(PREFIX) :])
        if model is None:
            raise ValueError(f"{value!r} is not a bundled CellRefine model; the bundled models are {describe_bundled()}.")
        return model.name
    model = _lookup(value)
    if model is None or Path(value).expanduser().exists():
        return None
    return model.name
