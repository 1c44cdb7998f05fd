"""The command line never loses data: outputs are checked before any work, written atomically, and errors are one line.

Issue 11: ``segment same.tif -o same.tif`` overwrote the input; two inputs with one output name overwrote each
other; a failed or interrupted write left a truncated file; unwritable outputs failed only after segmenting;
``finetune`` paired images and labels by sort position; multi-series TIFFs were read as series 0 silently.
"""

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cellrefine
from cellrefine import files
from cellrefine.cli import main
from cellrefine.cli_files import name_key, pair_by_name
from cellrefine.files import TEMP_PREFIX

POSIX = os.name == "posix"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    """The lines of stderr that are not progress bars (what is left of a line after a bar's carriage returns)."""
    return [line.split("\r")[-1].strip() for line in err.splitlines() if line.split("\r")[-1].strip().startswith("cellrefine ")]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model means segmentation was about to run: these refusals must come before it."""

    def refuse(*args, **kwargs):
        pytest.fail("the CLI loaded a model although the command should have been refused first")

    monkeypatch.setattr(cellrefine, "load_model", refuse)


@pytest.fixture
def model_path(tiny_model, tmp_path):
    return str(tiny_model.save(tmp_path / "models" / "tiny.safetensors"))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (24, 20)).astype(np.uint8))
    return path


# ----------------------------------------------------------------------------- outputs that would overwrite inputs


def test_output_equal_to_the_input_is_refused(capsys, tmp_path, image, no_model):
    before = image.read_bytes()
    code, out, err = run(capsys, "segment", image, "-o", image)
    assert code == 1
    assert error_lines(err) == [
        f"cellrefine segment: error: the output {image} would overwrite the input image {image}; choose another output file or folder with -o."
    ]
    assert image.read_bytes() == before and names(tmp_path) == ["img.tif"]


def test_another_spelling_or_a_hard_link_of_the_input_is_refused(capsys, tmp_path, image, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "segment", "img.tif", "-o", f"../{tmp_path.name}/img.tif")[0] == 1
    os.link(image, tmp_path / "link.tif")
    code, _, err = run(capsys, "segment", image, "-o", tmp_path / "link.tif")
    assert code == 1 and "would overwrite the input image" in err


def test_an_earlier_result_in_the_input_folder_is_not_overwritten(capsys, tmp_path, no_model):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.tif", "a_labels.tif"):  # a_labels.tif: the output for a.tif, and an input itself
        tifffile.imwrite(folder / name, np.zeros((8, 8), np.uint8))
    code, _, err = run(capsys, "segment", folder)
    assert code == 1
    assert f"the output {folder / 'a_labels.tif'} would overwrite the input image" in err


def test_class_map_that_would_overwrite_an_input_is_refused(capsys, tmp_path, no_model):
    for name in ("x.tif", "x_classes.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((8, 8), np.uint8))
    code, _, err = run(capsys, "segment", tmp_path / "x.tif", tmp_path / "x_classes.tif", "-o", tmp_path, "--semantic")
    assert code == 1 and f"{tmp_path / 'x_classes.tif'} would overwrite the input image" in err


@pytest.mark.parametrize("second", ["a.tiff", "a.ome.tif", "a.npy"])
def test_two_inputs_with_one_output_name_are_refused_naming_both(capsys, tmp_path, no_model, second):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((8, 8), np.uint8))
    if second.endswith(".npy"):
        np.save(folder / second, np.ones((8, 8), np.uint8))
    else:
        tifffile.imwrite(folder / second, np.ones((8, 8), np.uint8))
    code, _, err = run(capsys, "segment", folder / "a.tif", folder / second, "-o", tmp_path / "out")
    assert code == 1
    assert error_lines(err) == [
        f"cellrefine segment: error: {folder / 'a.tif'} and {folder / second} would both be written to {tmp_path / 'out' / 'a_labels.tif'}; "
        "rename one of them, or segment them separately with -o."
    ]
    assert not (tmp_path / "out").exists()


def test_an_input_named_twice_is_segmented_once(capsys, tmp_path, image, model_path):
    code, out, err = run(capsys, "segment", image, str(tmp_path / "*.tif"), "--model", model_path, "--device", "cpu")
    assert code == 0, err
    assert out.count("wrote") == 1 and (tmp_path / "img_labels.tif").is_file()


# ----------------------------------------------------------------------------- outputs that cannot be written


@pytest.mark.parametrize(
    ("make", "output", "message"),
    [
        (lambda tmp: (tmp / "dir.tif").mkdir(), "dir.tif", "a folder has that name"),
        (lambda tmp: (tmp / "file").write_text("x"), "file/out.tif", "part of the path is a file"),
        (lambda tmp: (tmp / "file").write_text("x"), "file/deeper/out.tif", "part of the path is a file"),
    ],
)
def test_unwritable_output_is_refused_before_segmenting(capsys, tmp_path, image, no_model, make, output, message):
    make(tmp_path)
    code, _, err = run(capsys, "segment", image, "-o", tmp_path / output)
    assert code == 1
    [line] = error_lines(err)
    assert line.startswith(f"cellrefine segment: error: could not write {tmp_path / output}") and message in line
    assert "Traceback" not in err


def test_output_folder_that_is_a_file_is_refused(capsys, tmp_path, no_model):
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((8, 8), np.uint8))
    (tmp_path / "results").write_text("a file, not a folder")
    code, _, err = run(capsys, "segment", tmp_path / "a.tif", tmp_path / "b.tif", "-o", tmp_path / "results")
    assert code == 1 and "part of the path is a file" in err


def test_folder_without_write_permission_is_refused(capsys, tmp_path, image, no_model, monkeypatch):
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)  # as for a read-only folder (this suite may run as root)
    code, _, err = run(capsys, "segment", image, "-o", tmp_path / "out.tif")
    assert code == 1
    assert "could not write" in err and "is not writable" in err and "you may not write there" in err


@pytest.mark.skipif(not POSIX or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_read_only_folder_is_refused(capsys, tmp_path, image, no_model):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run(capsys, "segment", image, "-o", folder / "out.tif")
    finally:
        folder.chmod(0o755)
    assert code == 1 and "not writable" in err


# ----------------------------------------------------------------------------- failed and interrupted writes


def _half_write_then(error):
    def imwrite(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00 half of a TIFF")
        raise error

    return imwrite


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 1, "error: could not write {out}: No space left on device; the disk is full"),
        (KeyboardInterrupt(), 130, "interrupted (Ctrl-C); the files reported as written are complete, nothing half-written was left."),
    ],
)
def test_failed_or_interrupted_write_keeps_the_old_output(capsys, tmp_path, image, model_path, monkeypatch, error, code, message):
    out = tmp_path / "out.tif"
    out.write_bytes(b"old labels")
    monkeypatch.setattr(tifffile, "imwrite", _half_write_then(error))
    result, _, err = run(capsys, "segment", image, "-o", out, "--model", model_path, "--device", "cpu")
    assert result == code
    [line] = error_lines(err)
    assert message.format(out=out) in line
    assert "Traceback" not in err
    assert out.read_bytes() == b"old labels"
    assert names(tmp_path) == ["img.tif", "models", "out.tif"]  # no temporary left


def test_interrupt_while_segmenting_writes_nothing(capsys, tmp_path, image, model_path, monkeypatch):
    import cellrefine.inference

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # a generator, as iter_segment

    monkeypatch.setattr(cellrefine.inference, "iter_segment", interrupted)
    code, _, err = run(capsys, "segment", image, "--model", model_path, "--device", "cpu")
    assert code == 130 and len(error_lines(err)) == 1
    assert names(tmp_path) == ["img.tif", "models"]


def test_the_first_results_survive_a_failure_on_a_later_image(capsys, tmp_path, model_path, monkeypatch):
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((8, 8), np.uint8))
    real = tifffile.imwrite
    calls = []

    def second_fails(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", second_fails)
    code, out, err = run(capsys, "segment", tmp_path / "a.tif", tmp_path / "b.tif", "-o", tmp_path / "out", "--model", model_path, "--device", "cpu")
    assert code == 1 and "could not write" in err and "Input/output error" in err
    assert names(tmp_path / "out") == ["a_labels.tif"]
    assert tifffile.imread(tmp_path / "out" / "a_labels.tif").shape == (8, 8)


def _child_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(cellrefine.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}


@pytest.mark.skipif(not POSIX, reason="SIGINT to a child process")
def test_ctrl_c_during_the_write_in_a_real_process(tmp_path, image, model_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"old labels")
    ready = tmp_path / "ready"
    code = textwrap.dedent(
        f"""
        import signal, sys, time, tifffile
        from pathlib import Path
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with SIGINT ignored
        def slow(path, *args, **kwargs):  # half of the file written when Ctrl-C comes
            Path(path).write_bytes(b"II*\\x00 half")
            Path({str(ready)!r}).touch()
            time.sleep(60)
        tifffile.imwrite = slow
        from cellrefine.cli import main
        sys.exit(main(["segment", {str(image)!r}, "-o", {str(out)!r}, "--model", {model_path!r}, "--device", "cpu"]))
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    deadline = time.monotonic() + 120
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert error_lines(err) == [
        "cellrefine segment: interrupted (Ctrl-C); the files reported as written are complete, nothing half-written was left."
    ]
    assert "Traceback" not in err
    assert out.read_bytes() == b"old labels"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)) == []


