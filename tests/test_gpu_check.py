"""benchmarks/gpu_check.py runs on the CPU at toy sizes (--quick) and prints the documented report (docs/benchmarks.md, "GPU check")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
REPORT_KEYS = {
    "format",
    "format_version",
    "date",
    "quick",
    "data",
    "device",
    "throughput",
    "agreement",
    "finetune",
    "seconds",
    "budget_seconds",
    "within_budget",
    "ok",
}
ROW_KEYS = {"name", "shape", "precision", "seconds", "megapixels_per_second", "peak_gpu_memory_mib", "objects"}
AGREEMENT_KEYS = {"source", "reference", "float32", "auto", "difference", "tolerance", "within_tolerance", "judged", "max_probability_difference"}


def discs(shape, centres, radius=9, seed=0):
    """Bright discs on a dark noisy background (uint16) and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for index, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = index
    image = (labels > 0) * 2000.0 + rng.normal(300, 40, shape)
    return image.astype(np.uint16), labels


def run_check(tmp_path, data):
    out = tmp_path / "report.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--data", str(data), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert json.loads(out.read_text()) == report  # --json writes the same report
    return report, lines[:-1]


def check_common(report, text):
    assert set(report) == REPORT_KEYS
    assert report["format"] == "cellrefine-gpu-check" and report["format_version"] == 1
    assert report["quick"] is True and report["ok"] is True
    assert report["device"]["device"] == "cpu" and report["device"]["gpu"] is None
    rows = report["throughput"]
    assert [(row["name"], row["shape"], row["precision"]) for row in rows] == [
        ("plane", [256, 256], "float32"),
        ("stack", [3, 128, 128], "float32"),
        ("plane", [256, 256], "auto"),
        ("stack", [3, 128, 128], "auto"),
    ]
    for row in rows:
        assert set(row) >= ROW_KEYS and row["seconds"] > 0 and row["megapixels_per_second"] > 0
        assert row["peak_gpu_memory_mib"] is None  # no GPU
    assert all(row["objects"] > 0 for row in rows if row["name"] == "plane")
    assert "network_megapixels_per_second" in rows[0] and "network_seconds" not in rows[1]
    agreement = report["agreement"]
    assert set(agreement) == AGREEMENT_KEYS and agreement["tolerance"] == 0.002 and agreement["judged"] is False
    assert 0 <= agreement["max_probability_difference"] <= 1
    assert text[0].startswith("CellRefine GPU check (quick) on ") and text[1] == "throughput:"
    assert len([line for line in text if line.startswith(("  plane", "  stack"))]) == 4
    assert text[-1].startswith("total ") and text[-1].endswith("PASSED")


def test_quick_cpu_run_without_data_uses_the_bundled_sample(tmp_path):
    report, text = run_check(tmp_path, tmp_path / "no-data")
    check_common(report, text)
    agreement = report["agreement"]
    assert agreement["source"].startswith("bundled sample (2 fields") and agreement["reference"] == "float32 instances"
    assert agreement["float32"] == {"f1_at_0.5": 1.0, "mean_f1": 1.0}
    assert report["finetune"] == {"skipped": f"no em/train and em/val under {tmp_path / 'no-data'}"}
    assert report["data"] is None
    assert any(line.startswith("fine-tune EM: skipped") for line in text)


@pytest.fixture
def toy_data(tmp_path):
    """nuclei/val (2 images, 4 + 3 discs) and em/train, em/val (1 image each) in the development-data layout."""
    data = tmp_path / "data"
    layouts = {
        "nuclei/val/a": ((160, 200), [(30, 30), (30, 150), (120, 40), (110, 160)]),
        "nuclei/val/b": ((160, 200), [(50, 60), (100, 120), (40, 170)]),
        "em/train/t0": ((128, 128), [(30, 30), (30, 95), (95, 60)]),
        "em/val/v0": ((128, 128), [(40, 40), (90, 90)]),
    }
    for index, (name, (shape, centres)) in enumerate(layouts.items()):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        image, labels = discs(shape, centres, seed=index)
        np.savez(data / f"{name}.npz", image=image, labels=labels)
    return data


def test_quick_cpu_run_with_data_scores_against_ground_truth_and_fine_tunes(tmp_path, toy_data):
    report, text = run_check(tmp_path, toy_data)
    check_common(report, text)
    agreement = report["agreement"]
    assert agreement["source"] == "nuclei/val (2 images)" and agreement["reference"] == "ground truth"
    assert agreement["float32"]["n_true"] == agreement["auto"]["n_true"] == 7  # the discs drawn above
    tune = report["finetune"]
    assert tune["train_images"] == ["t0"] and tune["val_images"] == 1 and tune["steps"] == 3
    assert 0 <= tune["val_f1_at_0.5_before"] <= 1 and 0 <= tune["val_f1_at_0.5_after"] <= 1
    assert isinstance(tune["summary"], list) and tune["summary"]
    assert report["data"] == str(toy_data)
    assert any(line.startswith("fine-tune EM: 3 steps on 1 slice(s)") for line in text)
