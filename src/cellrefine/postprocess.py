"""Class probabilities → instances (seeded watershed) and Z stitching.

Per 2D plane, with ``p_bg, p_cell, p_boundary`` the three class probabilities:

1. *foreground* = ``p_cell + boundary_weight * p_boundary >
   foreground_threshold`` (:func:`foreground_mask`; with the default
   ``boundary_weight`` 1 this is ``p_bg < 1 - foreground_threshold``). A
   weight below 1 puts the outline inside the predicted boundary band instead
   of at its outer edge: the band is two pixels wide in the targets, and
   objects whose outline matters (whole cells) gain IoU from it;
2. *seeds* = connected components of ``p_cell > seed_threshold`` inside the
   foreground, dropping seeds smaller than ``min_seed_size`` pixels;
3. a watershed on ``p_boundary`` (the boundary acts as the barrier) grows the
   seeds over the foreground;
4. objects smaller than ``min_size`` pixels are removed and the ids relabelled
   1..n.

Everything runs on cached probabilities, so changing a parameter never needs
the network again (:func:`probabilities_to_instances`).

Stacks in the 3D mode (:func:`probabilities_to_instances_3d`): the same four
steps on the (Z, Y, X) volume of fused probabilities, 6-connected; the pixel
counts become volumes (:func:`volume_threshold`: an area ``a`` in pixels is
read as the volume of a ball of that cross-section, ``a**1.5`` isotropic
voxels, divided by the voxel's anisotropy ``z / sqrt(y * x)``), so dim
fragments at the top and bottom of a stack are dropped instead of being kept
as objects of their own.

Stacks in the stitching mode: Z planes are linked into 3D objects by :func:`stitch_planes`: an
object on plane ``z`` takes the id of the object on plane ``z-1`` with which
it has the highest IoU, if that IoU is at least ``stitch_threshold`` (0.25,
as in Cellpose) and that object is not already taken by a better match.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Real

import numpy as np
from scipy import ndimage as ndi

from .settings_fields import reject_unknown_fields

__all__ = [
    "PostprocessSettings",
    "probabilities_to_instances",
    "foreground_mask",
    "seeded_watershed",
    "stitch_planes",
    "relabel_sequential",
    "probabilities_to_instances_3d",
    "volume_threshold",
]


@reject_unknown_fields("post-processing")
@dataclasses.dataclass
class PostprocessSettings:
    """Parameters of the watershed (see the module docstring).

    An unknown field name (``PostprocessSettings(foreground=0.5)``, or the
    same key in a dict passed as ``segment(..., postprocess={...})``) raises a
    TypeError that names it and suggests the closest field; :meth:`validate`
    checks the values.
    """

    foreground_threshold: float = 0.5
    seed_threshold: float = 0.6
    min_seed_size: int = 4
    min_size: int = 15
    stitch_threshold: float = 0.25
    boundary_weight: float = 1.0  # last, so positional construction written before it still means the same

    def validate(self) -> PostprocessSettings:
        """Check every field; return self.

        Raises
        ------
        TypeError
            A field is not a number (a string, None, a bool...).
        ValueError
            A value is out of range, not finite, or not whole where a pixel
            count is expected; the message starts with the field's name.
        """
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
                raise TypeError(f"{field.name} must be a number, got {value!r} of type {type(value).__name__}.")
        for name in ("foreground_threshold", "seed_threshold", "boundary_weight"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if not 0 < self.stitch_threshold <= 1:
            raise ValueError(f"stitch_threshold must be in (0, 1], got {self.stitch_threshold}.")
        for name in ("min_seed_size", "min_size"):
            value = getattr(self, name)
            if not math.isfinite(value) or int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value}.")
        return self


def relabel_sequential(instances: np.ndarray, offset: int = 1) -> tuple[np.ndarray, int]:
    """Relabel non-zero ids to ``offset, offset+1, ...`` in increasing order of the old ids.

    Memory and time depend on the number of pixels, not on the ids: a label
    image holding the id 2**31 - 1 (hashed ids from other tools) costs what
    one holding small ids does. A bool image is one object (its True pixels).

    Returns
    -------
    relabelled : uint32 array of ``instances.shape``
        A new array; the input is never modified.
    n : int
        The number of objects.

    Raises
    ------
    TypeError
        ``instances`` is not an integer or bool array.
    ValueError
        ``instances`` holds negative ids.
    """
    instances = np.asarray(instances)
    if instances.dtype.kind == "b":
        instances = instances.view(np.uint8)
    if instances.dtype.kind not in "iu":
        raise TypeError(f"instances must be an integer label image, got dtype {instances.dtype}; use labels.astype(np.uint32).")
    if instances.size == 0:
        return np.zeros(instances.shape, np.uint32), 0
    if instances.dtype.kind == "i" and instances.min() < 0:
        raise ValueError(f"instances must be non-negative (0 = background, 1.. = objects), got minimum {instances.min()}.")
    top = int(instances.max())
    if top <= 4 * instances.size + 1024:  # small ids: a lookup table, linear time
        ids = np.flatnonzero(np.bincount(instances.ravel().astype(np.intp, copy=False), minlength=top + 1))
        ids = ids[ids != 0]
        lookup = np.zeros(top + 1, np.uint32)
        lookup[ids] = np.arange(offset, offset + len(ids), dtype=np.uint32)
        return lookup[instances], len(ids)
    ids, inverse = np.unique(instances, return_inverse=True)  # large ids: a sort, no table over the id range
    inverse = inverse.reshape(instances.shape)
    start = offset - 1 if ids[0] == 0 else offset  # ids[0] is 0 when there is background
    relabelled = (inverse + start).astype(np.uint32)
    if ids[0] == 0:
        relabelled[inverse == 0] = 0
    return relabelled, int(len(ids) - (ids[0] == 0))


def probabilities_to_instances(probabilities: np.ndarray, settings: PostprocessSettings | None = None, **overrides) -> np.ndarray:
    """Seeded watershed of one plane's class probabilities.

    Parameters
    ----------
    probabilities : (3, Y, X) float array
        Background, cell and boundary probabilities (summing to 1).
    settings : PostprocessSettings, optional
    **overrides
        Individual settings, e.g. ``min_size=30``.

    Returns
    -------
    instances : (Y, X) uint32
        0 = background, objects 1..n.
    """
    settings = dataclasses.replace(settings or PostprocessSettings(), **overrides).validate()
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3 or probabilities.shape[0] != 3:
        raise ValueError(f"probabilities must have shape (3, Y, X), got {probabilities.shape}.")
    cell, boundary = (probabilities[k].astype(np.float32, copy=False) for k in (1, 2))  # the background is read by foreground_mask only
    foreground = foreground_mask(probabilities, settings)
    seeds_mask = (cell > settings.seed_threshold) & foreground
    seeds, n_seeds = ndi.label(seeds_mask)
    if n_seeds == 0:
        return np.zeros(cell.shape, np.uint32)
    _drop_small_seeds(seeds, settings.min_seed_size)
    instances = seeded_watershed(boundary, seeds, foreground)
    return _kept_ids(instances, settings.min_size)[instances]  # objects below min_size dropped, ids 1..n in one lookup


def foreground_mask(probabilities: np.ndarray, settings: PostprocessSettings | None = None, **overrides) -> np.ndarray:
    """The pixels the watershed may fill: ``p_cell + boundary_weight * p_boundary > foreground_threshold``.

    Parameters
    ----------
    probabilities : (3, ...) float array
        Background, cell and boundary probabilities of a plane (3, Y, X) or a
        volume (3, Z, Y, X). Planes are compared in float32 (as the 2D
        watershed reads them); volumes plane by plane in their own dtype
        (float16 stays float16, no volume-sized temporary).
    settings : PostprocessSettings, optional
    **overrides
        Individual settings, e.g. ``boundary_weight=0.3``.

    Returns
    -------
    foreground : bool array of ``probabilities.shape[1:]``

    Examples
    --------
    >>> p = np.array([[0.2, 0.4], [0.2, 0.2], [0.6, 0.4]])[:, None, :]  # bg, cell, boundary of 2 pixels
    >>> foreground_mask(p, foreground_threshold=0.5)  # cell + boundary > 0.5
    array([[ True,  True]])
    >>> foreground_mask(p, foreground_threshold=0.5, boundary_weight=0.5)  # cell + boundary / 2 > 0.5
    array([[False, False]])
    """
    settings = dataclasses.replace(settings or PostprocessSettings(), **overrides).validate()
    probabilities = np.asarray(probabilities)
    if probabilities.ndim < 2 or probabilities.shape[0] != 3:
        raise ValueError(f"probabilities must have shape (3, Y, X) or (3, Z, Y, X), got {probabilities.shape}.")
    if probabilities.ndim > 3:
        foreground = np.empty(probabilities.shape[1:], bool)
        for z in range(probabilities.shape[1]):  # one plane at a time: no volume-sized temporary
            foreground[z] = _plane_foreground(probabilities[:, z], settings, probabilities.dtype)
        return foreground
    return _plane_foreground(probabilities, settings, np.float32)


def _plane_foreground(plane: np.ndarray, settings: PostprocessSettings, dtype) -> np.ndarray:
    dtype = np.dtype(dtype).type if np.dtype(dtype).kind == "f" else np.float32
    if settings.boundary_weight == 1:  # the original rule, bit for bit
        return plane[0].astype(dtype, copy=False) < dtype(1 - settings.foreground_threshold)
    cell, boundary = plane[1].astype(dtype, copy=False), plane[2].astype(dtype, copy=False)
    return cell + dtype(settings.boundary_weight) * boundary > dtype(settings.foreground_threshold)


def _drop_small_seeds(seeds: np.ndarray, min_size: int) -> None:
    """Set the seeds smaller than ``min_size`` pixels (voxels) to 0, in place."""
    if min_size > 1:
        small = np.bincount(seeds.ravel()) < min_size
        small[0] = False
        if small.any():
            seeds[small[seeds]] = 0


def _kept_ids(instances: np.ndarray, min_size: int) -> np.ndarray:
    """The lookup table that drops objects below ``min_size`` pixels (voxels) and numbers the others 1..n (uint32)."""
    sizes = np.bincount(instances.ravel())
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    lookup = np.zeros(len(sizes), np.uint32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lookup


def seeded_watershed(image: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.watershed(image, markers=seeds, mask=mask)`` (4-connected), faster.

    ``seeds`` must be labelled with 4-connectivity (``ndi.label``'s default), so
    that every seed pixel whose four neighbours are all seed pixels lies inside
    one seed. Such interior pixels can never label a neighbour, so they are
    left out of the priority queue (masked) and copied back afterwards; the
    flooding itself is skimage's. On nuclei-like images this halves the time.
    (Leaving them out changes the queue's internal layout, so two seed pixels
    of exactly equal value racing for one pixel could in principle resolve
    differently; on real and on plateau test images the results are identical.)
    """
    from skimage.segmentation import watershed

    seeded = seeds > 0
    interior = ndi.binary_erosion(seeded, border_value=1)
    if not interior.any():
        return watershed(image, markers=seeds, mask=mask)
    markers = np.where(interior, 0, seeds)
    out = watershed(image, markers=markers, mask=mask & ~interior)
    out[interior] = seeds[interior]
    return out


