"""The correction contract (issue 10): after a default fine-tune on corrections painted as in napari,
re-segmenting gets >= 80 % of the corrected objects right and keeps >= 95 % of the unreviewed ones.

The scene: nuclei-like discs the bundled model finds, bright squares it takes for nuclei (false
objects) and dim discs it misses. The corrected labels are the model's own instances with every
square erased and every dim disc painted; the reviewed mask is the edited objects plus an 8-pixel
margin, as the napari widget records it. Only the number of steps is below the default (60 of 150)
to keep the test fast; benchmarks/bench_finetune.py checks the same contract on real images.
"""

import numpy as np
from scipy import ndimage as ndi

import cellrefine
from cellrefine.metrics import correction_scores
from cellrefine.training import finetune_summary


def nuclei_scene(size: int = 256, seed: int = 0):
    """(image, true nuclei labels, squares mask): 24 bright discs, 8 dim discs (ids listed in ``dim``), 8 bright squares."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 0.08)
    truth = np.zeros((size, size), np.int32)
    squares = np.zeros((size, size), bool)
    dim, centres = [], []
    while len(centres) < 40:
        cy, cx = rng.integers(14, size - 14, 2)
        if any((cy - a) ** 2 + (cx - b) ** 2 < 26**2 for a, b in centres):
            continue
        centres.append((cy, cx))
        n, radius = len(centres), rng.uniform(7, 10)
        if n % 5 == 1:
            shape = (abs(yy - cy) <= 0.8 * radius) & (abs(xx - cx) <= 0.8 * radius)
            image[shape] = 1.0
            squares |= shape
            continue
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[shape] = 0.12 if n % 5 == 2 else 0.9
        truth[shape] = n
        if n % 5 == 2:
            dim.append(n)
    image = ndi.gaussian_filter(image, 1.0) + 0.02 * rng.standard_normal((size, size))
    return image.astype(np.float32), truth, squares, dim


def test_a_default_finetune_learns_the_corrections_and_keeps_the_rest():
    image, truth, squares, dim = nuclei_scene()
    model = cellrefine.load_model()
    parent = cellrefine.segment(image, model=model, device="cpu").instances.astype(np.int32)
    corrected, edited = parent.copy(), np.zeros(parent.shape, bool)
    false_objects = [i for i in np.unique(parent[squares]) if i and squares[parent == i].mean() > 0.5]
    for i in false_objects:
        edited |= parent == i
        corrected[parent == i] = 0
    for k, i in enumerate(dim, start=int(parent.max()) + 1):
        edited |= truth == i
        corrected[truth == i] = k
    reviewed = ndi.binary_dilation(edited, iterations=8)
    before = correction_scores(parent, corrected, reviewed, parent)
    assert before["erased"] == len(false_objects) == 8 and before["painted"] == len(dim) == 8  # the parent is wrong on all 16
    assert before["corrected_right"] == 0 and before["unreviewed"] >= 20

    tuned = cellrefine.finetune(model, [image], [corrected], [reviewed], steps=60, device="cpu")

    after = correction_scores(parent, corrected, reviewed, cellrefine.segment(image, model=tuned, device="cpu").instances)
    assert after["corrected_right"] >= 0.8 * after["corrected"]
    assert after["unreviewed_kept"] >= 0.95 * after["unreviewed"]
    record = tuned.config["provenance"][-1]
    assert record["objects_after"] == after and record["objects_before"] == before  # the figures shown are these
    assert finetune_summary(tuned)[0] == (
        f"{after['corrected_right']} of {after['corrected']} corrected objects now right; "
        f"{after['unreviewed'] - after['unreviewed_kept']} of {after['unreviewed']} unreviewed objects changed"
    )
