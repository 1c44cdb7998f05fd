"""Where a model's instance accuracy is lost: finding and separating objects, or placing their outlines.

    python benchmarks/diagnose_outlines.py ../shared/data/cells/val --model cells
    python benchmarks/diagnose_outlines.py ../shared/data/cells/val --model cells --postprocess boundary_weight=1 foreground_threshold=0.9

Each image is predicted once; then, with the model's own post-processing (or
``--postprocess`` overrides), it prints

- ``semantic IoU``: IoU of the predicted foreground (the watershed's mask)
  with all true objects together, per image;
- ``matched objects``: for each true object, the predicted object covering
  most of it; the median IoU and the median symmetric outline distance
  (pixels) of pairs with IoU >= 0.5, for objects that touch another true
  object (within 3 px) and for isolated ones, and the ratio of extra to missed
  pixels (> 1: predicted objects too large);
- ``oracle seeds``: mean F1 when the watershed starts from the true objects'
  cores (pixels at >= 60 % of each object's largest inner distance) instead of
  its own seeds, on the same foreground and barrier. If this is not much above
  the real mean F1, the seeds (finding and splitting) are not what limits the
  score; the outlines are.
- ``true outlines moved``: mean F1 of the true objects themselves with every
  outline moved 1 or 2 px inwards (eroded) or outwards (grown into the
  background, not into neighbours): what an outline error of that size costs
  on this data, whatever the model.

True labels are reduced to the largest piece of each id (annotation specks).
Figures, not pass/fail; the thresholds are those of the model unless given.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def outline_distance(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean symmetric distance (pixels) between the inner outlines of two masks."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    a, b = find_boundaries(truth, mode="inner"), find_boundaries(predicted, mode="inner")
    return float((ndi.distance_transform_edt(~a)[b].mean() + ndi.distance_transform_edt(~b)[a].mean()) / 2)


def matched_pairs(truth: np.ndarray, instances: np.ndarray) -> list:
    """(touching, IoU, outline distance, extra pixels, missed pixels) per true object with a predicted object over it."""
    from scipy import ndimage as ndi

    rows = []
    for label, box in enumerate(ndi.find_objects(truth), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 10, 0), s.stop + 10) for s in box)
        mask = truth[box] == label
        ring = ndi.binary_dilation(mask, iterations=3) & ~mask
        touching = bool(((truth[box][ring] > 0) & (truth[box][ring] != label)).any())
        covered = instances[box][mask]
        covered = covered[covered > 0]
        if covered.size == 0:
            continue
        predicted = instances[box] == np.bincount(covered).argmax()
        iou = (mask & predicted).sum() / (mask | predicted).sum()
        rows.append((touching, iou, outline_distance(mask, predicted), int((predicted & ~mask).sum()), int((mask & ~predicted).sum())))
    return rows


def oracle_instances(truth: np.ndarray, probabilities: np.ndarray, settings) -> np.ndarray:
    from scipy import ndimage as ndi

    from cellrefine.postprocess import foreground_mask, seeded_watershed

    distance = ndi.distance_transform_edt(truth > 0)
    largest = ndi.maximum(distance, truth, index=np.arange(truth.max() + 1))
    seeds = np.where(distance >= 0.6 * largest[truth], truth, 0).astype(np.int32)
    mask = foreground_mask(probabilities, settings) | (seeds > 0)
    return seeded_watershed(probabilities[2].astype(np.float32), seeds, mask)


def move_outlines(instances: np.ndarray, pixels: int) -> np.ndarray:
    """``instances`` with every outline moved ``pixels`` outwards (> 0, into the background only) or inwards (< 0)."""
    from skimage.segmentation import expand_labels, find_boundaries

    if pixels >= 0:
        return expand_labels(instances, pixels)
    moved = instances.copy()
    for _ in range(-pixels):
        moved[find_boundaries(moved, mode="inner")] = 0
    return moved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--model", default=None)
    parser.add_argument("--postprocess", nargs="*", default=[], metavar="NAME=VALUE", help="post-processing overrides")
    args = parser.parse_args(argv)

    from _common import parse_options
    from evaluate import load_folder

    import cellrefine as cr
    from cellrefine.metrics import aggregate, object_scores
    from cellrefine.postprocess import foreground_mask
    from cellrefine.targets import largest_piece_per_label

    overrides = parse_options(args.postprocess)
    model = cr.load_model(args.model)
    pairs = load_folder(args.folder)
    real, oracle, rows, semantic = [], [], [], []
    for image, labels, _ in pairs:
        segmentation = cr.segment(image, model, axes="YXC" if image.ndim == 3 else "YX", device="cpu", return_probabilities=True)
        segmentation = segmentation.postprocess(**overrides) if overrides else segmentation
        truth = largest_piece_per_label(labels)
        probabilities = np.asarray(segmentation.probabilities, np.float32)
        foreground = foreground_mask(probabilities, segmentation.settings)
        semantic.append((foreground & (truth > 0)).sum() / (foreground | (truth > 0)).sum())
        real.append(object_scores(truth, segmentation.instances))
        oracle.append(object_scores(truth, oracle_instances(truth, probabilities, segmentation.settings)))
        rows += matched_pairs(truth, segmentation.instances)
    print(f"model {model.name}, post-processing {segmentation.settings}")
    print("semantic IoU per image:", " ".join(f"{value:.3f}" for value in semantic))
    table = np.array(rows, dtype=float)
    for touching, name in ((0.0, "isolated"), (1.0, "touching")):
        group = table[(table[:, 0] == touching) & (table[:, 1] >= 0.5)]
        n_all = int((table[:, 0] == touching).sum())
        ratio = np.median(group[:, 3] / np.maximum(group[:, 4], 1))
        print(
            f"matched objects, {name}: {len(group)} of {n_all} at IoU >= 0.5; median IoU {np.median(group[:, 1]):.3f},"
            f" outline distance {np.median(group[:, 2]):.2f} px, extra/missed pixels {ratio:.2f}"
        )
    for name, scores in (("real seeds", real), ("oracle seeds", oracle)):
        summary = aggregate(scores)
        print(f"{name}: F1@0.5 {summary['f1'][0]:.3f}, mean F1 {summary['mean_f1']:.3f}; F1 per IoU", " ".join(f"{f:.2f}" for f in summary["f1"]))
    truths = [largest_piece_per_label(labels) for _, labels, _ in pairs]
    moved = {
        f"{pixels} px {way}": aggregate([object_scores(truth, move_outlines(truth, sign * pixels)) for truth in truths])
        for pixels in (1, 2)
        for way, sign in (("in", -1), ("out", 1))
    }
    print("true outlines moved:", ", ".join(f"{name} mean F1 {summary['mean_f1']:.3f}" for name, summary in moved.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
