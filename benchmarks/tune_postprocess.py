"""Pick a model's default post-processing on a validation folder (grid search on cached probabilities).

    python benchmarks/tune_postprocess.py ../shared/data/cells/val --model runs/cells_v1/final.safetensors --json out.json

Each image is predicted once (``return_probabilities=True``); every combination
of the grid below is then scored with ``Segmentation.postprocess`` (no network)
by the dataset-level mean F1 over IoU 0.5-0.9 (counts summed over images, as
benchmarks/evaluate.py). Prints the ten best settings with F1@0.5, mean F1,
merges and splits; pass the winner to benchmarks/bundle_model.py. The
thresholds are chosen on the folder they are scored on, so report the scores
as "post-processing chosen on this split".
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

GRID = {
    "boundary_weight": (1.0, 0.5, 0.3),
    "foreground_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "seed_threshold": (0.5, 0.6, 0.7, 0.8),
    "min_seed_size": (32, 128),
    "min_size": (15, 300),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--model", default=None)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from evaluate import load_folder

    import cellrefine as cr
    from cellrefine.metrics import aggregate, object_scores

    model = cr.load_model(args.model)
    pairs = load_folder(args.folder)
    started = time.perf_counter()
    segmentations = [
        cr.segment(image, model, axes="YXC" if image.ndim == 3 else "YX", device="cpu", return_probabilities=True) for image, _, _ in pairs
    ]
    predict_seconds = time.perf_counter() - started
    rows = []
    for values in itertools.product(*GRID.values()):
        settings = dict(zip(GRID, values))
        scores = aggregate([object_scores(labels, seg.postprocess(**settings).instances) for seg, (_, labels, _) in zip(segmentations, pairs)])
        rows.append({**settings, "f1_050": scores["f1"][0], "mean_f1": scores["mean_f1"], "merges": scores["merges"], "splits": scores["splits"]})
    rows.sort(key=lambda row: (-row["mean_f1"], -row["f1_050"]))
    default = aggregate([object_scores(labels, seg.instances) for seg, (_, labels, _) in zip(segmentations, pairs)])
    print(f"model's own settings {model.config.get('postprocess', {})}: F1@0.5 {default['f1'][0]:.3f}, mean F1 {default['mean_f1']:.3f}")
    for row in rows[:10]:
        print(
            "  ".join(f"{key} {row[key]}" for key in GRID)
            + f"  F1@0.5 {row['f1_050']:.3f}  mean F1 {row['mean_f1']:.3f}  merges {row['merges']}  splits {row['splits']}"
        )
    print(f"(prediction {predict_seconds:.0f} s, {len(rows)} settings scored in {time.perf_counter() - started - predict_seconds:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), "folder": str(args.folder), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
