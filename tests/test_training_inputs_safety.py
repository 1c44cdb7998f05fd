"""Hostile or unusual training inputs (issue 11): unknown settings, bool labels, class maps as instances,
odd reviewed masks and huge instance ids, each refused clearly or handled with a known answer."""

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage as ndi

import cellrefine
from cellrefine.metrics import correction_scores, object_scores
from cellrefine.postprocess import PostprocessSettings, probabilities_to_instances
from cellrefine.training import TrainSettings, collect_planes, finetune, reviewed_mask_from_labelled_planes
from cellrefine.training.inputs import LabelsWarning, looks_like_class_map

FAST = {"steps": 2, "crop_size": 32, "batch_size": 2, "device": "cpu", "validate_every": 2}
QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same_weights(a, b) -> bool:
    sa, sb = a.network.state_dict(), b.network.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- unknown settings


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: TrainSettings(foo=1), r"unknown fine-tuning setting 'foo'; the TrainSettings fields are: steps, batch_size, .*precision\."),
        (lambda: TrainSettings(learnng_rate=1e-3), r"'learnng_rate' \(did you mean 'learning_rate'\?\)"),
        (lambda: TrainSettings().replace(stepz=3), r"'stepz' \(did you mean 'steps'\?\)"),
        (lambda: TrainSettings(seed=1, sed=2, zzz=3), r"settings 'sed' \(did you mean 'seed'\?\), 'zzz'; the TrainSettings fields"),
        (
            lambda: PostprocessSettings(foreground=0.5),
            r"unknown post-processing setting 'foreground' \(did you mean 'foreground_threshold'\?\)",
        ),
        (
            lambda: PostprocessSettings(min_sise=3),
            r"'min_sise' \(did you mean 'min_size'\?\); the PostprocessSettings fields are: foreground_threshold, ",
        ),
    ],
)
def test_unknown_setting_names_it_and_suggests_the_field(build, match):
    with pytest.raises(TypeError, match=match):
        build()


def test_unknown_setting_at_the_public_boundaries(tiny_model, blobs):
    image, labels = blobs
    with pytest.raises(TypeError, match=r"unknown fine-tuning setting 'learnng_rate' \(did you mean 'learning_rate'\?\)"):
        finetune(tiny_model, [image], [labels], learnng_rate=1e-3, **FAST)
    with pytest.raises(TypeError, match=r"unknown fine-tuning setting 'learnng_rate'"):
        cellrefine.finetune(tiny_model, [image], [labels], learnng_rate=1e-3)
    with pytest.raises(TypeError, match=r"unknown post-processing setting 'foreground' \(did you mean 'foreground_threshold'\?\)"):
        cellrefine.segment(image, model=tiny_model, postprocess={"foreground": 0.5})
    probabilities = np.stack([np.ones((8, 8)), np.zeros((8, 8)), np.zeros((8, 8))]).astype(np.float32)
    with pytest.raises(TypeError, match=r"'min_sizes' \(did you mean 'min_size'\?\)"):
        probabilities_to_instances(probabilities, min_sizes=3)


@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        ({"foreground_threshold": "0.5"}, TypeError, r"foreground_threshold must be a number, got '0.5' of type str"),
        ({"seed_threshold": None}, TypeError, r"seed_threshold must be a number, got None"),
        ({"min_size": True}, TypeError, r"min_size must be a number, got True of type bool"),
        ({"stitch_threshold": [0.3]}, TypeError, r"stitch_threshold must be a number, got \[0.3\] of type list"),
        ({"min_size": float("inf")}, ValueError, r"min_size must be a non-negative integer, got inf"),
        ({"foreground_threshold": float("nan")}, ValueError, r"foreground_threshold must be in \[0, 1\], got nan"),
    ],
)
def test_postprocess_values_of_the_wrong_type_are_named(tiny_model, blobs, values, error, match):
    with pytest.raises(error, match=match):
        PostprocessSettings(**values).validate()
    with pytest.raises(error, match=match):
        cellrefine.segment(blobs[0], model=tiny_model, postprocess=values)


def test_whole_number_floats_are_valid_pixel_counts():
    assert PostprocessSettings(min_size=15.0, min_seed_size=np.int64(4)).validate().min_size == 15


@pytest.mark.parametrize(
    ("override", "match"),
    [({"weighting": ["unet"]}, "weighting must be one of"), ({"precision": np.array(["auto", "auto"])}, "precision must be one of")],
)
def test_choices_of_the_wrong_type_are_named(override, match):
    with pytest.raises(ValueError, match=match):
        TrainSettings(**override).validate()


# ----------------------------------------------------------------------------- labels


