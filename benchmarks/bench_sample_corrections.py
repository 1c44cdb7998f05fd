"""A few corrections on the bundled cells sample, as a user makes them: what happens to the rest.

    python benchmarks/bench_sample_corrections.py --compare ../shared/data/cells/val
    python benchmarks/bench_sample_corrections.py --objects 5 --compare FOLDER learning_rate=5e-4

Segments the cells sample (a 512 x 512 crop of Usiigaci set 1) with the bundled cells model, takes
the first ``--objects`` objects of "Review next" (``cr.rank_objects``), erases each and paints the
true cell(s) there from the sample's labels (the erased and painted pixels are the reviewed mask),
fine-tunes with the default settings (or ``NAME=VALUE`` overrides), and prints F1@0.5 / mean F1
on the sample and on the ``--compare`` folders before and after, with the fine-tuned model's own
(re-picked) thresholds. The same procedure is the regression test
``tests/test_bundled_cells_model.py::test_a_few_corrections_do_not_undo_the_rest_of_the_image``.
Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def correct_top_objects(instances: np.ndarray, ranking, truth: np.ndarray, n_objects: int):
    """Labels and reviewed mask after erasing the ``n_objects`` first-ranked objects and painting the true cells there.

    ``ranking``: "Review next"'s order (``cr.rank_objects``; missed-object candidates, label < 0, are
    skipped). A true cell is painted when at least a fifth of it lies under the erased object; new ids
    are the labels' maximum + 1 at the time. Also used by ``scripts/make_screenshot_cells.py`` (which
    paints the result into the napari layer) and by the regression test on the shipped sample.
    """
    instances = np.asarray(instances)
    corrected, reviewed = instances.astype(np.int64), np.zeros(instances.shape, bool)
    for item in [item for item in ranking if item.label > 0][:n_objects]:
        region = instances == item.label
        corrected[region] = 0
        reviewed |= region
        for true_id in np.unique(truth[region]):
            if true_id and (truth[region] == true_id).sum() > 0.2 * (truth == true_id).sum():  # a true cell mostly under it
                corrected[truth == true_id] = corrected.max() + 1
                reviewed |= truth == true_id
    return corrected, reviewed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="NAME=VALUE", help="fine-tuning settings, e.g. learning_rate=5e-4")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--compare", nargs="*", default=[], help="folders of .npz image/label pairs to score before and after")
    args = parser.parse_args(argv)

    from _common import parse_options
    from evaluate import load_folder

    import cellrefine as cr
    from cellrefine.data import load_sample_cells
    from cellrefine.metrics import aggregate, object_scores

    image, truth = load_sample_cells(), load_sample_cells(labels=True).astype(np.int64)
    sets = {"sample": [(image, truth, "cells_sample")]} | {folder: load_folder(folder) for folder in args.compare}

    def scores(model) -> str:
        parts = []
        for name, pairs in sets.items():
            summary = aggregate([object_scores(labels, cr.segment(im, model, axes="YX", device="cpu").instances) for im, labels, _ in pairs])
            parts.append(f"{name}: F1@0.5 {summary['f1'][0]:.3f} mean F1 {summary['mean_f1']:.3f}")
        return " | ".join(parts)

    model = cr.load_model("cells")
    print("before:", scores(model), flush=True)
    segmentation = cr.segment(image, model, axes="YX", device="cpu", return_probabilities=True)
    ranking = cr.rank_objects(segmentation.probabilities, segmentation.instances, settings=segmentation.settings)
    corrected, reviewed = correct_top_objects(segmentation.instances, ranking, truth, args.objects)
    started = time.perf_counter()
    tuned = cr.finetune(model, [image], [corrected], masks=[reviewed], device="cpu", **parse_options(args.overrides))
    print(f"fine-tuned on {args.objects} corrected objects ({int(reviewed.sum())} reviewed px) in {time.perf_counter() - started:.0f} s")
    print("\n".join(cr.finetune_summary(tuned)))
    print(f"teacher confidence {tuned.config['provenance'][-1]['teacher_confidence']}")
    print("after: ", scores(tuned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
