"""Tests for the ``cellrefine`` command line, run in-process through cellrefine.cli.main."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cellrefine
from cellrefine.cli import main
from cellrefine.model.io import load_model


@pytest.fixture
def model_path(tiny_model, tmp_path):
    return str(tiny_model.save(tmp_path / "models" / "tiny.safetensors"))


@pytest.fixture
def use_pointwise_model(monkeypatch, pointwise_model):
    """Make the CLI's load_model return the hand-wired pointwise model (segments the blobs exactly)."""
    monkeypatch.setattr(cellrefine, "load_model", lambda path=None, device="cpu": pointwise_model)
    return pointwise_model


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read(path):
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].asarray(), tif.series[0].axes


# ----------------------------------------------------------------------------- segment


@pytest.mark.parametrize(
    ("shape", "write_kwargs", "axes_option", "expected_shape"),
    [
        ((24, 20), {}, None, (24, 20)),
        ((24, 20, 3), {"photometric": "rgb"}, None, (24, 20)),  # RGB: channel dropped
        ((24, 20, 3), {"photometric": "rgb"}, "YXC", (24, 20)),
        ((5, 24, 20), {"photometric": "minisblack"}, None, (5, 24, 20)),  # inferred ZYX
        ((5, 24, 20), {"metadata": {"axes": "ZYX"}}, None, (5, 24, 20)),
        ((2, 24, 20), {"metadata": {"axes": "TYX"}}, None, (2, 24, 20)),
        ((2, 24, 20), {"photometric": "minisblack"}, "TYX", (2, 24, 20)),
        ((2, 24, 20), {"photometric": "minisblack"}, "CYX", (24, 20)),
        ((2, 3, 24, 20), {"photometric": "minisblack", "metadata": {"axes": "ZCYX"}}, None, (2, 24, 20)),
    ],
)
def test_segment_writes_uint32_labels(capsys, tmp_path, model_path, shape, write_kwargs, axes_option, expected_shape):
    rng = np.random.default_rng(0)
    source = tmp_path / "image.tif"
    tifffile.imwrite(source, rng.integers(0, 255, shape).astype(np.uint8), **write_kwargs)
    output = tmp_path / "out" / "labels.tif"
    argv = ["segment", source, "-o", output, "--model", model_path, "--device", "cpu"]
    if axes_option:
        argv += ["--axes", axes_option]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    labels, axes = read(output)
    assert labels.shape == expected_shape
    assert labels.dtype == np.uint32
    assert len(axes) == len(expected_shape)
    assert f"wrote {output}" in out
    assert not (tmp_path / "out" / "classes.tif").exists()


def test_segment_default_output_name_and_semantic(capsys, tmp_path, model_path):
    source = tmp_path / "cells.tif"
    tifffile.imwrite(source, np.zeros((16, 16), np.uint16))
    code, out, err = run(capsys, "segment", source, "--semantic", "--model", model_path, "--device", "cpu")
    assert code == 0, err
    labels, _ = read(tmp_path / "cells_labels.tif")
    classes, _ = read(tmp_path / "cells_classes.tif")
    assert labels.dtype == np.uint32 and labels.shape == (16, 16)
    assert classes.dtype == np.uint8 and classes.shape == (16, 16)
    assert classes.max() <= 2


def test_semantic_file_beside_explicit_output(capsys, tmp_path, model_path):
    source = tmp_path / "cells.tif"
    tifffile.imwrite(source, np.zeros((5, 16, 16), np.uint16), photometric="minisblack")
    code, _, err = run(capsys, "segment", source, "-o", tmp_path / "res" / "result.tif", "--semantic", "--model", model_path, "--device", "cpu")
    assert code == 0, err
    classes, axes = read(tmp_path / "res" / "result_classes.tif")
    assert classes.shape == (5, 16, 16) and axes == "ZYX"
    assert read(tmp_path / "res" / "result.tif")[0].shape == (5, 16, 16)


