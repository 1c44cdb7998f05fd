"""benchmarks/diagnose_outlines.py: the reference "true outlines moved k px" has known answers on squares."""

from __future__ import annotations

import numpy as np


def test_move_outlines_in_and_out(load_benchmark):
    move_outlines = load_benchmark("diagnose_outlines").move_outlines
    instances = np.zeros((30, 40), np.int32)
    instances[5:15, 5:15] = 1  # isolated 10 x 10
    instances[5:15, 20:30] = 2  # two squares that touch along x = 30
    instances[5:15, 30:35] = 3
    inward = move_outlines(instances, -1)
    assert (inward == 1).sum() == 8 * 8 and (inward[6:14, 6:14] == 1).all()
    assert (inward == 2).sum() == 8 * 8 and (inward == 3).sum() == 8 * 3  # each loses its own ring, also along the shared border
    assert (move_outlines(instances, -2) == 1).sum() == 6 * 6
    outward = move_outlines(instances, 1)
    assert (outward[4:16, 5:15] == 1).all() and (outward[5:15, 4:16] == 1).all()
    assert (outward == 1).sum() == 12 * 12 - 4  # a 1-px (Euclidean) grow leaves the 4 diagonal corners out
    assert (outward[5:15, 20:30] == 2).all() and (outward[5:15, 30:35] == 3).all()  # neighbours do not grow into each other
    np.testing.assert_array_equal(move_outlines(instances, 0), instances)
    assert instances.sum() == 100 + 200 + 150  # the input is not modified
