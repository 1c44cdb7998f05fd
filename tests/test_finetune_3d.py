"""Fine-tuning on XY, XZ and YZ planes of Z stacks: which planes train (the 2-rows-2-columns rule), Z resampling, slice_axes and scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellrefine.targets import instances_to_semantic
from cellrefine.tiling import predict_probabilities
from cellrefine.training import collect_planes, finetune, finetune_summary
from cellrefine.training.orientations import check_slice_axes, training_positions


def _stack(shape=(6, 20, 24), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    labels[1:5, 4:12, 5:15] = 7
    labels[2:4, 14:18, 16:22] = 9
    image = np.where(labels > 0, 1.0, 0.1) + 0.05 * rng.standard_normal(shape)
    return image.astype(np.float32), labels


def _orientations(planes):
    return [(plane.orientation, plane.source) for plane in planes]


# ----------------------------------------------------------------------------- the rule


def test_xy_painted_mask_gives_only_xy_planes():
    image, labels = _stack()
    mask = np.zeros(labels.shape, bool)
    mask[3, 2:14, 3:17] = True  # a correction and its margin in the XY plane z = 3
    planes = collect_planes(image, labels, mask, "ZYX", slice_axes="ZYX")
    assert _orientations(planes) == [("Z", (0, 0, 3))]
    assert planes[0].shape == (20, 24) and planes[0].reviewed_pixels == 12 * 14


def test_xz_painted_mask_gives_only_that_xz_plane():
    image, labels = _stack()
    mask = np.zeros(labels.shape, bool)
    mask[:, 8, 2:18] = True  # painted in the XZ plane y = 8: one y, every z
    planes = collect_planes(image, labels, mask, "ZYX")  # auto = ZYX for a stack
    assert _orientations(planes) == [("Y", (0, 0, 8))]
    plane = planes[0]
    assert plane.shape == (6, 24)  # rows Z, columns X
    np.testing.assert_array_equal(plane.mask, mask[:, 8, :])
    np.testing.assert_array_equal(plane.labels > 0, labels[:, 8, :] > 0)
    yz = mask.copy()
    yz[:] = False
    yz[1:5, 3:13, 10] = True  # painted in the YZ plane x = 10
    assert _orientations(collect_planes(image, labels, yz, "ZYX")) == [("X", (0, 0, 10))]


def test_full_labels_give_every_plane_of_every_orientation():
    image, labels = _stack((4, 6, 8))
    planes = collect_planes(image, labels, None, "ZYX", scale=(3, 1, 1), slice_axes="ZYX")
    counts = {letter: [p.orientation for p in planes].count(letter) for letter in "ZYX"}
    assert counts == {"Z": 4, "Y": 6, "X": 8}
    assert [p.source[2] for p in planes] == [*range(4), *range(6), *range(8)]  # XY by z, then XZ by y, then YZ by x
    assert {p.shape for p in planes if p.orientation == "Z"} == {(6, 8)}
    assert {p.shape for p in planes if p.orientation == "Y"} == {(12, 8)}
    assert {p.shape for p in planes if p.orientation == "X"} == {(12, 6)}
    assert all(p.mask is None for p in planes)
    assert len(collect_planes(image, labels, None, "ZYX", slice_axes="YX")) == 6 + 8
    assert len(collect_planes(image, labels, None, "ZYX", slice_axes="Z")) == 4  # today's behaviour
    # "auto" without a mask stays with the XY planes (all XZ/YZ planes of a stack would be two resampled copies of it)
    assert len(collect_planes(image, labels, None, "ZYX", scale=(3, 1, 1))) == 4
    assert len(collect_planes(image, labels, np.ones(labels.shape, bool), "ZYX", scale=(3, 1, 1))) == 4 + 6 + 8


def test_a_correction_on_the_first_plane_is_not_a_line_in_every_xz_plane():
    from cellrefine.training.orientations import training_positions

    for z in (0, 3, 5):  # the stack's edges are not reviewed pixels
        mask = np.zeros((6, 8, 8), bool)
        mask[z, 2:5, 1:4] = True
        positions = training_positions(mask, mask.shape, "ZYX")
        assert positions["Z"].nonzero()[0].tolist() == [z] and positions["Y"].tolist() == [] and positions["X"].tolist() == []
    mask = np.zeros((6, 8, 8), bool)
    mask[0:2, 0, 0:2] = True  # a 2 x 2 square in the XZ plane y = 0, in the corner of the stack
    assert training_positions(mask, mask.shape, "ZYX")["Y"].tolist() == [0]


def test_lines_are_not_training_planes_in_a_stack():
    image, labels = _stack()
    mask = np.zeros(labels.shape, bool)
    mask[2, 5, 3:20] = True  # one row of one XY plane
    with pytest.raises(ValueError, match="form no training plane"):
        collect_planes(image, labels, mask, "ZYX")
    mask[2, 6, 3:20] = True  # two rows: an XY plane
    assert _orientations(collect_planes(image, labels, mask, "ZYX")) == [("Z", (0, 0, 2))]
    positions = training_positions(mask, mask.shape, "ZYX")
    assert positions["Y"].size == positions["X"].size == 0


def test_an_xz_correction_is_not_an_xy_plane_with_slice_axes_z():
    image, labels = _stack()
    mask = np.zeros(labels.shape, bool)
    mask[:, 8, 2:18] = True
    with pytest.raises(ValueError, match=r"form no training plane.*slice_axes 'Z'.*needs slice_axes with 'Y'"):
        collect_planes(image, labels, mask, "ZYX", slice_axes="Z")


def test_2d_images_keep_the_any_pixel_rule():
    image, labels = _stack()
    image, labels = image[2], labels[2]
    mask = np.zeros((20, 24), bool)
    mask[5, 3] = True  # a single reviewed pixel still makes the plane a training plane
    planes = collect_planes(image, labels, mask, "YX")
    assert _orientations(planes) == [("Z", (0, 0, 0))] and planes[0].reviewed_pixels == 1
    assert _orientations(collect_planes(image[None], labels[None], mask[None], "ZYX", slice_axes="ZYX")) == [("Z", (0, 0, 0))]  # Z of 1
    # a time series has no Z axis: auto is XY planes only
    series = collect_planes(np.stack([image] * 3), np.stack([labels] * 3), None, "TYX")
    assert _orientations(series) == [("Z", (0, t, 0)) for t in range(3)]


def test_slice_axes_are_validated():
    image, labels = _stack()
    assert check_slice_axes("xz") == "ZX" and check_slice_axes("Auto") == "auto" and check_slice_axes("YZX") == "ZYX"
    for bad in ("", "ZZ", "XYT", "C"):
        with pytest.raises(ValueError, match=r"'auto', 'Z' \(XY planes\), 'Y' \(XZ planes\), 'X' \(YZ planes\)"):
            collect_planes(image, labels, None, "ZYX", slice_axes=bad)
    with pytest.raises(TypeError, match="slice_axes must be a string"):
        collect_planes(image, labels, None, "ZYX", slice_axes=["Z"])
    with pytest.raises(ValueError, match="need a Z axis.*axes 'YX'"):
        collect_planes(image[2], labels[2], None, "YX", slice_axes="ZY")


def test_scale_is_validated_and_may_be_given_per_image():
    image, labels = _stack((4, 6, 8))
    with pytest.raises(ValueError, match="scale entry for Z"):
        collect_planes(image, labels, None, "ZYX", scale=(0, 1, 1))
    with pytest.raises(ValueError, match="scale has 2 entries"):
        collect_planes(image, labels, None, "ZYX", scale=(1, 1))
    planes = collect_planes([image, image], [labels, labels], None, "ZYX", scale=[(2, 1, 1), None], slice_axes="Y")
    assert [p.shape[0] for p in planes] == [8] * 6 + [4] * 6
    with pytest.raises(ValueError, match="got 3 scale entries for 2 image"):
        collect_planes([image, image], [labels, labels], None, "ZYX", scale=[(2, 1, 1), None, None])


# ----------------------------------------------------------------------------- resampling


def test_xz_plane_of_an_anisotropic_stack_is_resampled_to_isotropic():
    n_z = 10
    ramp = np.broadcast_to(np.arange(n_z, dtype=np.float32)[:, None, None] * 10 + 5, (n_z, 16, 12)).copy()
    labels = np.zeros((n_z, 16, 12), np.uint32)
    labels[2:5, 6, 1:4] = 40
    labels[6:9, 6, 5:11] = 2**31 - 1
    mask = np.zeros(labels.shape, bool)
    mask[:, 6, :] = True
    (plane,) = collect_planes(ramp, labels, mask, "ZYX", scale=(2, 1, 1))
    assert plane.orientation == "Y" and plane.shape == (20, 12) and plane.image.shape == (1, 20, 12)
    # labels: nearest (each z twice), ids relabelled 1..n per plane as for XY planes
    expected = np.repeat(labels[:, 6, :], 2, axis=0)
    np.testing.assert_array_equal(plane.labels, np.select([expected == 40, expected == 2**31 - 1], [1, 2], 0))
    assert plane.mask.all() and plane.mask.shape == (20, 12)
    # image: linear, sampled at pixel centres (z = (d + 0.5) / 2 - 0.5, clipped); normalisation is affine
    column = plane.image[0, :, 0].astype(np.float64)
    z = np.clip((np.arange(20) + 0.5) / 2 - 0.5, 0, n_z - 1)
    np.testing.assert_allclose((column - column[0]) / (column[-1] - column[0]), (z - z[0]) / (z[-1] - z[0]), atol=1e-5)
    # a YZ plane uses scale_z / scale_y
    (yz,) = collect_planes(ramp, labels, None, "ZYX", scale=(3, 1.5, 1), slice_axes="X")[:1]
    assert yz.shape == (20, 16)


# ----------------------------------------------------------------------------- fine-tuning


def _volume(seed=0):
    """16 x 64 x 64: five bright ellipsoids (Z radius 3, Y/X radius 8); three of them cross the XZ plane y = 30."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:16, :64, :64]
    labels = np.zeros((16, 64, 64), np.uint32)
    for index, (cz, cy, cx) in enumerate([(5, 30, 12), (10, 30, 32), (6, 30, 52), (11, 10, 20), (4, 50, 40)], start=1):
        labels[((zz - cz) / 3.0) ** 2 + ((yy - cy) / 8.0) ** 2 + ((xx - cx) / 8.0) ** 2 <= 1] = index
    image = np.where(labels > 0, 1.0, 0.1) + 0.05 * rng.standard_normal(labels.shape)
    return image.astype(np.float32), labels


