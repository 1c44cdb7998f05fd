"""The fine-tune policy the core owns: stop, best checkpoint on held-back pixels, calibration,
honest before/after figures, bounded scoring, the summary, settings and precision."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

import cellrefine
import cellrefine.training as training
from cellrefine.metrics import correction_scores, pixel_iou
from cellrefine.targets import instances_to_semantic
from cellrefine.training import (
    FinetuneSettings,
    Plane,
    SampleSet,
    TrainSettings,
    finetune,
    finetune_summary,
    iter_finetune,
    reviewed_mask_from_labelled_planes,
    training_autocast_dtype,
)
from cellrefine.training.scoring import MIN_HOLDOUT_WINDOWS, WINDOW, evaluation_planes, plan_score_windows, score_window_budget

FAST = {"crop_size": 32, "batch_size": 2, "device": "cpu"}


def run(generator):
    """Drive an iter_finetune generator; return (updates, returned model)."""
    updates = []
    while True:
        try:
            updates.append(next(generator))
        except StopIteration as done:
            return updates, done.value


def weights(model):
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tiled_blobs(blobs, repeats=6):
    """The blobs image tiled ``repeats`` x ``repeats`` times, with unique ids (384² for 6)."""
    image, labels = blobs
    big_image = np.tile(image, (repeats, repeats))
    tiles = [[np.where(labels > 0, labels + 10 * (r * repeats + c), 0) for c in range(repeats)] for r in range(repeats)]
    return big_image, np.block(tiles).astype(np.int32)


# ----------------------------------------------------------------------------- honest numbers


def test_before_and_after_figures_are_those_of_the_parent_and_the_returned_model(make_model, blobs):
    # fails on the code before issue 10: with frozen BatchNorm (the default) nothing bumped the weights' version
    # counters, so metrics_after came from the parent's cached inference copy and equalled metrics_before
    image, labels = blobs
    parent = make_model(seed=0, base_channels=8)
    tuned = finetune(parent, [image], [labels], steps=40, crop_size=64, batch_size=4, learning_rate=5e-3, device="cpu")
    record = tuned.config["provenance"][-1]
    assert record["metrics_before"] != record["metrics_after"]
    assert record["objects_before"] != record["objects_after"]
    semantic = instances_to_semantic(labels)
    results = {}
    for key, model in (("before", parent), ("after", tuned)):
        result = results[key] = cellrefine.segment(image, model=model, device="cpu")
        iou = pixel_iou(semantic, result.semantic)
        assert record[f"metrics_{key}"]["reviewed_accuracy"] == pytest.approx(np.mean(result.semantic == semantic), abs=1e-12)
        assert record[f"metrics_{key}"]["reviewed_iou_cell"] == pytest.approx(iou[1], abs=1e-12)
        assert record[f"metrics_{key}"]["reviewed_iou_boundary"] == pytest.approx(iou[2], abs=1e-12)
    parent_instances = results["before"].instances
    assert record["objects_before"] == correction_scores(parent_instances, labels, None, parent_instances)
    assert record["objects_after"] == correction_scores(parent_instances, labels, None, results["after"].instances)
    assert record["objects_after"]["corrected_right"] == record["objects_after"]["corrected"] > 0


# ----------------------------------------------------------------------------- stop, checkpoints


def test_stop_ends_after_the_current_step_and_still_returns_a_calibrated_model(tiny_model, blobs):
    image, labels = blobs
    stop = threading.Event()
    generator = iter_finetune(tiny_model, [image], [labels], steps=40, stop=stop, **FAST)
    updates = []
    while True:
        try:
            update = next(generator)
        except StopIteration as done:
            tuned = done.value
            break
        updates.append(update)
        if update.phase == "training" and update.step == 3:
            stop.set()
    assert [u.step for u in updates if u.phase == "training"] == [1, 2, 3]
    assert [u.phase for u in updates] == ["preparing", "training", "training", "training", "scoring", "calibrating"]
    assert all(u.message for u in updates)
    record = tuned.config["provenance"][-1]
    assert record["steps"] == 3 and record["planned_steps"] == 40 and record["stopped_early"] is True
    assert record["checkpoint"]["scores"][-1][0] == 3  # the last step is scored before choosing
    assert "postprocess_calibration" in record
    assert tuned.config["postprocess"]["foreground_threshold"] == record["thresholds_after"]["foreground_threshold"]
    assert "stopped after 3 of 40 steps" in finetune_summary(tuned)
    with pytest.raises(TypeError, match="is_set"):
        next(iter_finetune(tiny_model, [image], [labels], stop=object(), **FAST))


def test_progress_returning_false_stops_through_the_same_policy(tiny_model, blobs):
    image, labels = blobs
    tuned = finetune(tiny_model, [image], [labels], steps=40, progress=lambda step, total: step < 2, **FAST)
    record = tuned.config["provenance"][-1]
    assert (record["steps"], record["stopped_early"]) == (2, True)
    assert "postprocess_calibration" in record


def test_keep_best_returns_the_best_checkpoint_judged_on_held_back_pixels(make_model, blobs):
    image, labels = tiled_blobs(blobs)
    parent = make_model(seed=1)
    generator = iter_finetune(parent, [image], [labels], steps=6, validate_every=2, learning_rate=0.05, freeze_norm=False, **FAST)
    updates, tuned = run(generator)
    snapshots = {u.step: u.model for u in updates if u.phase == "training" and u.model is not None}
    record = tuned.config["provenance"][-1]
    checkpoint = record["checkpoint"]
    assert checkpoint["held_out"] is True and checkpoint["judged_on"].startswith("held-back reviewed pixels")
    assert [step for step, _ in checkpoint["scores"]] == [2, 4, 6] == sorted(snapshots)
    best_score = max(score for _, score in checkpoint["scores"])
    assert checkpoint["step"] == max(step for step, score in checkpoint["scores"] if score == best_score)
    assert same_weights(weights(tuned), weights(snapshots[checkpoint["step"]]))
    # switched off: the last step, and nothing held back
    last = finetune(parent, [image], [labels], steps=6, validate_every=2, learning_rate=0.05, freeze_norm=False, keep_best=False, **FAST)
    assert last.config["provenance"][-1]["checkpoint"]["step"] == 6
    assert last.config["provenance"][-1]["checkpoint"]["held_out"] is False
    assert same_weights(weights(last), weights(snapshots[6])) is False  # trained on the held-back pixels too


def test_held_back_windows_are_not_trained_on(tiny_model, blobs):
    image, labels = tiled_blobs(blobs)
    settings = TrainSettings(crop_size=32, batch_size=2)
    planes = training.collect_planes([image], [labels], model=tiny_model)
    windows = plan_score_windows(planes, settings)
    (exclude,) = windows.exclude
    total = image.size
    assert windows.held_out and settings.holdout * total <= exclude.sum() < settings.holdout * total + WINDOW**2
    assert windows.held_out_pixels == exclude.sum()
    sample = SampleSet(planes, "instances", settings, exclude=windows.exclude)[0]
    assert (sample.weights[exclude] == 0).all() and (sample.weights[~exclude] > 0).all()
    assert len(windows.images) == min(score_window_budget(settings, windows.images.shape[-1]), len(windows.images))
    assert windows.valid.all()  # every scored pixel is reviewed (and held back)
    again = plan_score_windows(planes, settings)
    np.testing.assert_array_equal(again.exclude[0], exclude)  # deterministic from the seed
    other = plan_score_windows(planes, dataclasses.replace(settings, seed=1))
    assert not np.array_equal(other.exclude[0], exclude)


def test_few_reviewed_pixels_judge_checkpoints_on_training_pixels_and_say_so(tiny_model, blobs):
    image, labels = blobs
    tuned = finetune(tiny_model, [image], [labels], steps=2, **FAST)
    checkpoint = tuned.config["provenance"][-1]["checkpoint"]
    assert checkpoint["held_out"] is False and checkpoint["judged_on"].startswith("training pixels")
    planes = training.collect_planes([image], [labels], model=tiny_model)
    assert plan_score_windows(planes, TrainSettings()).exclude == [None]
    assert len(planes) * 4 < MIN_HOLDOUT_WINDOWS


# ----------------------------------------------------------------------------- bounded cost


def test_scoring_and_evaluation_are_bounded_whatever_the_number_of_planes():
    rng = np.random.default_rng(0)
    settings = TrainSettings()
    planes = [Plane(rng.random((1, 256, 256), dtype=np.float32), np.ones((256, 256), np.int32)) for _ in range(100)]
    windows = plan_score_windows(planes, settings, grid=8)
    budget = score_window_budget(settings, windows.images.shape[-1])
    assert windows.images.shape == (budget, 1, 128, 128) and budget < 100 * 16
    # evaluation: 0.1 x 1.7 x 150 x 4 x 192² / 2.8 = 1.34 MPix, i.e. 20 planes of 256²
    chosen = evaluation_planes(planes, settings, steps_done=150)
    assert len(chosen) == 20 and chosen == evaluation_planes(planes, settings, steps_done=150)
    assert len(evaluation_planes(planes, settings, steps_done=1)) == 1  # at least one plane
    assert evaluation_planes(planes[:3], settings, steps_done=150) == [0, 1, 2]


def test_timings_exclude_preparation_from_the_training_rate(tiny_model, blobs):
    image, labels = blobs
    updates, _ = run(iter_finetune(tiny_model, [image], [labels], steps=3, **FAST))
    for update in updates:
        if update.phase != "training":
            continue
        m = update.metrics
        assert update.done == update.step
        assert m["training_seconds"] + m["preparation_seconds"] + m["scoring_seconds"] <= m["seconds"] + 1e-6
        assert m["steps_per_second"] == pytest.approx(update.step / m["training_seconds"])
        assert m["eta_seconds"] == pytest.approx((update.total - update.step) / m["steps_per_second"])


# ----------------------------------------------------------------------------- same answer for every caller


def test_api_and_generator_return_the_same_model(make_model, blobs):
    image, labels = blobs
    mask = np.zeros(labels.shape, bool)
    mask[:40] = True
    settings = FinetuneSettings(steps=6, validate_every=3, crop_size=32, batch_size=2)
    direct = finetune(make_model(seed=0), [image], [labels], [mask], device="cpu", settings=settings)
    stop = threading.Event()
    _, driven = run(iter_finetune(make_model(seed=0), [image], [labels], [mask], device="cpu", settings=settings, stop=stop))
    assert same_weights(weights(direct), weights(driven))
    assert direct.config["postprocess"] == driven.config["postprocess"]
    a, b = direct.config["provenance"][-1], driven.config["provenance"][-1]
    for key in ("metrics_before", "metrics_after", "objects_before", "objects_after", "checkpoint", "data_sha256", "postprocess_calibration"):
        assert a[key] == b[key], key


# ----------------------------------------------------------------------------- provenance, summary, masks


def test_provenance_has_versions_and_a_data_hash_and_no_global_rng_use(tiny_model, blobs):
    image, labels = blobs
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002 - the legacy global generator, checked untouched
    tuned = finetune(tiny_model, [image], [labels], steps=2, **FAST)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))  # noqa: NPY002
    record = tuned.config["provenance"][-1]
    assert record["versions"] == {"cellrefine": cellrefine.__version__, "torch": torch.__version__, "numpy": np.__version__}
    assert len(record["data_sha256"]) == 64 and record["parent_file"] is None
    other = finetune(tiny_model, [image], [np.where(labels == labels.max(), 0, labels)], steps=1, **FAST)  # one object fewer
    assert other.config["provenance"][-1]["data_sha256"] != record["data_sha256"]


def test_finetune_summary_in_words(tiny_model):
    assert finetune_summary(tiny_model) == []
    model = tiny_model.copy()
    model.config["provenance"] = [
        {
            "kind": "finetune",
            "steps": 150,
            "planned_steps": 150,
            "stopped_early": False,
            "checkpoint": {"step": 125, "judged_on": "held-back reviewed pixels"},
            "data_shapes": [[64, 64]] * 2,
            "evaluated_planes": 1,
            "metrics_before": {"reviewed_accuracy": 0.8123},
            "metrics_after": {"reviewed_accuracy": 0.9349},
            "objects_after": dict(corrected=8, corrected_right=7, unreviewed=112, unreviewed_kept=112, confirmed=3, confirmed_kept=3),
            "thresholds_before": {"foreground_threshold": 0.8, "seed_threshold": 0.7},
            "thresholds_after": {"foreground_threshold": 0.75, "seed_threshold": 0.7},
            "postprocess_calibration": [],
        }
    ]
    assert finetune_summary(model) == [
        "7 of 8 corrected objects now right; 0 of 112 unreviewed objects changed",
        "reviewed pixel accuracy 0.81 → 0.93",
        "thresholds re-picked on your reviewed pixels: foreground 0.80 → 0.75, seed 0.70 → 0.70",
        "kept the checkpoint of step 125 of 150, the best on held-back reviewed pixels",
        "figures measured on 1 of 2 reviewed planes",
    ]
    model.config["provenance"][-1]["metrics_after"]["reviewed_accuracy"] = 0.5
    assert finetune_summary(model)[-1].startswith("warning: less accurate than before")
    model.config["provenance"][-1]["thresholds_after"] = {"foreground_threshold": 0.8, "seed_threshold": 0.7}
    assert "thresholds checked on your reviewed pixels and kept: foreground 0.80, seed 0.70" in finetune_summary(model)


def test_reviewed_mask_from_labelled_planes():
    labels = np.zeros((2, 3, 5, 6), np.uint16)
    labels[0, 1, 2, 2] = 4
    labels[1, 2, 0, 0] = 1
    mask = reviewed_mask_from_labelled_planes(labels, "TZYX")
    assert mask.dtype == bool and mask.shape == labels.shape
    assert mask.all(axis=(2, 3)).tolist() == [[False, True, False], [False, False, True]]
    assert not mask.any(axis=(2, 3))[0, 0]
    np.testing.assert_array_equal(reviewed_mask_from_labelled_planes(labels, "TZCYX"), mask)  # the image's axes work too
    moved = np.moveaxis(labels, 1, 3)  # T Y X Z
    np.testing.assert_array_equal(reviewed_mask_from_labelled_planes(moved, "TYXZ"), np.moveaxis(mask, 1, 3))
    assert reviewed_mask_from_labelled_planes(np.zeros((4, 4), int), "YX").sum() == 0
    assert reviewed_mask_from_labelled_planes(np.eye(4, dtype=int), "YX").all()


# ----------------------------------------------------------------------------- settings, precision, failures


@pytest.mark.parametrize(
    ("override", "error", "match"),
    [
        ({"learning_rate": float("inf")}, ValueError, "learning_rate must be a finite number"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate must be a finite number"),
        ({"learning_rate": "fast"}, TypeError, "learning_rate must be a number"),
        ({"dice": -1.0}, ValueError, "dice must be non-negative"),
        ({"w0": float("inf")}, ValueError, "w0 must be a finite number"),
        ({"elastic": 1.5}, ValueError, "elastic is a probability"),
        ({"holdout": 0.6}, ValueError, "holdout"),
        ({"precision": "fp16"}, ValueError, "precision must be one of"),
        ({"keep_best": "yes"}, TypeError, "keep_best must be True or False"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
        ({"steps": True}, ValueError, "steps must be a positive integer"),
        ({"boundary_width": 1.5}, ValueError, "boundary_width must be a positive integer"),
    ],
)
def test_every_setting_is_validated(tiny_model, blobs, override, error, match):
    image, labels = blobs
    with pytest.raises(error, match=match):
        TrainSettings(**override).validate()
    with pytest.raises(error, match=match):
        finetune(tiny_model, [image], [labels], **{**FAST, **override})


def test_precision_is_a_setting(make_model, blobs):
    cpu = torch.device("cpu")
    assert training_autocast_dtype(cpu, "float32") is None
    assert training_autocast_dtype(cpu, "bfloat16") is torch.bfloat16
    from cellrefine.device import cpu_bf16_supported

    assert training_autocast_dtype(cpu, "auto") is (torch.bfloat16 if cpu_bf16_supported() else None)
    with pytest.raises(ValueError, match="precision"):
        training_autocast_dtype(cpu, "half")
    assert not hasattr(training, "CPU_BF16_TRAINING")
    image, labels = blobs
    full = finetune(make_model(seed=0), [image], [labels], steps=2, precision="float32", freeze_norm=False, **FAST)
    half = finetune(make_model(seed=0), [image], [labels], steps=2, precision="bfloat16", freeze_norm=False, **FAST)
    assert full.config["provenance"][-1]["settings"]["precision"] == "float32"
    assert not same_weights(weights(full), weights(half))


def test_a_non_finite_loss_stops_with_a_clear_error(tiny_model, blobs):
    image, labels = blobs
    # a learning rate that blows the weights up: the loss turns non-finite after the first update
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at step [2-9]"):
        finetune(tiny_model, [image], [labels], steps=6, precision="float32", changed_weight=1.0, distill=0.0, learning_rate=1e30, **FAST)


def test_non_finite_starting_weights_are_refused(tiny_model, blobs):
    image, labels = blobs
    broken = tiny_model.copy()
    with torch.no_grad():
        next(broken.network.parameters()).fill_(float("nan"))
    with pytest.raises((ValueError, FloatingPointError), match="not finite|loss became nan"):
        finetune(broken, [image], [labels], steps=3, precision="float32", changed_weight=1.0, distill=0.0, **FAST)


def test_train_from_scratch_uses_the_shared_settings(tmp_path, blobs):
    from cellrefine import train

    image, labels = blobs
    folder = tmp_path / "data"
    folder.mkdir()
    for k in range(2):
        np.savez(folder / f"b{k}.npz", image=image, labels=labels)
    arguments = [str(folder), "-o", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--crop-size", "32", "--depth", "2"]
    assert train.main([*arguments, "--base-channels", "4", "--save-every", "1"]) == 0
    model = cellrefine.load_model(tmp_path / "run" / "final.safetensors")
    record = model.config["provenance"][0]
    assert record["steps"] == 2 and record["data"] == f"{tmp_path.name}/data" and record["settings"]["steps"] == 2
    assert (tmp_path / "run" / "step_00001.safetensors").exists()
    assert record["settings"]["weighting"] == "unet" and record["settings"]["boundary_width"] == 2  # the defaults
    # --init continues from a model: its architecture (not --depth/--base-channels) and its weights
    first = model
    assert train.main([*arguments, "--base-channels", "8", "--init", str(tmp_path / "run" / "final.safetensors"), "-o", str(tmp_path / "more")]) == 0
    more = cellrefine.load_model(tmp_path / "more" / "final.safetensors")
    assert more.network.config() == first.network.config() and more.network.base_channels == 4
    assert more.config["provenance"][0]["parent"] == first.name
    moved = [
        float((a - b).abs().max()) for a, b in zip(more.network.state_dict().values(), first.network.state_dict().values()) if a.is_floating_point()
    ]
    assert 0 < max(moved) < 1.0  # trained on from the parent's weights (random weights would differ far more)
    # the loss options reach the settings (and the record of them)
    options = ["--weighting", "border", "--boundary-width", "1", "-o", str(tmp_path / "border")]
    assert train.main([*arguments, "--base-channels", "4", *options]) == 0
    settings = cellrefine.load_model(tmp_path / "border" / "final.safetensors").config["provenance"][0]["settings"]
    assert settings["weighting"] == "border" and settings["boundary_width"] == 1


def _squares(n_confident: int, faint: float = 0.75):
    """Probabilities (3, Y, X) of ``n_confident`` squares at cell 0.95 plus one faint square, and the true instances."""
    side, step = 6, 10
    count = n_confident + 1
    columns = 8
    rows = -(-count // columns)
    truth = np.zeros((rows * step + 4, columns * step + 4), np.int32)
    cell = np.zeros(truth.shape, np.float32)
    for k in range(count):
        y, x = 2 + (k // columns) * step, 2 + (k % columns) * step
        truth[y : y + side, x : x + side] = k + 1
        cell[y : y + side, x : x + side] = 0.95 if k < n_confident else faint
    probabilities = np.stack([1 - cell, cell, np.zeros_like(cell)])
    return probabilities, truth


def test_calibration_moves_only_for_a_clear_gain():
    from cellrefine.training import calibrate_postprocess

    current = {"foreground_threshold": 0.8, "seed_threshold": 0.7, "min_seed_size": 4, "min_size": 15, "stitch_threshold": 0.25}
    # 1 of 2 objects is missed at foreground 0.8: recovering it is a large gain, the thresholds move
    probabilities, truth = _squares(1)
    chosen, _ = calibrate_postprocess([probabilities], [[("reviewed", truth, None)]], current)
    assert chosen["foreground_threshold"] < 0.75
    # 1 of 61 missed: the gain (mean F1 +0.008) is below the margin, the current thresholds stay
    probabilities, truth = _squares(60)
    chosen, table = calibrate_postprocess([probabilities], [[("reviewed", truth, None)]], current)
    assert chosen["foreground_threshold"] == 0.8 and chosen["seed_threshold"] == 0.7
    assert max(score for _, _, score in table) > table[0][2]  # a better pair existed, but not by enough


def test_distillation_is_dropped_where_the_parent_is_out_of_its_domain(tiny_model, blobs):
    from cellrefine.training import SampleSet, TrainSettings, collect_planes

    image, labels = blobs
    mask = np.zeros(labels.shape, bool)
    mask[: labels.shape[0] // 2] = True
    planes = collect_planes([image], [labels], [mask], None, "instances", tiny_model)
    confident = SampleSet(planes, settings=TrainSettings(distill_confidence=0.0), parent=tiny_model)
    assert confident[0].teacher is not None
    confidence = confident.teacher_confidence[0]
    assert 0 < confidence <= 1
    strict = SampleSet(planes, settings=TrainSettings(distill_confidence=min(1.0, confidence + 1e-3)), parent=tiny_model)
    assert strict[0].teacher is None and strict.teacher_confidence[0] == confidence
    tuned = finetune(tiny_model, [image], [labels], masks=[mask], steps=2, **{**FAST, "distill_confidence": 0.0})
    assert tuned.config["provenance"][-1]["teacher_confidence"] == [confidence]


def test_teacher_confidence_leaves_out_the_boundary_band(tiny_model, blobs, monkeypatch):
    # a parent at home on background and cells but unsure on the boundary band (dense objects) keeps its distillation
    from cellrefine import tiling
    from cellrefine.training import SampleSet, TrainSettings, collect_planes
    from cellrefine.training.samples import teacher_confidence

    probabilities = np.zeros((3, 4, 4), np.float32)
    probabilities[:, :2] = np.array([0.95, 0.04, 0.01])[:, None, None]  # top half: background at 0.95
    probabilities[:, 2:] = np.array([0.25, 0.3, 0.45])[:, None, None]  # bottom half: boundary at 0.45
    everywhere = np.ones((4, 4), bool)
    assert teacher_confidence(probabilities, everywhere) == pytest.approx(0.95)  # not (0.95 + 0.45) / 2 = 0.7
    only_boundary = np.zeros((4, 4), bool)
    only_boundary[2:] = True
    assert teacher_confidence(probabilities, only_boundary) == pytest.approx(0.45)  # nothing else unreviewed: all of it counts

    image, labels = blobs
    mask = np.zeros(labels.shape, bool)
    mask[: labels.shape[0] // 2] = True
    planes = collect_planes([image], [labels], [mask], None, "instances", tiny_model)
    parent = np.zeros((3, *labels.shape), np.float32)
    parent[0], parent[1], parent[2] = 0.92, 0.03, 0.05  # background at 0.92 ...
    band = instances_to_semantic(labels, 2) == 2
    parent[:, band] = np.array([0.35, 0.25, 0.4])[:, None]  # ... boundary at 0.4 on the band: 0.9 is out of reach over all pixels
    monkeypatch.setattr(tiling, "predict_probabilities", lambda network, image, device=None: parent.copy())
    samples = SampleSet(planes, settings=TrainSettings(distill_confidence=0.9), parent=tiny_model)
    assert samples[0].teacher is not None and samples.teacher_confidence[0] == pytest.approx(0.92)
    assert float(parent.max(axis=0)[~mask].mean()) < 0.9  # the old rule (all unreviewed pixels) would have dropped it


def test_min_size_rises_only_when_small_pieces_are_fragments():
    from cellrefine.training.calibrate import MIN_SIZE_FRACTIONS, calibrate_min_size

    current = {
        "foreground_threshold": 0.5,
        "seed_threshold": 0.6,
        "boundary_weight": 1.0,
        "min_seed_size": 1,
        "min_size": 15,
        "stitch_threshold": 0.25,
    }
    truth = np.zeros((80, 120), np.int32)
    cell = np.zeros(truth.shape, np.float32)
    for k in range(4):  # four true 20 x 20 objects (area 400)
        truth[10:30, 5 + 28 * k : 25 + 28 * k] = k + 1
        cell[10:30, 5 + 28 * k : 25 + 28 * k] = 0.95
    for k in range(6):  # six predicted 5 x 5 pieces (area 25 > min_size 15) where there is nothing
        cell[50:55, 5 + 18 * k : 10 + 18 * k] = 0.95
    probabilities = np.stack([1 - cell, cell, np.zeros_like(cell)])
    chosen, table = calibrate_min_size([probabilities], [[("reviewed", truth, None)]], current)
    assert [size for size, _ in table] == [15] + [int(round(f * 400)) for f in MIN_SIZE_FRACTIONS]  # 15, 20, 40, 100
    assert table[0][1] < 0.6 and chosen["min_size"] in (40, 100)  # 4 of 10 predicted objects are right before; all after
    assert {k: v for k, v in chosen.items() if k != "min_size"} == {k: v for k, v in current.items() if k != "min_size"}
    # the same objects without the pieces: nothing to gain, min_size stays
    clean = cell.copy()
    clean[50:55] = 0
    chosen, table = calibrate_min_size([np.stack([1 - clean, clean, np.zeros_like(clean)])], [[("reviewed", truth, None)]], current)
    assert chosen["min_size"] == 15 and len(table) == 4
    # no reviewed object: nothing to measure, nothing changes
    chosen, table = calibrate_min_size([probabilities], [[("kept", truth, None)]], current)
    assert chosen == current and table == []


def test_calibration_grid_follows_the_boundary_weight():
    # weight 1 (nuclei): foreground 0.5-0.8; part of the boundary (cells, 0.3): the grid shifted down to 0.3-0.6
    from cellrefine.training.calibrate import CALIBRATION_GRID, PARTIAL_BOUNDARY_FOREGROUNDS, calibrate_postprocess

    truth = np.zeros((40, 40), np.int32)
    truth[10:30, 10:30] = 1
    cell = np.where(truth > 0, 0.9, 0.05).astype(np.float32)
    probabilities = np.stack([1 - cell, cell, np.zeros_like(cell)])
    references = [[("reviewed", truth, None)]]
    for weight, current_fg, expected in ((1.0, 0.8, CALIBRATION_GRID["foreground_threshold"]), (0.3, 0.4, PARTIAL_BOUNDARY_FOREGROUNDS)):
        current = {"foreground_threshold": current_fg, "seed_threshold": 0.6, "boundary_weight": weight}
        chosen, table = calibrate_postprocess([probabilities], references, current)
        assert sorted({fg for fg, _, _ in table}) == sorted({current_fg, *expected})
        assert chosen["boundary_weight"] == weight and chosen["foreground_threshold"] == current_fg  # every pair scores 1.0: the current one stays
    assert PARTIAL_BOUNDARY_FOREGROUNDS == (0.3, 0.4, 0.5, 0.6) and CALIBRATION_GRID["foreground_threshold"] == (0.5, 0.6, 0.7, 0.8)