def test_bool_instance_labels_become_one_object_per_region_with_a_warning(blobs):
    image, labels = blobs
    foreground = labels > 0
    with pytest.warns(LabelsWarning, match=r"labels\[0\] is a bool array: with kind='instances' it is read as a foreground mask"):
        planes = collect_planes([image], [foreground])
    # the six discs: four apart and two touching (one region): five objects, ids 1..5
    expected, n = ndi.label(foreground, np.ones((3, 3), bool))
    assert n == 5
    assert planes[0].labels.dtype == np.uint32
    np.testing.assert_array_equal(planes[0].labels, expected)


def test_bool_instance_labels_fine_tune(tiny_model, blobs):
    image, labels = blobs
    with pytest.warns(LabelsWarning, match="foreground mask"):
        tuned = finetune(tiny_model, [image], [labels > 0], **FAST)
    assert tuned.config["provenance"][-1]["steps"] == 2


def test_bool_labels_per_plane_of_a_stack(blobs):
    image, labels = blobs
    stack = np.stack([image, image[:, ::-1]])
    foreground = np.stack([labels > 0, np.zeros_like(labels, bool)])
    foreground[1, 5:9, 5:9] = foreground[1, 20:22, 30:40] = True
    with pytest.warns(LabelsWarning):
        planes = collect_planes([stack], [foreground], axes="ZYX", slice_axes="Z")  # XY planes only (auto adds XZ/YZ planes)
    assert [int(plane.labels.max()) for plane in planes] == [5, 2]


def test_bool_class_map_is_cells_without_a_warning(blobs):
    image, labels = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelsWarning)
        planes = collect_planes([image], [labels > 0], kind="semantic")
    np.testing.assert_array_equal(planes[0].labels, (labels > 0).astype(np.uint8))


def test_class_map_passed_as_instances_warns(pointwise_model, blobs):
    image, labels = blobs
    seg = cellrefine.segment(image, model=pointwise_model)
    assert set(np.unique(seg.semantic)) == {0, 1, 2}
    with pytest.warns(LabelsWarning, match=r"labels\[0\] holds only the values 0, 1, 2, .* looks like a class map .*Pass kind='semantic'"):
        collect_planes([image], [seg.semantic])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelsWarning)
        collect_planes([image], [seg.semantic], kind="semantic")  # said so: no warning
        collect_planes([image], [seg.instances])  # real instances: no warning
        collect_planes([image], [np.where(labels > 2, 0, labels)])  # two objects with ids 1 and 2: instances


def test_looks_like_class_map_rule():
    labels = np.zeros((12, 12), np.int32)
    labels[1:3, 1:3] = labels[1:3, 6:8] = 1
    assert not looks_like_class_map(labels)  # one object in two pieces
    labels[8:10, 1:3] = 1
    assert looks_like_class_map(labels)  # three regions of 1
    assert not looks_like_class_map(labels * 3)  # an id above 2: instance labels
    assert looks_like_class_map(labels.astype(np.uint8)) and not looks_like_class_map(labels > 0)
    assert not looks_like_class_map(np.zeros((0, 4), np.int32))


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        ("yes", TypeError, r"masks must be a list of arrays \(or one array\), got str"),
        (["yes"], TypeError, r"masks\[0\] must be a bool array \(True = reviewed\) or integers 0/1 with the labels' shape, got 'yes'"),
        ([np.full((64, 64), "yes")], TypeError, r"masks\[0\] must be a bool array .* got an array of dtype <U3"),
        ([np.ones((64, 64), np.float32)], TypeError, r"masks\[0\] must be a bool array .* got an array of dtype float32"),
        ([np.full((64, 64), 2, np.uint8)], ValueError, r"masks\[0\] holds values 2..2; a reviewed mask holds 0 \(not reviewed\) and 1"),
        ([-np.ones((64, 64), np.int16)], ValueError, r"masks\[0\] holds values -1..-1"),
        ([np.ones((64, 32), bool)], ValueError, r"masks\[0\] has shape \(64, 32\) but must match labels\[0\] \(64, 64\)"),
        ([True], ValueError, r"masks\[0\] has shape \(\) but must match"),
    ],
)
def test_masks_must_be_bool_or_zero_one(blobs, mask, error, match):
    image, labels = blobs
    with pytest.raises(error, match=match):
        collect_planes([image], [labels], mask)


def test_zero_one_integer_masks_equal_bool_masks(blobs):
    image, labels = blobs
    mask = np.zeros(labels.shape, np.uint8)
    mask[:32] = 1
    planes = collect_planes([image], [labels], [mask])
    assert planes[0].mask.dtype == bool
    np.testing.assert_array_equal(planes[0].mask, mask == 1)


def test_reviewed_mask_from_labelled_planes_refuses_text():
    with pytest.raises(TypeError, match=r"labels must be integers .* got dtype <U3"):
        reviewed_mask_from_labelled_planes(np.full((4, 4), "yes"), "YX")


# ----------------------------------------------------------------------------- huge ids


