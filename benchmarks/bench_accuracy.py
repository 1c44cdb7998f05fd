"""Accuracy of the fast path: object F1 on nuclei/val with precision="float32" vs the default ("auto").

    python benchmarks/bench_accuracy.py --data ../shared/data --json out.json

Segments every BBBC039 validation image twice with ``cellrefine.segment``:
once in full float32 and once with the default precision (bfloat16 on CPUs
with native bf16), and reports dataset-level F1 at IoU 0.5 ... 0.9, mean F1,
their differences, and how many pixels get a different semantic class.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import machine_info
from evaluate import load_folder


def run(data, model_path=None, limit: int | None = None) -> dict:
    import cellrefine as cr
    from cellrefine.device import inference_dtypes, resolve_device
    from cellrefine.metrics import aggregate, object_scores

    model = cr.load_model(model_path)
    pairs = load_folder(Path(data) / "nuclei" / "val")[:limit]
    fast_dtype = str(inference_dtypes(resolve_device("cpu"), "auto")[0]).replace("torch.", "")
    scores = {"float32": [], "auto": []}
    seconds = {"float32": 0.0, "auto": 0.0}
    differing_pixels = 0
    total_pixels = 0
    for image, labels, _ in pairs:
        axes = "YXC" if image.ndim == 3 else "YX"
        semantic = {}
        for precision in ("float32", "auto"):
            started = time.perf_counter()
            result = cr.segment(image, model=model, axes=axes, device="cpu", precision=precision)
            seconds[precision] += time.perf_counter() - started
            scores[precision].append(object_scores(labels, result.instances))
            semantic[precision] = result.semantic
        differing_pixels += int(np.count_nonzero(semantic["float32"] != semantic["auto"]))
        total_pixels += semantic["auto"].size
    summary = {k: aggregate(v) for k, v in scores.items()}
    f1_32, f1_fast = summary["float32"]["f1"], summary["auto"]["f1"]
    return {
        "images": len(pairs),
        "fast_dtype": fast_dtype,
        "iou_thresholds": [round(0.5 + 0.05 * k, 2) for k in range(len(f1_32))],
        "f1_float32": f1_32,
        "f1_fast": f1_fast,
        "f1_difference": [b - a for a, b in zip(f1_32, f1_fast)],
        "mean_f1_float32": summary["float32"]["mean_f1"],
        "mean_f1_fast": summary["auto"]["mean_f1"],
        "largest_f1_drop": max(a - b for a, b in zip(f1_32, f1_fast)),
        "semantic_pixels_differing": differing_pixels / total_pixels,
        "seconds_float32": seconds["float32"],
        "seconds_fast": seconds["auto"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default=None)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), "accuracy": run(args.data, args.model, args.limit)}
    text = json.dumps(result, indent=1, default=float)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