def stitch_planes(instances: np.ndarray, threshold: float = 0.25, out: np.ndarray | None = None) -> np.ndarray:
    """Link per-plane instances of a (Z, Y, X) stack into 3D objects.

    Parameters
    ----------
    instances : (Z, Y, X) integer array
        Independent labels per plane (ids may repeat between planes).
    threshold : float
        Minimum IoU for an object to continue one on the previous plane.
    out : (Z, Y, X) uint32 array, optional
        Where to write the result; may be ``instances`` itself (each plane is
        read before it is overwritten), which avoids a second stack in memory.

    Returns
    -------
    (Z, Y, X) uint32
        Ids 1..n unique over the stack; linked objects share an id.
    """
    instances = np.asarray(instances)
    if instances.ndim != 3:
        raise ValueError(f"stitch_planes expects a (Z, Y, X) stack, got shape {instances.shape}.")
    if not 0 < threshold <= 1:
        raise ValueError(f"stitch threshold must be in (0, 1], got {threshold}.")
    if out is None:
        out = np.zeros(instances.shape, np.uint32)
    elif out.shape != instances.shape or out.dtype != np.uint32:
        raise ValueError(f"out must be a uint32 array of shape {instances.shape}, got {out.dtype} {out.shape}.")
    next_id = 1
    previous = None
    for z in range(instances.shape[0]):
        plane, n = relabel_sequential(instances[z])
        mapping = np.zeros(n + 1, np.uint32)
        if previous is not None and n and previous.any():
            both = (plane > 0) & (previous > 0)
            new_ids = plane[both].astype(np.int64)
            old_ids = previous[both].astype(np.int64)
            if new_ids.size:
                stride = int(old_ids.max()) + 1
                keys, overlap = np.unique(new_ids * stride + old_ids, return_counts=True)  # sorted by (new, old)
                pairs = np.stack([keys // stride, keys % stride])
                area_new = np.bincount(plane.ravel(), minlength=n + 1)
                area_prev = np.bincount(previous.ravel())
                iou = overlap / (area_new[pairs[0]] + area_prev[pairs[1]] - overlap)
                taken = set()
                for k in np.argsort(-iou, kind="stable"):
                    if iou[k] < threshold:
                        break
                    new, old = int(pairs[0, k]), int(pairs[1, k])
                    if mapping[new] or old in taken:
                        continue
                    mapping[new] = old
                    taken.add(old)
        fresh = np.flatnonzero(mapping[1:] == 0) + 1
        mapping[fresh] = np.arange(next_id, next_id + len(fresh), dtype=np.uint32)
        next_id += len(fresh)
        out[z] = mapping[plane]
        previous = out[z]
        next_id = max(next_id, int(mapping.max()) + 1)
    return out


def volume_threshold(area_pixels: float, scale_zyx: tuple = (1.0, 1.0, 1.0)) -> int:
    """The voxel count that plays the part of a 2D pixel-count threshold in 3D.

    An area of ``area_pixels`` (a disc) becomes the volume of the ball with
    that cross-section, ``area_pixels**1.5`` voxels of the XY spacing; with
    anisotropic voxels (Z spacing ``z`` against ``sqrt(y * x)``) fewer, taller
    voxels hold that volume.

    Examples
    --------
    >>> volume_threshold(16)
    64
    >>> volume_threshold(16, (2.0, 1.0, 1.0))
    32
    """
    scale_z, scale_y, scale_x = (float(v) for v in scale_zyx)
    anisotropy = scale_z / math.sqrt(scale_y * scale_x)
    return int(math.ceil(float(area_pixels) ** 1.5 / anisotropy)) if area_pixels > 0 else 0


def probabilities_to_instances_3d(
    probabilities: np.ndarray,
    settings: PostprocessSettings | None = None,
    scale: tuple = (1.0, 1.0, 1.0),
    *,
    out: np.ndarray | None = None,
    **overrides,
) -> np.ndarray:
    """Seeded watershed of a volume's class probabilities (the 3D mode).

    Parameters
    ----------
    probabilities : (3, Z, Y, X) float array
        Background, cell and boundary probabilities (e.g. the fused views of
        :mod:`cellrefine.orthogonal`; float16 is read as it is).
    settings : PostprocessSettings, optional
        ``min_seed_size`` and ``min_size`` are read as areas and turned into
        volumes with :func:`volume_threshold`; ``stitch_threshold`` is unused.
    scale : (z, y, x)
        Voxel size (only ratios matter).
    out : (Z, Y, X) uint32 array, optional
        Where to write the instances (saves a volume-sized copy).
    **overrides
        Individual settings.

    Returns
    -------
    instances : (Z, Y, X) uint32
        0 = background, objects 1..n (6-connected seeds grown through the
        foreground with the boundary probability as the barrier).

    Notes
    -----
    The watershed runs on each connected piece of the foreground in its
    bounding box, so memory follows the largest piece, not the volume.
    """
    settings = dataclasses.replace(settings or PostprocessSettings(), **overrides).validate()
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or probabilities.shape[0] != 3:
        raise ValueError(f"probabilities must have shape (3, Z, Y, X), got {probabilities.shape}.")
    background, cell, boundary = probabilities[0], probabilities[1], probabilities[2]
    dtype = background.dtype.type
    foreground = foreground_mask(probabilities, settings)
    seeds, n_seeds = ndi.label((cell > dtype(settings.seed_threshold)) & foreground, output=np.int32)
    if out is None:
        out = np.zeros(background.shape, np.uint32)
    elif out.shape != background.shape or out.dtype != np.uint32:
        raise ValueError(f"out must be a uint32 array of shape {background.shape}, got {out.dtype} {out.shape}.")
    else:
        out[...] = 0
    instances = out
    if n_seeds == 0:
        return instances
    _drop_small_seeds(seeds, volume_threshold(settings.min_seed_size, scale))
    pieces, _ = ndi.label(foreground, output=np.int32)
    seeded_pieces = np.unique(pieces[seeds > 0])
    boxes = ndi.find_objects(pieces)
    for piece in seeded_pieces[seeded_pieces > 0]:
        box = boxes[piece - 1]
        mask = pieces[box] == piece
        markers = np.where(mask, seeds[box], 0)
        grown = seeded_watershed(boundary[box].astype(np.float32), markers, mask)
        instances[box][mask] = grown[mask]
    del pieces, seeds, foreground
    lookup = _kept_ids(instances, volume_threshold(settings.min_size, scale))
    for plane in instances:  # relabelled plane by plane: no second volume
        plane[...] = lookup[plane]
    return instances


def offset_frames(instances_tzyx: np.ndarray) -> np.ndarray:
    """Offset the ids 1..n of each frame of a (T, Z, Y, X) label array so they are unique over T (in place; returned)."""
    offset = 0
    for t in range(instances_tzyx.shape[0]):
        frame = instances_tzyx[t]
        n = int(frame.max()) if frame.size else 0
        if offset and n:
            np.add(frame, np.uint32(offset), out=frame, where=frame > 0)
        offset += n
    return instances_tzyx
