"""Zarr and OME-Zarr in and out: lazy reading, OME-Zarr labels written block by block.

Reading (:func:`open_zarr`): a zarr v2 or v3 array, or an OME-Zarr (NGFF
0.1-0.5) image group, opened lazily with the ``zarr`` package; for an OME-Zarr
image the axes come from its ``multiscales`` metadata (``t``, ``c``, ``z``,
``y``, ``x``), the full resolution level is used and the pyramid's other levels
are listed for display. A ``bioformats2raw`` store opens its first series.

Writing (:func:`create_labels`, :func:`finish_labels`): an OME-Zarr *labels
image* ``labels/<name>`` in a zarr group (inside the input image's store, or in
a store of its own), one full-resolution array ``0`` whose chunks are written
one block at a time by whoever computes them (never the whole array in
memory). Zarr writes each chunk to a temporary file renamed into place, so a
crash never leaves a torn chunk. The NGFF metadata (``multiscales``,
``image-label`` and the ``labels`` list of the parent) is written by
:func:`finish_labels` only once every block is written, so readers see a
labels image only when it is complete. New stores are zarr v2 with NGFF 0.4
(read by every OME-Zarr tool) unless ``zarr_format=3`` (NGFF 0.5); labels
added to an existing OME-Zarr image follow that image's format.

Labels are written in canonical NGFF order (``t``, ``z``, ``y``, ``x``: the
input's axes without ``C``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np

__all__ = [
    "ZarrImage",
    "open_zarr",
    "is_zarr_path",
    "ngff_axes",
    "labels_axes",
    "create_labels",
    "finish_labels",
    "list_labels",
    "open_labels",
    "labels_group",
    "remove_labels",
    "zarr_format_of",
    "DEFAULT_LABEL_NAME",
]

#: Name of the labels image written by CellRefine (``labels/cells``) unless another is given.
DEFAULT_LABEL_NAME = "cells"
_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _zarr():
    try:
        import zarr
    except ImportError as error:  # pragma: no cover - zarr is a dependency
        raise ImportError("reading and writing zarr needs the 'zarr' package: pip install zarr") from error
    return zarr


def _zarr3() -> bool:
    return int(_zarr().__version__.split(".")[0]) >= 3


def is_zarr_path(path) -> bool:
    """True when ``path`` names a zarr store or a node inside one (a ``.zarr`` name, or a folder holding
    ``.zarray``/``.zgroup``/``zarr.json``); URLs (``s3://…``) count when they end in ``.zarr``."""
    text = str(path).rstrip("/")
    if "://" in text:
        return ".zarr" in text
    path = Path(text).expanduser()
    if path.suffix.lower() == ".zarr" or any(part.lower().endswith(".zarr") for part in path.parts):
        return True
    return path.is_dir() and any((path / name).exists() for name in (".zarray", ".zgroup", "zarr.json"))


def zarr_format_of(node) -> int:
    """The zarr format (2 or 3) of an open zarr array or group."""
    metadata = getattr(node, "metadata", None)
    version = getattr(metadata, "zarr_format", None)
    return int(version) if version is not None else 2


@dataclasses.dataclass
class ZarrImage:
    """An image in a zarr store, opened lazily (nothing is read until indexed).

    Attributes
    ----------
    array : zarr.Array
        The full-resolution array (numpy-style indexing reads only what is asked).
    axes : str or None
        Its axes over ``TZCYX`` from the NGFF metadata; None for a plain array
        (give ``axes`` or let :func:`cellrefine.axes.check_axes` infer them).
    path : str
        The store as given (a path or URL).
    group : str or None
        Path of the OME-Zarr image group inside the store (``""`` the root); None for a plain array.
    levels : list of str
        Paths (inside ``group``) of the resolution levels, finest first; ``[""]`` for a plain array.
    scale : tuple of float or None
        Pixel size per axis of the full-resolution level (NGFF ``scale``), when known.
    ngff_version : str or None
        ``"0.4"``, ``"0.5"``, ... for OME-Zarr; None for a plain array.
    zarr_format : int
        2 or 3.
    """

    array: object
    axes: str | None
    path: str
    group: str | None = None
    levels: list = dataclasses.field(default_factory=lambda: [""])
    scale: tuple | None = None
    ngff_version: str | None = None
    zarr_format: int = 2

    @property
    def shape(self) -> tuple:
        return tuple(int(n) for n in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def level(self, index: int):
        """The zarr array of resolution level ``index`` (0 = full resolution)."""
        if index == 0:
            return self.array
        root = _zarr().open_group(self.path, mode="r")
        node = root[self.group] if self.group else root
        return node[self.levels[index]]

    def to_dask(self, index: int = 0):
        """Resolution level ``index`` as a dask array (one dask chunk per zarr chunk)."""
        import dask.array as da

        array = self.level(index)
        return da.from_array(array, chunks=array.chunks, asarray=True, fancy=False)


def _ome_attrs(attrs: dict) -> tuple[dict, str | None]:
    """``(metadata, version)``: NGFF 0.5 keeps its metadata under ``"ome"``; earlier versions at the top level."""
    if isinstance(attrs.get("ome"), dict):
        ome = attrs["ome"]
        return ome, str(ome.get("version", "0.5"))
    multiscales = attrs.get("multiscales")
    version = multiscales[0].get("version") if isinstance(multiscales, list) and multiscales and isinstance(multiscales[0], dict) else None
    return attrs, None if version is None else str(version)


def ngff_axes(axes_metadata, ndim: int, where: str = "the image") -> str:
    """NGFF ``axes`` metadata (0.4+: list of dicts with ``name``; 0.3: list of names; older: None = ``tczyx``)
    as a string over ``TZCYX``.

    Raises
    ------
    ValueError
        An axis other than t, c, z, y, x, a repeated axis, or a count that does not match ``ndim``.
    """
    if axes_metadata is None:
        names = list("tczyx"[5 - ndim :]) if ndim <= 5 else None
    else:
        names = [str(axis.get("name", "") if isinstance(axis, dict) else axis).lower() for axis in axes_metadata]
    if names is None or len(names) != ndim:
        raise ValueError(f"the NGFF axes of {where} ({axes_metadata!r}) do not match its {ndim} dimensions; the metadata may be damaged.")
    unknown = [name for name in names if name not in ("t", "c", "z", "y", "x")]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"{where} has axes {names}; CellRefine reads images whose axes are t, c, z, y and x (each at most once); "
            "convert the image or open its array as a plain zarr array with axes=..."
        )
    return "".join(names).upper()


def _scale(multiscale: dict, dataset: dict, ndim: int) -> tuple | None:
    scale = np.ones(ndim)
    found = False
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for transform in transforms or []:
            if isinstance(transform, dict) and transform.get("type") == "scale" and len(transform.get("scale", [])) == ndim:
                scale = scale * np.asarray(transform["scale"], float)
                found = True
    return tuple(float(s) for s in scale) if found else None


def open_zarr(path, *, dataset: str | None = None) -> ZarrImage:
    """Open a zarr array or an OME-Zarr image lazily.

    Parameters
    ----------
    path : str or Path
        A zarr store (folder or URL) holding an array or an OME-Zarr image
        group, or a path to an array inside a store (``image.zarr/0``).
    dataset : str, optional
        For an OME-Zarr image: which resolution level to read (a path from
        its ``multiscales`` datasets); default the first (full resolution).

    Returns
    -------
    ZarrImage

    Raises
    ------
    FileNotFoundError
        Nothing (no zarr array or group) at ``path``.
    ValueError
        A group that is not an OME-Zarr image and holds no single array,
        or NGFF axes other than t, c, z, y, x.
    """
    zarr = _zarr()
    text = str(Path(path).expanduser()) if "://" not in str(path) else str(path)
    try:
        node = zarr.open(store=text, mode="r")
    except (FileNotFoundError, KeyError, ValueError) as error:
        if isinstance(error, ValueError) and "://" in text:
            raise
        raise FileNotFoundError(f"no zarr array or group at {text} ({error}); check the path.") from error
    if hasattr(node, "shape"):
        return ZarrImage(array=node, axes=None, path=text, zarr_format=zarr_format_of(node))
    group_path = ""
    attrs = dict(node.attrs)
    if "bioformats2raw.layout" in attrs and "0" in node:
        node, group_path = node["0"], "0"
        attrs = dict(node.attrs)
    ome, version = _ome_attrs(attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in node.arrays())
        if len(arrays) == 1:
            array = node[arrays[0]]
            return ZarrImage(array=array, axes=None, path=text, group=None, levels=[arrays[0]], zarr_format=zarr_format_of(array))
        listed = ", ".join(arrays) if arrays else "none"
        raise ValueError(
            f"{text} is a zarr group without OME-Zarr 'multiscales' metadata (arrays in it: {listed}); "
            "give the path of one array inside it, e.g. image.zarr/0."
        )
    multiscale = multiscales[0]
    datasets = multiscale.get("datasets") or []
    if not datasets:
        raise ValueError(f"the OME-Zarr metadata of {text} lists no datasets; the store may be damaged.")
    levels = [str(d["path"]) for d in datasets]
    chosen = levels[0] if dataset is None else str(dataset)
    if chosen not in levels:
        raise ValueError(f"{text} has no resolution level {chosen!r}; its levels are {levels}.")
    array = node[chosen]
    axes = ngff_axes(multiscale.get("axes"), array.ndim, text)
    scale = _scale(multiscale, datasets[levels.index(chosen)], array.ndim)
    return ZarrImage(
        array=array,
        axes=axes,
        path=text,
        group=group_path,
        levels=levels,
        scale=scale,
        ngff_version=version or "0.4",
        zarr_format=zarr_format_of(array),
    )


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
    zarr = _zarr()
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


def _relative_source(output: str, source: str | None) -> str | None:
    if source is None:
        return None
    if "://" in output or "://" in source:
        return source
    labels_dir = Path(output).expanduser().absolute() / "labels" / "x"
    return os.path.relpath(Path(source).expanduser().absolute(), labels_dir).replace(os.sep, "/") + "/"


def finish_labels(output, name: str, axes: str, *, scale=None, source_image=None, extra: dict | None = None) -> None:
    """Write the NGFF metadata that makes ``output/labels/<name>`` a labels image (once all its blocks are written).

    ``multiscales`` (one level, ``0``, with a ``scale`` transform) and
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
    zarr = _zarr()
    root = zarr.open_group(str(output), mode="r+")
    group = root[f"labels/{_check_name(name)}"]
    version = "0.5" if zarr_format_of(group) == 3 else "0.4"
    scale = [1.0] * len(axes) if scale is None else [float(s) for s in scale]
    multiscale = {
        "name": name,
        "axes": _axes_metadata(axes, version),
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }
    image_label = {"version": version}
    source = _relative_source(str(output), source_image)
    if source is not None:
        image_label["source"] = {"image": source}
    labels_group = root["labels"]
    names = _ome_attrs(dict(labels_group.attrs))[0].get("labels", [])
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
    zarr = _zarr()
    try:
        root = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, KeyError, ValueError):
        return []
    if "labels" not in root:
        return []
    return [str(n) for n in _ome_attrs(dict(root["labels"].attrs))[0].get("labels", [])]


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
    zarr = _zarr()
    try:
        root = zarr.open_group(str(output), mode="r+")
    except (FileNotFoundError, KeyError, ValueError):
        return None
    key = f"labels/{_check_name(name)}"
    return root.get(key)


def remove_labels(output, name: str) -> None:
    """Remove the labels image ``labels/<name>`` from the store ``output`` (and from its ``labels`` list); nothing else is touched."""
    zarr = _zarr()
    root = zarr.open_group(str(output), mode="r+")
    if "labels" not in root:
        return
    labels = root["labels"]
    attrs, _ = _ome_attrs(dict(labels.attrs))
    names = [n for n in attrs.get("labels", []) if n != name]
    if "ome" in dict(labels.attrs):
        labels.attrs.update({"ome": {**dict(labels.attrs)["ome"], "labels": names}})
    elif "labels" in dict(labels.attrs):
        labels.attrs.update({"labels": names})
    if _check_name(name) in labels:
        del labels[name]
