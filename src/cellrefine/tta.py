"""Test-time augmentation: segment under flips/rotations and measure where the passes disagree.

:func:`tta_probabilities` runs :func:`cellrefine.segment` on the image and on
flipped/rotated copies, maps each pass' class probabilities back, and returns
their mean and a per-pixel disagreement map, which
:func:`cellrefine.uncertainty.rank_objects` turns into the ``disagreement`` cue.
Costs one segmentation per transform.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["AugmentedPrediction", "tta_probabilities", "TRANSFORMS"]

#: Default transforms of :func:`tta_probabilities`.
TRANSFORMS = ("identity", "flip_y", "flip_x", "rot90")


@dataclasses.dataclass
class AugmentedPrediction:
    """Result of :func:`tta_probabilities`.

    Attributes
    ----------
    segmentation : Segmentation
        The segmentation of the untransformed image (with its probabilities).
    probabilities : float32 array, (3, *spatial)
        Class probabilities averaged over the transforms.
    disagreement : float32 array, spatial shape
        Per pixel, twice the summed variance of the class probabilities across
        the transforms, in [0, 1] (0 = all agree, 1 = two transforms give
        opposite certain answers).
    """

    segmentation: object
    probabilities: np.ndarray
    disagreement: np.ndarray


def tta_probabilities(image, model=None, *, axes: str | None = None, transforms=TRANSFORMS, **segment_options) -> AugmentedPrediction:
    """Segment ``image`` under flips/rotations and measure where the passes disagree.

    Parameters
    ----------
    image : array-like
        As for :func:`cellrefine.segment` (2D or a stack, with or without C).
    model : Model, optional
        None loads the bundled model.
    axes : str, optional
        Axes of ``image`` (inferred when None, see :mod:`cellrefine.axes`).
    transforms : sequence of str
        Out of ``"identity"``, ``"flip_y"``, ``"flip_x"``, ``"rot90"`` (in the YX
        plane), ``"rot180"``, ``"rot270"``; must include ``"identity"``.
    **segment_options
        Passed to :func:`cellrefine.segment` (``device``, ``tile_size``, ``postprocess``, ...).

    Returns
    -------
    AugmentedPrediction
        The identity pass' segmentation, mean probabilities and per-pixel disagreement
        (pass ``disagreement`` to :func:`rank_objects`).
    """
    from .axes import check_axes
    from .inference import segment

    known = ("identity", "flip_y", "flip_x", "rot90", "rot180", "rot270")
    transforms = tuple(transforms)
    if "identity" not in transforms or any(t not in known for t in transforms) or len(set(transforms)) != len(transforms):
        raise ValueError(f"transforms must be distinct names out of {known} including 'identity', got {transforms!r}.")
    if "return_probabilities" in segment_options:
        raise TypeError("tta_probabilities always keeps probabilities; do not pass return_probabilities.")
    if model is None:
        from .model.io import load_model

        model = load_model()
    axes = check_axes(np.shape(image), axes)
    y, x = axes.index("Y"), axes.index("X")
    out_axes = axes.replace("C", "")
    oy, ox = out_axes.index("Y") + 1, out_axes.index("X") + 1
    forward = {
        "identity": lambda a, i, j: a,
        "flip_y": lambda a, i, j: np.flip(a, axis=i),
        "flip_x": lambda a, i, j: np.flip(a, axis=j),
        "rot90": lambda a, i, j: np.rot90(a, 1, axes=(i, j)),
        "rot180": lambda a, i, j: np.rot90(a, 2, axes=(i, j)),
        "rot270": lambda a, i, j: np.rot90(a, 3, axes=(i, j)),
    }
    inverse = {"identity": "identity", "flip_y": "flip_y", "flip_x": "flip_x", "rot90": "rot270", "rot180": "rot180", "rot270": "rot90"}
    total = squares = None
    base = None
    for name in transforms:
        seg = segment(forward[name](image, y, x), model=model, axes=axes, return_probabilities=True, **segment_options)
        if name == "identity":
            base = seg
        p = np.asarray(forward[inverse[name]](seg.probabilities, oy, ox), np.float32)
        total = p.copy() if total is None else total + p
        squares = p * p if squares is None else squares + p * p
    mean = total / len(transforms)
    variance = np.maximum(squares / len(transforms) - mean * mean, 0)
    disagreement = np.clip(2 * variance.sum(axis=0), 0, 1).astype(np.float32)
    return AugmentedPrediction(base, mean, disagreement)
