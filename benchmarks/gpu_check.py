"""GPU check: one short run that proves the CUDA path (under 5 minutes on a GPU).

    python benchmarks/gpu_check.py                       # CUDA, full sizes, ../shared/data when present
    python benchmarks/gpu_check.py --json gpu_check.json # also write the report
    python benchmarks/gpu_check.py --device cpu --quick  # the same checks at toy sizes (tests/test_gpu_check.py)

What it measures (format: docs/benchmarks.md, "GPU check"):

1. Throughput: ``cr.segment`` of a 2048² plane and a 64×1024² stack (end to end,
   watershed included; the plane also network-only through
   ``cellrefine.tiling.predict_probabilities``), in float32 and with
   ``precision="auto"`` (bf16 autocast on GPUs that support it, else fp16),
   with the peak GPU memory of each run.
2. Agreement: object F1 of float32 vs autocast on ``nuclei/val`` (against the
   ground truth; the two must agree within 0.002), or, without the data, on
   the bundled sample (autocast instances scored against float32 ones).
3. Fine-tuning the EM case (``em/train`` 2 slices, default steps, scored on
   ``em/val``), when the data is there.

Images are tiled from real nuclei images (``nuclei/val``, else the bundled
sample), so the watershed sees realistic object counts. The report is printed
as text, then as one line of JSON (the last line); ``--json`` writes it too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPORT_FORMAT = "cellrefine-gpu-check"
REPORT_VERSION = 1
TOLERANCE = 0.002
BUDGET_SECONDS = 300
FULL = {"plane": (2048, 2048), "stack": (64, 1024, 1024), "agreement_images": None, "em_train": 2, "em_val": None, "steps": None}
QUICK = {
    "plane": (256, 256),
    "stack": (3, 128, 128),
    "agreement_images": 2,
    "agreement_crop": 256,
    "em_train": 1,
    "em_val": 1,
    "steps": 3,
    "crop": 128,
}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cpu or auto")
    parser.add_argument(
        "--quick", action="store_true", help="toy sizes (256² plane, 3×128² stack, 3 fine-tune steps): checks the script, not the GPU"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="development data (nuclei/val, em/train, em/val); default ../shared/data")
    parser.add_argument("--model", default=None, help="model to check (default: the bundled one)")
    parser.add_argument("--json", help="also write the report here (indented JSON)")
    return parser.parse_args(argv)


def load_pairs(folder: Path, limit=None, crop=None) -> list:
    """``(image, labels, name)`` of the ``.npz`` files in ``folder`` (first ``limit``; top-left ``crop``² when given)."""
    pairs = []
    for path in sorted(folder.glob("*.npz"))[:limit]:
        with np.load(path, allow_pickle=False) as data:
            image, labels = data["image"], data["labels"]
        if crop:
            image, labels = image[:crop, :crop], labels[:crop, :crop]
        pairs.append((image, labels, path.stem))
    return pairs


def tiled(sources: list, shape: tuple, seed: int = 0, block: int = 512) -> np.ndarray:
    """A ``shape`` uint16 array tiled from random ``block``² crops of the 2D grey ``sources``."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint16)
    for plane in out.reshape((-1,) + shape[-2:]):
        for y in range(0, shape[-2], block):
            for x in range(0, shape[-1], block):
                source = sources[int(rng.integers(len(sources)))]
                h, w = min(block, shape[-2] - y, source.shape[0]), min(block, shape[-1] - x, source.shape[1])
                oy, ox = int(rng.integers(0, source.shape[0] - h + 1)), int(rng.integers(0, source.shape[1] - w + 1))
                plane[y : y + h, x : x + w] = source[oy : oy + h, ox : ox + w]
    return out


