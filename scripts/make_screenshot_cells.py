"""Screenshot of the bundled cells model on the cells sample, for docs/napari.md.

Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_screenshot_cells.py docs/images

Opens napari at 1600 × 1000, opens the "Cells (phase contrast)" sample as File › Open Sample
does, opens Segment from the plugin manifest, picks *cells (bundled)* in its Model dropdown (as a
user does), segments, and saves the whole window as ``cells_sample.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from make_screenshots import open_viewer, save_window, settle, wait_until


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
    viewer.close()


if __name__ == "__main__":
    main()
