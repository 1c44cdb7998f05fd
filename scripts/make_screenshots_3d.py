"""Screenshots of CellRefine on a Z stack (3D mode, corrections in an XZ view) for docs/napari.md.

Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_screenshots_3d.py docs/images [--model PATH]

Opens napari at 1600 × 1000 with a synthetic stack (40 × 192 × 192 float32,
25 blurred ellipsoidal "nuclei", Z steps twice as long as the pixels, so the
layer's scale is (2, 1, 1)), opens Segment and Fine-tune from the plugin
manifest as the Plugins menu does (they share one tab group), chooses Stack
mode "3D (orthogonal views)" in Segment and segments the whole stack. Saves the whole window
(``viewer.screenshot(..., canvas_only=False)``) as

* ``segment_3d.png``: the instances in napari's 3D view, Segment panel open;
* ``correct_xz.png``: back in 2D with the axes rolled so that the canvas
  shows an XZ plane (Y sliced, through several nuclei); one object of that
  plane (the one furthest from the ground truth there) erased and painted
  again along its true outline with the Labels layer's ``fill``/``paint``
  (what the bucket and the brush do), and the Fine-tune panel showing the
  corrected objects it recorded. Fine-tuning is not run.

The bundled model is used (``--model`` for another); an untrained tiny model
only when the bundled weights are missing (the pictures then say so).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import open_viewer, save_window, settle, use_model, wait_until

Z_SPACING = 2.0
STACK_MODE_TEXT = "3D (orthogonal views)"
CAMERA_ANGLES = (-15.0, 35.0, 135.0)  # napari's (rx, ry, rz) in degrees
XZ_ZOOM = 1.3  # the XZ view, centred near the corrected object


def synthetic_nuclei_stack(shape=(40, 192, 192), z_spacing: float = Z_SPACING, n_nuclei: int = 25, seed: int = 0):
    """A Z stack of blurred ellipsoidal nuclei and its ground truth labels.

    Ellipsoids of radius 10–14 (in pixels of Y and X; Z radii in the same
    physical units, so with ``z_spacing`` 2 they span half as many planes),
    not overlapping, brightness 0.5–1.0, Gaussian blur sigma 1.5, background
    0.1 plus Gaussian noise (sd 0.03).

    Returns
    -------
    stack : ndarray, float32, ``shape``
    truth : ndarray, uint16, ``shape`` (0 background, 1..n the nuclei)
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    zz, yy, xx = np.meshgrid(np.arange(nz) * z_spacing, np.arange(ny), np.arange(nx), indexing="ij", sparse=True)
    nuclei = []
    for _ in range(5000):
        if len(nuclei) == n_nuclei:
            break
        radii = rng.uniform(10, 14, size=3)
        centre = np.array(
            [
                rng.uniform(radii[0] + 4, nz * z_spacing - radii[0] - 4),
                rng.uniform(radii[1] + 2, ny - radii[1] - 2),
                rng.uniform(radii[2] + 2, nx - radii[2] - 2),
            ]
        )
        if all(np.linalg.norm(centre - other) >= 0.95 * (radii.max() + other_radii.max()) for other, other_radii in nuclei):
            nuclei.append((centre, radii))
    stack = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.uint16)
    for label, (centre, radii) in enumerate(nuclei, 1):
        inside = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1
        stack[inside] = rng.uniform(0.5, 1.0)
        truth[inside] = label
    stack = ndi.gaussian_filter(stack, 1.5) + 0.1 + rng.normal(0, 0.03, shape).astype(np.float32)
    return stack.astype(np.float32), truth


def busiest_y(instances: np.ndarray, min_area: int = 150) -> int:
    """The Y index whose XZ plane cuts the most objects (each with at least ``min_area`` pixels there)."""
    counts = []
    for y in range(instances.shape[1]):
        ids, areas = np.unique(instances[:, y, :], return_counts=True)
        counts.append(int(((ids > 0) & (areas >= min_area)).sum()))
    return int(np.argmax(counts))


