"""Fine-tuning: speed on EM, time to the first step, the correction contract on real images, bounded scoring.

    python benchmarks/bench_finetune.py --data ../shared/data --json out.json            # EM + first step
    python benchmarks/bench_finetune.py --data ../shared/data --contract --bounded       # + contract, bounded cost

``finetune`` (EM): fine-tunes the bundled nuclei model on the first
``--n-train`` ISBI-2012 EM training slices (full labels) with
``cellrefine.iter_finetune`` (default settings) and, at steps 5, 10, ... 125
(``EVAL_STEPS``), scores a snapshot on ``em/val`` (F1 at IoU 0.5). Evaluation
happens while the generator is paused and is not counted: ``train_s`` is the
time spent inside the generator only. Snapshots carry the parent's thresholds;
the final model has them re-calibrated (as every ``finetune`` does), so each
checkpoint is also scored after the same calibration (its cost is added to
that checkpoint's time-to-target). ``step_split`` compares a training step
with its real data path to forward + loss + backward + AdamW alone on one
cached batch.

``first_step``: the bundled 4 x 520 x 696 sample, a few objects corrected on
one plane (3 erased, 2 painted, 8-pixel margin), as after pressing Fine-tune
in napari: seconds from the call to the first ``"preparing"`` update and to
the first training step, and the step rate after it; then the same with every
plane fully labelled (every labelled plane counts as reviewed).

``contract`` (``--contract``): on the first ``--contract-images`` images of
``--contract-folder`` (default nuclei/val, held apart from training): the
model's instances with false objects (no ground-truth match at IoU 0.5)
erased and missed ones (ground-truth objects without a match, of at least
100 pixels) painted,
reviewed = the edited objects plus an 8-pixel margin; one default fine-tune
per image, then re-segmentation. Pass: >= 80 % of corrected objects right
and >= 95 % of unreviewed objects kept, in <= 120 s per image on 2 cores.

``bounded`` (``--bounded``): full labels on every image of ``cells/train``
(35 x 1022 x 1024) for ``--bounded-steps`` steps: preparation, training,
checkpoint-scoring and final (evaluation + calibration) seconds; scoring and
the final phase should each stay near or under 10 % of the training time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
from _common import emit, machine_info
from evaluate import load_folder, score, segmenter
from scipy import ndimage as ndi


def step_split(model, images, labels, settings, steps: int = 10, rounds: int = 2) -> dict:
    """Step time of ``optimize`` with its real data path vs forward + loss + backward + AdamW on one cached batch.

    ``batch_s`` is drawing + augmenting one batch on its own (what the
    prefetch thread overlaps with the previous step).
    """
    import torch

    from cellrefine.training import (
        Sampler,
        SampleSet,
        augment,
        collect_planes,
        freeze_batchnorm,
        optimize,
        training_autocast_dtype,
        weighted_loss,
    )

    device = torch.device("cpu")
    settings = dataclasses.replace(settings, steps=steps)
    planes = collect_planes(images, labels, None, None, "instances", model)
    samples = SampleSet(planes, "instances", settings)
    for i in range(len(samples)):
        samples[i]  # prepared up front: not part of a step

    def sampler():
        return Sampler(samples, settings.crop_size, np.random.default_rng(0), context_crops=settings.context_crops)

    generator = torch.Generator().manual_seed(0)
    draw = sampler()
    timings = []
    for _ in range(steps):
        started = time.perf_counter()
        parts = draw.batch(settings.batch_size)
        cached = augment(
            torch.from_numpy(parts[0]), torch.from_numpy(parts[1].astype(np.int64)), torch.from_numpy(parts[2]), generator, settings.elastic
        )
        timings.append(time.perf_counter() - started)
    batch_s = float(np.median(timings))

    def compute_only() -> float:
        network = copy.deepcopy(model.network).to(device).to(memory_format=torch.channels_last).train()
        if settings.freeze_norm:
            freeze_batchnorm(network)
        optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True)
        amp = training_autocast_dtype(device, settings.precision)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                logits = network(cached[0])
            loss = weighted_loss(logits, cached[1], cached[2], settings.dice)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())
            times.append(time.perf_counter() - started)
        return float(np.median(times[2:]))

    def real() -> float:
        network = copy.deepcopy(model.network)
        return float(np.median([s.seconds for s in optimize(network, sampler(), settings, device)][2:]))

    real_s, free_s = [], []
    for _ in range(rounds):
        real_s.append(real())
        free_s.append(compute_only())
    step_s, compute_s = float(np.median(real_s)), float(np.median(free_s))
    return {
        "step_s": step_s,
        "compute_s": compute_s,
        "batch_s": batch_s,
        "compute_share_of_step": compute_s / step_s,
        "batch_share_if_serial": batch_s / (batch_s + compute_s),
        "steps_per_round": steps,
        "rounds": rounds,
    }


EVAL_STEPS = (5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 125)


def run(
    data, n_train: int = 2, steps: int | None = None, target: float = 0.6, validate_every: int = 25, model_path=None, eval_steps=EVAL_STEPS
) -> dict:
    """The EM fine-tune: val F1 along the run, seconds to the target, step split."""
    import torch

    import cellrefine as cr
    from cellrefine.tiling import predict_probabilities
    from cellrefine.training import FinetuneSettings, calibrate_postprocess, collect_planes
    from cellrefine.training.calibrate import calibration_references

    model = cr.load_model(model_path)
    train = load_folder(Path(data) / "em" / "train")[:n_train]
    val = load_folder(Path(data) / "em" / "val")
    images, labels = [t[0] for t in train], [t[1] for t in train]
    before = score(val, segmenter(model, "cpu"))
    settings = FinetuneSettings(validate_every=validate_every, **({"steps": steps} if steps else {}))
    planes = collect_planes(images, labels, None, None, "instances", model)
    eval_steps = set(eval_steps)
    generator = cr.iter_finetune(model, images, labels, device="cpu", settings=settings)
    train_s = 0.0
    checkpoints = []
    while True:
        started = time.perf_counter()
        try:
            update = next(generator)
        except StopIteration as stop:
            train_s += time.perf_counter() - started
            tuned = stop.value
            break
        train_s += time.perf_counter() - started
        if update.phase == "training" and update.step in eval_steps and update.step < update.total:
            snapshot = update.model or update.snapshot()  # copies taken while the generator is paused: not timed
            raw = score(val, segmenter(snapshot, "cpu"))
            started = time.perf_counter()
            probabilities = [predict_probabilities(snapshot.network, plane.image, device=torch.device("cpu")) for plane in planes]
            references = [calibration_references(plane.labels, None, None) for plane in planes]
            chosen, _ = calibrate_postprocess(probabilities, references, snapshot.config.get("postprocess", {}))
            calibration_s = time.perf_counter() - started
            snapshot.config["postprocess"] = chosen
            calibrated = score(val, segmenter(snapshot, "cpu"))
            checkpoints.append(
                {
                    "step": update.step,
                    "train_s": train_s,
                    "calibration_s": calibration_s,
                    "val_f1_50_uncalibrated": raw["f1"][0],
                    "val_f1_50": calibrated["f1"][0],
                    "val_mean_f1": calibrated["mean_f1"],
                }
            )
            print(f"finetune step {update.step}: {train_s:.1f} s, val F1@0.5 {calibrated['f1'][0]:.3f} (uncalibrated {raw['f1'][0]:.3f})", flush=True)
    after = score(val, segmenter(tuned, "cpu"))
    record = tuned.config["provenance"][-1]
    checkpoints.append(
        {
            "step": record["steps"],
            "train_s": train_s,
            "calibration_s": 0.0,
            "val_f1_50": after["f1"][0],
            "val_mean_f1": after["mean_f1"],
            "final": True,
        }
    )
    print(
        f"finetune final ({record['steps']} steps, checkpoint {record['checkpoint']['step']}): {train_s:.1f} s, val F1@0.5 {after['f1'][0]:.3f}",
        flush=True,
    )
    reached = [c for c in checkpoints if c["val_f1_50"] >= target]
    stays = next((c for k, c in enumerate(checkpoints) if all(later["val_f1_50"] >= target for later in checkpoints[k:])), None)
    return {
        "train_images": [t[2] for t in train],
        "steps": record["steps"],
        "checkpoint_step": record["checkpoint"]["step"],
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k in ("batch_size", "crop_size", "learning_rate", "validate_every")},
        "finetune_seconds": train_s,
        "training_seconds": record["training_seconds"],
        "preparation_seconds": record["preparation_seconds"],
        "steps_per_second": record["steps"] / record["training_seconds"],
        "val_f1_50_before": before["f1"][0],
        "val_f1_50_after": after["f1"][0],
        "val_mean_f1_before": before["mean_f1"],
        "val_mean_f1_after": after["mean_f1"],
        "target_f1_50": target,
        "seconds_to_target": (reached[0]["train_s"] + reached[0]["calibration_s"]) if reached else None,
        "steps_to_target": reached[0]["step"] if reached else None,
        "seconds_to_stay_above_target": (stays["train_s"] + stays["calibration_s"]) if stays else None,
        "steps_to_stay_above_target": stays["step"] if stays else None,
        "checkpoints": checkpoints,
        "step_split": step_split(model, images, labels, settings),
        "torch_threads": torch.get_num_threads(),
    }


def timed_run(generator, steps_after_first: int = 10) -> dict:
    """Seconds to the first update, to the first training step, and the step rate over the next steps; closes the generator."""
    started = time.perf_counter()
    first = next(generator)
    first_update_s = time.perf_counter() - started
    update = first
    while update.phase != "training":
        update = next(generator)
    first_step_s = time.perf_counter() - started
    for _ in range(steps_after_first):
        update = next(generator)
    rate = steps_after_first / (time.perf_counter() - started - first_step_s)
    generator.close()
    return {
        "first_update_s": round(first_update_s, 3),
        "first_update_message": first.message,
        "first_step_s": round(first_step_s, 3),
        "steps_per_second": round(rate, 3),
        "reported_steps_per_second": round(update.metrics["steps_per_second"], 3),
        "reported_preparation_s": round(update.metrics["preparation_seconds"], 3),
    }


def first_step(model_path=None, steps_after_first: int = 10) -> dict:
    """Time to the first step on the bundled sample: a few corrections on one plane, then every plane labelled."""
    import cellrefine as cr
    from cellrefine.data import load_sample_nuclei
    from cellrefine.training import reviewed_mask_from_labelled_planes

    stack = load_sample_nuclei()
    model = cr.load_model(model_path)
    instances = cr.segment(stack, model=model, axes="TYX", device="cpu").instances.astype(np.int32)
    labels = instances.copy()
    plane = labels[0]
    rng = np.random.default_rng(0)
    erase = rng.choice(np.unique(plane)[1:], 3, replace=False)
    edited = np.isin(plane, erase)
    plane[edited] = 0
    yy, xx = np.mgrid[: plane.shape[0], : plane.shape[1]]
    painted = 0
    for cy, cx in rng.integers(30, min(plane.shape) - 30, size=(200, 2)):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2
        if painted < 2 and not (instances[0][disc] > 0).any():
            plane[disc] = int(instances.max()) + 1 + painted
            edited |= disc
            painted += 1
    mask = np.zeros(stack.shape, bool)
    mask[0] = ndi.binary_dilation(edited, iterations=8)
    few = timed_run(cr.iter_finetune(model, [stack], [labels], [mask], axes="TYX", device="cpu"), steps_after_first)
    full_mask = reviewed_mask_from_labelled_planes(instances, "TYX")
    full = timed_run(cr.iter_finetune(model, [stack], [instances], [full_mask], axes="TYX", device="cpu"), steps_after_first)
    return {"image_shape": list(stack.shape), "few_corrections": {**few, "reviewed_pixels": int(mask.sum())}, "all_planes_labelled": full}


def corrections_from_truth(parent: np.ndarray, truth: np.ndarray, margin: int = 8, min_area: int = 100) -> tuple[np.ndarray, np.ndarray, int]:
    """Corrected labels and reviewed mask as a user would paint them: false objects erased, missed ones painted.

    Missed ground-truth objects under ``min_area`` pixels (specks and
    fragments of the annotation; with 2-pixel boundary targets they have no
    interior to seed a watershed, so no model of this design can produce
    them) are not painted; their number is returned third.
    """
    from cellrefine.metrics.matching import match_pairs, overlap_table

    table = overlap_table(truth.astype(np.int64), parent.astype(np.int64))
    pairs = match_pairs(table, 0.5)
    false_ids = np.setdiff1d(table.pred_ids, table.pred_ids[table.cols[pairs]])
    missed_ids = np.setdiff1d(table.true_ids, table.true_ids[table.rows[pairs]])
    small = table.true_area[np.searchsorted(table.true_ids, missed_ids)] < min_area
    missed_ids, skipped = missed_ids[~small], int(small.sum())
    corrected = parent.astype(np.int32).copy()
    edited = np.isin(parent, false_ids)
    corrected[edited] = 0
    next_id = int(parent.max()) + 1
    for k, i in enumerate(missed_ids):
        obj = truth == i
        corrected[obj] = next_id + k
        edited |= obj
    return corrected, ndi.binary_dilation(edited, iterations=margin), skipped


def contract(data, folder: str = "nuclei/val", n_images: int = 3, steps: int | None = None, model_path=None) -> dict:
    """The correction contract on real images (see the module docstring)."""
    import cellrefine as cr
    from cellrefine.metrics import correction_scores
    from cellrefine.training import finetune_summary

    model = cr.load_model(model_path)
    rows = []
    for image, truth, name in load_folder(Path(data) / folder)[:n_images]:
        parent = cr.segment(image, model=model, device="cpu").instances
        corrected, reviewed, skipped = corrections_from_truth(parent, truth)
        started = time.perf_counter()
        tuned = cr.finetune(model, [image], [corrected], [reviewed], device="cpu", **({"steps": steps} if steps else {}))
        seconds = time.perf_counter() - started
        after = correction_scores(parent, corrected, reviewed, cr.segment(image, model=tuned, device="cpu").instances)
        right = after["corrected_right"] / max(after["corrected"], 1)
        kept = after["unreviewed_kept"] / max(after["unreviewed"], 1)
        rows.append(
            {
                "image": name,
                "shape": list(truth.shape),
                "missed_specks_not_painted": skipped,
                "seconds": round(seconds, 1),
                **after,
                "corrected_right_share": round(right, 3),
                "unreviewed_kept_share": round(kept, 3),
                "passes": bool(right >= 0.8 and kept >= 0.95 and seconds <= 120),
                "summary": finetune_summary(tuned),
            }
        )
        print(
            f"contract {name}: {after['corrected_right']}/{after['corrected']} corrected right, {after['unreviewed_kept']}/{after['unreviewed']} kept, {seconds:.0f} s",
            flush=True,
        )
    return {"folder": folder, "images": rows, "all_pass": all(r["passes"] for r in rows)}


def bounded(data, steps: int = 100, model_path=None) -> dict:
    """Full labels on every cells/train image: where the time goes (preparation, training, scoring, final phase)."""
    import cellrefine as cr

    model = cr.load_model(model_path)
    pairs = load_folder(Path(data) / "cells" / "train")
    generator = cr.iter_finetune(model, [p[0] for p in pairs], [p[1] for p in pairs], device="cpu", steps=steps)
    started = time.perf_counter()
    last_training = first_step_s = None
    while True:
        try:
            update = next(generator)
        except StopIteration as stop:
            tuned = stop.value
            break
        if update.phase == "training":
            last_training = time.perf_counter()
            first_step_s = first_step_s or last_training - started
    total = time.perf_counter() - started
    record = tuned.config["provenance"][-1]
    final_s = total - (last_training - started)
    return {
        "images": len(pairs),
        "steps": record["steps"],
        "first_step_s": round(first_step_s, 2),
        "seconds": round(total, 1),
        "preparation_s": record["preparation_seconds"],
        "training_s": record["training_seconds"],
        "scoring_s": record["scoring_seconds"],
        "final_phase_s": round(final_s, 1),
        "scoring_share_of_training": round(record["scoring_seconds"] / record["training_seconds"], 3),
        "final_share_of_training": round(final_s / record["training_seconds"], 3),
        "evaluated_planes": record["evaluated_planes"],
        "checkpoint": record["checkpoint"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--n-train", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="EM run steps (default: the library default, 150)")
    parser.add_argument("--validate-every", type=int, default=25)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--model", default=None)
    parser.add_argument("--skip-em", action="store_true", help="skip the EM run")
    parser.add_argument("--contract", action="store_true", help="also run the correction contract on real images")
    parser.add_argument("--contract-folder", default="nuclei/val")
    parser.add_argument("--contract-images", type=int, default=3)
    parser.add_argument("--bounded", action="store_true", help="also measure the scoring/final-phase share on cells/train")
    parser.add_argument("--bounded-steps", type=int, default=100)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), "first_step": first_step(args.model)}
    if not args.skip_em:
        result["finetune"] = run(args.data, args.n_train, args.steps, args.target, args.validate_every, args.model)
    if args.contract:
        result["contract"] = contract(args.data, args.contract_folder, args.contract_images, model_path=args.model)
    if args.bounded:
        result["bounded"] = bounded(args.data, args.bounded_steps, args.model)
    emit(result, args.json)


if __name__ == "__main__":
    main()
