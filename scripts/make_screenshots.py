"""Screenshots of the CellRefine docks for docs/napari.md.

Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_screenshots.py docs/images [--model PATH] [--steps 40]

Opens napari at 1600 × 1000 with the nuclei sample, opens Segment and
Fine-tune from the plugin manifest as the Plugins menu does (they share one
tab group), then runs the loop on the current frame: segment, look at the
"Review next" list, erase the most suspicious object and paint a missed one,
fine-tune, re-segment. Saves the whole window (``viewer.screenshot(...,
canvas_only=False)``) as

* ``segment_widget.png``: Segment after segmenting the current frame;
* ``review_next.png``: the "Review next" list, after a click on its first object;
* ``finetune_during.png``: Fine-tune while training (loss curve, ETA);
* ``finetune_widget.png``: Fine-tune after training, with the core's summary.

The bundled model is used (``--model`` for another); an untrained tiny model
only when the bundled weights are missing (the pictures then say so).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 1600, 1000


def wait_until(predicate, timeout: float = 600.0) -> None:
    """Run the Qt event loop until ``predicate()`` is true."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > end:
            raise SystemExit(f"timed out after {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    wait_until(lambda: time.perf_counter() > end, seconds + 5)


def open_viewer():
    """A shown napari viewer at the screenshots' size (WIDTH x HEIGHT)."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(WIDTH, HEIGHT)
    return viewer


def save_window(viewer, path) -> None:
    """Save the whole window (canvas and docks) as ``path`` and say so."""
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")


def use_model(session, path) -> str:
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


def correct(viewer, instances, ranking) -> None:
    """Typical corrections: erase the most suspicious object; paint the first missed-object candidate, or a disk."""
    t = int(viewer.dims.current_step[0])
    frame = np.asarray(instances.data[t])
    objects = [obj for obj in ranking if obj.label > 0 and round(obj.centroid[0]) == t]
    if objects:
        y, x = np.argwhere(frame == objects[0].label)[0]
        instances.fill((t, int(y), int(x)), 0)
    missed = [obj for obj in ranking if obj.label < 0 and round(obj.centroid[0]) == t]
    new_label = int(instances.data.max()) + 1
    instances.brush_size = 12
    if missed:
        _, y, x = missed[0].centroid
    else:  # a disk in the emptiest corner of the frame
        y, x = 60, 60
    instances.paint((t, int(y), int(x)), new_label)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--model", help="a saved model to use instead of the bundled one")
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)

    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QScrollArea

    from cellrefine._qt.session import get_session

    viewer = open_viewer()
    viewer.open_sample("napari-cellrefine", "nuclei")
    image = viewer.layers[0]
    session = get_session(viewer)
    print(f"model: {use_model(session, args.model)}")

    # as the Plugins menu opens them (no tabify argument): the widgets join one tab group themselves
    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-cellrefine", "Segment")
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget("napari-cellrefine", "Fine-tune")
    settle(0.5)
    viewer.layers.selection.active = image
    viewer.dims.set_current_step(0, 1)
    segment.current_slice.value = True
    segment_dock.raise_()
    started = time.perf_counter()
    segment.run()
    wait_until(lambda: not segment.controls.busy)
    print(f"segmented the current frame in {time.perf_counter() - started:.1f} s; {segment.device_used.text()}")
    settle(1.0)

    path = args.outdir / "segment_widget.png"
    save_window(viewer, path)

    # "Review next": click the most suspicious object in the list; the viewer goes there
    record = session.record_for(image)
    instances = record.layer("instances")
    table = segment.review.table
    row = next(r for r in range(table.rowCount()) if segment.review.object_at(r).label > 0)
    segment.findChild(QScrollArea).ensureWidgetVisible(segment.review)
    settle(0.3)
    table.scrollToItem(table.item(row, 0))
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(table.item(row, 1)).center())
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom *= 3
    settle(1.0)
    path = args.outdir / "review_next.png"
    save_window(viewer, path)

    correct(viewer, instances, record.ranking or [])
    viewer.reset_view()
    settle(0.5)

    finetune_dock.raise_()
    finetune.apply_defaults()
    finetune.steps.value = args.steps
    finetune.resegment.value = True
    started = time.perf_counter()
    updates = []
    worker = finetune.run()
    if worker is None:
        raise SystemExit("Fine-tune did not start (see the notification)")
    worker.yielded.connect(lambda update: updates.append(update.step if update.phase == "training" else 0))
    wait_until(lambda: max(updates, default=0) >= max(3, args.steps // 2))
    settle(0.3)
    path = args.outdir / "finetune_during.png"
    save_window(viewer, path)
    wait_until(lambda: not finetune.busy)
    print(f"fine-tuned {args.steps} steps and re-segmented in {time.perf_counter() - started:.1f} s")
    settle(1.0)
    path = args.outdir / "finetune_widget.png"
    save_window(viewer, path)
    print(finetune.result.text())
    viewer.close()


if __name__ == "__main__":
    main()
