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

``--widgets`` also measures the napari widgets themselves (needs a display:
``xvfb-run -a``), with pass/fail checks that used to be unit-test asserts:

* the same 20 ms timer while the Fine-tune widget trains (p95 extra delay
  < 100 ms, max < 500 ms), the time from pressing Fine-tune to the first
  step, and from Stop to the returned (calibrated) model;
* how fast Cancel stops a segmentation of a 1536² image in 32² tiles (< 3 s).
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


def _blobs(shape=(256, 256), n=40, seed=0):
    """Bright disks on a dark noisy background (float32) and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint32)
    for index in range(1, n + 1):
        cy, cx, radius = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10), rng.integers(5, 10)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = index
    image = (labels > 0).astype(np.float32) * 100 + rng.normal(10, 3, shape).astype(np.float32)
    return image, labels


def _wait(predicate, timeout: float) -> bool:
    """Run the Qt event loop until ``predicate()`` or ``timeout`` seconds."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > end:
            return False
        QApplication.processEvents()
        time.sleep(0.005)
    return True


def run_widgets(seconds: float = 8.0, tiny: bool = False, interval_ms: int = 20) -> dict:
    """GUI timer delays while the Fine-tune widget trains, and Cancel latency of the Segment widget."""
    import napari
    from qtpy.QtCore import QTimer

    from cellrefine._qt.finetune_widget import FinetuneWidget
    from cellrefine._qt.segment_widget import SegmentWidget
    from cellrefine._qt.session import get_session

    viewer = napari.Viewer(show=False)
    session = get_session(viewer)
    if tiny:
        from cellrefine.model.io import Model

        config = {"name": "tiny", "architecture": {"in_channels": 1, "out_channels": 3, "depth": 2, "base_channels": 4, "norm": "batch"}}
        session.set_model(Model(config=config))
    image, labels = _blobs()
    viewer.add_image(image, name="blobs")
    segment = SegmentWidget(viewer)
    worker = segment.run()
    _wait(lambda: not segment.controls.busy, 300)
    instances = viewer.layers["blobs instances"]
    instances.brush_size = 9
    for (y, x), label in zip(np.argwhere(labels > 0)[::400][:4], range(1001, 1005)):
        instances.paint((int(y), int(x)), label)

    finetune = FinetuneWidget(viewer)
    finetune.steps.value = 100_000
    finetune.resegment.value = False
    ticks, updates = [], []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    pressed = time.perf_counter()
    worker = finetune.run()
    worker.yielded.connect(lambda update: updates.append((time.perf_counter(), update.phase, update.step)))
    _wait(lambda: any(phase == "training" for _, phase, _ in updates), 300)
    first_step = next((t for t, phase, _ in updates if phase == "training"), float("nan"))
    _wait(lambda: time.perf_counter() - first_step > seconds, seconds + 60)
    stopped = time.perf_counter()
    finetune.stop()
    _wait(lambda: not finetune.controls.busy, 600)
    returned = time.perf_counter()
    timer.stop()
    training = [b - a for a, b in zip(ticks, ticks[1:]) if a >= first_step and b <= stopped]
    extra = [max(0.0, delay * 1000 - interval_ms) for delay in training]
    steps = max((step for _, phase, step in updates if phase == "training"), default=0)
    gui = {**percentiles(extra), "steps": steps, "seconds_to_first_step": first_step - pressed, "stop_to_model_seconds": returned - stopped}

    big = np.random.default_rng(0).normal(size=(1536, 1536)).astype(np.float32)
    viewer.add_image(big, name="big")
    viewer.layers.selection.active = viewer.layers["big"]
    segment.tile_size.value = 32
    progress = []
    worker = segment.run()
    worker.yielded.connect(progress.append)
    _wait(lambda: len(progress) >= 3, 120)
    cancelled = time.perf_counter()
    segment.cancel()
    _wait(lambda: not segment.controls.busy, 120)
    cancel = {"seconds": time.perf_counter() - cancelled, "tiles_done": progress[-1].done if progress else 0, "tiles_total": 48 * 48}
    viewer.close()
    checks = {
        "timer_p95_below_100_ms": gui.get("p95_ms", float("inf")) < 100,
        "timer_max_below_500_ms": gui.get("max_ms", float("inf")) < 500,
        "cancel_below_3_s": cancel["seconds"] < 3.0,
    }
    return {"model": "tiny (untrained)" if tiny else "bundled", "finetune_gui_timer": gui, "segment_cancel": cancel, "checks": checks}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--json")
    parser.add_argument("--widgets", action="store_true", help="also measure the napari widgets (see above)")
    parser.add_argument("--widgets-only", action="store_true", help="only the napari widgets")
    parser.add_argument("--tiny", action="store_true", help="widgets: an untrained tiny model instead of the bundled one (quick check)")
    args = parser.parse_args(argv)
    result = {} if args.widgets_only else {"ui": run(args.data, args.seconds, args.idle_seconds)}
    if args.widgets or args.widgets_only:
        result["widgets"] = run_widgets(min(args.seconds, 8.0), tiny=args.tiny)
    text = json.dumps(result, indent=1, default=float)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
