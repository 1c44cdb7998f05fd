"""The bundled nuclei model: present, well-formed, and segmenting a known image correctly.

These tests FAIL (never skip) when the weights are missing: the plugin is of no
use without them. The known answer is a 256 x 256 crop of the packaged sample
with its BBBC039 ground truth (tests/data/README.md). The crop was in the
model's training data, so the bounds guard against regressions; they do not
measure accuracy on new images.
"""

import hashlib
import ntpath
import posixpath
from pathlib import Path

import numpy as np
import pytest

import cellrefine
from cellrefine.data import load_sample_nuclei
from cellrefine.metrics import match_instances, object_scores
from cellrefine.model.io import BUNDLED_MODEL, bundled_model_path, load_model

REFERENCE = Path(__file__).parent / "data" / "nuclei_sample_crop_labels.npz"
CROP = 256
# Measured with the bundled weights (CPU, float32 and bfloat16 alike): 36 objects for 35 true ones,
# F1@0.5 0.958, mean F1 (IoU 0.5...0.9) 0.864, 0 merges, 1 split. The bounds leave room for other
# devices and precisions, not for a broken model (an untrained one scores F1 0).
N_TRUE = 35
COUNT_TOLERANCE = 4
MIN_F1_AT_05 = 0.92
MIN_MEAN_F1 = 0.80
MAX_MERGES_AND_SPLITS = 3
POSTPROCESS = {"foreground_threshold": 0.8, "seed_threshold": 0.7, "min_seed_size": 4, "min_size": 15, "stitch_threshold": 0.25}


@pytest.fixture(scope="module")
def bundled():
    return load_model()


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE, allow_pickle=False) as data:
        field, y, x = (int(v) for v in data["origin"])
        image = np.ascontiguousarray(load_sample_nuclei()[field, y : y + CROP, x : x + CROP])
        if hashlib.sha256(image.tobytes()).hexdigest() != str(data["image_sha256"]):
            pytest.fail(f"the packaged sample no longer matches {REFERENCE.name}; regenerate the reference (tests/data/README.md)")
        return image, data["labels"]


def test_bundled_weights_are_installed():
    path = bundled_model_path()
    assert path.is_file(), f"bundled weights missing at {path}: the package is incomplete (cellrefine/model/weights/{BUNDLED_MODEL}.safetensors)"
    assert path.stat().st_size > 1_000_000


def test_bundled_model_loads_and_segments(bundled):
    assert bundled.path == "bundled:nuclei_v1"
    assert bundled.name == "nuclei_v1"
    assert bundled.config["format"] == "cellrefine-model"
    assert bundled.network.in_channels == 1 and bundled.network.out_channels == 3
    assert bundled.class_names == ["background", "cell", "boundary"]
    result = cellrefine.segment(np.zeros((32, 32), np.uint16), model=bundled, device="cpu")
    assert result.instances.shape == (32, 32)
    assert not result.instances.any()  # a blank image has no nuclei


def test_bundled_config(bundled):
    config = bundled.config
    assert config["postprocess"] == POSTPROCESS
    assert config["normalization"] == {"low_percentile": 1.0, "high_percentile": 99.8}
    assert "channels" not in config
    assert "BSD-3-Clause" in config["license"]


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_bundled_provenance_is_portable_and_records_the_thresholds(bundled):
    provenance = bundled.config["provenance"]
    assert [record["kind"] for record in provenance] == ["train", "bundle"]
    for text in _strings(provenance):
        assert not (posixpath.isabs(text) or ntpath.isabs(text)), f"machine path in the provenance: {text!r}"
    train, bundle = provenance
    assert train["data"] == "nuclei/train" and train["steps"] == 4000 and train["n_images"] == 721
    assert bundle["postprocess_before"] == {}
    assert bundle["postprocess_after"] == POSTPROCESS == bundled.config["postprocess"]
    assert "nuclei/val" in bundle["chosen_on"]


def test_bundled_model_segments_the_sample_crop(bundled, reference):
    image, truth = reference
    assert image.shape == truth.shape == (CROP, CROP) and image.dtype == np.uint16
    assert len(np.unique(truth)) - 1 == N_TRUE
    result = cellrefine.segment(image, model=bundled, device="cpu", return_probabilities=True)
    assert result.instances.shape == truth.shape
    n_pred = len(np.unique(result.instances)) - 1
    assert abs(n_pred - N_TRUE) <= COUNT_TOLERANCE, f"{n_pred} objects for {N_TRUE} true ones"
    at_05 = match_instances(truth, result.instances, threshold=0.5)
    assert at_05["n_true"] == N_TRUE and at_05["n_pred"] == n_pred
    assert at_05["f1"] >= MIN_F1_AT_05, at_05
    scores = object_scores(truth, result.instances)
    assert scores["mean_f1"] >= MIN_MEAN_F1, scores["mean_f1"]
    assert scores["merges"] + scores["splits"] <= MAX_MERGES_AND_SPLITS, (scores["merges"], scores["splits"])
    # the probabilities agree with the labels: nuclei are mostly cell, the rest mostly background
    probabilities = result.probabilities.astype(np.float32)
    assert probabilities.shape == (3, CROP, CROP)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=0.01)
    classes = probabilities.argmax(axis=0)
    assert np.mean(classes[truth == 0] == 0) > 0.95
    assert np.mean(classes[truth > 0] > 0) > 0.9


def test_an_untrained_model_fails_the_same_bounds(reference, make_model):
    """The bounds above can fail: a random network does not reach them."""
    image, truth = reference
    untrained = make_model(seed=0)
    untrained.config["postprocess"] = dict(POSTPROCESS)
    result = cellrefine.segment(image, model=untrained, device="cpu")
    f1 = match_instances(truth, result.instances, threshold=0.5)["f1"]
    assert f1 < MIN_F1_AT_05
