"""cellrefine.distributed: block-wise segmentation on a dask LocalCluster gives the objects of cr.segment, resumes, writes NGFF labels."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

import cellrefine as cr  # noqa: E402
from cellrefine import distributed as crd  # noqa: E402
from cellrefine.metrics import match_instances  # noqa: E402
from cellrefine.zarr_io import list_labels, open_labels  # noqa: E402


def crossing_discs(shape=(256, 256), block: int = 64, seed: int = 0):
    """Bright discs on a dark background: one centred on every block face and corner (so they cross it), plus random others.

    Returns the image (float32) and the discs' labels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.zeros(shape, np.int32)
    centres = [(y, x) for y in range(block, shape[0], block) for x in range(block // 2, shape[1], block)]  # on horizontal faces
    centres += [(y, x) for y in range(block // 2, shape[0], block) for x in range(block, shape[1], block)]  # on vertical faces
    centres += [(y, x) for y in range(block, shape[0], block) for x in range(block, shape[1], block)]  # on corners
    centres = [(y + int(rng.integers(-3, 4)), x + int(rng.integers(-3, 4))) for y, x in centres]
    centres += [tuple(int(v) for v in rng.integers(10, min(shape) - 10, 2)) for _ in range(30)]
    for y, x in centres:
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= int(rng.integers(5, 10)) ** 2
        if not truth[disc].any():
            truth[disc] = truth.max() + 1
    image = np.where(truth > 0, 1.0, 0.1) + 0.05 * rng.standard_normal(shape)
    return image.astype(np.float32), truth


def _write_zarr(path, image, chunks, zarr_format=2):
    array = zarr.create_array(str(path), shape=image.shape, chunks=chunks, dtype=image.dtype, zarr_format=zarr_format)
    array[:] = image
    return path


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 workers (threads of this process, to stay light)."""
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as connected,
    ):
        yield connected


def _labels(path, name="cells"):
    return np.asarray(open_labels(path, name).array[...])


def _assert_same_objects(expected, found):
    ids = np.unique(found)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))  # unique, consecutive ids
    scores = match_instances(expected, found, threshold=0.9)
    assert scores["n_true"] > 0
    assert scores["recall"] >= 0.99, scores  # single-process objects found by the blocks
    assert scores["precision"] >= 0.99, scores  # and no other objects


def test_block_grid_partitions_the_volume_and_aligns_with_the_network_grid():
    grid = crd.plan_blocks((2, 10, 100, 130), block_size=(4, 30, 50), object_size=(2, 10, 10), network_halo=16, grid=8)
    assert grid.block == (4, 32, 56) and grid.halo == (2, 32, 32)  # Y/X rounded up to the grid; halo = network + object
    covered = np.zeros((2, 10, 100, 130), np.int32)
    for k in range(len(grid)):
        t, core = grid.core(k)
        _, box = grid.extended(k)
        covered[(t,) + tuple(slice(*c) for c in core)] += 1
        assert all(b0 <= c0 and c1 <= b1 for (c0, c1), (b0, b1) in zip(core, box))
        assert all(lo % 8 == 0 for lo, _ in box[1:])  # extended boxes start on the grid (same tiling as the whole image)
    assert (covered == 1).all()
    pairs = {(k, other) for k in range(len(grid)) for other in grid.neighbours(k)}
    assert len(pairs) == len({tuple(sorted(p)) for p in pairs})  # each neighbouring pair once
    assert all(grid.position(a)[0] == grid.position(b)[0] for a, b in pairs)  # never across frames
    single = crd.plan_blocks((1, 1, 50, 50), block_size=64, network_halo=16, grid=8)
    assert len(single) == 1 and single.halo == (0, 0, 0)


def test_merge_pairs_joins_connected_labels_with_consecutive_ids():
    mapping = crd.merge_pairs(6, np.array([[0, 3], [3, 5], [1, 2]]))
    np.testing.assert_array_equal(mapping, [1, 2, 2, 1, 3, 1])
    np.testing.assert_array_equal(crd.merge_pairs(3, np.zeros((0, 2))), [1, 2, 3])


def test_distributed_matches_single_process_with_objects_across_block_faces(tmp_path, client):
    """The bundled model on a zarr image, 16 blocks of 64 px: the same objects as cr.segment, ids unique, NGFF labels."""
    image, _ = crossing_discs((256, 256), block=64)
    source = _write_zarr(tmp_path / "in.zarr", image, (64, 64))
    model = cr.load_model()
    expected = cr.segment(image, model, axes="YX").instances
    seen = []
    result = crd.segment(
        source, tmp_path / "out.zarr", model, client=client, block_size=64, object_size=24, progress=lambda d, t: seen.append((d, t))
    )
    assert result.blocks == 16 and result.computed == 16 and result.resumed == 0
    assert result.merged_pairs >= 20  # objects crossing faces were merged
    assert seen[-1] == (48, 48) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    found = _labels(tmp_path / "out.zarr")
    _assert_same_objects(expected, found)
    assert result.n_objects == found.max()
    assert list_labels(tmp_path / "out.zarr") == ["cells"]
    work = zarr.open_group(str(tmp_path / "out.zarr" / "labels" / "cells"), mode="r")
    assert "_cellrefine" not in work  # working arrays removed once complete
    assert work.attrs["cellrefine"]["status"] == "complete"


def test_stacks_and_time_series_match_single_process(tmp_path, client, pointwise_model):
    """Z stacks (blocks in Z with a Z halo, planes linked across Z blocks) and independent T frames."""
    rng = np.random.default_rng(3)
    zz, yy, xx = np.mgrid[:20, :96, :96]
    stack = np.full((20, 96, 96), 0.1, np.float32)
    for _ in range(25):
        c = (rng.integers(2, 18), rng.integers(6, 90), rng.integers(6, 90))
        stack[((zz - c[0]) * 2) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= int(rng.integers(5, 8)) ** 2] = 1.0
    stack += 0.05 * rng.standard_normal(stack.shape).astype(np.float32)
    model = pointwise_model
    result = crd.segment(stack, tmp_path / "z.zarr", model, axes="ZYX", client=client, block_size=(6, 32, 32), object_size=(6, 16, 16))
    assert result.grid.counts == (1, 4, 3, 3) and result.axes == "ZYX"
    _assert_same_objects(cr.segment(stack, model, axes="ZYX", stack_mode="stitch").instances, _labels(tmp_path / "z.zarr"))

    frames = np.stack([crossing_discs((96, 96), 32, seed)[0] for seed in (1, 2)])
    result = crd.segment(frames, tmp_path / "t.zarr", model, axes="TYX", client=client, block_size=32, object_size=20)
    assert result.axes == "TYX"
    _assert_same_objects(cr.segment(frames, model, axes="TYX").instances, _labels(tmp_path / "t.zarr"))


def test_cancelled_run_resumes_without_recomputing_finished_blocks(tmp_path, client, pointwise_model):
    image, _ = crossing_discs((192, 192), block=48, seed=5)
    source = _write_zarr(tmp_path / "in.zarr", image, (48, 48))
    model = pointwise_model
    reference = crd.segment(source, tmp_path / "reference.zarr", model, client=client, block_size=48, object_size=20)

    def stop_after_five(done, total):
        return done < 5  # cancel once 5 blocks are written

    with pytest.raises(cr.SegmentationCancelled, match="run it again to resume"):
        crd.segment(source, tmp_path / "out.zarr", model, client=client, block_size=48, object_size=20, progress=stop_after_five)
    assert list_labels(tmp_path / "out.zarr") == []  # not shown as a labels image while unfinished
    result = crd.segment(source, tmp_path / "out.zarr", model, client=client, block_size=48, object_size=20)
    assert result.resumed >= 5 and result.computed == result.blocks - result.resumed < result.blocks
    np.testing.assert_array_equal(_labels(tmp_path / "out.zarr"), _labels(tmp_path / "reference.zarr"))
    assert result.n_objects == reference.n_objects

    again = crd.segment(source, tmp_path / "out.zarr", model, client=client, block_size=48, object_size=20)
    assert again.computed == 0 and again.resumed == again.blocks  # a complete run is not redone
    with pytest.raises(ValueError, match=r"other settings \(block differ\)"):
        crd.segment(source, tmp_path / "out.zarr", model, client=client, block_size=96, object_size=20)
    redone = crd.segment(source, tmp_path / "out.zarr", model, client=client, block_size=96, object_size=20, overwrite=True)
    assert redone.computed == redone.blocks == 4
    _assert_same_objects(_labels(tmp_path / "reference.zarr"), _labels(tmp_path / "out.zarr"))


def test_blank_blocks_are_skipped_with_the_same_objects(tmp_path, client, pointwise_model):
    image, _ = crossing_discs((128, 256), block=64, seed=2)
    image[:, 128:] = 0.1 + 0.02 * np.random.default_rng(0).standard_normal((128, 128))  # the right half holds nothing
    model = pointwise_model
    full = crd.segment(image, tmp_path / "all.zarr", model, axes="YX", client=client, block_size=64, object_size=20)
    skipping = crd.segment(image, tmp_path / "skip.zarr", model, axes="YX", client=client, block_size=64, object_size=20, skip_blank=True)
    assert full.blank == 0 and skipping.blank >= 2
    np.testing.assert_array_equal(_labels(tmp_path / "all.zarr"), _labels(tmp_path / "skip.zarr"))


def test_labels_inside_the_input_ome_zarr_image(tmp_path, client, pointwise_model):
    ome_writer = pytest.importorskip("ome_zarr.writer")
    image, _ = crossing_discs((128, 128), block=64, seed=4)
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    ome_writer.write_image((np.clip(image, 0, 2) * 1000).astype(np.uint16), group, axes="yx", scale_factors=(), scale={"y": 0.5, "x": 0.5})
    result = crd.segment(tmp_path / "img.zarr", tmp_path / "img.zarr", pointwise_model, client=client, block_size=64, object_size=20)
    labels = open_labels(tmp_path / "img.zarr", "cells")
    assert labels.axes == "YX" and labels.scale == (0.5, 0.5) and result.n_objects == int(np.asarray(labels.array[...]).max()) > 0
    assert dict(zarr.open_group(str(tmp_path / "img.zarr" / "labels" / "cells"), mode="r").attrs)["image-label"]["source"] == {"image": "../../"}


def test_bad_arguments_are_refused_before_any_work(tmp_path, client, pointwise_model):
    image = np.zeros((64, 64), np.float32)
    model = pointwise_model
    with pytest.raises(ValueError, match="workers must be"):
        crd.segment(image, tmp_path / "o.zarr", model, axes="YX", workers=0)
    with pytest.raises(TypeError, match="block_size must be"):
        crd.segment(image, tmp_path / "o.zarr", model, axes="YX", client=client, block_size="big")
    with pytest.raises(ValueError, match="at least 1 pixel"):
        crd.segment(image, tmp_path / "o.zarr", model, axes="YX", client=client, object_size=(1, 0, 4))
    with pytest.raises(TypeError, match="skip_blank must be True or False"):
        crd.segment(image, tmp_path / "o.zarr", model, axes="YX", client=client, skip_blank="yes")
    with pytest.raises(FileNotFoundError, match="no zarr array or group"):
        crd.segment(tmp_path / "missing.zarr", tmp_path / "o.zarr", model, client=client)
    with pytest.raises(ValueError, match="expects 3 channels"):
        crd.segment(np.zeros((2, 32, 32), np.float32), tmp_path / "o.zarr", make_rgb_model(), axes="CYX", client=client)
    (tmp_path / "file.zarr").write_text("not a folder")
    with pytest.raises(OSError, match="is a file, not a folder"):
        crd.segment(image, tmp_path / "file.zarr", model, axes="YX", client=client)


def make_rgb_model():
    from cellrefine.model.io import Model

    return Model(config={"name": "rgb", "architecture": {"in_channels": 3, "out_channels": 3, "depth": 1, "base_channels": 2, "norm": "batch"}})


def _finished_blocks(output: Path) -> int:
    counts = output / "labels" / "cells" / "_cellrefine" / "counts"
    return sum(1 for p in counts.rglob("*") if p.is_file() and p.name[0].isdigit() and not p.name.endswith(".partial")) if counts.is_dir() else 0


def _cli(*args) -> list:
    return [sys.executable, "-m", "cellrefine.cli", "segment", *args]


def test_cli_run_killed_midway_resumes_with_an_identical_result(tmp_path):
    """`cellrefine segment IN.zarr -o OUT.zarr --distributed`: killed (SIGKILL) after a few blocks, rerun, same labels as an uninterrupted run."""
    image, _ = crossing_discs((256, 256), block=64, seed=7)
    source = _write_zarr(tmp_path / "in.zarr", image, (64, 64))
    common = ["--distributed", "--workers", "1", "--block-size", "64", "--object-size", "16", "--device", "cpu"]
    env = {**os.environ, "CELLREFINE_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(_cli(str(source), "-o", str(tmp_path / "whole.zarr"), *common), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "16 blocks" in done.stdout and "labels/cells" in done.stdout

    process = subprocess.Popen(
        _cli(str(source), "-o", str(tmp_path / "out.zarr"), *common), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while _finished_blocks(tmp_path / "out.zarr") < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the whole run: driver, scheduler and worker process
    process.communicate(timeout=60)
    finished = _finished_blocks(tmp_path / "out.zarr")
    assert 3 <= finished < 16, f"the run was not killed midway ({finished} of 16 blocks done)"

    rerun = subprocess.run(_cli(str(source), "-o", str(tmp_path / "out.zarr"), *common), capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    resumed = int(re.search(r"resumed (\d+)", rerun.stdout).group(1))
    assert resumed >= finished  # every block whose counts were written is kept, not recomputed
    np.testing.assert_array_equal(_labels(tmp_path / "out.zarr"), _labels(tmp_path / "whole.zarr"))
    _assert_same_objects(cr.segment(image, cr.load_model(), axes="YX", device="cpu").instances, _labels(tmp_path / "out.zarr"))


class CountingArray:
    """A numpy array behind zarr-style indexing that counts the pixels read (chunked 256²)."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.chunks, self.read = array, array.shape, array.dtype, (256, 256), 0

    def __getitem__(self, key):
        part = self.array[key]
        self.read += part.size
        return part


def test_normalisation_range_of_a_big_array_reads_a_subsample_only():
    from cellrefine.distributed.tasks import BlockSource, sample_range
    from cellrefine.normalize import SAMPLE_PIXELS, percentile_range

    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 100.0, (3000, 3000)).astype(np.float32)  # 9 M pixels: more than SAMPLE_PIXELS
    counting = CountingArray(image)
    lo, hi = sample_range(BlockSource(axes="YX", array=counting), 1, 1.0, 99.8)
    assert counting.read <= 1.1 * SAMPLE_PIXELS  # whole chunks, spread over the image, about SAMPLE_PIXELS of them
    true_lo, true_hi = percentile_range(image.ravel(), 1.0, 99.8)
    assert abs(lo - true_lo) < 0.05 * (true_hi - true_lo) and abs(hi - true_hi) < 0.05 * (true_hi - true_lo)
    small = rng.random((100, 120)).astype(np.float32)  # up to SAMPLE_PIXELS: the whole array, the range of cr.segment
    assert sample_range(BlockSource(axes="YX", array=small), 1, 1.0, 99.8) == percentile_range(small, 1.0, 99.8)


def test_existing_scheduler_address_and_blank_image(tmp_path, client, pointwise_model):
    image, _ = crossing_discs((96, 96), block=48, seed=9)
    result = crd.segment(image, tmp_path / "a.zarr", pointwise_model, axes="YX", scheduler=client.scheduler.address, block_size=48, object_size=16)
    assert result.n_objects == cr.segment(image, pointwise_model, axes="YX").instances.max() > 0
    with pytest.warns(cr.BlankImageWarning, match="constant"):
        blank = crd.segment(np.full((64, 64), 7, np.uint16), tmp_path / "b.zarr", pointwise_model, axes="YX", client=client, block_size=32)
    assert blank.n_objects == 0 and not _labels(tmp_path / "b.zarr").any()


def test_cli_refuses_what_it_cannot_do_with_one_line(tmp_path, capsys):
    from cellrefine.cli import main

    source = _write_zarr(tmp_path / "in.zarr", np.zeros((32, 32), np.float32), (32, 32))
    cases = [
        ([str(source), "-o", str(tmp_path / "o.zarr")], "is a zarr store: add --distributed"),
        ([str(tmp_path / "x.tif"), "--workers", "2"], "--workers only apply with --distributed"),
        ([str(source), "--distributed", "--workers", "2", "--scheduler", "tcp://localhost:1"], "not both"),
        ([str(source), str(source), "--distributed"], "exactly one"),
        ([str(source), "--distributed", "--semantic"], "--semantic is not available with --distributed"),
        ([str(tmp_path / "missing.zarr"), "--distributed"], "no zarr array or group"),
    ]
    for arguments, message in cases:
        assert main(["segment", *arguments]) == 1
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    from cellrefine.cli_distributed import default_output

    assert default_output("/data/volume.zarr", False, "cells") == "/data/volume_labels.zarr"
    assert default_output("/data/volume.ome.zarr", True, "cells") == "/data/volume.ome.zarr"


def test_zarr_v3_input_and_output(tmp_path, client, pointwise_model):
    image, _ = crossing_discs((96, 96), block=48, seed=11)
    source = _write_zarr(tmp_path / "in3.zarr", image, (48, 48), zarr_format=3)
    result = crd.segment(source, tmp_path / "out3.zarr", pointwise_model, client=client, block_size=48, object_size=16, zarr_format=3)
    labels = open_labels(tmp_path / "out3.zarr")
    assert labels.zarr_format == 3 and labels.ngff_version == "0.5" and labels.axes == "YX"
    _assert_same_objects(cr.segment(image, pointwise_model, axes="YX").instances, np.asarray(labels.array[...]))
    assert result.n_objects == int(np.asarray(labels.array[...]).max())


def test_pyramid_levels_for_viewers(tmp_path, client, pointwise_model):
    image, _ = crossing_discs((96, 96), block=48, seed=12)
    result = crd.segment(image, tmp_path / "p.zarr", pointwise_model, axes="YX", client=client, block_size=48, object_size=16, pyramid_levels=2)
    group = zarr.open_group(str(tmp_path / "p.zarr" / "labels" / "cells"), mode="r")
    datasets = group.attrs["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]
    full = np.asarray(group["0"][...])
    np.testing.assert_array_equal(group["1"][...], full[::2, ::2])  # ids are never averaged
    np.testing.assert_array_equal(group["2"][...], full[::4, ::4])
    assert result.seconds["pyramid"] >= 0 and open_labels(tmp_path / "p.zarr").levels == ["0", "1", "2"]
    with pytest.raises(ValueError, match="pyramid_levels must be"):
        crd.segment(image, tmp_path / "q.zarr", pointwise_model, axes="YX", client=client, pyramid_levels=-1)
    assert crd.plan_blocks((1, 1, 96, 96)).block == (1, 1024, 1024)
    from cellrefine.distributed.pyramid import pyramid_levels

    assert pyramid_levels(None, 1000, 900) == 0 and pyramid_levels(None, 1025, 10) == 1 and pyramid_levels(None, 100_000, 100_000) == 7
