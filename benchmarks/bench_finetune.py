"""Fine-tuning speed: seconds to EM F1@0.5 >= 0.6, steps per second, and where a step's time goes.

    python benchmarks/bench_finetune.py --data ../shared/data --json out.json

Fine-tunes the bundled nuclei model on the first ``--n-train`` ISBI-2012 EM
training slices (full labels) with ``cellrefine.iter_finetune`` (default
settings) and, at steps 5, 10, ... 125 (``EVAL_STEPS``), scores a snapshot on
``em/val`` (F1 at IoU 0.5). Evaluation happens while the generator is paused and is
not counted: ``train_s`` is the time spent inside the generator only. The
snapshots carry the parent's watershed thresholds; the final model has them
re-calibrated on the training slices (as every ``finetune`` does), so each
checkpoint is also scored after the same calibration (its cost, a few
seconds, is added to that checkpoint's time-to-target).

The step-time split (:func:`step_split`): ``step_s`` (median time of an
``optimize`` step with its real data path, batch wait included),
``compute_s`` (the same ``optimize`` fed one cached batch and no
augmentation: forward + loss + backward + AdamW alone) and ``batch_s``
(drawing and augmenting one batch alone, which the prefetch thread overlaps
with the previous step). compute / step is the share of a step spent in
forward/backward.
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


def step_split(model, images, labels, settings, steps: int = 10, rounds: int = 2) -> dict:
    """Step time of ``optimize`` with its real data path vs with batches that cost nothing.

    Both runs go through ``cellrefine.training.optimize`` (same network
    layout, optimizer, loss and prefetch thread). In the second, the sampler
    returns one cached batch and ``augment`` returns it unchanged, so its step
    time is the forward/backward/AdamW time alone; their ratio is the share
    of a step spent in forward/backward. ``batch_s`` is drawing + augmenting
    one batch on its own (what the prefetch thread overlaps).
    """
    import torch

    from cellrefine import training

    planes = training._collect_planes(images, labels, None, None, "instances", model)
    samples = [training.prepare_sample(image, label, mask, "instances", None, settings) for image, label, mask in planes]
    device = torch.device("cpu")
    real_augment = training.augment

    def sampler():
        return training._Sampler(samples, settings.crop_size, np.random.default_rng(0))

    # one batch as optimize would make it, timed alone
    generator = torch.Generator().manual_seed(0)
    draw = sampler()
    timings = []
    for _ in range(steps):
        started = time.perf_counter()
        parts = draw.batch(settings.batch_size)
        cached = real_augment(
            torch.from_numpy(parts[0]), torch.from_numpy(parts[1].astype(np.int64)), torch.from_numpy(parts[2]), generator, settings.elastic
        )
        timings.append(time.perf_counter() - started)
    batch_s = float(np.median(timings))

    class CachedSampler:
        def batch(self, n):
            return parts

    def run(free_data: bool) -> float:
        network = copy.deepcopy(model.network)
        if free_data:
            training.augment = lambda *args, **kwargs: tuple(t.clone() for t in cached[:3]) + ((None,) if kwargs.get("teacher") is not None else ())
        try:
            times = [seconds for _, _, seconds in training.optimize(network, CachedSampler() if free_data else sampler(), settings, device, steps)]
        finally:
            training.augment = real_augment
        return float(np.median(times[2:]))  # the first steps warm up

    real, free = [], []
    for _ in range(rounds):
        real.append(run(False))
        free.append(run(True))
    step_s, compute_s = float(np.median(real)), float(np.median(free))
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
    import torch

    import cellrefine as cr
    from cellrefine.training import FinetuneSettings, calibrate_postprocess

    model = cr.load_model(model_path)
    train = load_folder(Path(data) / "em" / "train")[:n_train]
    val = load_folder(Path(data) / "em" / "val")
    images, labels = [t[0] for t in train], [t[1] for t in train]
    before = score(val, segmenter(model, "cpu"))
    settings = FinetuneSettings(validate_every=validate_every)
    from cellrefine.training import _collect_planes

    planes = _collect_planes(images, labels, None, None, "instances", model)

    eval_steps = set(eval_steps)
    generator = cr.iter_finetune(model, images, labels, steps=steps, device="cpu", validate_every=validate_every)
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
        if update.step in eval_steps and update.step < update.total:
            snapshot = update.model or update.snapshot()  # copies taken while the generator is paused: not timed
            raw = score(val, segmenter(snapshot, "cpu"))
            started = time.perf_counter()
            chosen, _ = calibrate_postprocess(snapshot.network, planes, torch.device("cpu"), snapshot.config.get("postprocess", {}))
            calibration_s = time.perf_counter() - started
            calibrated_model = snapshot
            calibrated_model.config["postprocess"] = chosen
            calibrated = score(val, segmenter(calibrated_model, "cpu"))
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
    print(f"finetune final ({record['steps']} steps): {train_s:.1f} s, val F1@0.5 {after['f1'][0]:.3f}", flush=True)
    reached = [c for c in checkpoints if c["val_f1_50"] >= target]
    stays = None  # first checkpoint from which every later one is at or above the target
    for k, c in enumerate(checkpoints):
        if all(later["val_f1_50"] >= target for later in checkpoints[k:]):
            stays = c
            break
    split = step_split(model, images, labels, settings)
    return {
        "train_images": [t[2] for t in train],
        "steps": record["steps"],
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k in ("batch_size", "crop_size", "learning_rate", "validate_every")},
        "finetune_seconds": train_s,
        "steps_per_second": record["steps"] / train_s,
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
        "step_split": split,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--n-train", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default: the library default (150 on CPU)")
    parser.add_argument("--validate-every", type=int, default=25)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--model", default=None)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), "finetune": run(args.data, args.n_train, args.steps, args.target, args.validate_every, args.model)}
    emit(result, args.json)


if __name__ == "__main__":
    main()