def correct_in_xz(instances, truth: np.ndarray, y: int, min_area: int = 150) -> tuple[int, int, float]:
    """In the XZ plane at ``y``: erase the object that fits the truth worst (bucket fill with 0), then paint it again
    with a new label along its true outline (brush strokes). Returns (erased label, new label, its IoU before)."""
    plane = np.array(instances.data[:, y, :])  # a copy: the fill below changes the layer
    true_plane = truth[:, y, :]
    fits = []
    for label, area in zip(*np.unique(plane[plane > 0], return_counts=True)):
        if area < min_area:
            continue
        ids, overlaps = np.unique(true_plane[plane == label], return_counts=True)
        true_label = int(ids[np.argmax(overlaps)])
        mask, true_mask = plane == label, true_plane == true_label
        iou = (mask & true_mask).sum() / (mask | true_mask).sum() if true_label else 0.0
        fits.append((float(iou), int(label), true_label))
    iou, erased, true_label = min(fits)
    z, x = np.argwhere(plane == erased)[int((plane == erased).sum()) // 2]
    instances.fill((int(z), y, int(x)), 0)  # napari fills in the displayed plane only: the XZ cross-section
    new_label = int(np.asarray(instances.data).max()) + 1
    instances.selected_label = new_label
    instances.brush_size = 4
    for z, x in np.argwhere(true_plane == true_label)[::3]:  # brush strokes over the true cross-section
        instances.paint((int(z), y, int(x)), new_label)
    return erased, new_label, iou


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--model", help="a saved model to use instead of the bundled one")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)

    from cellrefine._qt.session import get_session

    stack, truth = synthetic_nuclei_stack()
    viewer = open_viewer()
    image = viewer.add_image(stack, name="nuclei stack", scale=(Z_SPACING, 1.0, 1.0), colormap="gray", contrast_limits=(0.0, 1.0))
    viewer.dims.axis_labels = ("z", "y", "x")
    session = get_session(viewer)
    print(f"model: {use_model(session, args.model)}")

    # as the Plugins menu opens them (no tabify argument): the two panels join one tab group themselves
    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-cellrefine", "Segment")
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget("napari-cellrefine", "Fine-tune")
    settle(0.5)
    segment_dock.raise_()
    viewer.layers.selection.active = image
    segment.current_slice.value = False
    combo = segment.stack_mode.native  # the "Stack mode" drop-down, chosen by its text as a user would
    combo.setCurrentIndex(combo.findText(STACK_MODE_TEXT))
    if segment.stack_mode.value != "3d":
        raise SystemExit(f"Stack mode is {segment.stack_mode.value!r}, not '3d'")
    started = time.perf_counter()
    if segment.run() is None:
        raise SystemExit("Segment did not start (see the notification)")
    wait_until(lambda: not segment.controls.busy, timeout=1200)
    record = session.record_for(image)
    print(f"segmented in {time.perf_counter() - started:.1f} s; stack mode {record.segmentation.stack_mode}, scale {record.segmentation.scale}")
    instances, classes = record.layer("instances"), record.layer("classes")
    print(f"{int(instances.data.max())} objects (truth: {int(truth.max())})")

    if classes is not None:
        classes.visible = False
    image.opacity = 0.6
    image.contrast_limits = (0.25, 1.0)  # background black in 3D (a cleaner picture, and a smaller PNG)
    instances.opacity = 1.0
    viewer.axes.visible = True  # the z, y, x arrows
    viewer.layers.selection.active = instances
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 moved it
    camera.angles = CAMERA_ANGLES
    settle(3.0)  # after 1.5 s the status line under Run was still one line high (its three lines clipped)
    path = args.outdir / "segment_3d.png"
    save_window(viewer, path)

    # XZ view: Y sliced, Z shown as rows and X as columns
    viewer.dims.ndisplay = 2
    image.opacity = 1.0
    image.contrast_limits = (0.0, 1.0)
    instances.opacity = 0.7
    viewer.axes.visible = False
    viewer.dims.order = (1, 0, 2)
    y = busiest_y(np.asarray(instances.data))
    viewer.dims.set_point(1, y)
    if tuple(viewer.dims.displayed) != (0, 2):
        raise SystemExit(f"displayed axes are {tuple(viewer.dims.displayed)}, not (0, 2)")
    viewer.reset_view()
    instances.mode = "paint"
    erased, painted, iou = correct_in_xz(instances, truth, y)
    print(f"XZ plane y = {y}: erased object {erased} (IoU with the truth there {iou:.2f}), painted it again as {painted}")
    x = np.argwhere(np.asarray(instances.data[:, y, :]) == painted)[:, 1].mean()
    width = instances.data.shape[2]
    half_view = width / (2 * XZ_ZOOM)  # the view's half width in X after zooming (the X extent fills the canvas)
    camera.zoom *= XZ_ZOOM
    camera.center = (0.0, instances.data.shape[0] * Z_SPACING / 2, float(np.clip(x, half_view, width - half_view)))  # last two: (Z, X)
    finetune_dock.raise_()
    settle(1.0)
    finetune.apply_defaults()
    settle(1.0)
    tracker = session.tracker_for(instances)
    print(f"tracker: corrected (objects, pixels) {tracker.corrected_counts()}, slice_axes {tracker.slice_axes()!r}")
    print(finetune.corrections.summary.text())
    path = args.outdir / "correct_xz.png"
    save_window(viewer, path)
    viewer.close()


if __name__ == "__main__":
    main()