@pytest.mark.skipif(not POSIX or not hasattr(resource, "RLIMIT_FSIZE"), reason="file size limits")
def test_file_size_limit_in_a_real_process_keeps_the_old_output(tmp_path, image, model_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"old labels")

    def limit_file_size():  # runs in the child: writes beyond 64 bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    argv = [sys.executable, "-m", "cellrefine.cli", "segment", str(image), "-o", str(out), "--model", model_path, "--device", "cpu"]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size, env=_child_env())
    assert completed.returncode == 1, completed.stderr
    [line] = error_lines(completed.stderr)
    assert line.startswith(f"cellrefine segment: error: could not write {out}: File too large") and "(the existing out.tif is unchanged)" in line
    assert out.read_bytes() == b"old labels"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


# ----------------------------------------------------------------------------- every OSError is one line


def test_os_error_is_one_line_and_verbose_shows_it(capsys, tmp_path, image, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/models/m.safetensors")

    monkeypatch.setattr(cellrefine, "load_model", denied)
    code, _, err = run(capsys, "segment", image)
    assert code == 1
    assert error_lines(err) == ["cellrefine segment: error: /models/m.safetensors: Permission denied"]
    with pytest.raises(PermissionError):
        main(["-v", "segment", str(image)])


def test_unreadable_input_is_one_line(capsys, tmp_path, no_model, monkeypatch):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(tifffile.TiffFile, "__init__", denied)
    code, _, err = run(capsys, "segment", path)
    assert code == 1 and error_lines(err) == [f"cellrefine segment: error: cannot read {path}: Permission denied."]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "x.tif", "--tile-size", "0"], "argument --tile-size: must be a whole number >= 1, got 0"),
        (["segment", "x.tif", "--tile-size", "-5"], "argument --tile-size: must be a whole number >= 1, got -5"),
        (["segment", "x.tif", "--series", "-1"], "argument --series: must be a whole number >= 0, got -1"),
        (["finetune", "x.tif", "--labels", "y.tif", "-o", "m", "--steps", "0"], "argument --steps: must be a whole number >= 1, got 0"),
        (["finetune", "x.tif", "--labels", "y.tif", "-o", "m", "--steps", "ten"], "argument --steps: must be a whole number >= 1, got 'ten'"),
    ],
)
def test_numeric_options_are_checked_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_blank_image_warning_is_one_line(capsys, tmp_path, model_path):
    tifffile.imwrite(tmp_path / "blank.tif", np.full((16, 16), 7, np.uint16))
    code, out, err = run(capsys, "segment", tmp_path / "blank.tif", "--model", model_path, "--device", "cpu")
    assert code == 0
    assert error_lines(err) == [
        "cellrefine segment: warning: the image is constant (every pixel is 7), so it is treated as blank and no object can be found; "
        "check that this is the right image, channel and axes."
    ]
    assert "-> 0 objects" in out


