"""What a person reads in an exported package: the README (model card + provenance) and the cover image.

Pure NumPy/Python: the cover is encoded as PNG with :mod:`zlib` (no imaging library needed).
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

__all__ = ["package_readme", "cover_image", "png_bytes", "BUNDLED_VALIDATION"]

#: Published figures of the bundled model (docs/model-card.md), keyed by the date of its training record.
BUNDLED_VALIDATION = {
    "2026-11-25T13:37:09+00:00": (
        "`nuclei_v1` on `nuclei/val` (BBBC039v1 validation split, 50 images; also used to pick its thresholds, so these are "
        "validation, not held-out test, figures): object F1 0.947 at IoU 0.5, mean F1 0.890 over IoU 0.5-0.9 "
        "(Otsu + watershed baseline: 0.855 and 0.758); precision / recall at IoU 0.5: 0.974 / 0.921."
    )
}


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _record_lines(index: int, record: dict) -> list[str]:
    kind = record.get("kind", "record")
    head = f"{index}. **{kind}**" + (f", {record['date']}" if record.get("date") else "")
    lines = [head]
    if kind == "train":
        lines.append(
            f"   - data `{record.get('data', 'n/a')}`, {record.get('n_images', 'n/a')} images, {record.get('steps', 'n/a')} steps, "
            f"{record.get('seconds', 'n/a')} s on {record.get('device', 'n/a')}"
        )
    elif kind == "finetune":
        shapes = record.get("data_shapes") or []
        reviewed = record.get("reviewed_pixels") or []
        lines.append(
            f"   - parent `{record.get('parent', 'n/a')}` (weights {str(record.get('parent_weights', 'n/a'))[:16]}), "
            f"{record.get('steps', 'n/a')} of {record.get('planned_steps', 'n/a')} steps, checkpoint of step "
            f"{(record.get('checkpoint') or {}).get('step', 'n/a')}"
        )
        lines.append(
            f"   - data: {len(shapes)} plane(s) of shape {', '.join('x'.join(map(str, s)) for s in shapes[:6]) or 'n/a'}"
            + ("…" if len(shapes) > 6 else "")
            + f"; {sum(reviewed)} reviewed pixels; data SHA-256 {str(record.get('data_sha256', 'n/a'))[:16]}"
        )
        before, after = record.get("metrics_before") or {}, record.get("metrics_after") or {}
        for key in sorted(set(before) | set(after)):
            lines.append(f"   - {key.replace('_', ' ')}: {_number(before.get(key))} → {_number(after.get(key))}")
        objects = record.get("objects_after") or {}
        if objects.get("corrected"):
            lines.append(f"   - corrected objects right after fine-tuning: {objects.get('corrected_right')} of {objects['corrected']}")
        if objects.get("unreviewed"):
            lines.append(f"   - unreviewed objects kept: {objects.get('unreviewed_kept')} of {objects['unreviewed']}")
        old, new = record.get("thresholds_before"), record.get("thresholds_after")
        if old and new:
            lines.append(
                f"   - thresholds (foreground, seed): {_number(old.get('foreground_threshold'), 2)}, {_number(old.get('seed_threshold'), 2)}"
                f" → {_number(new.get('foreground_threshold'), 2)}, {_number(new.get('seed_threshold'), 2)}"
            )
    else:
        for key in ("data", "source", "chosen_on", "note"):
            if record.get(key):
                lines.append(f"   - {key.replace('_', ' ')}: {record[key]}")
    versions = record.get("versions")
    if versions:
        lines.append("   - versions: " + ", ".join(f"{name} {version}" for name, version in sorted(versions.items())))
    return lines


def package_readme(
    config: dict, *, parameters: int, halo: int, size_rule: tuple, test_shape: tuple, summary: list, license: str, model_file: str
) -> str:
    """The package's README.md: model card figures, provenance, validation, use, licence and citations."""
    from .rdf import CITATIONS, TENSOR_INPUT, TENSOR_OUTPUT, display_name

    arch, norm, post = config["architecture"], config["normalization"], config.get("postprocess") or {}
    records = config.get("provenance") or []
    classes = ", ".join(config["class_names"])
    low, high = norm["low_percentile"], norm["high_percentile"]
    out = [
        f"# {display_name(config)}",
        "",
        f"A CellRefine 2D U-Net exported for bioimage.io. It predicts per-pixel probabilities of {classes}; CellRefine turns them "
        "into instances with a seeded watershed (thresholds below).",
        "",
        "## Model card",
        "",
        "| | |",
        "|---|---|",
        f"| network | 2D U-Net, depth {arch['depth']} (sizes multiple of {2 ** arch['depth']} px), {arch['base_channels']} base channels, "
        f"norm `{arch['norm']}`, {arch['in_channels']} input / {arch['out_channels']} output channels; {parameters:,} parameters |",
        f"| input `{TENSOR_INPUT}` | (batch, channel=1, y, x) float32; y and x: {size_rule[0]} + k × {size_rule[1]} px; "
        f"preprocessing `scale_range`: percentiles {low:g} / {high:g} of each image map to 0 / 1 (CellRefine's normalisation) |",
        f"| output `{TENSOR_OUTPUT}` | (batch, channel = {classes}, y, x) float32 probabilities (softmax over channels); tile halo {halo} px per side |",
        "| instances (CellRefine) | " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in sorted(post.items())) + " |",
        f"| weights | `pytorch_state_dict` (architecture source in the package) and a TorchScript copy; licence {license} |",
        f"| test data | input {tuple(test_shape)} and the expected output, reproduced by `bioimageio.core`'s `test_model` |",
        "",
        "## Provenance",
        "",
    ]
    if records:
        for index, record in enumerate(records, 1):
            out.extend(_record_lines(index, record))
    else:
        out.append("No training records (an untrained or hand-made model).")
    if summary:
        out += ["", "Last fine-tune, in CellRefine's words:", ""] + [f"- {line}" for line in summary]
    out += ["", "## Validation", ""]
    train = next((r for r in records if r.get("kind") == "train"), None)
    published = BUNDLED_VALIDATION.get(str((train or {}).get("date")))
    tuned = any(r.get("kind") == "finetune" for r in records)
    if published:
        out.append(f"- {'Before fine-tuning: ' if tuned else ''}{published}")
    if tuned:
        out.append(
            "- Fine-tune figures above are measured on the user's reviewed pixels (training data), not on held-out data: "
            "check the model on images it was not tuned on before relying on it."
        )
    if not published and not tuned:
        out.append("- No validation figures are recorded for this model.")
    out += [
        "- To check it on your data: compare its instances (CellRefine) or thresholded probabilities with manual annotations "
        "(object F1 at IoU 0.5), e.g. with `cellrefine.metrics`.",
        "- The package itself: `bioimageio test PACKAGE.zip` (or `bioimageio.core.test_model`) reproduces the test output.",
        "",
        "## Use",
        "",
        "- Any bioimage.io consumer: feed a 2D grey image, get the three probability maps.",
        '- CellRefine: `model = cellrefine.load_model("PACKAGE.zip")` loads it back from the attached CellRefine file '
        f"(`{model_file}`: weights, thresholds and provenance), then `cellrefine.segment(image, model=model)` gives instances.",
        "",
        "## Licence and citations",
        "",
        f"Licence of the weights in this package: {license}." + (f" The model's own note: {config['license']}." if config.get("license") else ""),
        "",
        *(f"- {entry['text']} doi:{entry['doi']}" for entry in CITATIONS),
        "",
    ]
    return "\n".join(out)


def cover_image(normalized: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """A 2:1 RGB uint8 cover: the normalised input (left) and the cell (green) / boundary (magenta) probabilities over it (right).

    Parameters
    ----------
    normalized : (Y, X) float array, about 0-1
    probabilities : (3, Y, X) float array: background, cell, boundary
    """
    grey = np.clip(np.asarray(normalized, np.float32), 0, 1)
    left = np.repeat(grey[..., None], 3, axis=2)
    cell, boundary = np.clip(probabilities[1], 0, 1), np.clip(probabilities[2], 0, 1)
    right = 0.5 * left
    right[..., 1] += 0.6 * cell
    right[..., 0] += 0.8 * boundary
    right[..., 2] += 0.8 * boundary
    cover = np.concatenate([left, np.clip(right, 0, 1)], axis=1)
    return (cover * 255 + 0.5).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG (8-bit RGB, no filter, zlib level 9)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"png_bytes needs an (H, W, 3) uint8 array, got shape {rgb.shape}.")
    height, width = rgb.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)) + chunk(b"IEND", b"")