def test_file_axes_metadata_decides_t_versus_z(capsys, tmp_path, use_pointwise_model, blobs):
    image, _ = blobs
    stack = (np.stack([image, image]) * 1000).clip(0, None).astype(np.uint16)
    tifffile.imwrite(tmp_path / "as_z.tif", stack, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "as_t.tif", stack, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")
    assert run(capsys, "segment", tmp_path / "as_z.tif", tmp_path / "as_t.tif", "-o", tmp_path / "out")[0] == 0
    assert run(capsys, "segment", tmp_path / "plain.tif", "-o", tmp_path / "forced_t.tif", "--axes", "TYX")[0] == 0
    z, z_axes = read(tmp_path / "out" / "as_z_labels.tif")
    t, t_axes = read(tmp_path / "out" / "as_t_labels.tif")
    forced, _ = read(tmp_path / "forced_t.tif")
    assert (z_axes, t_axes) == ("ZYX", "TYX")
    assert z.max() == 6 and t.max() == 12  # Z planes linked, T frames independent
    np.testing.assert_array_equal(z[0], z[1])
    np.testing.assert_array_equal(t[1], np.where(t[0] > 0, t[0] + 6, 0))
    np.testing.assert_array_equal(forced, t)


def test_postprocess_options_are_used(capsys, tmp_path, use_pointwise_model, blobs):
    image, _ = blobs
    tifffile.imwrite(tmp_path / "blobs.tif", (image * 1000).clip(0, None).astype(np.uint16))
    assert run(capsys, "segment", tmp_path / "blobs.tif", "-o", tmp_path / "a.tif")[0] == 0
    assert run(capsys, "segment", tmp_path / "blobs.tif", "-o", tmp_path / "b.tif", "--min-size", "500")[0] == 0
    assert read(tmp_path / "a.tif")[0].max() == 6
    assert read(tmp_path / "b.tif")[0].max() == 0


@pytest.mark.parametrize(
    ("model_argument", "expected_shape"),
    [(None, (4, 520, 696)), ("nuclei", (4, 520, 696)), ("cells", (512, 512)), ("bundled:cells_v1", (512, 512))],
)
def test_sample_suits_the_model(capsys, tmp_path, use_pointwise_model, model_argument, expected_shape):
    # --sample segments the bundled model's own sample: the nuclei stack (TYX), or the phase-contrast crop for --model cells
    model_options = [] if model_argument is None else ["--model", model_argument]
    code, out, err = run(capsys, "segment", "--sample", "-o", tmp_path / "sample_labels.tif", *model_options)
    assert code == 0, err
    labels, axes = read(tmp_path / "sample_labels.tif")
    assert labels.shape == expected_shape and axes == ("TYX" if len(expected_shape) == 3 else "YX")


def test_sample_beside_a_model_folder_named_cells_is_the_nuclei_one(capsys, tmp_path, use_pointwise_model, monkeypatch):
    (tmp_path / "cells").mkdir()  # a user's model folder called "cells" is not the bundled cells model
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "segment", "--sample", "--model", "cells", "-o", tmp_path / "sample_labels.tif")[0] == 0
    assert read(tmp_path / "sample_labels.tif")[0].shape == (4, 520, 696)


def test_npy_input(capsys, tmp_path, model_path):
    np.save(tmp_path / "image.npy", np.zeros((2, 12, 12), np.float32))
    code, _, err = run(capsys, "segment", tmp_path / "image.npy", "--axes", "TYX", "--model", model_path, "--device", "cpu")
    assert code == 0, err
    assert read(tmp_path / "image_labels.tif")[0].shape == (2, 12, 12)


def _write_inputs(folder, names, shape=(12, 14)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        tifffile.imwrite(folder / name, np.zeros(shape, np.uint8))


def test_folder_input(capsys, tmp_path, model_path):
    _write_inputs(tmp_path / "in", ["a.tif", "b.tiff"])
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    code, out, err = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "out", "--model", model_path, "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_labels.tif", "b_labels.tif"]
    assert out.count("wrote") == 2


