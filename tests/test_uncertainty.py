"""Known answers for cellrefine.uncertainty (review next) and cellrefine.tta on synthetic probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrefine.postprocess import PostprocessSettings
from cellrefine.uncertainty import CUE_WEIGHTS, ObjectUncertainty, rank_objects, rank_segmentation

SETTINGS = PostprocessSettings(foreground_threshold=0.8, seed_threshold=0.7)


def disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def confident_probabilities(instances: np.ndarray) -> np.ndarray:
    """Certain cell inside every object, a certain boundary ring on its outline, certain background elsewhere."""
    p = np.zeros((3, *instances.shape), np.float32)
    p[0] = 1.0
    inside = instances > 0
    p[:, inside] = np.array([0.01, 0.98, 0.01])[:, None]
    ring = inside & ~_eroded(instances)
    p[:, ring] = np.array([0.02, 0.18, 0.80])[:, None]
    return p


def _eroded(instances):
    from scipy import ndimage as ndi

    return (ndi.minimum_filter(instances, size=3) == instances) & (ndi.maximum_filter(instances, size=3) == instances) & (instances > 0)


def by_label(ranking):
    return {o.label: o for o in ranking}


def test_confident_object_ranks_below_an_ambiguous_one():
    instances = np.zeros((64, 96), np.uint32)
    instances[disc(instances.shape, (32, 24), 10)] = 1
    instances[disc(instances.shape, (32, 72), 10)] = 2
    p = confident_probabilities(instances)
    faint = instances == 2
    p[:, faint] = np.array([0.15, 0.75, 0.10])[:, None]  # a hesitant object: cell barely above the thresholds
    ranking = rank_objects(p, instances, settings=SETTINGS)
    assert [o.label for o in ranking] == [2, 1]
    confident, ambiguous = by_label(ranking)[1], by_label(ranking)[2]
    assert 0 <= confident.score < 0.2 < ambiguous.score <= 1
    assert ambiguous.cues["foreground"] == pytest.approx(0.15 / 0.2, abs=0.01)
    assert ambiguous.cues["margin"] > 0.3 > confident.cues["margin"]
    assert confident.size == int((instances == 1).sum())
    assert confident.centroid == pytest.approx((32.0, 24.0))


def test_merged_pair_with_a_weak_boundary_ranks_high():
    shape = (64, 128)
    instances = np.zeros(shape, np.uint32)
    left, right = disc(shape, (32, 30), 10), disc(shape, (32, 48), 10)
    instances[left | right] = 1  # two nuclei merged into one object
    instances[disc(shape, (32, 100), 10)] = 2  # a clean single nucleus
    p = confident_probabilities(instances)
    seam = (left & right) | (np.abs(np.indices(shape)[1] - 39) <= 1) & (left | right)
    p[:, seam & _eroded(instances)] = np.array([0.03, 0.72, 0.25])[:, None]  # a saddle just above the seed threshold
    ranking = rank_objects(p, instances, settings=SETTINGS)
    assert ranking[0].label == 1
    merged, single = by_label(ranking)[1], by_label(ranking)[2]
    assert merged.cues["seed"] == 1.0  # splits at every level above the seed threshold
    assert single.cues["seed"] == 0.0
    assert merged.cues["shape"] > single.cues["shape"]
    assert merged.score > single.score + 0.15


def test_split_object_with_weak_contact_ranks_above_touching_objects_with_a_real_boundary():
    shape = (48, 160)
    instances = np.zeros(shape, np.uint32)
    instances[14:34, 10:30] = 1  # one cell cut in two by the watershed, no boundary between the halves
    instances[14:34, 30:50] = 2
    instances[14:34, 90:110] = 3  # two cells touching along a real boundary
    instances[14:34, 110:130] = 4
    p = confident_probabilities(instances)
    p[:, 14:34, 29:31] = np.array([[0.02], [0.90], [0.08]])[:, :, None]  # no boundary on the cut
    ranking = rank_objects(p, instances, settings=SETTINGS)
    assert {o.label for o in ranking[:2]} == {1, 2}
    cues = by_label(ranking)
    assert cues[1].cues["contact"] > 0.4 and cues[2].cues["contact"] > 0.4
    assert cues[3].cues["contact"] == 0.0 and cues[4].cues["contact"] == 0.0


def test_fragment_ranks_above_typical_objects():
    shape = (80, 160)
    instances = np.zeros(shape, np.uint32)
    for k, x in enumerate(range(15, 160, 30)):
        instances[disc(shape, (25, x), 9)] = k + 1
    instances[60:64, 60:64] = 9  # a 16-pixel fragment
    ranking = rank_objects(confident_probabilities(instances), instances, settings=SETTINGS)
    assert ranking[0].label == 9
    assert ranking[0].cues["size"] == 1.0
    assert all(o.cues["size"] == 0.0 for o in ranking[1:])


def test_scores_are_sorted_and_weights_switch_cues_off():
    instances = np.zeros((64, 96), np.uint32)
    instances[disc(instances.shape, (32, 24), 10)] = 1
    instances[disc(instances.shape, (32, 72), 10)] = 2
    p = confident_probabilities(instances)
    p[:, instances == 2] = np.array([0.15, 0.75, 0.10])[:, None]
    ranking = rank_objects(p, instances, settings=SETTINGS)
    assert [o.score for o in ranking] == sorted((o.score for o in ranking), reverse=True)
    off = rank_objects(p, instances, settings=SETTINGS, weights={name: 0.0 for name in CUE_WEIGHTS})
    assert all(o.score == 0.0 for o in off)
    only_foreground = rank_objects(p, instances, settings=SETTINGS, weights={name: 0.0 for name in CUE_WEIGHTS if name != "foreground"})
    assert by_label(only_foreground)[2].score == pytest.approx(0.75, abs=0.01)


def test_stack_centroids_are_in_the_instances_axes():
    instances = np.zeros((6, 32, 48), np.uint32)
    instances[2:5, 10:20, 30:40] = 7  # planes 2..4
    instances[0, 2:8, 2:8] = 3
    p = confident_probabilities(instances)
    ranking = by_label(rank_objects(p, instances, axes="ZYX", settings=SETTINGS))
    assert ranking[7].centroid == pytest.approx((3.0, 14.5, 34.5))
    assert ranking[7].size == 300
    assert ranking[3].centroid == pytest.approx((0.0, 4.5, 4.5))
    tzyx = by_label(rank_objects(p[:, None], instances[None], settings=SETTINGS))  # default axes TZYX
    assert tzyx[7].centroid == pytest.approx((0.0, 3.0, 14.5, 34.5))


def test_missed_candidates_have_negative_labels_and_are_connected_along_z_not_t():
    instances = np.zeros((4, 40, 40), np.uint32)
    instances[:, 5:15, 5:15] = 1
    p = confident_probabilities(instances)
    p[:, 1:3, 25:35, 25:35] = np.array([0.3, 0.5, 0.2])[:, None, None, None]  # foreground in no object, planes 1 and 2
    z = rank_objects(p, instances, axes="ZYX", settings=SETTINGS, include_missed=True)
    missed = [o for o in z if o.missed]
    assert len(missed) == 1 and missed[0].label == -1 and missed[0].size == 200
    assert missed[0].centroid == pytest.approx((1.5, 29.5, 29.5))
    assert missed[0].cues["foreground"] == pytest.approx(0.7)
    assert missed[0].score == pytest.approx((0.7 - 0.5) / 0.4)
    t = rank_objects(p, instances, axes="TYX", settings=SETTINGS, include_missed=True)
    assert sorted(o.label for o in t if o.missed) == [-2, -1]  # one candidate per frame
    assert all(o.label > 0 for o in rank_objects(p, instances, axes="ZYX", settings=SETTINGS))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.uint64])
def test_any_integer_dtype_and_sparse_ids(dtype):
    instances = np.zeros((40, 40), dtype)
    instances[5:15, 5:15] = 3
    instances[25:35, 25:35] = np.iinfo(dtype).max if dtype != np.uint64 else 2**40
    ranking = rank_objects(confident_probabilities(instances.astype(np.int64)), instances, settings=SETTINGS)
    assert sorted(o.label for o in ranking) == sorted([3, int(instances[30, 30])])
    assert all(o.size == 100 for o in ranking)


def test_no_objects_gives_an_empty_ranking():
    instances = np.zeros((16, 16), np.uint16)
    assert rank_objects(confident_probabilities(instances), instances) == []


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_random_inputs_give_valid_scores(seed):
    rng = np.random.default_rng(seed)
    instances = rng.integers(0, 6, size=(24, 20)).astype(np.uint16) * rng.integers(0, 2, size=(24, 20)).astype(np.uint16)
    logits = rng.normal(size=(3, 24, 20))
    p = np.exp(logits) / np.exp(logits).sum(axis=0)
    ranking = rank_objects(p.astype(np.float16), instances, include_missed=True)
    objects = [o for o in ranking if not o.missed]
    ids = np.unique(instances[instances > 0])
    assert sorted(o.label for o in objects) == ids.tolist()
    assert all(0.0 <= o.score <= 1.0 and all(0.0 <= v <= 1.0 for v in o.cues.values()) for o in ranking)
    assert all(o.size == int((instances == o.label).sum()) for o in objects)
    assert [o.score for o in ranking] == sorted((o.score for o in ranking), reverse=True)


@pytest.mark.parametrize(
    ("probabilities", "instances", "kwargs", "error", "match"),
    [
        (np.full((3, 8, 8), 1 / 3), np.zeros((8, 8), np.float32), {}, TypeError, "integer label image"),
        (np.full((3, 8, 8), 1 / 3), np.zeros((8, 8), bool), {}, TypeError, "integer label image"),
        (np.full((3, 8, 8), 1 / 3), -np.ones((8, 8), np.int32), {}, ValueError, "negative"),
        (np.full((3, 8, 9), 1 / 3), np.zeros((8, 8), np.uint32), {}, ValueError, r"shape \(3, \*instances.shape\)"),
        (np.full((8, 8, 3), 1 / 3), np.zeros((8, 8), np.uint32), {}, ValueError, "class axis first"),
        (np.ones((3, 8, 8), np.uint8), np.zeros((8, 8), np.uint32), {}, TypeError, "float array"),
        (np.full((3, 8, 8), 2.0), np.zeros((8, 8), np.uint32), {}, ValueError, r"in \[0, 1\]"),
        (np.full((3, 8, 8), np.nan), np.zeros((8, 8), np.uint32), {}, ValueError, "finite"),
        (np.full((3, 8), 1 / 3), np.zeros(8, np.uint32), {}, ValueError, "at least 2 axes"),
        (np.full((3, 2, 8, 8), 1 / 3), np.zeros((2, 8, 8), np.uint32), {"axes": "YXZ"}, ValueError, "axes"),
        (np.full((3, 2, 2, 8, 8), 1 / 3), np.zeros((2, 2, 8, 8), np.uint32), {"axes": "ZZYX"}, ValueError, "axes"),
        (np.full((3, 8, 8), 1 / 3), np.zeros((8, 8), np.uint32), {"weights": {"colour": 1.0}}, ValueError, "unknown cue"),
        (np.full((3, 8, 8), 1 / 3), np.zeros((8, 8), np.uint32), {"weights": {"margin": 2}}, ValueError, r"in \[0, 1\]"),
        (np.full((3, 8, 8), 1 / 3), np.zeros((8, 8), np.uint32), {"disagreement": np.zeros((8, 9))}, ValueError, "disagreement"),
        (np.full((3, 8, 8), 1 / 3), np.zeros((8, 8), np.uint32), {"missed_threshold": 1.5}, ValueError, "missed_threshold"),
    ],
)
def test_invalid_inputs_raise_clear_errors(probabilities, instances, kwargs, error, match):
    with pytest.raises(error, match=match):
        rank_objects(probabilities, instances, **kwargs)


def test_rank_segmentation_uses_the_segmentation_fields_and_needs_probabilities():
    from cellrefine.inference import Segmentation

    instances = np.zeros((6, 32, 32), np.uint32)
    instances[1:3, 4:12, 4:12] = 5
    p = confident_probabilities(instances).astype(np.float16)
    seg = Segmentation(semantic=(instances > 0).astype(np.uint8), instances=instances, probabilities=p, axes="TYX", device="cpu", settings=SETTINGS)
    ranking = rank_segmentation(seg)
    assert isinstance(ranking[0], ObjectUncertainty)
    assert ranking[0].label == 5 and ranking[0].centroid == pytest.approx((1.5, 7.5, 7.5))
    with pytest.raises(ValueError, match="return_probabilities=True"):
        rank_segmentation(Segmentation(seg.semantic, instances, None, "TYX", "cpu", SETTINGS))


def test_tta_maps_each_pass_back_onto_the_image(tiny_model):
    from cellrefine.inference import segment
    from cellrefine.tta import tta_probabilities

    rng = np.random.default_rng(0)
    base = rng.random((64, 64)).astype(np.float32)
    mirror = base + base[:, ::-1]  # flip_x leaves the image unchanged, so the flipped pass is the identity pass flipped back
    identity = segment(mirror, model=tiny_model, axes="YX", device="cpu", return_probabilities=True).probabilities.astype(np.float32)
    assert not np.allclose(identity, identity[:, :, ::-1], atol=1e-3)  # the network itself is not mirror-symmetric
    flipped = tta_probabilities(mirror, tiny_model, axes="YX", transforms=("identity", "flip_x"), device="cpu")
    np.testing.assert_allclose(flipped.probabilities, (identity + identity[:, :, ::-1]) / 2, atol=2e-3)
    expected = np.clip(2 * (((identity - identity[:, :, ::-1]) / 2) ** 2).sum(axis=0), 0, 1)
    np.testing.assert_allclose(flipped.disagreement, expected, atol=2e-3)

    square = base + np.rot90(base, 1) + np.rot90(base, 2) + np.rot90(base, 3)  # invariant under rot90
    identity = segment(square, model=tiny_model, axes="YX", device="cpu", return_probabilities=True).probabilities.astype(np.float32)
    rotated = tta_probabilities(square, tiny_model, axes="YX", transforms=("identity", "rot90"), device="cpu")
    np.testing.assert_allclose(rotated.probabilities, (identity + np.rot90(identity, -1, axes=(1, 2))) / 2, atol=2e-3)
    assert rotated.segmentation.instances.shape == (64, 64)

    alone = tta_probabilities(square, tiny_model, axes="YX", transforms=("identity",), device="cpu")
    assert np.all(alone.disagreement == 0)
    ranking = rank_segmentation(rotated.segmentation, disagreement=rotated.disagreement)
    assert all("disagreement" in o.cues for o in ranking)


def test_tta_rejects_unknown_transforms(tiny_model):
    from cellrefine.tta import tta_probabilities

    image = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match="transforms"):
        tta_probabilities(image, tiny_model, transforms=("flip_x",))
    with pytest.raises(ValueError, match="transforms"):
        tta_probabilities(image, tiny_model, transforms=("identity", "shear"))
    with pytest.raises(TypeError, match="return_probabilities"):
        tta_probabilities(image, tiny_model, return_probabilities=True)


def test_missed_candidates_follow_the_models_boundary_weight():
    # a 12 x 12 patch of confident boundary (cell 0.18 + boundary 0.80) in no object: the default rule
    # (cell + boundary 0.98 > 0.5) lists it as possibly missed; a model that counts 0.3 of the boundary
    # (0.18 + 0.24 = 0.42 < 0.5) does not, as its watershed would not have grown an object there either
    instances = np.zeros((40, 40), np.uint16)
    p = confident_probabilities(instances)
    p[:, 10:22, 10:22] = np.array([0.02, 0.18, 0.80], np.float32)[:, None, None]
    plain = [o for o in rank_objects(p, instances, settings=SETTINGS, include_missed=True, missed_min_size=10) if o.missed]
    assert [o.size for o in plain] == [144]
    weighted = PostprocessSettings(foreground_threshold=0.4, seed_threshold=0.7, boundary_weight=0.3)
    assert [o for o in rank_objects(p, instances, settings=weighted, include_missed=True, missed_min_size=10) if o.missed] == []


def test_foreground_cue_reads_the_foreground_as_the_watershed_does():
    # one 10 x 10 object of cell 0.5, boundary 0.4, background 0.1 everywhere in it
    instances = np.zeros((20, 20), np.uint16)
    instances[5:15, 5:15] = 1
    p = confident_probabilities(np.zeros_like(instances))
    p[:, instances > 0] = np.array([0.1, 0.5, 0.4], np.float32)[:, None]
    (plain,) = rank_objects(p, instances, settings=PostprocessSettings(foreground_threshold=0.8))
    assert plain.cues["foreground"] == pytest.approx(0.1 / 0.2, abs=1e-6)  # background over 1 - threshold
    weighted = PostprocessSettings(foreground_threshold=0.4, boundary_weight=0.3)
    (obj,) = rank_objects(p, instances, settings=weighted)
    assert obj.cues["foreground"] == pytest.approx((1 - 0.5 - 0.3 * 0.4) / 0.6, abs=1e-6)  # what cell + 0.3 x boundary leaves, over 1 - 0.4
