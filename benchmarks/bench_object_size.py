"""Object-size guideline: accuracy of each bundled model when its validation images are zoomed.

    python benchmarks/bench_object_size.py --data ../shared/data --json out.json --md out.md

For ``nuclei`` (``nuclei/val``, the first ``--images`` images) and ``cells``
(``cells/val``), every image and its labels are zoomed by each factor
(``scipy.ndimage.zoom``: linear for the image, nearest for the labels), then
segmented with the model's own settings. Reports, per factor, the median
equivalent diameter of the true objects (``2 * sqrt(area / pi)``, pixels),
F1@0.5, mean F1 over IoU 0.5-0.9, merges and splits (counts summed over the
images). The range of diameters where F1@0.5 stays near its best is the
object-size guideline in docs/model-card.md: rescale images so objects fall
into it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import emit_with_markdown, machine_info, markdown_header
from evaluate import load_folder

FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
SETS = {"nuclei": ("nuclei", "val"), "cells": ("cells", "val")}


def median_diameter(labels_list) -> float:
    areas = np.concatenate([np.bincount(labels.ravel())[1:] for labels in labels_list])
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi)))


def run(data: Path, images: int) -> list:
    from scipy import ndimage as ndi

    import cellrefine as cr
    from cellrefine.metrics import aggregate, object_scores

    rows = []
    for name, (kind, split) in SETS.items():
        model = cr.load_model(name)
        pairs = load_folder(data / kind / split)[:images]
        for factor in FACTORS:
            started = time.perf_counter()
            zoomed = []
            for image, labels, _ in pairs:
                grey = image.astype(np.float32).mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)
                zoomed.append((ndi.zoom(grey, factor, order=1), ndi.zoom(labels, factor, order=0)))
            scores = aggregate([object_scores(labels, cr.segment(image, model, axes="YX", device="cpu").instances) for image, labels in zoomed])
            rows.append(
                {
                    "model": name,
                    "factor": factor,
                    "median_diameter_px": median_diameter([labels for _, labels in zoomed]),
                    "f1_050": scores["f1"][0],
                    "mean_f1": scores["mean_f1"],
                    "merges": scores["merges"],
                    "splits": scores["splits"],
                    "seconds": time.perf_counter() - started,
                }
            )
            print(rows[-1], flush=True)
    return rows


def markdown(rows, info, command) -> str:
    lines = [
        *markdown_header(command, info),
        "| model | zoom | median object diameter | F1@0.5 | mean F1 | merges | splits |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['factor']:g} | {r['median_diameter_px']:.0f} px | {r['f1_050']:.3f} | {r['mean_f1']:.3f} | {r['merges']} | {r['splits']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--images", type=int, default=10, help="images per validation set")
    parser.add_argument("--json")
    parser.add_argument("--md")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_object_size.py " + " ".join(sys.argv[1:] if argv is None else argv)
    info = machine_info()
    rows = run(Path(args.data), args.images)
    text = markdown(rows, info, command)
    print(text)
    emit_with_markdown({"benchmark": "object_size", "command": command, "machine": info, "rows": rows}, text, args.md, args.json)


if __name__ == "__main__":
    main()