def test_quoted_glob_input(capsys, tmp_path, model_path):
    _write_inputs(tmp_path / "in", ["x1.tif", "x2.tif", "y.tif"])
    code, _, err = run(capsys, "segment", str(tmp_path / "in" / "x*.tif"), "-o", tmp_path / "out", "--model", model_path, "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x1_labels.tif", "x2_labels.tif"]


def test_dotted_file_names_do_not_collide(capsys, tmp_path, model_path):
    _write_inputs(tmp_path / "in", ["a.1.tif", "a.2.tif"])
    code, _, err = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "out", "--model", model_path, "--device", "cpu")
    assert code == 0, err
    assert len(list((tmp_path / "out").iterdir())) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "{tmp}/missing.tif"], "input {tmp}/missing.tif does not exist"),
        (["segment", "{tmp}/empty_dir"], "contains no .tif/.tiff files"),
        (["segment", "{tmp}/nothing*.tif"], "matches no file"),
        (["segment"], "give at least one input image"),
        (["segment", "{tmp}/a.tif", "{tmp}/b.tif", "-o", "{tmp}/one.tif"], "2 inputs need an output folder"),
        (["segment", "{tmp}/a.tif", "--axes", "ZYX"], "3 letters but the image has 2 dimensions"),
        (["segment", "{tmp}/not_a.tif"], "cannot read .*not_a.tif as a TIFF"),
        (["segment", "{tmp}/a.tif", "--model", "{tmp}/no_model.safetensors"], "does not exist"),
        (["segment", "{tmp}/a.tif", "--model", "{tmp}/a.tif"], "not a valid safetensors file"),
        (["segment", "{tmp}/a.tif", "--min-size", "-3"], "min_size must be a non-negative integer"),
        (["segment", "{tmp}/a.tif", "--boundary-weight", "2"], "boundary_weight must be in"),
    ],
)
def test_segment_errors_exit_1_with_a_message(capsys, tmp_path, model_path, argv, message):
    import re

    (tmp_path / "empty_dir").mkdir()
    _write_inputs(tmp_path, ["a.tif", "b.tif"])
    (tmp_path / "not_a.tif").write_bytes(b"this is not a TIFF file")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--model" not in argv:
        argv += ["--model", model_path]
    code, out, err = run(capsys, *argv, "--device", "cpu")
    assert code == 1
    assert err.startswith("cellrefine segment: error: ")
    assert re.search(message.format(tmp=re.escape(str(tmp_path))), err), err
    assert "Traceback" not in err


def test_verbose_re_raises(capsys, tmp_path, model_path):
    from cellrefine.cli import CLIError

    with pytest.raises(CLIError, match="does not exist"):
        main(["-v", "segment", str(tmp_path / "missing.tif"), "--model", model_path])
    _write_inputs(tmp_path, ["a.tif"])
    with pytest.raises(FileNotFoundError):
        main(["-v", "segment", str(tmp_path / "a.tif"), "--model", str(tmp_path / "missing.safetensors")])


def test_broken_tiff_exits_1(capsys, tmp_path, model_path):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    code, _, err = run(capsys, "segment", tmp_path / "broken.tif", "--model", model_path, "--device", "cpu")
    assert code == 1
    assert "cannot read" in err


def test_three_plane_output_is_not_stored_as_rgb(capsys, tmp_path, model_path):
    import warnings

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 16, 16), np.uint16), photometric="minisblack")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        code, _, err = run(capsys, "segment", tmp_path / "stack.tif", "--semantic", "--model", model_path, "--device", "cpu")
    assert code == 0, err
    for name in ("stack_labels.tif", "stack_classes.tif"):
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK, name
            assert tif.series[0].shape == (3, 16, 16)


# ----------------------------------------------------------------------------- help


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "segment" in out and "finetune" in out


