"""Which objects to review next: a per-object score of how likely each object is wrong.

:func:`rank_objects` scores every object of an instance image from the class
probabilities it was made from (``Segmentation.probabilities``) and returns the
objects most-uncertain first, so a user corrects the likely errors before the
rest. Each object gets a few *cues* in [0, 1] (1 = suspicious):

``foreground``
    Mean background probability (``1 - P(cell) - w P(boundary)`` for ``boundary_weight`` w < 1) over the
    object, relative to the most the watershed allows (``1 - foreground_threshold``): a faint object.
``margin``
    1 - mean(top-1 minus top-2 class probability) over the object's core (its
    pixels whose 3 x 3 neighbourhood lies inside it): a hesitant object.
``seed``
    Merge risk from the cell probability: the share of levels between the seed
    threshold and 1 at which the object's core above that level falls into two
    or more seed-sized pieces (two nuclei joined by a saddle the watershed
    could not cut; a deep saddle just above the seed threshold scores 1).
``contact``
    Split risk: twice the share of the object's outline that touches another
    object where neither side sees a boundary (boundary probability < 0.5).
``shape``
    Area over the area of its largest inscribed disc: 1 for a disc, 2 for two
    touching discs; mapped from [1.2, 2.7] onto [0, 1] (about 1.8 for two
    touching nuclei).
``size``
    Fragments: 0 at or above half the median object size of the image, 1 at an
    eighth of it (log scale); 0 with fewer than 5 objects.
``disagreement``
    Optional: mean disagreement of test-time augmentations over the object
    (:func:`tta_probabilities`).

The cues are combined by a weighted noisy-OR, ``score = 1 - prod(1 - w * cue)``
(weights: :data:`CUE_WEIGHTS`), so the score is in [0, 1] and any single strong
cue ranks an object high. Cues are computed per YX plane, as the network and
the watershed work, and aggregated per object over its planes; objects of a
(T)(Z)YX stack keep their ids. ``include_missed=True`` also lists *missed
object* candidates: foreground-looking regions (the model's foreground rule,
:func:`~cellrefine.postprocess.foreground_mask`, at ``missed_threshold``, ``t``) in no object (after a 3 x 3
opening that drops the thin rims around objects), with negative labels; their
score is ``(mean(cell + boundary) - t) / (0.8 (1 - t))``, clipped to [0, 1].

The weights were chosen on the training splits of the development data (``nuclei/train``; ``em/train``
for a model fine-tuned on two EM slices), where the score separates wrong objects (best IoU with a true
object < 0.5) from right ones with a ROC AUC of 0.89-0.90; ``foreground`` alone gives 0.87-0.89. See
docs/benchmarks.md ("Corrections to accuracy") for what the order buys a user. NumPy/SciPy on whole planes.
"""

from __future__ import annotations

import dataclasses
import types
from numbers import Real

import numpy as np
from scipy import ndimage as ndi

from .postprocess import PostprocessSettings, foreground_mask, volume_threshold
from .tta import AugmentedPrediction, tta_probabilities

__all__ = ["CUE_WEIGHTS", "ObjectUncertainty", "AugmentedPrediction", "rank_objects", "rank_segmentation", "tta_probabilities"]

#: Weight of each cue in the combined score (see the module docstring).
CUE_WEIGHTS = types.MappingProxyType({"foreground": 1.0, "margin": 0.5, "seed": 0.2, "contact": 1.0, "shape": 0.2, "size": 0.3, "disagreement": 0.8})
_SEED_LEVELS = 6
_WEAK_BOUNDARY = 0.5


