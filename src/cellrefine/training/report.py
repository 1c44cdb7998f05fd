"""The provenance record of a fine-tune and the lines a biologist reads about it (:func:`finetune_summary`)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
from pathlib import PurePath

import numpy as np

__all__ = ["finetune_summary", "library_versions", "data_fingerprint", "parent_file", "loss_curve", "plane_orientations"]


def library_versions() -> dict:
    """Versions of the libraries a fine-tuned model depends on (``cellrefine``, ``torch``, ``numpy``)."""
    import torch

    from .. import __version__

    return {"cellrefine": __version__, "torch": torch.__version__, "numpy": np.__version__}


def data_fingerprint(planes) -> str:
    """SHA-256 (hex) of the training data: each plane's normalised image, its labels (as int64) and reviewed mask."""
    digest = hashlib.sha256()
    for plane in planes:
        digest.update(f"{plane.image.shape}|{plane.labels.shape}|".encode())
        digest.update(np.ascontiguousarray(plane.image, np.float32).data)
        digest.update(np.ascontiguousarray(plane.labels, np.int64).data)
        digest.update(b"all" if plane.mask is None else np.packbits(plane.mask).data)
    return digest.hexdigest()


def parent_file(model) -> str | None:
    """Where the parent model came from, without a machine path: a file name, ``"bundled:<name>"`` or None."""
    path = getattr(model, "path", None)
    if path is None:
        return None
    path = str(path)
    return path if path.startswith("bundled:") else PurePath(path).name


def loss_curve(losses, every: int = 10) -> list:
    """Means of consecutive groups of ``every`` losses, rounded to 4 decimals."""
    return [round(float(np.mean(losses[i : i + every])), 4) for i in range(0, len(losses), every)]


def plane_orientations(planes) -> dict:
    """How many training planes of each orientation: ``{"XY": n, "XZ": n, "YZ": n}``, orientations without a plane left out."""
    from .orientations import PLANE_NAMES

    counts = {}
    for plane in planes:
        name = PLANE_NAMES[getattr(plane, "orientation", "Z")]
        counts[name] = counts.get(name, 0) + 1
    return {name: counts[name] for name in PLANE_NAMES.values() if name in counts}


def base_record(parent, settings, planes, fingerprint: str) -> dict:
    """The fields of a fine-tune's provenance record known before training."""
    from ..tiling import weights_fingerprint

    return {
        "kind": "finetune",
        "parent": parent.name,
        "parent_file": parent_file(parent),
        "parent_weights": weights_fingerprint(parent.network),
        "data_shapes": [list(plane.shape) for plane in planes],
        "reviewed_pixels": [plane.reviewed_pixels for plane in planes],
        "plane_orientations": plane_orientations(planes),
        "data_sha256": fingerprint,
        "versions": library_versions(),
        "settings": dataclasses.asdict(settings),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _number(value, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def finetune_summary(model) -> list[str]:
    """What the last fine-tune of ``model`` did, in the words shown by the napari widget and the CLI.

    Parameters
    ----------
    model : Model
        A model returned by :func:`~cellrefine.training.finetune` (or loaded from its file).

    Returns
    -------
    list of str
        E.g. ``"7 of 8 corrected objects now right; 0 of 112 unreviewed objects changed"``,
        ``"reviewed pixel accuracy 0.81 → 0.93"``,
        ``"thresholds re-picked on your reviewed pixels: foreground 0.80 → 0.75, seed 0.70 → 0.70"``;
        empty when the model's last provenance record is not a fine-tune.
    """
    records = model.config.get("provenance") or []
    if not records or records[-1].get("kind") != "finetune" or "metrics_after" not in records[-1]:
        return []
    record = records[-1]
    lines = []
    after = record.get("objects_after")
    if after:
        parts = []
        if after["corrected"]:
            parts.append(f"{after['corrected_right']} of {after['corrected']} corrected objects now right")
        if after["unreviewed"]:
            parts.append(f"{after['unreviewed'] - after['unreviewed_kept']} of {after['unreviewed']} unreviewed objects changed")
        if after["confirmed"] and after["confirmed_kept"] < after["confirmed"]:
            parts.append(f"{after['confirmed'] - after['confirmed_kept']} of {after['confirmed']} reviewed objects that were right changed")
        if parts:
            lines.append("; ".join(parts))
    accuracy_before = record["metrics_before"].get("reviewed_accuracy")
    accuracy_after = record["metrics_after"].get("reviewed_accuracy")
    lines.append(f"reviewed pixel accuracy {_number(accuracy_before)} → {_number(accuracy_after)}")
    if "postprocess_calibration" in record:
        old, new = record["thresholds_before"], record["thresholds_after"]
        keys = ("foreground_threshold", "seed_threshold")
        if all(old[key] == new[key] for key in keys):
            lines.append(f"thresholds checked on your reviewed pixels and kept: foreground {old[keys[0]]:.2f}, seed {old[keys[1]]:.2f}")
        else:
            lines.append(
                "thresholds re-picked on your reviewed pixels: "
                f"foreground {old[keys[0]]:.2f} → {new[keys[0]]:.2f}, seed {old[keys[1]]:.2f} → {new[keys[1]]:.2f}"
            )
        if "min_size" in old and "min_size" in new and old["min_size"] != new["min_size"]:
            lines.append(
                f"smallest object raised on your reviewed objects: {old['min_size']} → {new['min_size']} px (pieces below it were fragments)"
            )
    steps, planned = record.get("steps"), record.get("planned_steps", record.get("steps"))
    checkpoint = record.get("checkpoint") or {}
    if record.get("stopped_early"):
        lines.append(f"stopped after {steps} of {planned} steps")
    if checkpoint.get("step") not in (None, steps):
        lines.append(f"kept the checkpoint of step {checkpoint['step']} of {steps}, the best on {checkpoint.get('judged_on', 'the reviewed pixels')}")
    orientations = record.get("plane_orientations") or {}
    if set(orientations) - {"XY"}:
        lines.append("trained on " + ", ".join(f"{n} {name}" for name, n in orientations.items()) + " plane(s)")
    if record.get("evaluated_planes") is not None and record["evaluated_planes"] < len(record.get("data_shapes", [])):
        lines.append(f"figures measured on {record['evaluated_planes']} of {len(record['data_shapes'])} reviewed planes")
    if accuracy_before is not None and accuracy_after is not None and accuracy_after < accuracy_before - 0.01:
        lines.append(
            "warning: less accurate than before on the reviewed pixels; correct more objects or mark whole slices reviewed, or go back to the previous model"
        )
    return lines
