"""Train a CellRefine model from scratch on a folder of ``.npz`` image/label pairs.

This is how the bundled nuclei model is made::

    python -m cellrefine.train ../shared/data/nuclei/train -o runs/nuclei_v1 --steps 3500

Each ``.npz`` holds ``image`` (YX, or YXC with C = 3/4 for RGB(A)) and
``labels`` (YX instance ids). Images are averaged over their channels,
percentile-normalised per image (1-99.8 %), and turned into cell / boundary /
background targets with the U-Net border weight map (w0 = 10, sigma = 5 px).
A checkpoint is written every ``--save-every`` steps (``step_NNNNN.safetensors``)
and at the end (``final.safetensors``); pick among them with
``benchmarks/evaluate.py`` on a validation folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("cellrefine.train")


def load_npz_folder(folder) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Read every ``*.npz`` in ``folder`` as ``(image, labels, name)`` (no pickles)."""
    pairs = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            pairs.append((data["image"], data["labels"], path.stem))
    if not pairs:
        raise FileNotFoundError(f"no .npz files in {folder}")
    return pairs


def grey_plane(image: np.ndarray) -> np.ndarray:
    """(Y, X) or (Y, X, C) → normalised (1, Y, X) float32.

    Colour channels are averaged (alpha dropped) and the grey image is
    percentile-normalised (1-99.8 %), through the same path as
    :func:`cellrefine.segment` (:func:`cellrefine.reader.normalised_plane`).
    """
    from .reader import normalised_plane

    image = np.asarray(image)
    return normalised_plane(image, "YXC" if image.ndim == 3 else "YX")


def main(argv=None) -> int:
    import torch

    from .model.io import Model
    from .targets import largest_piece_per_label
    from .training import Plane, Sampler, SampleSet, TrainSettings, optimize
    from .training.settings import WEIGHTINGS

    parser = argparse.ArgumentParser(prog="python -m cellrefine.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train_dir", help="folder of .npz image/label pairs")
    parser.add_argument("-o", "--output", required=True, help="folder for checkpoints")
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=192)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--weighting", choices=list(WEIGHTINGS), default="unet")
    parser.add_argument("--boundary-width", type=int, default=2, help="width in pixels of the boundary class at each object's edge")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--name", default="nuclei_v1")
    parser.add_argument("--init", help="start from this model's weights and architecture (a file, folder or bundled name) instead of random weights")
    parser.add_argument(
        "--largest-piece", action="store_true", help="keep only the largest connected piece of each labelled object (drops annotation specks)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        learning_rate=args.lr,
        weighting=args.weighting,
        boundary_width=args.boundary_width,
        freeze_norm=False,
        elastic=0.5,
        dice=0.5,
        changed_weight=1.0,
        seed=args.seed,
        precision=args.precision,
    ).validate()
    started = time.time()
    pairs = load_npz_folder(args.train_dir)
    if args.largest_piece:
        pairs = [(image, largest_piece_per_label(labels), name) for image, labels, name in pairs]
    samples = SampleSet([Plane(grey_plane(image), np.asarray(labels)) for image, labels, _ in pairs], "instances", settings)
    sampler = Sampler(samples, settings.crop_size, np.random.default_rng(args.seed), image_weights="uniform")  # every image equally likely
    if args.init:  # continue from a model: its architecture and weights (its post-processing and history are not carried over)
        from .model.io import load_model

        parent = load_model(args.init)
        model = Model(network=parent.network, config={"name": args.name, "architecture": parent.network.config()})
    else:
        architecture = {"in_channels": 1, "out_channels": 3, "depth": args.depth, "base_channels": args.base_channels, "norm": "batch"}
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the process's generator
            torch.manual_seed(args.seed)
            model = Model(config={"name": args.name, "architecture": architecture})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    losses = []
    record = {
        "kind": "train",
        "parent": (parent.name if args.init else None),
        "data": "/".join(Path(args.train_dir).resolve().parts[-2:]),
        "largest_piece": bool(args.largest_piece),
        "n_images": len(samples),
        "settings": dataclasses.asdict(settings),
        "steps": args.steps,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
    }
    for result in optimize(model.network, sampler, settings, device):
        step = result.step
        losses.append(result.loss)
        if step == 1:
            logger.info("prepared the samples in %.0f s", samples.preparation_seconds)
        if step % 50 == 0:
            logger.info("step %d/%d loss %.4f (%.0f s)", step, args.steps, float(np.mean(losses[-50:])), time.time() - started)
        if step % args.save_every == 0 or step == args.steps:
            model.network.eval()
            snapshot = model.copy()
            snapshot.config["provenance"] = [
                dict(
                    record,
                    steps=step,
                    seconds=round(time.time() - started),
                    loss_curve=[round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)],
                )
            ]
            snapshot.save(out / (f"step_{step:05d}.safetensors" if step != args.steps else "final.safetensors"))
            model.network.train()
    log = out / "train_log.json"
    partial = log.with_name(log.name + ".tmp")
    partial.write_text(json.dumps({"losses": losses, "seconds": time.time() - started}))
    os.replace(partial, log)  # never a half-written log
    logger.info("done in %.0f s", time.time() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
