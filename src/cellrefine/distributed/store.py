"""The output store of a distributed run: the labels array, the manifest, the working arrays, the merge.

The manifest is the ``cellrefine`` attribute of the labels group:
``{"status": "segmenting" | "merging" | "relabelling" | "complete",
"parameters": {...}, ...}``; only the driver writes it. The per-block state
lives in small arrays of ``labels/<name>/_cellrefine`` written by the workers
(see :mod:`cellrefine.distributed.tasks`).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from ..zarr_io import create_labels, labels_group, remove_labels
from .blocks import BlockGrid
from .tasks import WORK_GROUP, WorkArea

__all__ = ["MANIFEST_KEY", "merge_pairs", "run_parameters", "prepare_store", "output_layout", "set_status", "write_mapping"]

#: Attribute of the labels group holding the run's manifest (parameters and status).
MANIFEST_KEY = "cellrefine"


def merge_pairs(n_labels: int, pairs: np.ndarray) -> np.ndarray:
    """Final ids ``1..m`` for ``n_labels`` provisional labels joined by ``pairs`` (global connected components).

    Parameters
    ----------
    n_labels : int
    pairs : (p, 2) int array
        Provisional labels (0-based) that are the same object.

    Returns
    -------
    (n_labels,) uint32
        Labels joined (directly or through others) share an id; ids are
        consecutive from 1, in order of each object's first provisional label.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n_labels == 0:
        return np.zeros(0, np.uint32)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n_labels, n_labels))
    _, components = connected_components(graph, directed=False)
    # renumber by first appearance (connected_components already does; made explicit so the order is guaranteed)
    _, first = np.unique(components, return_index=True)
    order = np.empty(len(first), np.int64)
    order[np.argsort(first, kind="stable")] = np.arange(len(first))
    return (order[components] + 1).astype(np.uint32)


def run_parameters(grid: BlockGrid, axes: str, lo: float, hi: float, model, settings, options: dict) -> dict:
    """The parameters a run is resumed under (as JSON values): with other parameters a rerun is refused (or, with ``overwrite``, starts again)."""
    from ..tiling import weights_fingerprint

    parameters = {
        "format": 1,
        "shape": list(grid.shape),
        "axes": axes,
        "block": list(grid.block),
        "halo": list(grid.halo),
        "normalization": [lo, hi],
        "model": weights_fingerprint(model.network),
        "postprocess": dataclasses.asdict(settings),
        **options,
    }
    return json.loads(json.dumps(parameters))


def prepare_store(output: str, name: str, grid: BlockGrid, parameters: dict, zarr_format, overwrite: bool) -> tuple:
    """Create, or reopen to resume, the labels array and the working area; returns ``(status, WorkArea)``.

    A labels image of that name written by another program, or by a run with
    other parameters, is refused unless ``overwrite`` (then removed first).
    """
    group = labels_group(output, name)
    if group is not None:
        manifest = dict(group.attrs).get(MANIFEST_KEY)
        where = f"{output}/labels/{name}"
        if not overwrite and manifest is None:
            raise ValueError(f"{where} exists and was not written by CellRefine; pass overwrite=True (--overwrite) to replace it, or another name.")
        if not overwrite and manifest.get("parameters") != parameters:
            changed = sorted(
                k for k in set(manifest.get("parameters") or {}) | set(parameters) if (manifest.get("parameters") or {}).get(k) != parameters.get(k)
            )
            raise ValueError(
                f"{where} holds a run with other settings ({', '.join(changed)} differ); pass overwrite=True (--overwrite) "
                "to start again, or write to another output or label name."
            )
        if overwrite:
            remove_labels(output, name)
            group = None
    if group is None:
        axes, shape, chunks = output_layout(grid)
        group, _ = create_labels(output, shape, axes, chunks, name=name, zarr_format=zarr_format)
        group.attrs.update({MANIFEST_KEY: {"status": "segmenting", "parameters": parameters}})
    status = dict(group.attrs)[MANIFEST_KEY].get("status", "segmenting")
    if status != "complete":
        work = group.require_group(WORK_GROUP)
        n = len(grid)
        for key, shape, chunks, dtype, fill in (
            ("extended", (n, *grid.extended_shape), (1, *grid.extended_shape), "uint32", 0),
            ("counts", (n, 3), (1, 3), "int64", -1),
            ("written", (n,), (1,), "uint8", 0),
        ):
            if key not in work:
                _create_array(work, key, shape, chunks, dtype, fill)
    return status, WorkArea(output, name)


def _create_array(group, key: str, shape: tuple, chunks: tuple, dtype, fill):
    """A new array ``key`` of ``group`` (zarr 3 ``create_array``, zarr 2 ``create_dataset``)."""
    if hasattr(group, "create_array"):
        return group.create_array(key, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)
    return group.create_dataset(key, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)  # pragma: no cover - zarr 2


def output_layout(grid: BlockGrid) -> tuple:
    """(axes, shape, chunks) of the labels array: T only for time series, Z only for stacks."""
    keep = [a for a, n in zip("TZYX", grid.shape) if a in "YX" or n > 1]
    axes = "".join(keep)
    shape = tuple(n for a, n in zip("TZYX", grid.shape) if a in keep)
    chunks = tuple(1 if a == "T" else grid.block["ZYX".index(a)] for a in keep)
    return axes, shape, chunks


def set_status(area: WorkArea, status: str, **extra) -> None:
    """Record the run's phase (and ``extra`` figures) in the manifest (driver only)."""
    manifest = dict(area.group.attrs)[MANIFEST_KEY]
    area.group.attrs.update({MANIFEST_KEY: {**manifest, "status": status, **extra}})


def write_mapping(work, mapping: np.ndarray) -> None:
    """Store the final id of every provisional label (``work/mapping``, chunks of 2**20) for the relabel pass."""
    if "mapping" in work:
        del work["mapping"]
    array = _create_array(work, "mapping", mapping.shape, (max(1, min(len(mapping), 1 << 20)),), "uint32", 0)
    if mapping.size:
        array[:] = mapping
