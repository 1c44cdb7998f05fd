"""Screenshot of the bundled cells model on the cells sample, for docs/napari.md.

Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_screenshot_cells.py docs/images

Opens napari at 1600 × 1000, opens the "Cells (phase contrast)" sample as File › Open Sample
does, opens Segment from the plugin manifest, picks *cells (bundled)* in its Model dropdown (as a
user does), segments, and saves the whole window as ``cells_sample.png``.

Then one round of the correction loop, as a user makes it: the 3 objects Review next lists first
are erased and the true cell(s) there painted from the sample's labels (``Labels.data_setitem``,
which the correction tracker records like brush strokes), Fine-tune runs with its defaults and
re-segments, and the window is saved as ``cells_finetuned.png``. It prints F1@0.5 / mean F1 of the
instances against the sample's labels before and after.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from make_screenshots import open_viewer, save_window, settle, wait_until


def correct_top_objects(instances_layer, ranking, truth: np.ndarray, n_objects: int = 3) -> None:
    """Erase the ``n_objects`` first-ranked objects and paint the true cell(s) under each, as one edit of the layer.

    The labels come from ``benchmarks/bench_sample_corrections.py`` (the same corrections as that
    benchmark and the regression test); ``Labels.data_setitem`` records the edit like brush strokes.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_sample_corrections import correct_top_objects as corrected_labels

    before = np.asarray(instances_layer.data)
    corrected, _ = corrected_labels(before, ranking, truth, n_objects)
    changed = corrected != before
    instances_layer.data_setitem(np.nonzero(changed), corrected[changed].astype(before.dtype))


def scores_text(truth: np.ndarray, instances: np.ndarray) -> str:
    from cellrefine.metrics import object_scores

    scores = object_scores(truth, instances)
    return f"{int(instances.max())} objects, F1@0.5 {scores['f1'][0]:.3f}, mean F1 {scores['mean_f1']:.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)

    viewer = open_viewer()
    viewer.open_sample("napari-cellrefine", "cells")
    image = viewer.layers[0]
    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-cellrefine", "Segment")
    settle(0.5)
    picker = segment.model_picker
    index = next(i for i in range(picker.combo.count()) if picker.combo.itemText(i).startswith("cells"))
    picker.combo.setCurrentIndex(index)
    picker.combo.activated.emit(index)
    settle(0.5)
    print(f"model: {segment.session.model.name}")
    viewer.layers.selection.active = image
    started = time.perf_counter()
    segment.run()
    wait_until(lambda: not segment.controls.busy)
    print(f"segmented in {time.perf_counter() - started:.1f} s")
    settle(3.0)  # the status label under Run needs a moment to take its full height
    path = args.outdir / "cells_sample.png"
    save_window(viewer, path)

    from cellrefine.data import load_sample_cells

    truth = load_sample_cells(labels=True).astype(np.int64)
    record = segment.session.record_for(image)
    instances = record.layer("instances")
    print(f"before: {scores_text(truth, np.asarray(instances.data))}")
    correct_top_objects(instances, record.ranking or [], truth)
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget("napari-cellrefine", "Fine-tune")
    settle(0.5)
    finetune_dock.raise_()
    finetune.apply_defaults()
    finetune.resegment.value = True
    started = time.perf_counter()
    if finetune.run() is None:
        raise SystemExit("Fine-tune did not start (see the notification)")
    wait_until(lambda: not finetune.busy)
    print(f"fine-tuned {finetune.steps.value} steps and re-segmented in {time.perf_counter() - started:.1f} s")
    settle(2.0)
    path = args.outdir / "cells_finetuned.png"
    save_window(viewer, path)
    print(finetune.result.text())
    print(f"after: {scores_text(truth, np.asarray(viewer.layers.selection.active.data))} ({viewer.layers.selection.active.name})")
    viewer.close()


if __name__ == "__main__":
    main()
