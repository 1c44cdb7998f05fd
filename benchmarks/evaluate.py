"""Accuracy of models (and of a classical baseline) on a folder of .npz image/label pairs.

    python benchmarks/evaluate.py ../shared/data/nuclei/val                  # bundled model + Otsu baseline
    python benchmarks/evaluate.py ../shared/data/nuclei/val --models runs/nuclei_v1/*.safetensors --json out.json

For each model it segments every image with ``cellrefine.segment`` (default
post-processing), matches objects with ``cellrefine.metrics`` and prints
dataset-level F1 at IoU 0.5 ... 0.9 (counts summed over images), mean F1,
merges and splits; ``--per-image`` adds one line per image (objects, median
true object area, F1@0.5, mean F1). The classical baseline is Otsu thresholding of the
(grey, Gaussian-smoothed) image followed by a distance-transform watershed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def load_folder(folder):
    pairs = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            pairs.append((data["image"], data["labels"], path.stem))
    if not pairs:
        sys.exit(f"no .npz files in {folder}")
    return pairs


def otsu_watershed(image: np.ndarray, min_size: int = 15) -> np.ndarray:
    """Classical baseline: smooth, Otsu threshold, fill holes, distance-transform watershed."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    grey = image.astype(np.float32)
    if grey.ndim == 3:
        grey = grey[..., :3].mean(axis=-1)
    smooth = gaussian(grey, sigma=1)
    foreground = smooth > threshold_otsu(smooth)
    if foreground.mean() > 0.5:  # dark objects on a bright background (brightfield / H&E)
        foreground = ~foreground
    foreground = ndi.binary_fill_holes(remove_small_objects(foreground, min_size))
    distance = ndi.distance_transform_edt(foreground)
    distance = gaussian(distance, sigma=1)
    peaks = peak_local_max(distance, min_distance=5, labels=ndi.label(foreground)[0], exclude_border=False)
    markers = np.zeros(grey.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=foreground)
    return labels.astype(np.uint32)


def score(pairs, predict) -> dict:
    from cellrefine.metrics import aggregate, object_scores

    per_image = []
    started = time.perf_counter()
    for image, labels, _ in pairs:
        per_image.append(object_scores(labels, predict(image)))
    result = aggregate(per_image)
    result["seconds"] = time.perf_counter() - started
    result["images"] = {
        name: {"f1_050": scores["f1"][0], "mean_f1": scores["mean_f1"]}
        for (_, _, name), scores in ((pair, aggregate([one])) for pair, one in zip(pairs, per_image))
    }
    return result


def per_image_lines(pairs, result: dict) -> list:
    """One line per image: objects, median true object area (pixels), F1@0.5 and mean F1."""
    lines = []
    for _, labels, name in pairs:
        areas = np.bincount(np.asarray(labels, np.int64).ravel())[1:]
        areas = areas[areas > 0]
        scores = result["images"][name]
        median = int(np.median(areas)) if areas.size else 0
        lines.append(
            f"  {name:30s} objects {areas.size:4d}  median area {median:6d} px  F1@0.5 {scores['f1_050']:.3f}  mean F1 {scores['mean_f1']:.3f}"
        )
    return lines


def segmenter(model, device="cpu"):
    import cellrefine as cr

    def predict(image):
        axes = "YXC" if image.ndim == 3 else "YX"
        return cr.segment(image, model=model, axes=axes, device=device).instances

    return predict


def summary_line(name: str, result: dict) -> str:
    f1 = result["f1"]
    return (
        f"{name:40s} F1@0.5 {f1[0]:.3f}  F1@0.75 {f1[5]:.3f}  F1@0.9 {f1[-1]:.3f}  mean F1 {result['mean_f1']:.3f}  "
        f"merges {result['merges']}  splits {result['splits']}  ({result['seconds']:.0f} s)"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--models", nargs="*", default=[None], help="model files/folders (default: the bundled model)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-image", action="store_true", help="also print each image's objects, median object area and scores")
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args(argv)

    import cellrefine as cr

    pairs = load_folder(args.folder)
    results = {}
    if not args.no_baseline:
        results["otsu+watershed"] = score(pairs, otsu_watershed)
        print(summary_line("otsu+watershed", results["otsu+watershed"]), flush=True)
    for path in args.models:
        model = cr.load_model(path)
        name = "bundled" if path is None else str(path)
        results[name] = score(pairs, segmenter(model, args.device))
        print(summary_line(name, results[name]), flush=True)
        if args.per_image:
            print("\n".join(per_image_lines(pairs, results[name])), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
