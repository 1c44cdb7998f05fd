"""Instance labels → cell / boundary / background targets and loss weight maps.

Classes: ``0`` background, ``1`` cell interior, ``2`` boundary.
A pixel of an object is *boundary* when a pixel with a different label
(another object or background) lies within ``boundary_width`` pixels of it
(4-connected steps), so touching objects are separated by a boundary on both
sides of their contact line.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "BACKGROUND",
    "CELL",
    "BOUNDARY",
    "CLASS_NAMES",
    "instances_to_semantic",
    "border_weight_map",
    "class_weight_map",
    "largest_piece_per_label",
]

BACKGROUND, CELL, BOUNDARY = 0, 1, 2
CLASS_NAMES = ("background", "cell", "boundary")


def _check_instances(instances) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be a 2D label image (Y, X), got shape {instances.shape}; pass one plane at a time.")
    if instances.dtype.kind not in "iub":
        raise TypeError(f"instances must be an integer label image, got dtype {instances.dtype}; use labels.astype(np.uint32).")
    if instances.size and instances.min() < 0:
        raise ValueError("instances must be non-negative (0 = background, 1.. = objects).")
    return instances


def instances_to_semantic(instances, boundary_width: int = 2) -> np.ndarray:
    """Turn an instance label image into a 3-class semantic map.

    Parameters
    ----------
    instances : (Y, X) integer array
        0 = background, each object its own positive id (any size of id).
        A bool image is read as one object (its True pixels); to split a
        foreground mask into objects, label it first (``scipy.ndimage.label``).
    boundary_width : int, optional
        Width in pixels of the boundary band inside each object.

    Returns
    -------
    semantic : (Y, X) uint8 array
        0 background, 1 cell interior, 2 boundary.

    Examples
    --------
    >>> labels = np.zeros((5, 8), int); labels[1:4, 1:4] = 1; labels[1:4, 4:7] = 2
    >>> instances_to_semantic(labels, boundary_width=1)[2]
    array([0, 2, 1, 2, 2, 1, 2, 0], dtype=uint8)
    """
    instances = _check_instances(instances)
    if isinstance(boundary_width, (bool, np.bool_)) or not isinstance(boundary_width, (int, np.integer)) or boundary_width < 1:
        raise ValueError(f"boundary_width must be a positive integer, got {boundary_width!r}.")
    semantic = np.zeros(instances.shape, np.uint8)
    foreground = instances > 0
    if not foreground.any():
        return semantic
    padded = np.pad(instances, 1, mode="edge")
    differs = np.zeros(instances.shape, bool)
    centre = padded[1:-1, 1:-1]
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy : dy + instances.shape[0], dx : dx + instances.shape[1]] != centre
    edge = differs & foreground
    if boundary_width > 1:
        # grow the band inwards, staying inside the object it belongs to
        distance = ndi.distance_transform_cdt(~edge, metric="taxicab")
        edge = (distance < boundary_width) & foreground
    semantic[foreground] = CELL
    semantic[edge] = BOUNDARY
    return semantic


def border_weight_map(instances, w0: float = 10.0, sigma: float = 5.0, mask=None) -> np.ndarray:
    """The U-Net paper's border-emphasising weight for background pixels.

    ``w(x) = w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))`` on background pixels,
    where ``d1``/``d2`` are the distances to the nearest and second nearest
    object; 0 elsewhere (add class weights on top). Distances are computed in a
    window of ``3 sigma`` around each object, beyond which the term is < 1e-3 w0.
    The ids are relabelled 1..n first, so time and memory depend on the
    objects, not on the id values (2**31 - 1 costs what 3 does); a bool
    image is one object, as in :func:`instances_to_semantic`.

    Parameters
    ----------
    instances : (Y, X) integer array
    w0, sigma : float
        Amplitude and width (pixels) of the emphasis.
    mask : (Y, X) bool array, optional
        Only these pixels are needed (e.g. the reviewed ones): objects farther
        than ``3 sigma`` from every mask pixel are skipped, and the result is
        0 outside the mask. On mask pixels it equals the unmasked map.

    Returns
    -------
    weights : (Y, X) float32 array
    """
    from .postprocess import relabel_sequential

    instances, _ = relabel_sequential(_check_instances(instances))
    shape = instances.shape
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != shape:
            raise ValueError(f"mask must have the shape of instances {shape}, got {mask.shape}.")
    d1 = np.full(shape, np.inf, np.float32)
    d2 = np.full(shape, np.inf, np.float32)
    margin = int(np.ceil(3 * sigma))
    for index, window in enumerate(ndi.find_objects(instances), start=1):
        if window is None:
            continue
        grown = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(window, shape))
        if mask is not None and not mask[grown].any():
            continue
        inside = instances[grown] == index
        distance = ndi.distance_transform_edt(~inside).astype(np.float32)
        local_d1, local_d2 = d1[grown], d2[grown]
        closer = distance < local_d1
        local_d2[...] = np.where(closer, local_d1, np.minimum(local_d2, distance))
        local_d1[...] = np.where(closer, distance, local_d1)
    weights = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    weights[instances > 0] = 0
    weights[~np.isfinite(weights)] = 0
    if mask is not None:
        weights[~mask] = 0
    return weights.astype(np.float32)


def class_weight_map(semantic, mask=None) -> np.ndarray:
    """Per-pixel weights that balance the three classes (inverse frequency).

    Each class present in ``semantic`` (within ``mask``) gets the weight
    ``n_pixels / (n_classes_present * n_class)``, clipped to [0.1, 10].

    Returns
    -------
    weights : float32 array, same shape as ``semantic``; 0 outside ``mask``.
    """
    semantic = np.asarray(semantic)
    mask = np.ones(semantic.shape, bool) if mask is None else np.asarray(mask, bool)
    counts = np.bincount(semantic[mask].ravel(), minlength=3).astype(np.float64)
    present = counts > 0
    weights_per_class = np.zeros(len(counts))
    if present.any():
        weights_per_class[present] = counts.sum() / (present.sum() * counts[present])
    weights_per_class = np.clip(weights_per_class, 0.1, 10.0)
    weights = weights_per_class[semantic].astype(np.float32)
    weights[~mask] = 0
    return weights


def largest_piece_per_label(instances) -> np.ndarray:
    """Keep only the largest 8-connected piece of every object; drop the rest.

    Hand-drawn annotations exported from ROI maps often carry stray specks of
    an id away from its object; as training targets they would teach the
    network tiny false objects.

    Parameters
    ----------
    instances : (Y, X) integer array
        Instance ids, ``0`` = background.

    Returns
    -------
    (Y, X) array, same dtype
        The same ids, each reduced to its largest connected piece (ties: the
        piece found first in raster order); removed pixels become ``0``.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 1]])
    >>> largest_piece_per_label(labels)
    array([[1, 1, 0, 0]])
    """
    instances = _check_instances(instances)
    cleaned = np.zeros_like(instances)
    structure = np.ones((3, 3), dtype=bool)
    for index, box in enumerate(ndi.find_objects(instances.astype(np.intp, copy=False)), start=1):
        if box is None:
            continue
        mask = instances[box] == index
        pieces, count = ndi.label(mask, structure=structure)
        if count > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            mask = pieces == int(np.argmax(sizes))
        cleaned[box][mask] = index
    return cleaned