def device_info(device) -> dict:
    import torch

    import cellrefine
    from cellrefine.device import autocast_dtype, inference_dtypes

    weights, amp = inference_dtypes(device, "auto")
    auto = str(amp or weights).replace("torch.", "")
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if cuda else None,
        "autocast": str(autocast_dtype(device)).replace("torch.", "") if cuda else None,
        "auto_precision": auto,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cellrefine": cellrefine.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def measured(device, fn, /, *args, **kwargs):
    """``(result, seconds, peak GPU memory in MiB or None)`` of ``fn(*args, **kwargs)``."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None
    return result, seconds, peak


def check_throughput(model, device, sizes: dict, sources: list) -> list:
    import cellrefine as cr
    from cellrefine.reader import PlaneReader
    from cellrefine.tiling import predict_probabilities

    rows = []
    for precision in ("float32", "auto"):
        cr.segment(tiled(sources, (256, 256), seed=9), model=model, device=device, precision=precision)  # warm-up: kernels, cached copies
        for name, shape in (("plane", sizes["plane"]), ("stack", sizes["stack"])):
            image = tiled(sources, shape, seed=1)
            axes = "YX" if len(shape) == 2 else "ZYX"
            segmentation, seconds, peak = measured(device, cr.segment, image, model=model, axes=axes, device=device, precision=precision)
            row = {
                "name": name,
                "shape": list(shape),
                "precision": precision,
                "seconds": round(seconds, 3),
                "megapixels_per_second": round(image.size / 1e6 / seconds, 2),
                "peak_gpu_memory_mib": peak,
                "objects": int(segmentation.instances.max()),
            }
            if name == "plane":
                plane = PlaneReader(image, axes, model).plane(0, 0)
                _, network_seconds, network_peak = measured(device, predict_probabilities, model.network, plane, device=device, precision=precision)
                row.update(network_seconds=round(network_seconds, 3), network_megapixels_per_second=round(image.size / 1e6 / network_seconds, 2))
                row["network_peak_gpu_memory_mib"] = network_peak
            rows.append(row)
    return rows


def _scores(pairs, predict) -> dict:
    from cellrefine.metrics import aggregate, object_scores

    result = aggregate([object_scores(truth, predict(image, truth)) for image, truth, _ in pairs])
    return {"f1_at_0.5": round(result["f1"][0], 4), "mean_f1": round(result["mean_f1"], 4), "n_true": result["n_true"], "n_pred": result["n_pred"]}


def check_agreement(model, device, data: Path, sizes: dict, sample: np.ndarray) -> dict:
    import cellrefine as cr

    folder = data / "nuclei" / "val"
    limit, crop = sizes["agreement_images"], sizes.get("agreement_crop")
    pairs = load_pairs(folder, limit, crop) if folder.is_dir() else []

    def predict(precision):
        return lambda image, truth: (
            cr.segment(image, model=model, axes="YXC" if image.ndim == 3 else "YX", device=device, precision=precision).instances
        )

    if pairs:
        source, reference = f"nuclei/val ({len(pairs)} images)", "ground truth"
        scores = {"float32": _scores(pairs, predict("float32")), "auto": _scores(pairs, predict("auto"))}
        first = pairs[0][0]
    else:
        fields = sample[:limit, :crop, :crop]
        source, reference = f"bundled sample ({len(fields)} fields; no nuclei/val under {data})", "float32 instances"
        references = [cr.segment(field, model=model, axes="YX", device=device, precision="float32").instances for field in fields]
        pairs = [(field, truth, str(index)) for index, (field, truth) in enumerate(zip(fields, references))]
        scores = {"float32": {"f1_at_0.5": 1.0, "mean_f1": 1.0}, "auto": _scores(pairs, predict("auto"))}
        first = fields[0]
    probabilities = [
        cr.segment(first, model=model, device=device, precision=precision, return_probabilities=True).probabilities.astype(np.float32)
        for precision in ("float32", "auto")
    ]
    difference = {key: round(abs(scores["float32"][key] - scores["auto"][key]), 4) for key in ("f1_at_0.5", "mean_f1")}
    # against ground truth both F1s must agree; against the float32 instances only F1@0.5 is held to it (IoU 0.9 moves with a pixel)
    held = ("f1_at_0.5", "mean_f1") if reference == "ground truth" else ("f1_at_0.5",)
    return {
        "source": source,
        "reference": reference,
        **scores,
        "difference": difference,
        "tolerance": TOLERANCE,
        "within_tolerance": all(difference[key] <= TOLERANCE for key in held),
        "judged": sizes is not QUICK,  # a few toy images: one object is worth more than the tolerance
        "max_probability_difference": round(float(np.abs(probabilities[0] - probabilities[1]).max()), 4),
    }


def check_finetune(model, device, data: Path, sizes: dict) -> dict:
    import cellrefine as cr
    from cellrefine.training import finetune_summary

    train_folder, val_folder = data / "em" / "train", data / "em" / "val"
    if not (train_folder.is_dir() and val_folder.is_dir()):
        return {"skipped": f"no em/train and em/val under {data}"}
    crop = sizes.get("crop")
    train = load_pairs(train_folder, sizes["em_train"], crop)
    val = load_pairs(val_folder, sizes["em_val"], crop)

    def val_scores(candidate):
        return _scores(val, lambda image, truth: cr.segment(image, model=candidate, axes="YX", device=device).instances)

    before = val_scores(model)
    tuned, seconds, peak = measured(
        device, cr.finetune, model, [t[0] for t in train], [t[1] for t in train], axes="YX", steps=sizes["steps"], device=device, seed=0
    )
    after = val_scores(tuned)
    record = tuned.config["provenance"][-1]
    return {
        "train_images": [t[2] for t in train],
        "val_images": len(val),
        "steps": record["steps"],
        "seconds": round(seconds, 1),
        "steps_per_second": round(record["steps"] / max(record["training_seconds"], 1e-9), 2),
        "peak_gpu_memory_mib": peak,
        "val_f1_at_0.5_before": before["f1_at_0.5"],
        "val_f1_at_0.5_after": after["f1_at_0.5"],
        "val_mean_f1_before": before["mean_f1"],
        "val_mean_f1_after": after["mean_f1"],
        "summary": finetune_summary(tuned),
    }


def text_report(report: dict) -> str:
    info = report["device"]
    lines = [
        f"CellRefine GPU check ({'quick' if report['quick'] else 'full'}) on {info['gpu'] or info['cpu']} [{info['device']}], "
        f"torch {info['torch']} (CUDA {info['cuda']}), auto precision = {info['auto_precision']}",
        "throughput:",
    ]
    for row in report["throughput"]:
        shape = "×".join(map(str, row["shape"]))
        memory = f", peak {row['peak_gpu_memory_mib']:.0f} MiB" if row["peak_gpu_memory_mib"] is not None else ""
        network = f"; network {row['network_megapixels_per_second']:.1f} Mpx/s" if "network_seconds" in row else ""
        lines.append(
            f"  {row['name']:5s} {shape:>14s} {row['precision']:7s} {row['seconds']:8.2f} s  {row['megapixels_per_second']:7.2f} Mpx/s{network}"
            f"{memory}, {row['objects']} objects"
        )
    agreement = report["agreement"]
    lines.append(
        f"agreement on {agreement['source']} vs {agreement['reference']}: F1@0.5 {agreement['float32']['f1_at_0.5']:.4f} (float32) / "
        f"{agreement['auto']['f1_at_0.5']:.4f} (auto), mean F1 {agreement['float32']['mean_f1']:.4f} / {agreement['auto']['mean_f1']:.4f}; "
        f"difference {agreement['difference']['f1_at_0.5']:.4f} / {agreement['difference']['mean_f1']:.4f} "
        f"({'within' if agreement['within_tolerance'] else 'OUTSIDE'} {agreement['tolerance']}{'' if agreement['judged'] else ', not judged on toy sizes'}); "
        "max probability difference "
        f"{agreement['max_probability_difference']:.4f}"
    )
    tune = report["finetune"]
    if "skipped" in tune:
        lines.append(f"fine-tune EM: skipped ({tune['skipped']})")
    else:
        lines.append(
            f"fine-tune EM: {tune['steps']} steps on {len(tune['train_images'])} slice(s) in {tune['seconds']:.1f} s "
            f"({tune['steps_per_second']:.2f} steps/s); em/val F1@0.5 {tune['val_f1_at_0.5_before']:.3f} → {tune['val_f1_at_0.5_after']:.3f}, "
            f"mean F1 {tune['val_mean_f1_before']:.3f} → {tune['val_mean_f1_after']:.3f}"
        )
    lines.append(
        f"total {report['seconds']:.1f} s (budget {report['budget_seconds']} s: {'ok' if report['within_budget'] else 'OVER'}); "
        f"{'PASSED' if report['ok'] else 'FAILED'}"
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import cellrefine as cr
    from cellrefine.data import load_sample_nuclei
    from cellrefine.device import resolve_device

    device = resolve_device(args.device)
    if args.device == "cuda" and device.type != "cuda":
        sys.exit("no CUDA device here: run with --device cpu (add --quick for a short run)")
    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    model = cr.load_model(args.model, device=device)
    sample = load_sample_nuclei()
    nuclei = args.data / "nuclei" / "val"
    sources = [image for image, _, _ in load_pairs(nuclei, 8)] if nuclei.is_dir() else list(sample)
    report = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "data": str(args.data) if nuclei.is_dir() or (args.data / "em").is_dir() else None,
        "device": device_info(device),
        "throughput": check_throughput(model, device, sizes, [s if s.ndim == 2 else s[..., :3].mean(-1).astype(np.uint16) for s in sources]),
        "agreement": check_agreement(model, device, args.data, sizes, sample),
        "finetune": check_finetune(model, device, args.data, sizes),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["budget_seconds"] = BUDGET_SECONDS
    report["within_budget"] = report["seconds"] <= BUDGET_SECONDS
    # quick runs check that the script works, not the figures
    report["ok"] = args.quick or (report["agreement"]["within_tolerance"] and (report["within_budget"] or device.type != "cuda"))
    print(text_report(report))
    print(json.dumps(report, default=float), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report


if __name__ == "__main__":
    main()
