"""Zarr and OME-Zarr in and out: lazy reading, OME-Zarr labels written block by block.

Reading (:func:`open_zarr`): a zarr v2 or v3 array, or an OME-Zarr (NGFF
0.1-0.5) image group, opened lazily with the ``zarr`` package; for an OME-Zarr
image the axes come from its ``multiscales`` metadata (``t``, ``c``, ``z``,
``y``, ``x``), the full resolution level is used and the pyramid's other levels
are listed for display. A ``bioformats2raw`` store opens its first series.

Writing (:func:`create_labels`, :func:`finish_labels`): an OME-Zarr *labels
image* ``labels/<name>`` in a zarr group (inside the input image's store, or in
a store of its own): a full-resolution array ``0`` and optional coarser
levels ``1``, ``2``, ... (:func:`create_labels_level`), whose chunks are
written one block at a time by whoever computes them (never the whole array
in memory). Zarr writes each chunk to a temporary file renamed into place, so a
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

from . import labels as _labels_module
from .labels import *  # noqa: F403 - the writing API, listed in labels.__all__
from .read import ZarrImage, is_zarr_path, ngff_axes, open_zarr, zarr_format_of

__all__ = ["ZarrImage", "open_zarr", "is_zarr_path", "ngff_axes", "zarr_format_of", *_labels_module.__all__]
