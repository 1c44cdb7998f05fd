"""GUI responsiveness while fine-tuning: delays of a 20 ms QTimer on the GUI thread.

    xvfb-run -a python benchmarks/ui_responsiveness.py --data ../shared/data --seconds 20

Starts a QApplication (qtpy; no napari, so any Qt platform works) with a
20 ms repeating QTimer and records when each tick arrives. First a few idle
seconds (the baseline), then ``cellrefine.iter_finetune`` runs in a
``threading.Thread`` (as the widget's worker does) with the bundled model on
a 512 x 512 EM slice for ``--seconds``, while the timer keeps ticking. The
delay of a tick is how much later than 20 ms after the previous tick it came;
reported as p50/p95/max in milliseconds, for the idle and the training phase
(and for the training phase after the first optimisation step, i.e. without
the start-up: reading the planes, the parent's predictions, target maps).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np


def training_data(data):
    path = Path(data) / "em" / "train" / "isbi2012_00.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["image"], z["labels"], path.name
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_blobs  # synthetic fallback

    image, labels = make_blobs((512, 512))
    return image, labels, "synthetic blobs"


def percentiles(delays_ms) -> dict:
    if not delays_ms:
        return {"ticks": 0}
    values = np.asarray(delays_ms)
    return {
        "ticks": int(values.size),
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "max_ms": float(values.max()),
    }


def run(data, seconds: float = 20.0, idle_seconds: float = 3.0, interval_ms: int = 20) -> dict:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    import cellrefine as cr

    app = QApplication.instance() or QApplication([])
    model = cr.load_model()
    image, labels, name = training_data(data)
    ticks = []
    state = {"phase": "idle", "steps": 0, "error": None, "first_step_s": None}
    stop = threading.Event()

    def on_tick():
        ticks.append((time.perf_counter(), state["phase"]))

    def train():
        started = time.perf_counter()
        generator = cr.iter_finetune(model, [image], [labels], steps=100_000, device="cpu", validate_every=10**9)
        try:
            for update in generator:
                if state["first_step_s"] is None:
                    state["first_step_s"] = time.perf_counter() - started
                    state["first_step_at"] = time.perf_counter()
                state["steps"] = update.step
                if stop.is_set():
                    break
        except Exception as error:
            state["error"] = repr(error)
        finally:
            generator.close()

    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(on_tick)
    worker = threading.Thread(target=train, name="finetune", daemon=True)

    def start_training():
        state["phase"] = "training"
        state["training_started"] = time.perf_counter()
        worker.start()

    def finish():
        stop.set()
        state["phase"] = "stopping"
        app.quit()

    timer.start()
    QTimer.singleShot(int(idle_seconds * 1000), start_training)
    QTimer.singleShot(int((idle_seconds + seconds) * 1000), finish)
    app.exec_() if hasattr(app, "exec_") else app.exec()
    timer.stop()
    worker.join(timeout=120)

    delays = {"idle": [], "training": [], "training_after_first_step": []}
    first_step_at = state.get("first_step_at", float("inf"))
    for (t0, _), (t1, phase) in zip(ticks, ticks[1:]):
        if phase in delays:
            delay = max(0.0, (t1 - t0) * 1000 - interval_ms)
            delays[phase].append(delay)
            if phase == "training" and t0 >= first_step_at:
                delays["training_after_first_step"].append(delay)
    import torch

    return {
        "image": name,
        "image_shape": list(image.shape),
        "interval_ms": interval_ms,
        "training_seconds": seconds,
        "steps_done": state["steps"],
        "seconds_to_first_step": state["first_step_s"],
        "error": state["error"],
        "idle": percentiles(delays["idle"]),
        "training": percentiles(delays["training"]),
        "training_after_first_step": percentiles(delays["training_after_first_step"]),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"ui": run(args.data, args.seconds, args.idle_seconds)}
    text = json.dumps(result, indent=1, default=float)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