# ----------------------------------------------------------------------------- multi-series TIFF


@pytest.fixture
def two_series(tmp_path):
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((16, 16), np.uint8), photometric="minisblack")
        tif.write(np.zeros((3, 8, 12), np.uint16), photometric="minisblack", metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series) == 2
    return path


def test_multi_series_tiff_is_refused_listing_the_series(capsys, two_series, no_model):
    code, _, err = run(capsys, "segment", two_series)
    assert code == 1
    [line] = error_lines(err)
    assert f"{two_series} holds 2 image series (series 0: shape (16, 16), axes YX; series 1: shape (3, 8, 12), axes ZYX)" in line
    assert "choose one with --series N (0-based)" in line
    assert not (two_series.parent / "two_labels.tif").exists()


def test_series_option_chooses_the_series(capsys, two_series, model_path):
    code, out, err = run(capsys, "segment", two_series, "--series", "1", "--model", model_path, "--device", "cpu")
    assert code == 0, err
    assert "two.tif series 1: shape (3, 8, 12) axes ZYX" in out
    with tifffile.TiffFile(two_series.parent / "two_labels.tif") as tif:
        assert tif.series[0].shape == (3, 8, 12) and tif.series[0].axes == "ZYX"


def test_series_that_does_not_exist(capsys, two_series, no_model):
    code, _, err = run(capsys, "segment", two_series, "--series", "2")
    assert code == 1 and "has no series 2: it holds series 0 to 1" in err