def test_instance_ids_are_relabelled_per_plane(blobs):
    image, labels = blobs
    hashed = np.where(labels > 0, labels.astype(np.int64) * 7919 + 2**31 - 7919 * 7, 0)
    hashed[labels == 6] = 2**31 - 1
    planes = collect_planes([image], [hashed])
    assert planes[0].labels.dtype == np.uint32 and planes[0].labels.max() == 6
    np.testing.assert_array_equal(planes[0].labels, labels)  # the order of the ids is kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit (RLIMIT_AS) is Linux-only")
def test_id_two_to_the_31_fine_tunes_within_bounded_memory():
    # Before the fix, one id of 2**31 - 1 made ndi.find_objects build a 2**31-entry list (tens of GB). The run is in a
    # child process with a 4 GB address-space limit, so a regression fails with MemoryError instead of exhausting the machine.
    script = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
        import numpy as np, torch
        torch.set_num_threads(1)
        import cellrefine
        from cellrefine.model.io import Model
        torch.manual_seed(0)
        model = Model(config={"name": "tiny", "architecture": {"in_channels": 1, "out_channels": 3, "depth": 2, "base_channels": 4}})
        yy, xx = np.mgrid[:64, :64]
        labels = np.zeros((64, 64), np.int64)
        for k, (cy, cx) in enumerate([(16, 16), (16, 48), (48, 16), (48, 48)]):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = [3, 17, 2**31 - 1, 2 * 10**7][k]
        image = np.where(labels > 0, 1.0, 0.1).astype(np.float32)
        tuned = cellrefine.finetune(model, [image], [labels], steps=2, crop_size=32, batch_size=2, device="cpu")
        print("steps", tuned.config["provenance"][-1]["steps"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps 2" in done.stdout


def test_large_ids_train_exactly_as_small_ids(make_model, blobs):
    # the ids are relabelled before any work, so an id of 2e7 costs what small ids cost: the same model comes back
    image, labels = blobs
    large = np.where(labels > 0, labels.astype(np.int64) + 2 * 10**7, 0)
    small_model = finetune(make_model(), [image], [labels], **FAST)
    large_model = finetune(make_model(), [image], [large], **FAST)
    assert same_weights(small_model, large_model)
    record_small, record_large = small_model.config["provenance"][-1], large_model.config["provenance"][-1]
    assert record_small["metrics_after"] == record_large["metrics_after"]
    assert record_small["loss_curve"] == record_large["loss_curve"]


def test_metrics_do_not_depend_on_the_id_values(blobs):
    # metrics use a bincount only when the ids are small, else np.unique: no table over the id range
    _, labels = blobs
    shifted = np.roll(labels, 2, axis=1)
    hashed = np.where(labels > 0, labels.astype(np.int64) + 2**31 - 10, 0)
    hashed[labels == 1] = 2**62
    assert object_scores(hashed, shifted) == object_scores(labels, shifted)
    reviewed = np.ones(labels.shape, bool)
    assert correction_scores(shifted, hashed, reviewed, hashed) == correction_scores(shifted, labels, reviewed, labels)


@st.composite
def label_images(draw):
    """A small label image with a few ids (some touching) and an injective, order-keeping map of them to large values."""
    shape = (draw(st.integers(4, 12)), draw(st.integers(4, 12)))
    labels = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 5)))
    gaps = draw(st.lists(st.integers(1, 2**40), min_size=5, max_size=5))
    return labels, np.concatenate([[0], np.cumsum(gaps)])


@QUICK
@given(label_images())
def test_collected_planes_do_not_depend_on_the_id_values(data):
    labels, values = data
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LabelsWarning)  # random 0..2 images may look like class maps
        try:
            small = collect_planes([image], [labels])
        except ValueError as error:  # an all-background image: nothing to learn from, whatever the ids
            assert "nothing to learn from" in str(error)
            assert not labels.any()
            return
        large = collect_planes([image], [values[labels]])
    present = np.unique(labels[labels > 0])
    expected = np.searchsorted(present, labels) + 1
    expected[labels == 0] = 0
    for plane in (small[0], large[0]):
        assert plane.labels.dtype == np.uint32
        np.testing.assert_array_equal(plane.labels, expected)


def test_prepare_sample_refuses_values_outside_the_classes():
    from cellrefine.training import prepare_sample

    image = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"kind='semantic' must be classes 0 \(background\), 1 \(cell\), 2 \(boundary\); got int64 values"):
        prepare_sample(image, np.full((4, 4), 300, np.int64), kind="semantic")
    with pytest.raises(ValueError, match="kind must be 'instances' or 'semantic', got 'classes'"):
        prepare_sample(image, np.zeros((4, 4), np.int64), kind="classes")
    sample = prepare_sample(image, np.full((4, 4), 2**31 - 1, np.int64))  # huge id: one object, as id 1
    np.testing.assert_array_equal(sample.semantic, prepare_sample(image, np.ones((4, 4), np.int64)).semantic)