@pytest.mark.parametrize("command", ["segment", "finetune"])
def test_subcommand_help_mentions_axes(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--axes" in out and "--model" in out and "--device" in out


def test_segment_help_gives_the_bundled_thresholds(capsys):
    thresholds = load_model().config["postprocess"]
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in ("foreground", "seed"):
        assert f"--{name}-threshold" in text
        assert f"the model's, {thresholds[name + '_threshold']} for the bundled one" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert cellrefine.__version__ in capsys.readouterr().out


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "usage: cellrefine" in capsys.readouterr().out


def test_unknown_device_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "x.tif", "--device", "tpu"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_console_script_help():
    script = shutil.which("cellrefine", path=os.path.dirname(sys.executable)) or shutil.which("cellrefine")
    assert script, "the cellrefine console script is not installed"
    completed = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "usage: cellrefine" in completed.stdout and "segment" in completed.stdout


# ----------------------------------------------------------------------------- finetune


def test_finetune_writes_a_loadable_model(capsys, tmp_path, model_path, blobs):
    image, labels = blobs
    tifffile.imwrite(tmp_path / "image.tif", (image * 1000).clip(0, None).astype(np.uint16))
    tifffile.imwrite(tmp_path / "labels.tif", labels.astype(np.uint16))
    output = tmp_path / "tuned"
    code, out, err = run(
        capsys,
        "finetune",
        tmp_path / "image.tif",
        "--labels",
        tmp_path / "labels.tif",
        "-o",
        output,
        "--model",
        model_path,
        "--steps",
        "3",
        "--device",
        "cpu",
        "--seed",
        "1",
    )
    assert code == 0, err
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "model.safetensors"]
    tuned = load_model(output)
    record = tuned.config["provenance"][-1]
    assert record["steps"] == 3 and record["settings"]["seed"] == 1
    assert record["parent"] == "tiny" and record["parent_file"] == Path(model_path).name  # no machine path (issue 9)
    assert "parent_path" not in record
    assert f"saved {output}" in out and "for 3 steps" in out
    assert "reviewed pixel accuracy" in out  # finetune_summary, as in napari


def test_finetune_with_masks_to_safetensors_file(capsys, tmp_path, model_path, blobs):
    image, labels = blobs
    mask = np.zeros(labels.shape, np.uint8)
    mask[:32] = 255
    for name, array in (("image", image * 1000), ("labels", labels), ("mask", mask)):
        tifffile.imwrite(tmp_path / f"{name}.tif", array.clip(0, None).astype(np.uint16))
    output = tmp_path / "tuned.safetensors"
    code, _, err = run(
        capsys,
        "finetune",
        tmp_path / "image.tif",
        "--labels",
        tmp_path / "labels.tif",
        "--masks",
        tmp_path / "mask.tif",
        "-o",
        output,
        "--model",
        model_path,
        "--steps",
        "2",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert load_model(output).config["provenance"][-1]["reviewed_pixels"] == [32 * 64]


def test_finetune_count_mismatch(capsys, tmp_path, model_path):
    _write_inputs(tmp_path, ["a.tif", "b.tif", "la.tif"])
    code, _, err = run(
        capsys,
        "finetune",
        tmp_path / "a.tif",
        tmp_path / "b.tif",
        "--labels",
        tmp_path / "la.tif",
        "-o",
        tmp_path / "m",
        "--model",
        model_path,
        "--device",
        "cpu",
    )
    assert code == 1
    assert "2 image(s) but 1 label file(s)" in err
    assert not (tmp_path / "m").exists()


def test_finetune_requires_labels_and_output(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(tmp_path / "a.tif")])
    assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err


def test_finetune_nothing_to_learn(capsys, tmp_path, model_path):
    _write_inputs(tmp_path, ["img.tif", "lab.tif"])  # all-zero labels, no masks
    code, _, err = run(
        capsys,
        "finetune",
        tmp_path / "img.tif",
        "--labels",
        tmp_path / "lab.tif",
        "-o",
        tmp_path / "m",
        "--model",
        model_path,
        "--steps",
        "2",
        "--device",
        "cpu",
    )
    assert code == 1 and "nothing to learn" in err
    assert not Path(tmp_path / "m").exists()