@dataclasses.dataclass(frozen=True)
class ObjectUncertainty:
    """One object (or missed-object candidate) and how likely it is wrong.

    Attributes
    ----------
    label : int
        The object's id in ``instances``; a negative number (-1, -2, ...) for a
        missed-object candidate, which is not in ``instances``.
    score : float
        In [0, 1]; higher = more likely wrong (or, for a candidate, more likely
        a real object that the segmentation missed).
    size : int
        Pixels (voxels) of the object or candidate.
    centroid : tuple of float
        Centre of mass in the axes of ``instances`` (e.g. ``(z, y, x)``).
    cues : dict
        The individual cues in [0, 1] behind ``score`` (module docstring).
    missed : bool
        True for a missed-object candidate.
    """

    label: int
    score: float
    size: int
    centroid: tuple
    cues: dict = dataclasses.field(default_factory=dict, compare=False)
    missed: bool = False


def _check_inputs(probabilities, instances, axes, disagreement):
    instances = np.asarray(instances)
    if instances.dtype.kind not in "iu":
        raise TypeError(f"instances must be an integer label image (0 = background), got dtype {instances.dtype}; use instances.astype(np.uint32).")
    if instances.ndim < 2:
        raise ValueError(f"instances must have at least 2 axes (Y, X), got shape {instances.shape}.")
    if instances.size and instances.dtype.kind == "i" and instances.min() < 0:
        raise ValueError("instances must not hold negative ids; 0 is background and objects are 1, 2, ...")
    probabilities = np.asarray(probabilities)
    if probabilities.dtype.kind != "f":
        raise TypeError(f"probabilities must be a float array (Segmentation.probabilities), got dtype {probabilities.dtype}.")
    if probabilities.shape != (3, *instances.shape):
        raise ValueError(
            f"probabilities must have shape (3, *instances.shape) = {(3, *instances.shape)}, got {probabilities.shape}; "
            "segment with return_probabilities=True and pass Segmentation.probabilities (class axis first)."
        )
    if probabilities.size and not (np.isfinite(probabilities).all() and probabilities.min() >= -1e-3 and probabilities.max() <= 1 + 1e-3):
        raise ValueError("probabilities must be finite and in [0, 1] (softmax class probabilities).")
    axes = ("YX", "ZYX", "TZYX")[instances.ndim - 2] if axes is None and instances.ndim <= 4 else axes
    if (
        not isinstance(axes, str)
        or len(axes) != instances.ndim
        or len(set(axes.upper())) != len(axes)
        or axes[-2:].upper() != "YX"
        or set(axes.upper()) - set("TZYX")
    ):
        raise ValueError(f"axes must name the {instances.ndim} axes of instances (e.g. 'YX', 'ZYX', 'TYX', 'TZYX'), got {axes!r}.")
    if disagreement is not None:
        disagreement = np.asarray(disagreement)
        if disagreement.shape != instances.shape or disagreement.dtype.kind != "f":
            raise ValueError(
                f"disagreement must be a float array of the instances' shape {instances.shape}, got {disagreement.dtype} {disagreement.shape}."
            )
    return probabilities, instances, axes.upper(), disagreement


def _check_weights(weights) -> dict:
    merged = dict(CUE_WEIGHTS)
    for name, value in (weights or {}).items():
        if name not in merged:
            raise ValueError(f"unknown cue {name!r} in weights; the cues are {sorted(merged)}.")
        if not isinstance(value, Real) or not 0 <= value <= 1:
            raise ValueError(f"weights[{name!r}] must be a number in [0, 1], got {value!r}.")
        merged[name] = float(value)
    return merged


