"""Out-of-domain check: the bundled 2D model on 3D nuclei stacks (slice by slice + Z stitching).

    python benchmarks/stacks_3d.py ../shared/data/stacks

Reports 3D object F1 at IoU 0.5...0.9 for every .npz stack in the folder
(labels: cells3d's are automatic, not manual; stardist's are synthetic).
"""

import sys
import time
from pathlib import Path

import numpy as np

import cellrefine as cr
from cellrefine.metrics import object_scores

model = cr.load_model()
for path in sorted(Path(sys.argv[1]).glob("*.npz")):
    with np.load(path, allow_pickle=False) as data:
        image, labels = data["image"], data["labels"]
    started = time.perf_counter()
    seg = cr.segment(image, model=model, axes="ZYX", device="cpu")
    seconds = time.perf_counter() - started
    scores = object_scores(labels, seg.instances)
    print(
        f"{path.stem}: {image.shape} -> {int(seg.instances.max())} objects (truth {len(np.unique(labels)) - 1}); "
        f"3D F1@0.5 {scores['f1'][0]:.3f}, F1@0.75 {scores['f1'][5]:.3f}, mean F1 {scores['mean_f1']:.3f}; "
        f"merges {scores['merges']}, splits {scores['splits']} ({seconds:.1f} s)"
    )
