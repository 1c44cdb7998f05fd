"""Reading zarr arrays and OME-Zarr images lazily (see :mod:`cellrefine.zarr_io`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

__all__ = ["ZarrImage", "open_zarr", "is_zarr_path", "ngff_axes", "ome_attributes", "zarr_format_of", "zarr_module"]


def zarr_module():
    """The ``zarr`` package (ImportError naming the extra to install when it is missing)."""
    try:
        import zarr
    except ImportError as error:  # pragma: no cover - zarr comes with the 'distributed' extra
        raise ImportError("reading and writing zarr needs the 'zarr' package: pip install 'napari-cellrefine[distributed]'") from error
    return zarr


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
    is_label : bool
        An OME-Zarr labels image (``image-label`` metadata).
    """

    array: object
    axes: str | None
    path: str
    group: str | None = None
    levels: list = dataclasses.field(default_factory=lambda: [""])
    scale: tuple | None = None
    ngff_version: str | None = None
    zarr_format: int = 2
    is_label: bool = False

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
        root = zarr_module().open_group(self.path, mode="r")
        node = root[self.group] if self.group else root
        return node[self.levels[index]]

    def to_dask(self, index: int = 0):
        """Resolution level ``index`` as a dask array (one dask chunk per zarr chunk)."""
        import dask.array as da

        array = self.level(index)
        return da.from_array(array, chunks=array.chunks, asarray=True, fancy=False)


def ome_attributes(attrs: dict) -> tuple[dict, str | None]:
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
    zarr = zarr_module()
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
    ome, version = ome_attributes(attrs)
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
        is_label="image-label" in ome,
    )
