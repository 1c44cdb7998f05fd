"""Writing OME-Zarr labels images block by block (see :mod:`cellrefine.zarr_io`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .read import ZarrImage, ome_attributes, open_zarr, zarr_format_of, zarr_module

__all__ = [
    "labels_axes",
    "create_labels",
    "create_labels_level",
    "finish_labels",
    "list_labels",
    "open_labels",
    "labels_group",
    "remove_labels",
    "DEFAULT_LABEL_NAME",
]

#: Name of the labels image written by CellRefine (``labels/cells``) unless another is given.
DEFAULT_LABEL_NAME = "cells"
_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _zarr3() -> bool:
    return int(zarr_module().__version__.split(".")[0]) >= 3


def labels_axes(image_axes: str) -> str:
    """The axes of labels for an image with ``image_axes``: its T, Z, Y, X in NGFF order (no C)."""
    return "".join(a for a in "TZYX" if a in image_axes)


def _axes_metadata(axes: str, version: str) -> list:
    if version in ("0.1", "0.2"):
        return None
    if version == "0.3":
        return [a.lower() for a in axes]
    return [{"name": a.lower(), "type": _AXIS_TYPES[a]} for a in axes]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"label name must be letters, digits, '_', '-' or '.', starting with a letter or digit, got {name!r}.")
    return name


def _open_or_create_group(path: str, zarr_format: int | None):
    zarr = zarr_module()
    if _zarr3():
        try:
            return zarr.open_group(path, mode="r+")
        except (FileNotFoundError, KeyError, ValueError):
            return zarr.open_group(path, mode="a", zarr_format=zarr_format or 2)
    return zarr.open_group(path, mode="a")


def _require_array(group, name: str, shape: tuple, chunks: tuple, dtype, fill_value=0):
    """``group[name]`` when it exists with this shape, chunks and dtype; else a new array (an existing one is replaced)."""
    if name in group:
        array = group[name]
        if hasattr(array, "shape") and tuple(array.shape) == tuple(shape) and tuple(array.chunks) == tuple(chunks) and array.dtype == np.dtype(dtype):
            return array
        del group[name]
    if hasattr(group, "create_array"):
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value)  # pragma: no cover - zarr 2


def create_labels(
    output,
    shape: tuple,
    axes: str,
    chunks: tuple,
    *,
    name: str = DEFAULT_LABEL_NAME,
    dtype="uint32",
    zarr_format: int | None = None,
):
    """Create (or reopen, to resume) the full-resolution array of labels image ``labels/<name>`` in the store ``output``.

    The store is created when missing (zarr v2 by default, or
    ``zarr_format``); in an existing store (e.g. the input OME-Zarr image)
    the labels follow its format. No NGFF metadata is written yet (see
    :func:`finish_labels`), so an unfinished labels image is not shown by readers.

    Parameters
    ----------
    output : str or Path
        The zarr store (group) to hold ``labels/<name>``.
    shape, chunks : tuple of int
        Of the labels array, in ``axes`` order.
    axes : str
        NGFF-ordered axes over ``TZYX`` (see :func:`labels_axes`).
    name : str
        The labels image's name (letters, digits, ``_-.``).
    dtype : numpy dtype
        Integer type of the ids (default uint32).
    zarr_format : {2, 3}, optional
        For a new store; default 2.

    Returns
    -------
    (labels_group, array)
        The zarr group ``labels/<name>`` and its array ``0``; an existing array
        with the same shape, chunks and dtype is returned as it is (resume).

    Raises
    ------
    ValueError
        A bad name, axes not in NGFF order, or shape/chunks not matching ``axes``.
    """
    _check_name(name)
    if axes != labels_axes(axes) or len(axes) != len(shape) or len(chunks) != len(shape):
        raise ValueError(f"labels axes must be T, Z, Y, X in that order with one size per axis, got axes {axes!r}, shape {shape}, chunks {chunks}.")
    if zarr_format not in (None, 2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}.")
    root = _open_or_create_group(str(output), zarr_format)
    labels = root.require_group("labels")
    group = labels.require_group(name)
    array = _require_array(group, "0", tuple(int(n) for n in shape), tuple(int(n) for n in chunks), dtype)
    return group, array


def create_labels_level(output, name: str, level: int, shape: tuple, chunks: tuple, dtype="uint32"):
    """Create (or reopen) resolution level ``level`` (array ``str(level)``) of the labels image ``labels/<name>``.

    Level ``k`` is level 0 taken every ``2**k``-th pixel in Y and X (written by
    the caller); :func:`finish_labels` lists every level present.
    """
    if not isinstance(level, int) or level < 1:
        raise ValueError(f"level must be a whole number >= 1 (level 0 comes from create_labels), got {level!r}.")
    root = zarr_module().open_group(str(output), mode="r+")
    group = root[f"labels/{_check_name(name)}"]
    return _require_array(group, str(level), tuple(int(n) for n in shape), tuple(int(n) for n in chunks), dtype)


def _relative_source(output: str, source: str | None) -> str | None:
    if source is None:
        return None
    if "://" in output or "://" in source:
        return source
    labels_dir = Path(output).expanduser().absolute() / "labels" / "x"
    return os.path.relpath(Path(source).expanduser().absolute(), labels_dir).replace(os.sep, "/") + "/"


def finish_labels(output, name: str, axes: str, *, scale=None, source_image=None, extra: dict | None = None) -> None:
    """Write the NGFF metadata that makes ``output/labels/<name>`` a labels image (once all its blocks are written).

    ``multiscales`` (the levels ``0``, ``1``, ... present, each with a ``scale``
    transform: level ``k`` has pixels ``2**k`` times larger in Y and X) and
    ``image-label`` on the labels group, and ``name`` added to the parent
    ``labels`` group's list. NGFF 0.4 in zarr v2 stores, 0.5 (under ``"ome"``) in zarr v3 ones.

    Parameters
    ----------
    output : str or Path
        The store holding ``labels/<name>`` (from :func:`create_labels`).
    name : str
    axes : str
        The labels' axes (NGFF order over TZYX).
    scale : sequence of float, optional
        Pixel size per axis (default 1).
    source_image : str, optional
        The image the labels belong to; stored as a path relative to the labels
        group (``"../../"`` when the labels live inside the image's store).
    extra : dict, optional
        More attributes for the labels group (e.g. CellRefine's run record).
    """
    zarr = zarr_module()
    root = zarr.open_group(str(output), mode="r+")
    group = root[f"labels/{_check_name(name)}"]
    version = "0.5" if zarr_format_of(group) == 3 else "0.4"
    scale = [1.0] * len(axes) if scale is None else [float(s) for s in scale]
    levels = 1
    while str(levels) in group:
        levels += 1
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [{"type": "scale", "scale": [s * 2**k if a in "YX" else s for s, a in zip(scale, axes)]}],
        }
        for k in range(levels)
    ]
    multiscale = {"name": name, "axes": _axes_metadata(axes, version), "datasets": datasets}
    image_label = {"version": version}
    source = _relative_source(str(output), source_image)
    if source is not None:
        image_label["source"] = {"image": source}
    labels_group = root["labels"]
    names = ome_attributes(dict(labels_group.attrs))[0].get("labels", [])
    names = [*[n for n in names if n != name], name]
    if version == "0.4":
        multiscale["version"] = version
        group.attrs.update({"multiscales": [multiscale], "image-label": image_label, **(extra or {})})
        labels_group.attrs.update({"labels": names})
    else:
        group.attrs.update({"ome": {"version": version, "multiscales": [multiscale], "image-label": image_label}, **(extra or {})})
        labels_group.attrs.update({"ome": {"version": version, "labels": names}})


def list_labels(path) -> list[str]:
    """Names of the finished labels images in the store ``path`` (its ``labels`` group's list; empty when none)."""
    zarr = zarr_module()
    try:
        root = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, KeyError, ValueError):
        return []
    if "labels" not in root:
        return []
    return [str(n) for n in ome_attributes(dict(root["labels"].attrs))[0].get("labels", [])]


def open_labels(path, name: str | None = None) -> ZarrImage:
    """Open the labels image ``labels/<name>`` of the store ``path`` lazily (``name`` None: the first listed).

    Raises
    ------
    FileNotFoundError
        The store lists no (such) labels image.
    """
    names = list_labels(path)
    if not names or (name is not None and name not in names):
        wanted = "any labels image" if name is None else f"a labels image {name!r}"
        raise FileNotFoundError(f"{path} holds no finished {wanted} (labels listed: {names or 'none'}).")
    name = names[0] if name is None else name
    return open_zarr(f"{str(path).rstrip('/')}/labels/{name}")


def labels_group(output, name: str):
    """The zarr group ``labels/<name>`` of the store ``output`` (finished or not), or None when there is none."""
    zarr = zarr_module()
    try:
        root = zarr.open_group(str(output), mode="r+")
    except (FileNotFoundError, KeyError, ValueError):
        return None
    key = f"labels/{_check_name(name)}"
    return root.get(key)


def remove_labels(output, name: str) -> None:
    """Remove the labels image ``labels/<name>`` from the store ``output`` (and from its ``labels`` list); nothing else is touched."""
    zarr = zarr_module()
    root = zarr.open_group(str(output), mode="r+")
    if "labels" not in root:
        return
    labels = root["labels"]
    attrs, _ = ome_attributes(dict(labels.attrs))
    names = [n for n in attrs.get("labels", []) if n != name]
    if "ome" in dict(labels.attrs):
        labels.attrs.update({"ome": {**dict(labels.attrs)["ome"], "labels": names}})
    elif "labels" in dict(labels.attrs):
        labels.attrs.update({"labels": names})
    if _check_name(name) in labels:
        del labels[name]
