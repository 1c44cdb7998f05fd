"""napari widgets of CellRefine (Qt side): Segment, Fine-tune and their helpers.

The core (``cellrefine.*`` outside ``_qt``) never imports Qt or napari; this
package holds the widgets, the per-viewer session, correction tracking and
thread-worker helpers.
"""
