"""The 3D mode for Z stacks: orthogonal views fused, 3D watershed, voxel size, progress and cancel."""

import numpy as np
import pytest

import cellrefine as cr
from cellrefine.inference import MIN_3D_PLANES, SegmentationCancelled, iter_segment, resolve_stack_mode
from cellrefine.metrics import match_instances
from cellrefine.orthogonal import THIN_PLANE_BORDER, plan_views
from cellrefine.postprocess import PostprocessSettings, probabilities_to_instances_3d, volume_threshold


def ellipsoids(shape=(12, 64, 64), scale=(2.0, 1.0, 1.0), radius=7.0, seed=0, touching=True):
    """Bright balls of ``radius`` physical units (Z spacing ``scale[0]``) on a dark background, with noise.

    Five separate balls, and (``touching``) two more whose surfaces touch along a darker seam.
    Returns ``image`` (float32) and ``instances`` (int32, ids 1..n).
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    zz *= scale[0] / scale[1]
    centre_z = (shape[0] - 1) / 2 * scale[0] / scale[1]
    centres = [(12, 12), (12, 50), (50, 12), (50, 50), (31, 50)]
    if touching:
        centres += [(31, 12), (31, 26)]
    instances = np.zeros(shape, np.int32)
    for index, (cy, cx) in enumerate(centres, start=1):
        ball = (zz - centre_z) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        instances[ball & (instances == 0)] = index
    image = np.where(instances > 0, 1.0, 0.1)
    if touching:
        n = len(centres)
        seam = (instances == n - 1) & (np.roll(instances, -1, axis=2) == n) | (instances == n) & (np.roll(instances, 1, axis=2) == n - 1)
        image[seam] = 0.4
    image = image + 0.03 * rng.standard_normal(shape)
    return image.astype(np.float32), instances


def test_plan_views_resamples_z_to_the_xy_spacing():
    plans = plan_views((10, 200, 300), (2.0, 1.0, 0.5), tile_size=128, grid=8)
    yx, zx, zy = plans
    assert (yx.view, yx.planes, yx.rows, yx.columns, yx.border) == ("YX", 10, 200, 300, None)
    assert (zx.view, zx.planes, zx.rows, zx.columns) == ("ZX", 200, 40, 300)  # Z spacing 2 over X spacing 0.5
    assert (zy.view, zy.planes, zy.rows, zy.columns) == ("ZY", 300, 20, 200)  # over Y spacing 1
    assert zx.border == zy.border == THIN_PLANE_BORDER
    # thin planes take wide tiles of about the 2D tile's area: one tile per plane here
    assert zx.tiles_per_plane == zy.tiles_per_plane == 1
    assert yx.tiles_per_plane == 2 * 3


def test_volume_threshold_reads_areas_as_ball_volumes():
    assert volume_threshold(16) == 64
    assert volume_threshold(16, (2.0, 1.0, 1.0)) == 32  # taller voxels: half as many
    assert volume_threshold(0) == 0


def test_3d_watershed_splits_touching_balls_at_the_boundary_and_drops_small_fragments():
    shape = (20, 40, 60)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    left = (zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 81
    right = (zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 37) ** 2 <= 81
    speck = (zz == 2) & (yy == 3) & (xx >= 50) & (xx < 52)  # 2 voxels: below the 3D minimum size
    cell = np.where(left | right | speck, 0.9, 0.0)
    boundary = np.zeros(shape)
    boundary[:, :, 28:30] = np.where((left | right)[:, :, 28:30], 0.9, 0.0)  # the contact of the two balls
    cell[boundary > 0] = 0.05
    probabilities = np.stack([1 - cell - boundary, cell, boundary]).astype(np.float16)
    instances = probabilities_to_instances_3d(probabilities, PostprocessSettings(min_seed_size=1, min_size=4))
    assert instances.dtype == np.uint32 and instances.shape == shape
    assert instances.max() == 2
    assert len(np.unique(instances[left & ~(xx >= 28)])) == 1 and len(np.unique(instances[right & ~(xx < 30)])) == 1
    assert instances[10, 20, 15] != instances[10, 20, 40]
    assert not instances[speck].any()


def test_3d_mode_recovers_known_balls_with_anisotropic_spacing(pointwise_model):
    image, truth = ellipsoids(scale=(2.0, 1.0, 1.0))
    seg = cr.segment(image, pointwise_model, axes="ZYX", scale=(2.0, 1.0, 1.0), stack_mode="3d", device="cpu")
    assert seg.stack_mode == "3d" and seg.scale == (2.0, 1.0, 1.0)
    assert seg.instances.shape == truth.shape and seg.semantic.shape == truth.shape
    scores = match_instances(truth, seg.instances, 0.5)
    assert scores["n_true"] == 7
    assert scores["tp"] == 7 and scores["fp"] == 0, scores  # the touching pair is split, nothing else appears
    assert scores["mean_matched_iou"] > 0.8


def test_3d_mode_with_the_bundled_model_finds_each_ball_once():
    image, truth = ellipsoids(shape=(12, 64, 64), scale=(2.0, 1.0, 1.0), touching=False, seed=1)
    seg = cr.segment(image, axes="ZYX", scale=(2.0, 1.0, 1.0), stack_mode="3d", device="cpu")
    scores = match_instances(truth, seg.instances, 0.5)
    assert scores["tp"] == 5 and scores["fp"] == 0, scores


def test_auto_mode_uses_3d_for_stacks_and_stitching_for_selected_planes(pointwise_model):
    assert resolve_stack_mode("auto", 1) == "2d"
    assert resolve_stack_mode("auto", MIN_3D_PLANES) == "3d"
    assert resolve_stack_mode("auto", MIN_3D_PLANES - 1) == "stitch"
    assert resolve_stack_mode("auto", 30, planes=[(0, 3)]) == "stitch"
    assert resolve_stack_mode("stitch", 30) == "stitch"
    with pytest.raises(ValueError, match="whole frames"):
        resolve_stack_mode("3d", 30, planes=[(0, 3)])
    with pytest.raises(ValueError, match="stack_mode must be one of"):
        resolve_stack_mode("3D-ish", 30)
    image, _ = ellipsoids()
    assert cr.segment(image, pointwise_model, axes="ZYX", device="cpu").stack_mode == "3d"
    assert cr.segment(image[0], pointwise_model, axes="YX", device="cpu", stack_mode="3d").stack_mode == "2d"
    with pytest.raises(ValueError, match="scale entry for Z"):
        cr.segment(image, pointwise_model, axes="ZYX", scale=(0, 1, 1))


def test_3d_progress_counts_all_three_views_and_ends_at_the_total(pointwise_model):
    image, _ = ellipsoids(shape=(6, 40, 48))
    generator = iter_segment(image, pointwise_model, axes="ZYX", device="cpu", stack_mode="3d", scale=(2, 1, 1))
    updates = []
    try:
        while True:
            updates.append(next(generator))
    except StopIteration as stop:
        seg = stop.value
    views = [u.view for u in updates]
    assert views[0] == "YX" and views[-1] == "ZY" and "ZX" in views
    assert views.count("YX") == 6 and views.count("ZX") == 40 and views.count("ZY") == 48  # one tile per plane
    done = [u.done for u in updates]
    assert done == sorted(done) and done[-1] == updates[-1].total == 6 + 40 + 48
    assert seg.instances.max() > 0


def test_3d_mode_can_be_cancelled_in_every_view(pointwise_model):
    image, _ = ellipsoids(shape=(6, 40, 48))
    for view in ("YX", "ZX", "ZY"):
        generator = iter_segment(image, pointwise_model, axes="ZYX", device="cpu", stack_mode="3d")
        for update in generator:
            if update.view == view:
                break
        generator.close()  # no error, nothing returned
        with pytest.raises(StopIteration):
            next(generator)
    calls = []

    def progress(done, total):
        calls.append(done)
        return done < total // 2  # cancels in the ZX view

    with pytest.raises(SegmentationCancelled):
        cr.segment(image, pointwise_model, axes="ZYX", device="cpu", stack_mode="3d", progress=progress)
    assert calls[-1] >= (6 + 40 + 48) // 2


def test_3d_postprocess_reruns_the_3d_watershed(pointwise_model):
    image, truth = ellipsoids()
    seg = cr.segment(image, pointwise_model, axes="ZYX", scale=(2, 1, 1), stack_mode="3d", device="cpu", return_probabilities=True)
    again = seg.postprocess()
    assert np.array_equal(again.instances, seg.instances)
    assert again.stack_mode == "3d"
    none_left = seg.postprocess(min_size=1000)  # a ball of radius 7 holds ~700 isotropic voxels: min volume 1000**1.5 / 2
    assert none_left.instances.max() == 0


def test_frames_of_a_tzyx_stack_get_their_own_ids_in_3d(pointwise_model):
    image, _ = ellipsoids(shape=(6, 64, 64), touching=False)
    movie = np.stack([image, image])
    seg = cr.segment(movie, pointwise_model, axes="TZYX", scale=(1, 2, 1, 1), stack_mode="3d", device="cpu")
    first, second = seg.instances[0], seg.instances[1]
    assert first.max() == 5 and second.max() == 10 and second[second > 0].min() == 6
    assert np.array_equal(first > 0, second > 0)


def test_thin_plane_border_changes_only_the_plane_edges():
    """A smaller mirror border at the edges of thin planes leaves the result in their middle as it was."""
    import torch

    from cellrefine.tiling import inference_network, predict_planes

    model = cr.load_model()
    network, amp = inference_network(model.network, torch.device("cpu"), "float32")
    rng = np.random.default_rng(0)
    plane = rng.random((1, 40, 300), dtype=np.float32)
    full = np.empty((3, 40, 300), np.float32)
    thin = np.empty((3, 40, 300), np.float32)
    for _ in predict_planes(network, amp, [plane], (40, 128), torch.device("cpu"), 1, [full]):
        pass
    for _ in predict_planes(network, amp, [plane], (40, 128), torch.device("cpu"), 1, [thin], border=THIN_PLANE_BORDER):
        pass
    assert np.allclose(full.sum(axis=0), 1, atol=1e-4) and np.allclose(thin.sum(axis=0), 1, atol=1e-4)
    # the seams between the three tiles keep the full halo: interior columns far from the plane's ends agree
    halo = network.halo
    assert np.abs(full[:, 20, halo : 300 - halo] - thin[:, 20, halo : 300 - halo]).max() < 0.05
    assert np.abs(full - thin).max() > 1e-3  # and the edges did change: the border is really smaller


def test_review_next_of_a_3d_result_lists_only_candidates_of_an_object_volume():
    from cellrefine.inference import Segmentation
    from cellrefine.uncertainty import rank_segmentation

    shape = (8, 32, 32)
    foreground = np.zeros(shape, np.float32)
    foreground[3:6, 10:14, 10:13] = 0.9  # 36 voxels of likely foreground in no object: above min_size 15, below its volume (58)
    probabilities = np.stack([1 - foreground, foreground, np.zeros(shape, np.float32)]).astype(np.float16)
    settings = PostprocessSettings(min_size=15)
    common = dict(semantic=np.zeros(shape, np.uint8), instances=np.zeros(shape, np.uint32), probabilities=probabilities, axes="ZYX", device="cpu")
    stitched = Segmentation(**common, settings=settings, stack_mode="stitch")
    fused = Segmentation(**common, settings=settings, stack_mode="3d", scale=(1.0, 1.0, 1.0))
    assert volume_threshold(15) == 59
    assert [obj.missed for obj in rank_segmentation(stitched, include_missed=True)] == [True]
    assert rank_segmentation(fused, include_missed=True) == []


def test_stack_mode_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="stack_mode must be a string"):
        resolve_stack_mode(3, 5)
