"""Screenshots of the CellRefine widgets for the docs (not a test).

Usage::

    xvfb-run -a .venv/bin/python tests/_qt/make_screenshots.py OUTDIR [--model PATH]

Opens the nuclei sample, docks Segment and Fine-tune through the plugin
manifest, segments the current frame with the bundled model (or ``--model``,
or an untrained tiny model when neither exists), paints a correction,
fine-tunes for a few steps and saves ``viewer.screenshot(canvas_only=False)``
PNGs into OUTDIR.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _wait(worker, timeout=600):
    """Run the Qt event loop until ``worker`` has finished."""
    from qtpy.QtCore import QEventLoop, QTimer

    if worker is None:
        raise SystemExit("the widget did not start (see the notification above)")
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    loop.exec()


def _settle(seconds=0.5):
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _use_model(session, path) -> str:
    """Load ``path``, else the bundled model, else an untrained tiny model, into the session."""
    from cellrefine.model.io import Model

    if path:
        session.load_model_file(path)
        return path
    try:
        session.use_bundled()
        return "bundled"
    except FileNotFoundError:
        config = {"name": "tiny", "architecture": {"in_channels": 1, "out_channels": 3, "depth": 2, "base_channels": 4, "norm": "batch"}}
        session.set_model(Model(config=config))
        return "tiny (untrained: the bundled weights are not installed)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--model", help="a saved model to use instead of the bundled one")
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps for the second screenshot")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)

    import napari

    from cellrefine._qt.session import get_session

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-cellrefine", "nuclei")
    image = viewer.layers[0]
    print(f"model: {_use_model(get_session(viewer), args.model)}")

    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-cellrefine", "Segment")
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget("napari-cellrefine", "Fine-tune", tabify=True)
    viewer.layers.selection.active = image
    segment.current_slice.setChecked(True)
    segment.show_probabilities.setChecked(False)
    started = time.perf_counter()
    _wait(segment.run())
    print(f"segmented the current frame in {time.perf_counter() - started:.1f} s on {segment.device_used.text()}")

    # a typical correction: erase the smallest object (debris), then mark the slice as reviewed
    instances = viewer.layers[f"{image.name} instances"]
    viewer.layers.selection.active = instances
    instances.mode = "fill"
    t = int(viewer.dims.current_step[0])
    frame = np.asarray(instances.data[t])
    ids, counts = np.unique(frame[frame > 0], return_counts=True)
    if len(ids):
        y, x = np.argwhere(frame == ids[np.argmin(counts)])[0]
        instances.fill((t, int(y), int(x)), 0)
    finetune.apply_defaults()
    finetune.corrections.mark_slice_reviewed()
    segment_dock.raise_()  # show the Segment tab
    _settle(1.0)
    first = args.outdir / "segment_widget.png"
    viewer.screenshot(str(first), canvas_only=False)
    print(f"wrote {first}")

    finetune_dock.raise_()
    finetune.steps.setValue(args.steps)
    finetune.resegment.setChecked(True)
    started = time.perf_counter()
    _wait(finetune.run())
    while finetune.busy:
        _settle(0.1)
    print(f"fine-tuned {args.steps} steps in {time.perf_counter() - started:.1f} s")
    _settle(1.0)
    second = args.outdir / "finetune_widget.png"
    viewer.screenshot(str(second), canvas_only=False)
    print(f"wrote {second}")
    viewer.close()


if __name__ == "__main__":
    main()