def test_series_option_leaves_single_series_files_alone(capsys, tmp_path, image, model_path):
    code, _, err = run(capsys, "segment", image, "--series", "3", "--model", model_path, "--device", "cpu")
    assert code == 0, err


# ----------------------------------------------------------------------------- finetune: pairing by name


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("img01.tif", "img01"),
        ("img01_labels.tif", "img01"),
        ("IMG01-Mask.tiff", "img01"),
        ("img01_gt.ome.tif", "img01"),
        ("img01.labels.npy", "img01"),
        ("img01_raw.tif", "img01"),
        ("labels.tif", "labels"),  # nothing left to compare: the name is kept
        ("img01_labels_v2.tif", "img01_labels_v2"),
    ],
)
def test_name_key(name, key):
    assert name_key(Path(name)) == key


def test_pair_by_name_ignores_the_sort_order():
    images = [Path(n) for n in ("img1.tif", "img10.tif", "img2.tif")]
    labels = [Path(n) for n in ("img10_labels.tif", "img1_labels.tif", "img2_labels.tif")]  # sorted: img10_ before img1_
    assert [p.name for p in pair_by_name(images, labels)] == ["img1_labels.tif", "img10_labels.tif", "img2_labels.tif"]


def test_pair_by_shared_prefix_and_suffix():
    images = [Path(n) for n in ("img_01.tif", "img_02.tif", "img_10.tif")]
    labels = [Path(n) for n in ("lab_10.tif", "lab_01.tif", "lab_02.tif")]
    assert [p.name for p in pair_by_name(images, labels)] == ["lab_01.tif", "lab_02.tif", "lab_10.tif"]


def _training_folders(tmp_path, image_names, label_names):
    for folder, names_ in ((tmp_path / "images", image_names), (tmp_path / "labels", label_names)):
        folder.mkdir()
        for name in names_:
            number = int("".join(c for c in name if c.isdigit()))  # both files of a pair hold the same number
            tifffile.imwrite(folder / name, np.full((16, 16), number, np.uint16))
    return tmp_path / "images", tmp_path / "labels"


