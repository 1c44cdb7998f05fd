"""Sentences the widgets show: where results went, what fine-tuning and calibration did."""

from __future__ import annotations

__all__ = ["written_text", "calibration_text"]


def written_text(record) -> str:
    """``"Instances → 'img instances' (new layer); classes → 'img classes' (updated)."``"""
    parts = []
    for kind in ("instances", "classes"):
        layer = record.layer(kind)
        if layer is not None:
            how = record.written.get(kind)
            parts.append(f"{kind} → {layer.name!r}" + (f" ({how})" if how else ""))
    text = "; ".join(parts)
    return (text[:1].upper() + text[1:] + ".") if text else ""


def calibration_text(model) -> str:
    """What threshold calibration did in ``model``'s last fine-tune (empty if it was not fine-tuned)."""
    records = model.config.get("provenance") or []
    if not records or records[-1].get("kind") != "finetune":
        return ""
    from ..training import finetune_summary

    lines = [line for line in finetune_summary(model) if "threshold" in line.lower()]
    return " ".join(lines)
