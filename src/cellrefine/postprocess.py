"""Class probabilities → instances (seeded watershed) and Z stitching.

Per 2D plane, with ``p_bg, p_cell, p_boundary`` the three class probabilities:

1. *foreground* = ``p_bg < 1 - foreground_threshold`` (i.e. cell + boundary
   probability above ``foreground_threshold``);
2. *seeds* = connected components of ``p_cell > seed_threshold`` inside the
   foreground, dropping seeds smaller than ``min_seed_size`` pixels;
3. a watershed on ``p_boundary`` (the boundary acts as the barrier) grows the
   seeds over the foreground;
4. objects smaller than ``min_size`` pixels are removed and the ids relabelled
   1..n.

Everything runs on cached probabilities, so changing a parameter never needs
the network again (:func:`probabilities_to_instances`).

Stacks: Z planes are linked into 3D objects by :func:`stitch_planes`: an
object on plane ``z`` takes the id of the object on plane ``z-1`` with which
it has the highest IoU, if that IoU is at least ``stitch_threshold`` (0.25,
as in Cellpose) and that object is not already taken by a better match.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

__all__ = ["PostprocessSettings", "probabilities_to_instances", "stitch_planes", "relabel_sequential"]


@dataclasses.dataclass
class PostprocessSettings:
    """Parameters of the watershed (see the module docstring)."""

    foreground_threshold: float = 0.5
    seed_threshold: float = 0.6
    min_seed_size: int = 4
    min_size: int = 15
    stitch_threshold: float = 0.25

    def validate(self) -> "PostprocessSettings":
        for name in ("foreground_threshold", "seed_threshold"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if not 0 < self.stitch_threshold <= 1:
            raise ValueError(f"stitch_threshold must be in (0, 1], got {self.stitch_threshold}.")
        for name in ("min_seed_size", "min_size"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value}.")
        return self


def relabel_sequential(instances: np.ndarray, offset: int = 1) -> tuple[np.ndarray, int]:
    """Relabel non-zero ids to ``offset, offset+1, ...`` (in place is never done).

    Returns the new uint32 image and the number of objects.
    """
    ids = np.unique(instances)
    ids = ids[ids != 0]
    lookup = np.zeros(int(instances.max()) + 1 if instances.size else 1, np.uint32)
    lookup[ids] = np.arange(offset, offset + len(ids), dtype=np.uint32)
    return lookup[instances], len(ids)


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
    from skimage.segmentation import watershed

    settings = dataclasses.replace(settings or PostprocessSettings(), **overrides).validate()
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3 or probabilities.shape[0] != 3:
        raise ValueError(f"probabilities must have shape (3, Y, X), got {probabilities.shape}.")
    background, cell, boundary = (probabilities[k].astype(np.float32, copy=False) for k in range(3))
    foreground = background < 1 - settings.foreground_threshold
    seeds_mask = (cell > settings.seed_threshold) & foreground
    seeds, n_seeds = ndi.label(seeds_mask)
    if n_seeds == 0:
        return np.zeros(background.shape, np.uint32)
    if settings.min_seed_size > 1:
        sizes = np.bincount(seeds.ravel())
        small = sizes < settings.min_seed_size
        small[0] = False
        if small.any():
            seeds[small[seeds]] = 0
    instances = watershed(boundary, markers=seeds, mask=foreground)
    if settings.min_size > 0:
        sizes = np.bincount(instances.ravel())
        small = sizes < settings.min_size
        small[0] = False
        if small.any():
            instances[small[instances]] = 0
    instances, _ = relabel_sequential(instances)
    return instances


def stitch_planes(instances: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Link per-plane instances of a (Z, Y, X) stack into 3D objects.

    Parameters
    ----------
    instances : (Z, Y, X) integer array
        Independent labels per plane (ids may repeat between planes).
    threshold : float
        Minimum IoU for an object to continue one on the previous plane.

    Returns
    -------
    (Z, Y, X) uint32
        Ids unique over the stack; linked objects share an id.
    """
    instances = np.asarray(instances)
    if instances.ndim != 3:
        raise ValueError(f"stitch_planes expects a (Z, Y, X) stack, got shape {instances.shape}.")
    if not 0 < threshold <= 1:
        raise ValueError(f"stitch threshold must be in (0, 1], got {threshold}.")
    out = np.zeros(instances.shape, np.uint32)
    next_id = 1
    previous = None
    for z, plane in enumerate(instances):
        plane, n = relabel_sequential(plane)
        mapping = np.zeros(n + 1, np.uint32)
        if previous is not None and n and previous.any():
            both = (plane > 0) & (previous > 0)
            pairs, overlap = np.unique(np.stack([plane[both], previous[both]]).astype(np.int64), axis=1, return_counts=True)
            area_new = np.bincount(plane.ravel(), minlength=n + 1)
            prev_ids, prev_areas = np.unique(previous, return_counts=True)
            area_prev = dict(zip(prev_ids.tolist(), prev_areas.tolist()))
            iou = overlap / (area_new[pairs[0]] + np.array([area_prev[p] for p in pairs[1]]) - overlap)
            taken = set()
            for k in np.argsort(-iou, kind="stable"):
                if iou[k] < threshold:
                    break
                new, old = int(pairs[0, k]), int(pairs[1, k])
                if mapping[new] or old in taken:
                    continue
                mapping[new] = old
                taken.add(old)
        for new in range(1, n + 1):
            if not mapping[new]:
                mapping[new] = next_id
                next_id += 1
        out[z] = mapping[plane]
        previous = out[z]
        next_id = max(next_id, int(out[z].max()) + 1)
    return out
