"""Domain adaptation benchmark: fine-tune the bundled nuclei model on a few EM slices.

    python benchmarks/finetune_em.py ../shared/data/em --n-train 2
    python benchmarks/finetune_em.py ../shared/data/nuclei --n-train 2 --train-subdir val   # nuclei check

Scores instance F1 at IoU 0.5...0.9 on ``<folder>/val`` before and after
``cellrefine.finetune`` with default settings on the first ``--n-train``
images of ``<folder>/train`` (full labels, every pixel reviewed), and the
wall time of the fine-tune. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from evaluate import load_folder, score, segmenter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder with train/ and val/ subfolders of .npz files")
    parser.add_argument("--n-train", type=int, default=2)
    parser.add_argument("--train-subdir", default="train")
    parser.add_argument("--model", default=None, help="starting model (default: bundled)")
    parser.add_argument("--steps", type=int, default=None, help="default: the library default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    import torch

    import cellrefine as cr
    from cellrefine.training import finetune_summary

    model = cr.load_model(args.model)
    train = load_folder(Path(args.folder) / args.train_subdir)[: args.n_train]
    val = load_folder(Path(args.folder) / "val")
    before = score(val, segmenter(model, args.device))
    started = time.perf_counter()
    tuned = cr.finetune(model, [t[0] for t in train], [t[1] for t in train], steps=args.steps, device=args.device, seed=args.seed)
    seconds = time.perf_counter() - started
    after = score(val, segmenter(tuned, args.device))
    record = tuned.config["provenance"][-1]
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} torch threads",
        "device": str(next(tuned.network.parameters()).device),
        "train_images": [t[2] for t in train],
        "steps": record["steps"],
        "finetune_seconds": round(seconds, 1),
        "steps_per_second": round(record["steps"] / record["training_seconds"], 2),
        "val_f1_before": [round(v, 3) for v in before["f1"]],
        "val_f1_after": [round(v, 3) for v in after["f1"]],
        "val_mean_f1_before": round(before["mean_f1"], 3),
        "val_mean_f1_after": round(after["mean_f1"], 3),
        "training_seconds": record["training_seconds"],
        "checkpoint_step": record["checkpoint"]["step"],
        "summary": finetune_summary(tuned),
    }
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
