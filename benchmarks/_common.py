"""Shared helpers of the benchmark suite: machine description, test images, timing."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2", "avx512_vnni")))
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """Machine, library versions and devices, for the report header."""
    import scipy
    import skimage
    import torch

    import cellrefine
    from cellrefine.device import cpu_bf16_supported

    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cellrefine": cellrefine.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "cpu_bf16_native": cpu_bf16_supported(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    return info


def nuclei_files(data: Path) -> list:
    files = sorted((Path(data) / "nuclei" / "val").glob("*.npz"))
    if not files:
        sys.exit(f"no nuclei/val/*.npz under {data}; pass --data pointing at the development data folder")
    return files


def mosaic(data: Path, size: int, seed: int = 0, block: int = 512) -> np.ndarray:
    """A (size, size) uint16 image tiled from random 512² crops of the nuclei validation
    images (BBBC039, 12-bit fluorescence): real content at any size."""
    files = nuclei_files(data)
    rng = np.random.default_rng(seed)
    images = {}
    out = np.zeros((size, size), np.uint16)
    for y in range(0, size, block):
        for x in range(0, size, block):
            path = files[int(rng.integers(len(files)))]
            if path not in images:
                with np.load(path) as z:
                    images[path] = z["image"]
            image = images[path]
            h, w = min(block, size - y), min(block, size - x)
            oy, ox = int(rng.integers(0, image.shape[0] - h + 1)), int(rng.integers(0, image.shape[1] - w + 1))
            out[y : y + h, x : x + w] = image[oy : oy + h, ox : ox + w]
    return out


def stack(data: Path, planes: int, size: int, seed: int = 0) -> np.ndarray:
    """(planes, size, size) uint16: a few distinct mosaics, cycled (real content, cheap to build)."""
    distinct = [mosaic(data, size, seed + k) for k in range(min(planes, 8))]
    out = np.empty((planes, size, size), np.uint16)
    for z in range(planes):
        out[z] = distinct[z % len(distinct)]
    return out


def timed(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Run ``fn`` warmup + repeats times; seconds of each timed run, median and min."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs_s": [round(t, 4) for t in times]}


def other_cpu_load() -> float | None:
    """Share of the machine's CPU time used by *other* processes over 1 s (0..1), from /proc/stat."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    total_before = psutil.cpu_times()
    mine_before = sum(me.cpu_times()[:2])
    time.sleep(1.0)
    total_after = psutil.cpu_times()
    mine_after = sum(me.cpu_times()[:2])
    busy = (total_after.user + total_after.system + total_after.nice) - (total_before.user + total_before.system + total_before.nice)
    return round(max(0.0, (busy - (mine_after - mine_before)) / (psutil.cpu_count() or 1)), 3)


def run_python(args: list, timeout: float, env: dict | None = None, xvfb: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, *map(str, args)]
    if xvfb:
        command = ["xvfb-run", "-a", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)


def emit(result: dict, path: str | None, echo: bool = True) -> str:
    """Write ``result`` as indented JSON to ``path`` (when given) and print it (when ``echo``)."""
    import json

    text = json.dumps(result, indent=1, default=float)
    if path:
        Path(path).write_text(text)
    if echo:
        print(text)
    return text


def markdown_header(command: str, info: dict) -> list:
    """The first lines of a benchmark's Markdown: its command and the machine (CPU, ISA flags, CPUs, versions)."""
    return [
        f"Command: `{command}`  ",
        f"Machine: {info['cpu']} ({', '.join(info['cpu_flags'])}), {info['affinity_cpus']} CPUs, torch {info['torch']}, cellrefine {info['cellrefine']}",
        "",
    ]


def emit_with_markdown(result: dict, markdown_text: str, markdown_path: str | None, json_path: str | None) -> None:
    """Write a benchmark's Markdown table (when ``markdown_path``) and its JSON (when ``json_path``, not echoed)."""
    if markdown_path:
        Path(markdown_path).write_text(markdown_text + "\n")
    emit(result, json_path, echo=False)


class PeakSampler:
    """Peak resident memory of this process while the block runs: psutil every ``interval`` s, and once more at the end."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def parse_value(text: str):
    """'3' → 3, '5e-4' → 0.0005, 'true'/'false' → bool, anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items) -> dict:
    """``["distill=0", "learning_rate=5e-4"]`` → ``{"distill": 0, "learning_rate": 0.0005}`` (values by :func:`parse_value`)."""
    options = {}
    for item in items:
        name, _, value = item.partition("=")
        options[name] = parse_value(value)
    return options
