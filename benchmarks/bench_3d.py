"""3D stacks: the stitching mode vs the 3D mode, out of the box and after correcting a few slices.

    python benchmarks/bench_3d.py --data ../shared/data/stacks --json out.json [--model nuclei]

For every ``.npz`` stack in the folder (``image``, ``labels``; cells3d's labels
are automatic, not manual; StarDist's are synthetic):

* out of the box: ``cr.segment`` with ``stack_mode="stitch"`` and ``"3d"``,
  3D object F1@0.5, F1@0.75, mean F1 over IoU 0.5-0.9, merges/splits, wall
  time and the process's peak RSS above the baseline (psutil sampler);
* after correcting slices: the truth of a few slices, each fully reviewed
  (as a user who corrects whole slices), fine-tunes the model with default
  settings (``cr.finetune(..., scale=...)``, 150 steps); wall time of the
  fine-tuning (preparation, training, scoring and calibration); then both
  modes again. Two correction sets: three XY slices (Z = 1/4, 1/2, 3/4 of the
  stack), and one slice per orientation (XY, XZ, YZ through the middle).

Voxel sizes: cells3d (0.29, 0.26, 0.26) µm (scikit-image's ``cells3d``
documentation); the synthetic stack is isotropic.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import PeakSampler, emit, machine_info, rss

SCALES = {"cells3d_nuclei": (0.29, 0.26, 0.26), "stardist_synthetic3d": (1.0, 1.0, 1.0)}


def scored(image, labels, model, mode: str, scale) -> dict:
    import cellrefine as cr
    from cellrefine.metrics import object_scores

    baseline = rss()
    with PeakSampler() as memory:
        started = time.perf_counter()
        seg = cr.segment(image, model, axes="ZYX", device="cpu", stack_mode=mode, scale=scale)
        seconds = time.perf_counter() - started
    scores = object_scores(labels, seg.instances)
    return {
        "mode": seg.stack_mode,
        "objects": int(seg.instances.max()),
        "f1_050": scores["f1"][0],
        "f1_075": scores["f1"][5],
        "mean_f1": scores["mean_f1"],
        "merges": scores["merges"],
        "splits": scores["splits"],
        "seconds": seconds,
        "extra_rss_mib": (memory.peak - baseline) / 2**20,
    }


def correction_mask(shape, kind: str) -> tuple[np.ndarray, list]:
    """The reviewed mask of whole corrected slices, and their description."""
    n_z, n_y, n_x = shape
    mask = np.zeros(shape, bool)
    if kind == "3 XY slices":
        slices = [("z", n_z // 4), ("z", n_z // 2), ("z", 3 * n_z // 4)]
    else:
        slices = [("z", n_z // 2), ("y", n_y // 2), ("x", n_x // 2)]
    for axis, index in slices:
        key = {"z": (index, slice(None), slice(None)), "y": (slice(None), index, slice(None)), "x": (slice(None), slice(None), index)}[axis]
        mask[key] = True
    return mask, [f"{axis}={index}" for axis, index in slices]


def run(folder: Path, model_name: str | None, corrections: list[str]) -> dict:
    import cellrefine as cr

    model = cr.load_model(model_name)
    results = {}
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            image, labels = data["image"], data["labels"]
        scale = SCALES.get(path.stem, (1.0, 1.0, 1.0))
        entry = {"shape": list(image.shape), "truth_objects": int(len(np.unique(labels)) - 1), "scale": scale}
        entry["out_of_the_box"] = {mode: scored(image, labels, model, mode, scale) for mode in ("stitch", "3d")}
        for kind in corrections:
            mask = correction_mask(image.shape, kind)[0]
            started = time.perf_counter()
            tuned = cr.finetune(model, image, labels, masks=mask, axes="ZYX", scale=scale, device="cpu")
            seconds = time.perf_counter() - started
            entry[kind] = {
                "slices": correction_mask(image.shape, kind)[1],
                "finetune_seconds": seconds,
                "steps": tuned.config["provenance"][-1].get("steps"),
                "after": {mode: scored(image, labels, tuned, mode, scale) for mode in ("stitch", "3d")},
            }
        results[path.stem] = entry
    return results


def markdown(result: dict) -> str:
    lines = [
        "| stack | corrections | mode | objects (truth) | 3D F1@0.5 | F1@0.75 | mean F1 | time | extra RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["stacks"].items():
        rows = [("none", entry["out_of_the_box"], None)]
        rows += [(kind, value["after"], value) for kind, value in entry.items() if isinstance(value, dict) and "after" in value]
        for kind, modes, info in rows:
            label = kind if info is None else f"{kind} ({', '.join(info['slices'])}; fine-tuning {info['finetune_seconds']:.0f} s)"
            for mode, s in modes.items():
                lines.append(
                    f"| {name} | {label} | {mode} | {s['objects']} ({entry['truth_objects']}) | {s['f1_050']:.3f} | {s['f1_075']:.3f} | "
                    f"{s['mean_f1']:.3f} | {s['seconds']:.1f} s | {s['extra_rss_mib']:.0f} MiB |"
                )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/stacks")
    parser.add_argument("--model", default=None, help="bundled model name or path (default: nuclei)")
    parser.add_argument("--corrections", nargs="*", default=["3 XY slices", "XY + XZ + YZ"], choices=["3 XY slices", "XY + XZ + YZ"])
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), "stacks": run(Path(args.data), args.model, args.corrections)}
    result["markdown"] = markdown(result)
    emit(result, args.json, echo=False)
    print(result["markdown"])


if __name__ == "__main__":
    main()
