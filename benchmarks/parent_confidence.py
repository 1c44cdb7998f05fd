"""How sure a bundled model is of itself, per domain: the signal behind ``TrainSettings.distill_confidence``.

    python benchmarks/parent_confidence.py --data ../shared/data
    python benchmarks/parent_confidence.py --data ../shared/data --model cells --domains cells/val nuclei/val

For the first ``--images`` images of each domain (default ``em/val`` and ``nuclei/val``):
``gate``, what fine-tuning compares with ``distill_confidence`` (the mean top-class probability
over the pixels whose top class is not boundary, ``cellrefine.training.samples.teacher_confidence``,
here over the whole image), the mean top-class probability over all pixels, the share of pixels
whose top class has probability >= 0.9, the normalised entropy, and ``foreground_recall``: the
share of the true objects' pixels the model calls cell or boundary (a candidate for telling
"confidently empty" from "at home", which ``gate`` cannot: a model that predicts background
everywhere is confident too). Distillation (keeping the
parent's predictions on unreviewed pixels) is only worth it where the parent is in its own domain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import emit, machine_info

import cellrefine as cr
from cellrefine.training.samples import teacher_confidence


def confidence(probabilities: np.ndarray) -> dict:
    """Mean top-class probability, share of pixels at >= 0.9 and mean normalised entropy of (3, Y, X) probabilities."""
    p = probabilities.astype(np.float32)
    top = p.max(axis=0)
    entropy = -(p * np.log(np.clip(p, 1e-6, 1))).sum(axis=0) / np.log(p.shape[0])
    gate = teacher_confidence(p, np.ones(top.shape, bool))
    return {"gate": round(gate, 4), "mean_top": float(top.mean()), "share_top_0.9": float(np.mean(top >= 0.9)), "mean_entropy": float(entropy.mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--model", default=None, help="a bundled name or a file (default: the default bundled model)")
    parser.add_argument("--domains", nargs="+", default=["em/val", "nuclei/val"], help="folders under --data")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    model = cr.load_model(args.model)
    result = {"machine": machine_info(), "domains": {}}
    for domain in args.domains:
        rows = []
        for path in sorted((args.data / domain).glob("*.npz"))[: args.images]:
            with np.load(path, allow_pickle=False) as data:
                image, labels = data["image"], data["labels"]
            segmentation = cr.segment(image, model=model, axes="YXC" if image.ndim == 3 else "YX", return_probabilities=True)
            probabilities = np.asarray(segmentation.probabilities)
            recall = float((probabilities.argmax(axis=0) != 0)[labels > 0].mean())
            rows.append({"image": path.name, **confidence(probabilities), "foreground_recall": round(recall, 4)})
        result["domains"][domain] = rows
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