def test_finetuning_on_an_xz_correction_changes_xz_predictions(make_model):
    """A parent that misses every object; the user paints the objects of one XZ plane (y = 30) of an anisotropic stack."""
    image, truth = _volume()
    y, scale = 30, (2, 1, 1)
    corrected = np.zeros_like(truth)  # what the parent found: nothing
    corrected[:, y, :] = truth[:, y, :]
    reviewed = np.zeros(truth.shape, bool)
    reviewed[:, y, :] = True
    parent = make_model()
    with torch.no_grad():
        parent.network.head.bias[0] += 4.0  # background everywhere
    (plane,) = collect_planes(image, corrected, reviewed, "ZYX", scale=scale)
    assert plane.orientation == "Y" and plane.shape == (32, 64) and plane.labels.max() == 3
    inside = plane.labels > 0
    semantic = instances_to_semantic(plane.labels, 2)

    def figures(model):
        probabilities = predict_probabilities(model.network, plane.image, device="cpu")
        return float((probabilities[1] + probabilities[2])[inside].mean()), float((probabilities.argmax(0) == semantic).mean())

    foreground_before, _ = figures(parent)
    assert foreground_before < 0.15
    fast = {"device": "cpu", "crop_size": 64, "batch_size": 2, "seed": 0}
    tuned = finetune(parent, image, corrected, reviewed, axes="ZYX", steps=40, scale=scale, slice_axes="ZYX", **fast)
    foreground_after, accuracy_after = figures(tuned)
    assert foreground_after > foreground_before + 0.5  # measured 0.07 -> 0.91
    assert accuracy_after > 0.75  # measured 0.83
    record = tuned.config["provenance"][-1]
    assert record["plane_orientations"] == {"XZ": 1} and record["data_shapes"] == [[32, 64]]
    assert record["scale"] == [2.0, 1.0, 1.0] and record["slice_axes"] == "ZYX"
    assert "trained on 1 XZ plane(s)" in finetune_summary(tuned)
    # XY planes only: the XZ correction is no training plane (the documented error), so nothing is learned from it
    with pytest.raises(ValueError, match="form no training plane"):
        finetune(parent, image, corrected, reviewed, axes="ZYX", steps=40, scale=scale, slice_axes="Z", **fast)