def _compact_ids(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted object ids and the image of their compact indices 1..n (0 = background)."""
    top = int(instances.max()) if instances.size else 0
    if top <= 4 * instances.size + 1024:
        ids = np.flatnonzero(np.bincount(instances.ravel().astype(np.intp, copy=False), minlength=top + 1))
        ids = ids[ids != 0]
        lookup = np.zeros(top + 1, np.int32)
        lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        return ids, lookup[instances]
    ids, inverse = np.unique(instances, return_inverse=True)
    compact = inverse.reshape(instances.shape).astype(np.int32)
    if ids[0] == 0:
        return ids[1:], compact
    return ids, compact + 1


class _Accumulator:
    """Per-object sums over the planes of a stack (index 0 = background, ignored)."""

    def __init__(self, n: int, n_lead: int):
        names = ("count", "core", "margin", "background", "outline", "weak", "area", "disc", "disagreement", "y", "x")
        self.sums = {name: np.zeros(n + 1) for name in names}
        self.lead = np.zeros((n + 1, n_lead))
        self.split_levels = np.zeros(n + 1)
        self.n = n

    def add(self, name: str, index: np.ndarray, weights=None):
        self.sums[name] += np.bincount(index.ravel(), weights=None if weights is None else np.ravel(weights), minlength=self.n + 1)


def _plane_cues(acc: _Accumulator, index: np.ndarray, probs: np.ndarray, settings: PostprocessSettings, disagreement, lead) -> None:
    """Add one YX plane's per-object statistics to ``acc``."""
    background, cell, boundary = (probs[k].astype(np.float32, copy=False) for k in range(3))
    height, width = index.shape
    count = np.bincount(index.ravel(), minlength=acc.n + 1)
    acc.sums["count"] += count
    acc.lead += count[:, None] * np.asarray(lead, float)[None, :]
    acc.add("y", index, np.broadcast_to(np.arange(height, dtype=float)[:, None], index.shape))
    acc.add("x", index, np.broadcast_to(np.arange(width, dtype=float)[None, :], index.shape))
    if disagreement is not None:
        acc.add("disagreement", index, disagreement.astype(np.float64))
    inside = index > 0
    core = inside & (ndi.minimum_filter(index, size=3) == index) & (ndi.maximum_filter(index, size=3) == index)
    ordered = np.sort(probs.astype(np.float32, copy=False), axis=0)
    margin = ordered[2] - ordered[1]
    acc.add("core", index[core])
    acc.add("margin", index[core], margin[core])
    acc.add("background", index, background if settings.boundary_weight == 1 else 1 - cell - np.float32(settings.boundary_weight) * boundary)
    # outline pairs (4-neighbours with different labels) and weak contacts between two objects
    for a, b, pa, pb in ((index[:-1], index[1:], boundary[:-1], boundary[1:]), (index[:, :-1], index[:, 1:], boundary[:, :-1], boundary[:, 1:])):
        differ = a != b
        weak = differ & (a > 0) & (b > 0) & (np.maximum(pa, pb) < _WEAK_BOUNDARY)
        for side in (a, b):
            acc.add("outline", side[differ & (side > 0)])
            acc.add("weak", side[weak])
    plane_area = count.astype(float)
    # largest inscribed disc of each object section (outline pixels separate touching objects)
    present = np.flatnonzero(count)
    present = present[present > 0]
    if present.size:
        radius = ndi.distance_transform_edt(core)
        largest = np.zeros(acc.n + 1)
        largest[present] = ndi.maximum(radius, index, present)
        acc.sums["area"] += plane_area
        acc.sums["disc"] += np.where(largest > 0, np.pi * (largest + 1) ** 2, plane_area)
    # merge risk: the core above a level splits into two or more seed-sized pieces
    levels = settings.seed_threshold + (1 - settings.seed_threshold) * np.arange(1, _SEED_LEVELS + 1) / (_SEED_LEVELS + 1)
    split = np.zeros(acc.n + 1)
    for level in levels:
        above = core & (cell > level)
        pieces, n_pieces = ndi.label(above)
        if n_pieces < 2:
            continue
        sizes = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
        owner = np.zeros(n_pieces + 1, np.int64)
        owner[pieces[above]] = index[above]
        kept = (sizes >= max(int(settings.min_seed_size), 4)) & (owner > 0)
        split += np.bincount(owner[kept], minlength=acc.n + 1) >= 2
    np.maximum(acc.split_levels, split, out=acc.split_levels)


def _combine(cues: dict, weights: dict) -> np.ndarray:
    keep = np.ones(len(next(iter(cues.values()))))
    for name, values in cues.items():
        keep *= 1 - weights[name] * np.clip(values, 0, 1)
    return 1 - keep


def _missed_candidates(probabilities, instances, axes, threshold: float, min_size: int, settings: PostprocessSettings) -> list:
    """Regions of likely foreground (``settings.boundary_weight`` as the watershed reads it) in no object, as ObjectUncertainty with negative labels."""
    candidate = foreground_mask(probabilities, settings, foreground_threshold=threshold) & (instances == 0)
    in_plane = np.zeros((3,) * instances.ndim, bool)
    centre = (1,) * (instances.ndim - 2)
    in_plane[centre] = True  # 3 x 3 in YX only
    candidate = ndi.binary_opening(candidate, structure=in_plane)
    structure = np.zeros((3,) * instances.ndim, bool)
    structure[centre] = ndi.generate_binary_structure(2, 1)
    if "Z" in axes:  # connect along Z, never along T
        for offset in (0, 2):
            where = [1] * instances.ndim
            where[axes.index("Z")] = offset
            structure[tuple(where)] = True
    regions, n = ndi.label(candidate, structure=structure)
    if n == 0:
        return []
    sizes = np.bincount(regions.ravel(), minlength=n + 1)
    foreground = np.bincount(regions.ravel(), weights=1 - probabilities[0].astype(np.float64).ravel(), minlength=n + 1)
    centroids = ndi.center_of_mass(candidate, regions, np.arange(1, n + 1))
    out = []
    for k in np.flatnonzero(sizes[1:] >= max(min_size, 1)) + 1:
        mean_fg = foreground[k] / sizes[k]
        strength = min(1.0, max(0.0, (mean_fg - threshold) / (0.8 * (1 - threshold))))
        out.append(
            ObjectUncertainty(
                -len(out) - 1,
                float(strength),
                int(sizes[k]),
                tuple(float(c) for c in centroids[k - 1]),
                {"foreground": float(mean_fg)},
                True,
            )
        )
    return out


def rank_objects(
    probabilities,
    instances,
    *,
    axes: str | None = None,
    settings: PostprocessSettings | dict | None = None,
    disagreement=None,
    weights: dict | None = None,
    include_missed: bool = False,
    missed_threshold: float = 0.5,
    missed_min_size: int | None = None,
) -> list:
    """Rank the objects of a segmentation by how likely each one is wrong.

    Parameters
    ----------
    probabilities : float array, (3, *spatial)
        Background, cell and boundary probabilities, class axis first, as in
        ``Segmentation.probabilities`` (segment with ``return_probabilities=True``).
    instances : integer array, spatial shape
        The objects to rank (0 = background), e.g. ``Segmentation.instances``.
    axes : str, optional
        Axes of ``instances`` ending in ``YX``: ``"YX"``, ``"ZYX"``, ``"TYX"``,
        ``"TZYX"``. Default by dimension: YX, ZYX, TZYX. Missed-object
        candidates are connected along Z but never along T.
    settings : PostprocessSettings or dict, optional
        The watershed settings the instances were made with (``Segmentation.settings``);
        the seed threshold sets the levels of the ``seed`` cue. Default: the
        generic :class:`~cellrefine.postprocess.PostprocessSettings`.
    disagreement : float array, spatial shape, optional
        Per-pixel disagreement of test-time augmentations (:func:`tta_probabilities`): the ``disagreement`` cue.
    weights : dict, optional
        Replace single entries of :data:`CUE_WEIGHTS` (each in [0, 1]; 0 turns a cue off).
    include_missed : bool
        Also list missed-object candidates (negative labels, ``missed=True``).
    missed_threshold : float
        Cell + boundary probability above which a pixel outside every object may belong to a missed object.
    missed_min_size : int, optional
        Smallest missed-object candidate (pixels; voxels along Z); None: ``settings.min_size``.

    Returns
    -------
    list of ObjectUncertainty
        Most uncertain first (ties: larger objects first, then lower label).

    Raises
    ------
    TypeError
        Non-integer instances or non-float probabilities.
    ValueError
        Shapes that do not match, probabilities outside [0, 1], wrong axes, unknown cues or weights outside [0, 1].

    Examples
    --------
    >>> seg = cellrefine.segment(image, return_probabilities=True)  # doctest: +SKIP
    >>> rank_objects(seg.probabilities, seg.instances, settings=seg.settings)[0].centroid  # doctest: +SKIP
    """
    probabilities, instances, axes, disagreement = _check_inputs(probabilities, instances, axes, disagreement)
    weights = _check_weights(weights)
    if isinstance(settings, dict):
        settings = PostprocessSettings(**settings)
    settings = (settings or PostprocessSettings()).validate()
    if not isinstance(missed_threshold, Real) or not 0 < missed_threshold < 1:
        raise ValueError(f"missed_threshold must be a number in (0, 1), got {missed_threshold!r}.")
    ids, index = _compact_ids(instances)
    n = len(ids)
    lead_shape = instances.shape[:-2]
    planes = index.reshape((-1, *instances.shape[-2:]))
    probs = probabilities.reshape((3, -1, *instances.shape[-2:]))
    spread = None if disagreement is None else disagreement.reshape(planes.shape)
    acc = _Accumulator(n, len(lead_shape))
    for p in range(planes.shape[0] if n else 0):
        if not planes[p].any():
            continue
        lead = np.unravel_index(p, lead_shape) if lead_shape else ()
        _plane_cues(acc, planes[p], probs[:, p], settings, None if spread is None else spread[p], lead)
    out = []
    if n:
        s = {name: values[1:] for name, values in acc.sums.items()}
        count = s["count"]
        fragment = np.log(0.5 * np.median(count) / count) / np.log(4)
        cues = {
            "foreground": s["background"] / count / max(1 - settings.foreground_threshold, 1e-3),
            "margin": np.where(s["core"] > 0, 1 - s["margin"] / np.maximum(s["core"], 1), 1.0),
            "seed": 2 * acc.split_levels[1:] / _SEED_LEVELS,
            "contact": 2 * s["weak"] / np.maximum(s["outline"], 1),
            "shape": (s["area"] / np.maximum(s["disc"], 1) - 1.2) / 1.5,
            "size": fragment if n >= 5 else np.zeros(n),
        }
        if disagreement is not None:
            cues["disagreement"] = 2 * s["disagreement"] / count
        cues = {name: np.clip(values, 0, 1) for name, values in cues.items()}
        score = _combine(cues, weights)
        centroid = np.column_stack([acc.lead[1:] / count[:, None], s["y"] / count, s["x"] / count])
        for k in range(n):
            out.append(
                ObjectUncertainty(
                    int(ids[k]), float(score[k]), int(count[k]), tuple(float(c) for c in centroid[k]), {c: float(v[k]) for c, v in cues.items()}
                )
            )
    if include_missed:
        smallest = int(settings.min_size) if missed_min_size is None else int(missed_min_size)
        out.extend(_missed_candidates(probabilities, instances, axes, float(missed_threshold), smallest, settings))
    out.sort(key=lambda o: (-o.score, -o.size, o.label))
    return out


def rank_segmentation(segmentation, *, disagreement=None, weights: dict | None = None, include_missed: bool = False) -> list:
    """:func:`rank_objects` on a :class:`~cellrefine.inference.Segmentation` (its probabilities, instances, axes and settings).

    Raises
    ------
    ValueError
        If the segmentation has no probabilities (segment with ``return_probabilities=True``).
    """
    if getattr(segmentation, "probabilities", None) is None:
        raise ValueError("this segmentation has no probabilities; segment with return_probabilities=True to rank its objects.")
    missed_min_size = None  # 3D mode: objects are volumes, so are the candidates worth a look
    if getattr(segmentation, "stack_mode", "2d") == "3d":
        missed_min_size = volume_threshold(segmentation.settings.min_size, segmentation.scale)
    return rank_objects(
        segmentation.probabilities,
        segmentation.instances,
        axes=segmentation.axes,
        settings=segmentation.settings,
        disagreement=disagreement,
        weights=weights,
        include_missed=include_missed,
        missed_min_size=missed_min_size,
    )