def test_finetune_pairs_folders_by_name_and_prints_the_pairs(capsys, tmp_path, monkeypatch):
    images, labels = _training_folders(tmp_path, ["img1.tif", "img2.tif", "img10.tif"], ["img1_labels.tif", "img2_labels.tif", "img10_labels.tif"])
    seen = {}

    def fake_finetune(model, arrays, label_arrays, masks, **kwargs):
        seen["pairs"] = [(int(a.max()), int(b.max())) for a, b in zip(arrays, label_arrays)]
        raise ValueError("stop here")

    monkeypatch.setattr(cellrefine, "load_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(cellrefine, "finetune", fake_finetune)
    code, out, err = run(capsys, "finetune", images, "--labels", labels, "-o", tmp_path / "m")
    assert code == 1 and "stop here" in err
    assert seen["pairs"] == [(1, 1), (10, 10), (2, 2)]  # by name, not by sorted position (img1 <- img10_labels)
    assert "  img1.tif <- img1_labels.tif" in out and "  img10.tif <- img10_labels.tif" in out and "  img2.tif <- img2_labels.tif" in out


def test_finetune_refuses_names_that_do_not_match(capsys, tmp_path, no_model):
    images, labels = _training_folders(tmp_path, ["a1.tif", "b2.tif"], ["a1_labels.tif", "c3_labels.tif"])
    code, _, err = run(capsys, "finetune", images, "--labels", labels, "-o", tmp_path / "m")
    assert code == 1
    [line] = error_lines(err)
    assert "cannot pair images and label files by name (no label file for: b2.tif; no image for: c3_labels.tif)" in line
    assert "--pair order" in line
    assert not (tmp_path / "m").exists()


def test_finetune_refuses_two_images_with_one_name(capsys, tmp_path, no_model):
    images, labels = _training_folders(tmp_path, ["a1.tif", "a1.tiff"], ["a1_labels.tif", "a2_labels.tif"])
    code, _, err = run(capsys, "finetune", images, "--labels", labels, "-o", tmp_path / "m")
    assert code == 1 and "images with the same name 'a1': a1.tif, a1.tiff" in err


def test_finetune_pair_order_pairs_as_given(capsys, tmp_path, monkeypatch):
    images, labels = _training_folders(tmp_path, ["x1.tif", "x2.tif"], ["y7.tif", "y8.tif"])
    seen = {}

    def fake_finetune(model, arrays, label_arrays, masks, **kwargs):
        seen["pairs"] = [(int(a.max()), int(b.max())) for a, b in zip(arrays, label_arrays)]
        raise ValueError("stop here")

    monkeypatch.setattr(cellrefine, "load_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(cellrefine, "finetune", fake_finetune)
    code, out, _ = run(capsys, "finetune", images, "--labels", labels, "-o", tmp_path / "m", "--pair", "order")
    assert code == 1 and seen["pairs"] == [(1, 7), (2, 8)]
    assert "paired by order" in out


def test_finetune_masks_are_paired_by_name(capsys, tmp_path, monkeypatch):
    images, labels = _training_folders(tmp_path, ["c1.tif", "c2.tif"], ["c2_labels.tif", "c1_labels.tif"])
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "masks" / "c1_mask.tif", np.eye(16, dtype=np.uint8))  # 16 reviewed pixels
    tifffile.imwrite(tmp_path / "masks" / "c2_mask.tif", np.ones((16, 16), np.uint8))  # 256
    seen = {}

    def fake_finetune(model, arrays, label_arrays, masks, **kwargs):
        seen["masks"] = [(int(a.max()), int(b.max()), int(m.sum())) for a, b, m in zip(arrays, label_arrays, masks)]
        raise ValueError("stop here")

    monkeypatch.setattr(cellrefine, "load_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(cellrefine, "finetune", fake_finetune)
    code, out, _ = run(capsys, "finetune", images, "--labels", labels, "--masks", tmp_path / "masks", "-o", tmp_path / "m")
    assert code == 1 and seen["masks"] == [(1, 1, 16), (2, 2, 256)]
    assert "  c1.tif <- c1_labels.tif, c1_mask.tif" in out


def test_finetune_unwritable_output_is_refused_before_training(capsys, tmp_path, no_model):
    images, labels = _training_folders(tmp_path, ["a1.tif"], ["a1_labels.tif"])
    (tmp_path / "m").write_text("a file where the model folder would go")
    code, _, err = run(capsys, "finetune", images, "--labels", labels, "-o", tmp_path / "m")
    assert code == 1 and "could not write" in err and "is a file, not a folder" in err
    (tmp_path / "model.safetensors").mkdir()
    code, _, err = run(capsys, "finetune", images, "--labels", labels, "-o", tmp_path / "model.safetensors")
    assert code == 1 and "a folder has that name" in err


def test_finetune_multi_series_image_is_refused(capsys, tmp_path, two_series, no_model):
    tifffile.imwrite(tmp_path / "two_labels.tif", np.zeros((16, 16), np.uint16))
    code, _, err = run(capsys, "finetune", two_series, "--labels", tmp_path / "two_labels.tif", "-o", tmp_path / "m")
    assert code == 1 and "holds 2 image series" in err and "--series N" in err
