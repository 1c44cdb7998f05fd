"""Corrections to accuracy: how many corrected objects does it take to adapt the model to a new domain?

    python benchmarks/bench_corrections.py --data ../shared/data --json corrections.json --md corrections.md          # reduced (~20 min, 2 cores)
    python benchmarks/bench_corrections.py --data ../shared/data --full --json corrections.json --md corrections.md   # + random order, 200 objects

Rounds of: segment the pool images with the current model
(``cellrefine.segment``) → rank their objects and missed-object candidates
(``cellrefine.uncertainty.rank_segmentation``) → a simulated annotator
(``_annotator.py``) corrects objects in that order against the ground truth
until the total number of *edited* objects (replaced, erased or painted;
confirmed ones do not count) reaches the next budget (10, 25, 50, 100) →
fine-tune the current model (``cellrefine.finetune``, default settings and
steps) on the pool images that have edits, with labels = the model's instances
with the corrections painted in, and masks = the edited pixels grown by
``--margin`` pixels (as a napari user paints and marks reviewed). After each
round the tuned model is scored on held-out images (F1@0.5 and mean F1 over
IoU 0.5-0.9, ``cellrefine.metrics``, counts summed over images). Corrections
persist between rounds: after re-segmenting, edited pixels keep the
annotator's labels and only the rest takes the new prediction.

Reference: the bundled model fine-tuned once, with the same settings, on the
*full* ground truth of the pool images (every pixel reviewed).

Domains: ``em`` (pool: ISBI 2012 ``em/train`` slices 0-3; scored on
``em/val``, 5 slices: a new domain for the nuclei model) and ``nuclei``
(pool: ``nuclei/val`` images 0-24, scored on ``nuclei/val`` 25-49; BBBC039
validation images, never trained on), and ``cells`` (the bundled cells model;
pool: ``cells/val`` images 0-2, scored on images 3-4: Usiigaci fields never
trained on; no other whole-cell set with a redistributable licence was at
hand, so this is the same cell type, not a transfer to another). ``--full`` adds a random review order
(``--seeds`` of them) and a 200-object budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _annotator import Annotator, already_reviewed, review
from _common import emit_with_markdown, machine_info, markdown_header, parse_options
from evaluate import load_folder

DOMAINS = {
    "em": {"pool": ("em", "train", 0, 4), "eval": ("em", "val", 0, None)},
    "nuclei": {"pool": ("nuclei", "val", 0, 25), "eval": ("nuclei", "val", 25, None)},
    # the bundled cells model on held-apart Usiigaci images (cells/val sets 36-38 corrected, 39-40 scored; never trained on)
    "cells": {"pool": ("cells", "val", 0, 3), "eval": ("cells", "val", 3, None), "model": "cells"},
}


def load(data: Path, spec) -> list:
    kind, split, first, last = spec
    return load_folder(data / kind / split)[first:last]


def axes_of(image) -> str:
    return "YXC" if image.ndim == 3 else "YX"


def evaluate(model, pairs) -> dict:
    import cellrefine as cr
    from cellrefine.metrics import aggregate, object_scores

    started = time.perf_counter()
    scores = [object_scores(truth, cr.segment(image, model=model, axes=axes_of(image), device="cpu").instances) for image, truth, _ in pairs]
    total = aggregate(scores)
    return {"f1_50": total["f1"][0], "mean_f1": total["mean_f1"], "seconds": time.perf_counter() - started}


def correction_rounds(model, pool, held_out, budgets, order: str, seed: int, margin: int, steps, options: dict) -> list:
    """Segment → rank → correct up to each budget → fine-tune; one record per round."""
    import cellrefine as cr
    from cellrefine.uncertainty import rank_segmentation

    annotators = [None] * len(pool)
    rounds = []
    rng = np.random.default_rng(seed)
    edits = reviews = 0
    for budget in budgets:
        started = time.perf_counter()
        items = []
        for index, (image, truth, _) in enumerate(pool):
            seg = cr.segment(image, model=model, axes=axes_of(image), device="cpu", return_probabilities=True)
            if annotators[index] is None:
                annotators[index], offset = Annotator(truth, seg.instances), 0
            else:
                offset = annotators[index].refresh(seg.instances)
            items.extend((index, offset, item) for item in rank_segmentation(seg, include_missed=True))
        if order == "score":
            items.sort(key=lambda entry: -entry[2].score)
        else:
            items = [items[i] for i in rng.permutation(len(items))]
        segment_s = time.perf_counter() - started
        started = time.perf_counter()
        outcomes = {}
        for index, offset, item in items:
            if edits >= budget:
                break
            if already_reviewed(annotators[index], item, offset):
                continue
            outcome = review(annotators[index], item, offset)
            if outcome == "gone":
                continue
            reviews += 1
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            edits += outcome != "confirmed"
        annotate_s = time.perf_counter() - started
        edited = [k for k, a in enumerate(annotators) if a.edited.any()]
        started = time.perf_counter()
        model = cr.finetune(
            model,
            [pool[k][0] for k in edited],
            [annotators[k].labels.astype(np.uint32) for k in edited],
            masks=[annotators[k].reviewed_mask(margin) for k in edited],
            steps=steps,
            device="cpu",
            seed=seed,
            **options,
        )
        finetune_s = time.perf_counter() - started
        scores = evaluate(model, held_out)
        record = {
            "budget": budget,
            "edited_objects": edits,
            "reviewed_objects": reviews,
            "outcomes_this_round": outcomes,
            "images_with_edits": len(edited),
            "reviewed_pixels": int(sum(annotators[k].reviewed_mask(margin).sum() for k in edited)),
            "segment_rank_s": segment_s,
            "annotate_s": annotate_s,
            "finetune_s": finetune_s,
            "round_s": segment_s + annotate_s + finetune_s,
            "postprocess": dict(model.config.get("postprocess", {})),  # as calibrated by this round's fine-tune
            "eval": scores,
        }
        rounds.append(record)
        print(
            f"  {order} seed {seed}: {edits} edited objects ({reviews} reviewed) → F1@0.5 {scores['f1_50']:.3f}, mean F1 {scores['mean_f1']:.3f}; "
            f"round {record['round_s']:.0f} s (fine-tune {finetune_s:.0f} s)",
            flush=True,
        )
        if edits < budget:  # nothing left to correct
            break
    return rounds


def run_domain(name: str, data: Path, budgets, orders, seeds: int, margin: int, steps, options: dict, parent=None) -> dict:
    import cellrefine as cr

    pool, held_out = load(data, DOMAINS[name]["pool"]), load(data, DOMAINS[name]["eval"])
    bundled = cr.load_model(parent or DOMAINS[name].get("model"))
    result = {
        "domain": name,
        "model": bundled.name,
        "pool": [p[2] for p in pool],
        "held_out": [p[2] for p in held_out],
        "before": evaluate(bundled, held_out),
    }
    print(f"{name}: bundled model F1@0.5 {result['before']['f1_50']:.3f}", flush=True)
    started = time.perf_counter()
    reference = cr.finetune(bundled, [p[0] for p in pool], [p[1] for p in pool], steps=steps, device="cpu", seed=0, **options)
    result["full_labels"] = {
        "finetune_s": time.perf_counter() - started,
        "objects": int(sum(len(np.unique(p[1])) - 1 for p in pool)),
        **evaluate(reference, held_out),
    }
    print(f"{name}: full-label fine-tune F1@0.5 {result['full_labels']['f1_50']:.3f} ({result['full_labels']['finetune_s']:.0f} s)", flush=True)
    result["orders"] = {}
    for order in orders:
        result["orders"][order] = [
            correction_rounds(bundled, pool, held_out, budgets, order, seed, margin, steps, options)
            for seed in range(seeds if order == "random" else 1)
        ]
    return result


def markdown(results: list, info: dict, command: str) -> str:
    lines = [
        *markdown_header(command, info),
        "| domain | order | edited objects (reviewed) | F1@0.5 | mean F1 | round wall time (fine-tune) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['domain']} | bundled model ({r.get('model', 'nuclei_v1')}) | 0 | {r['before']['f1_50']:.3f} | {r['before']['mean_f1']:.3f} | |"
        )
        for order, runs in r["orders"].items():
            for k in range(max(len(run) for run in runs)):
                rows = [run[k] for run in runs if len(run) > k]
                f1s = [row["eval"]["f1_50"] for row in rows]
                means = [row["eval"]["mean_f1"] for row in rows]
                spread = f" ({min(f1s):.3f}–{max(f1s):.3f})" if len(rows) > 1 else ""
                lines.append(
                    f"| {r['domain']} | {order} | {np.mean([row['edited_objects'] for row in rows]):.0f} ({np.mean([row['reviewed_objects'] for row in rows]):.0f}) "
                    f"| {np.mean(f1s):.3f}{spread} | {np.mean(means):.3f} | {np.mean([row['round_s'] for row in rows]):.0f} s "
                    f"({np.mean([row['finetune_s'] for row in rows]):.0f} s) |"
                )
        full = r["full_labels"]
        lines.append(
            f"| {r['domain']} | full labels of the {len(r['pool'])} pool images | {full['objects']} (all) | {full['f1_50']:.3f} | {full['mean_f1']:.3f} | "
            f"({full['finetune_s']:.0f} s) |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument(
        "--budgets", nargs="+", type=int, default=None, help="cumulative edited objects after each round (default 10 25 50 100; --full adds 200)"
    )
    parser.add_argument("--full", action="store_true", help="also a random review order (--seeds) and a 200-object budget")
    parser.add_argument("--seeds", type=int, default=3, help="random orders with --full")
    parser.add_argument("--orders", nargs="+", choices=["score", "random"], default=None, help="review orders (default: score; --full: score random)")
    parser.add_argument("--margin", type=int, default=4, help="reviewed margin around edited objects, pixels")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the library default)")
    parser.add_argument(
        "--finetune-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a cellrefine.finetune setting for the correction rounds and the reference (e.g. distill=0); repeatable",
    )
    parser.add_argument("--parent", help="start every domain from this model (a bundled name or a file) instead of the domain's own")
    parser.add_argument("--json")
    parser.add_argument("--md")
    args = parser.parse_args(argv)
    options = parse_options(args.finetune_option)
    budgets = args.budgets or ([10, 25, 50, 100, 200] if args.full else [10, 25, 50, 100])
    orders = args.orders or (["score", "random"] if args.full else ["score"])
    command = "python benchmarks/bench_corrections.py " + " ".join(sys.argv[1:] if argv is None else argv)
    info = machine_info()
    started = time.perf_counter()
    results = [run_domain(name, Path(args.data), budgets, orders, args.seeds, args.margin, args.steps, options, args.parent) for name in args.domains]
    out = {
        "benchmark": "corrections",
        "command": command,
        "machine": info,
        "settings": {
            "budgets": budgets,
            "orders": orders,
            "margin": args.margin,
            "steps": args.steps or "library default",
            "finetune_options": options,
        },
        "results": results,
        "total_s": time.perf_counter() - started,
    }
    text = markdown(results, info, command)
    print(text)
    emit_with_markdown(out, text, args.md, args.json)
    return out


if __name__ == "__main__":
    main()
