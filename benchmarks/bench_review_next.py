"""Review next: does correcting objects in the uncertainty score's order reach a given F1 with fewer reviews than a random order?

    python benchmarks/bench_review_next.py --data ../shared/data --json review_next.json --md review_next.md

Segments each image set with the model (``cellrefine.segment``, probabilities
kept), ranks every object plus the missed-object candidates with
``cellrefine.uncertainty.rank_segmentation(..., include_missed=True)`` and lets
a simulated annotator (``_annotator.py``) review the items one at a time,
WITHOUT fine-tuning, in three orders over the same items:

* ``score``: most uncertain first (the "Review next" list);
* ``random``: a random permutation (``--seeds`` of them);
* ``oracle``: the items that need an edit first (an upper bound no score can beat).

After every review the dataset F1@0.5 (``cellrefine.metrics``, counts summed
over images) of the corrected labels is recorded. Reported: F1 after k
reviews, how many reviews each order needs to reach 50 / 80 / 90 % of the gain
that reviewing everything gives, and how many edits that took.

Sets (``--sets``): ``nuclei`` (``nuclei/val``, the BBBC039 validation split:
never trained on), ``em`` (``em/val``, ISBI 2012: a new domain, bundled model)
and ``em-tuned`` (``em/val`` with the bundled model first fine-tuned on the
full labels of ``em/train`` slices 0-1, default ``cellrefine.finetune``
settings: a model after a first round of corrections). ``--tta`` adds a
``score+tta`` order whose score includes test-time-augmentation disagreement
(4 segmentations per image).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _annotator import Annotator, f1, review
from _common import emit_with_markdown, machine_info, markdown_header
from evaluate import load_folder

CHECKPOINTS = (0, 10, 25, 50, 100, 200, 400, 800, 1600, 3200)
GAIN_SHARES = (0.5, 0.8, 0.9)


def prepare(model, pairs, tta: bool) -> dict:
    """Segment and rank every image: items [(image index, ObjectUncertainty)] per order kind."""
    import cellrefine as cr
    from cellrefine.tta import tta_probabilities
    from cellrefine.uncertainty import rank_segmentation

    predictions, items, items_tta = [], [], []
    segment_s = rank_s = tta_s = 0.0
    for index, (image, _, _) in enumerate(pairs):
        axes = "YXC" if image.ndim == 3 else "YX"
        started = time.perf_counter()
        seg = cr.segment(image, model=model, axes=axes, device="cpu", return_probabilities=True)
        segment_s += time.perf_counter() - started
        started = time.perf_counter()
        ranking = rank_segmentation(seg, include_missed=True)
        rank_s += time.perf_counter() - started
        predictions.append(seg.instances)
        items.extend((index, item) for item in ranking)
        if tta:
            started = time.perf_counter()
            augmented = tta_probabilities(image, model, axes=axes, device="cpu")
            tta_s += time.perf_counter() - started
            # rank the same instances (identity pass = the segmentation above) with the disagreement cue added
            items_tta.extend((index, item) for item in rank_segmentation(seg, disagreement=augmented.disagreement, include_missed=True))
    return {
        "predictions": predictions,
        "items": sorted(items, key=lambda pair: -pair[1].score),  # one review list over all images, most uncertain first
        "items_tta": sorted(items_tta, key=lambda pair: -pair[1].score),
        "segment_s": segment_s,
        "rank_s": rank_s,
        "tta_s": tta_s,
    }


def simulate(pairs, predictions, ordered_items) -> dict:
    """Review ``ordered_items`` one by one; F1 and edits after each review."""
    annotators = [Annotator(truth, predicted) for (_, truth, _), predicted in zip(pairs, predictions)]
    curve, edits, outcomes = [f1(annotators)], [0], {}
    for index, item in ordered_items:
        outcome = review(annotators[index], item)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "gone":  # erased with an earlier correction: not shown to the user any more
            continue
        curve.append(f1(annotators))
        edits.append(edits[-1] + (outcome not in ("confirmed",)))
    return {"f1": curve, "edits": edits, "outcomes": outcomes}


def thin(curve, points: int = 150) -> dict:
    """The curve at about ``points`` review counts, denser at the start (log-spaced): {reviews: F1}."""
    at = np.unique(np.concatenate([[0], np.round(np.geomspace(1, len(curve) - 1, points)).astype(int)])) if len(curve) > 1 else np.array([0])
    return {int(k): round(float(curve[k]), 5) for k in at}


def reviews_to_reach(curve, level: float) -> int | None:
    hits = np.flatnonzero(np.asarray(curve) >= level - 1e-12)
    return int(hits[0]) if hits.size else None


def summarise(runs: dict, start: float) -> dict:
    final = max(run["f1"][-1] for name, runs_of in runs.items() for run in runs_of)
    summary = {"f1_start": start, "f1_all_reviewed": final, "n_reviews_all": len(runs["score"][0]["f1"]) - 1, "orders": {}}
    for name, runs_of in runs.items():
        entry = {"f1_at": {}, "reviews_to_gain": {}, "edits_to_gain": {}}
        for k in CHECKPOINTS:
            values = [run["f1"][min(k, len(run["f1"]) - 1)] for run in runs_of]
            entry["f1_at"][k] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
        for share in GAIN_SHARES:
            level = start + share * (final - start)
            reached = [reviews_to_reach(run["f1"], level) for run in runs_of]
            entry["reviews_to_gain"][share] = {
                "mean": float(np.mean([r for r in reached if r is not None])) if any(r is not None for r in reached) else None,
                "sd": float(np.std([r for r in reached if r is not None])) if any(r is not None for r in reached) else None,
                "runs": reached,
            }
            entry["edits_to_gain"][share] = [None if r is None else run["edits"][r] for r, run in zip(reached, runs_of)]
        entry["outcomes"] = runs_of[0]["outcomes"]
        entry["n_runs"] = len(runs_of)
        summary["orders"][name] = entry
    return summary


def run_set(name: str, model, pairs, seeds: int, tta: bool) -> dict:
    prepared = prepare(model, pairs, tta)
    items, predictions = prepared["items"], prepared["predictions"]
    fresh = [Annotator(truth, predicted) for (_, truth, _), predicted in zip(pairs, predictions)]
    wrong = [fresh[index].needs_edit(item) for index, item in items]
    started = time.perf_counter()
    runs = {"score": [simulate(pairs, predictions, items)]}
    if tta:
        runs["score+tta"] = [simulate(pairs, predictions, prepared["items_tta"])]
    runs["random"] = [simulate(pairs, predictions, [items[i] for i in np.random.default_rng(seed).permutation(len(items))]) for seed in range(seeds)]
    order = np.random.default_rng(0).permutation(len(items))
    runs["oracle"] = [simulate(pairs, predictions, [items[i] for i in order if wrong[i]] + [items[i] for i in order if not wrong[i]])]
    result = summarise(runs, runs["score"][0]["f1"][0])
    result.update(
        set=name,
        images=len(pairs),
        objects=sum(not item.missed for _, item in items),
        missed_candidates=sum(item.missed for _, item in items),
        items_needing_edit=int(sum(wrong)),
        segment_s=prepared["segment_s"],
        rank_s=prepared["rank_s"],
        rank_s_per_image=prepared["rank_s"] / len(pairs),
        tta_s=prepared["tta_s"],
        simulate_s=time.perf_counter() - started,
        curves={k: [thin(run["f1"]) for run in v] for k, v in runs.items()},
    )
    return result


def markdown(results: list, info: dict, command: str) -> str:
    lines = [
        *markdown_header(command, info),
    ]
    for r in results:
        orders = list(r["orders"])
        lines += [
            f"**{r['set']}**: {r['images']} images, {r['objects']} objects + {r['missed_candidates']} missed-object candidates, "
            f"{r['items_needing_edit']} items need an edit; F1@0.5 {r['f1_start']:.3f} before review, {r['f1_all_reviewed']:.3f} after reviewing all "
            f"({r['n_reviews_all']} reviews); ranking {r['rank_s_per_image'] * 1000:.0f} ms per image.",
            "",
            "| reviews | " + " | ".join(orders) + " |",
            "|---|" + "---|" * len(orders),
        ]
        for k in CHECKPOINTS:
            if k > r["n_reviews_all"]:
                break
            cells = []
            for o in orders:
                v = r["orders"][o]["f1_at"][k]
                cells.append(f"{v['mean']:.3f}" + (f" ({v['min']:.3f}–{v['max']:.3f})" if r["orders"][o]["n_runs"] > 1 else ""))
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        for share in GAIN_SHARES:
            cells = []
            for o in orders:
                v = r["orders"][o]["reviews_to_gain"][share]
                edits = [e for e in r["orders"][o]["edits_to_gain"][share] if e is not None]
                if v["mean"] is None:
                    cells.append("not reached")
                else:
                    sd = f" ± {v['sd']:.0f}" if r["orders"][o]["n_runs"] > 1 else ""
                    cells.append(f"{v['mean']:.0f}{sd} ({np.mean(edits):.0f} edits)")
            lines.append(f"| reviews to {int(share * 100)} % of the gain | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="development data folder (nuclei/val, em/train, em/val)")
    parser.add_argument("--sets", nargs="+", default=["nuclei", "em", "em-tuned"], choices=["nuclei", "em", "em-tuned"])
    parser.add_argument("--seeds", type=int, default=5, help="random orders")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each set (smoke runs)")
    parser.add_argument("--tta", action="store_true", help="add the score+tta order (4 segmentations per image)")
    parser.add_argument("--em-tuned-model", help="use this saved model for em-tuned instead of fine-tuning one (saves about a minute)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--md", help="write a markdown table here")
    args = parser.parse_args(argv)

    import cellrefine as cr

    data = Path(args.data)
    command = "python benchmarks/bench_review_next.py " + " ".join(sys.argv[1:] if argv is None else argv)
    info = machine_info()
    results = []
    for name in args.sets:
        started = time.perf_counter()
        model = cr.load_model()
        finetune_s = None
        if name == "em-tuned" and args.em_tuned_model:
            model = cr.load_model(args.em_tuned_model)
        elif name == "em-tuned":
            train = load_folder(data / "em" / "train")[:2]
            t = time.perf_counter()
            model = cr.finetune(model, [p[0] for p in train], [p[1] for p in train], device="cpu", seed=0)
            finetune_s = time.perf_counter() - t
        folder = data / ("nuclei" if name == "nuclei" else "em") / "val"
        pairs = load_folder(folder)[: args.limit]
        result = run_set(name, model, pairs, args.seeds, args.tta)
        result.update(finetune_s=finetune_s, total_s=time.perf_counter() - started, folder=str(folder))
        results.append(result)
        print(markdown([result], info, command).split("\n", 3)[-1], flush=True)
    out = {"benchmark": "review_next", "command": command, "machine": info, "results": results}
    emit_with_markdown(out, markdown(results, info, command), args.md, args.json)
    return out


if __name__ == "__main__":
    main()
