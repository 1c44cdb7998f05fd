"""The bundled cells model: present, with its config, and segmenting the shipped cells sample correctly.

FAILS (never skips) when the weights or the sample are missing from the installed package, so a
packaging loss is caught. The known answer is the sample's own labels (a crop of Usiigaci set 1,
ids reduced to their largest piece). Set 1 is in the model's training split (cells/train), so
these bounds guard the weights, the sample and the pipeline; they do not measure accuracy on new
images (docs/model-card.md has the validation figures).
"""

import numpy as np
import pytest

import cellrefine as cr
from cellrefine.data import load_sample_cells
from cellrefine.metrics import object_scores

# Measured with the bundled weights and settings (CPU, bfloat16 and float32): 28 objects for 29 true
# ones, F1@0.5 0.947, mean F1 (IoU 0.5...0.9) 0.674, 0 merges, 1 split. The nuclei model finds 210
# objects and F1@0.5 0.0 on this image, so the bounds separate the two models clearly.
N_TRUE = 29
COUNT_TOLERANCE = 4
MIN_F1_AT_05 = 0.85
MIN_MEAN_F1 = 0.55
POSTPROCESS = {
    "foreground_threshold": 0.4,
    "seed_threshold": 0.6,
    "boundary_weight": 0.3,  # the outline inside the predicted boundary band (docs/model-card-cells.md)
    "min_seed_size": 128,
    "min_size": 300,
    "stitch_threshold": 0.25,
}


@pytest.fixture(scope="module")
def cells_model():
    return cr.load_model("cells")


def test_cells_model_has_its_architecture_and_thresholds(cells_model):
    assert cells_model.name == "cells_v1"
    architecture = cells_model.config["architecture"]
    assert (architecture["depth"], architecture["base_channels"]) == (4, 16)  # receptive radius 122 px: a whole cell (~70 px) in view
    assert cells_model.network.receptive_radius == 122
    assert cells_model.config["postprocess"] == POSTPROCESS
    assert "Usiigaci" in cells_model.config["license"]
    kinds = [record["kind"] for record in cells_model.config["provenance"]]
    assert kinds == ["train", "bundle"] and cells_model.config["provenance"][0]["data"] == "cells/train"


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_cells_model_segments_the_cells_sample(cells_model, precision):
    image, truth = load_sample_cells(), load_sample_cells(labels=True)
    assert image.shape == truth.shape == (512, 512)
    seg = cr.segment(image, cells_model, axes="YX", device="cpu", precision=precision)
    scores = object_scores(truth, seg.instances)
    assert abs(int(seg.instances.max()) - N_TRUE) <= COUNT_TOLERANCE
    assert scores["f1"][0] >= MIN_F1_AT_05 and scores["mean_f1"] >= MIN_MEAN_F1, scores
    assert scores["merges"] + scores["splits"] <= 3
    # whole cells are large: every object is at least the model's min_size
    assert np.bincount(seg.instances.ravel())[1:].min() >= POSTPROCESS["min_size"]


def test_a_few_corrections_do_not_undo_the_rest_of_the_image(cells_model, load_benchmark):
    # The correction loop as a user runs it: segment, take the 3 objects "Review next" lists first, erase each
    # and paint the true cell(s) there (the reviewed pixels), fine-tune with the defaults, re-segment.
    # The sample is dense, so the model's mean top-class probability over all unreviewed pixels is 0.87 (its
    # boundary bands are unsure by nature); when that switched distillation off, the model learnt from the
    # 3 objects alone and the re-segmented sample fell to F1@0.5 0.62 / mean F1 0.26. Measured now: 0.947 / 0.647
    # (benchmarks/bench_sample_corrections.py prints these and the same on other images).
    image, truth = load_sample_cells(), load_sample_cells(labels=True).astype(np.int64)
    seg = cr.segment(image, cells_model, axes="YX", device="cpu", return_probabilities=True)
    ranking = cr.rank_objects(seg.probabilities, seg.instances, settings=seg.settings)
    corrected, reviewed = load_benchmark("bench_sample_corrections").correct_top_objects(seg.instances, ranking, truth, 3)
    tuned = cr.finetune(cells_model, [image], [corrected], masks=[reviewed], device="cpu")
    assert tuned.config["provenance"][-1]["teacher_confidence"][0] >= 0.9  # distillation kept the unreviewed pixels
    after = object_scores(truth, cr.segment(image, tuned, axes="YX", device="cpu").instances)
    assert after["f1"][0] >= 0.9 and after["mean_f1"] >= 0.55, after
