"""Voxel size on the command line: read from TIFF metadata (ImageJ, OME-XML), ``--scale`` and ``--stack-mode``, passed to the core."""

import numpy as np
import pytest
import tifffile

import cellrefine
import cellrefine.inference
from cellrefine.cli import build_parser, main
from cellrefine.cli_files import open_image


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_imagej(path, array, spacing=None, resolution=None, unit="um", axes="ZYX"):
    """An ImageJ hyperstack; ``resolution`` is (y, x) pixel size (written as pixels per unit, X first as TIFF wants)."""
    metadata = {"axes": axes}
    if unit is not None:
        metadata["unit"] = unit
    if spacing is not None:
        metadata["spacing"] = spacing
    kwargs = {"resolution": (1 / resolution[1], 1 / resolution[0])} if resolution else {}
    tifffile.imwrite(path, array, imagej=True, metadata=metadata, **kwargs)
    return path


def stack(shape=(4, 12, 10), seed=0):
    return np.random.default_rng(seed).integers(0, 200, shape).astype(np.uint8)


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2,0.5,0.25", (2.0, 0.5, 0.25)), ("0.5,0.5", (0.5, 0.5)), (" 3 , 1 ,1 ", (3.0, 1.0, 1.0)), ("1e-3,2e-4,2e-4", (1e-3, 2e-4, 2e-4))],
)
def test_scale_option_parses(text, expected):
    args = build_parser().parse_args(["segment", "x.tif", "--scale", text])
    assert args.scale == expected
    assert build_parser().parse_args(["finetune", "x.tif", "--labels", "y.tif", "-o", "m", "--scale", text]).scale == expected


@pytest.mark.parametrize("text", ["2", "1,2,3,4", "0,1,1", "-1,1,1", "1,nan,1", "inf,1,1", "a,b,c", "1;1;1", "", "1,,1"])
def test_bad_scale_is_an_argparse_error(capsys, text):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["segment", "x.tif", f"--scale={text}"])  # = so that -1,1,1 is a value
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--scale" in err and "Z,Y,X or Y,X" in err and repr(text) in err


def test_stack_mode_choices(capsys):
    assert build_parser().parse_args(["segment", "x.tif"]).stack_mode == "auto"
    assert build_parser().parse_args(["segment", "x.tif", "--stack-mode", "3d"]).stack_mode == "3d"
    assert build_parser().parse_args(["segment", "x.tif", "--stack-mode", "stitch"]).stack_mode == "stitch"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "x.tif", "--stack-mode", "2d"])
    assert "invalid choice: '2d'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["segment", "finetune"])
def test_help_names_the_bundled_models_and_the_scale(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "a bundled model name (nuclei, cells) or a saved model (.safetensors file or folder); default: nuclei" in out
    assert "--scale Z,Y,X" in out


# ----------------------------------------------------------------------------- voxel size from files


def test_imagej_spacing_and_resolution(tmp_path):
    path = write_imagej(tmp_path / "ij.tif", stack(), spacing=2.0, resolution=(0.5, 0.25))
    file = open_image(path)
    assert file.axes == "ZYX"
    assert file.scale == pytest.approx((2.0, 0.5, 0.25))
    assert file.unit == "µm"


@pytest.mark.parametrize(("unit", "expected"), [("micron", "µm"), ("\\u00B5m", "µm"), ("nm", "nm"), ("pixel", None), (None, None)])
def test_imagej_unit_spellings(tmp_path, unit, expected):
    file = open_image(write_imagej(tmp_path / "ij.tif", stack(), spacing=3.0, resolution=(1.5, 1.5), unit=unit))
    assert file.scale == pytest.approx((3.0, 1.5, 1.5))
    assert file.unit == expected


def test_imagej_2d_gives_y_x(tmp_path):
    file = open_image(write_imagej(tmp_path / "plane.tif", stack((12, 10)), resolution=(0.4, 0.2), axes="YX"))
    assert file.axes == "YX"
    assert file.scale == pytest.approx((0.4, 0.2))


def test_imagej_stack_without_spacing_has_no_scale(tmp_path):
    # X and Y are calibrated but Z is not: the anisotropy is unknown, so no voxel size at all (the core's default 1,1,1)
    assert open_image(write_imagej(tmp_path / "nospacing.tif", stack(), resolution=(0.5, 0.5))).scale is None
    # an uncalibrated ImageJ file (resolution 1, no unit, no spacing)
    assert open_image(write_imagej(tmp_path / "plain_ij.tif", stack(), unit=None)).scale is None


def test_imagej_axes_override_without_z_gives_y_x(tmp_path):
    file = open_image(write_imagej(tmp_path / "ij.tif", stack(), spacing=2.0, resolution=(0.5, 0.25)), axes="TYX")
    assert file.axes == "TYX"
    assert file.scale == pytest.approx((0.5, 0.25))


def test_ome_physical_sizes(tmp_path):
    path = tmp_path / "ome.ome.tif"
    tifffile.imwrite(path, stack(), ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeY": 0.4, "PhysicalSizeX": 0.2})
    file = open_image(path)
    assert file.axes == "ZYX"
    assert file.scale == pytest.approx((3.0, 0.4, 0.2))
    assert file.unit == "µm"  # the OME schema's default unit


def test_ome_sizes_in_different_units_are_converted(tmp_path):
    path = tmp_path / "mixed.ome.tif"
    metadata = {"axes": "TZYX", "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "µm", "PhysicalSizeY": 250.0, "PhysicalSizeYUnit": "nm"}
    metadata |= {"PhysicalSizeX": 200.0, "PhysicalSizeXUnit": "nm"}
    tifffile.imwrite(path, stack((2, 3, 12, 10)), ome=True, metadata=metadata)
    file = open_image(path)
    assert file.axes == "TZYX"
    assert file.scale == pytest.approx((1.5, 0.25, 0.2))
    assert file.unit == "µm"


def test_ome_sizes_in_one_unit_keep_it(tmp_path):
    path = tmp_path / "nm.ome.tif"
    metadata = {"axes": "ZYX", "PhysicalSizeZ": 800, "PhysicalSizeY": 100, "PhysicalSizeX": 100}
    metadata |= {"PhysicalSizeZUnit": "nm", "PhysicalSizeYUnit": "nm", "PhysicalSizeXUnit": "nm"}
    tifffile.imwrite(path, stack(), ome=True, metadata=metadata)
    file = open_image(path)
    assert file.scale == pytest.approx((800.0, 100.0, 100.0))
    assert file.unit == "nm"


def test_ome_series_get_their_own_sizes(tmp_path):
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(stack(), metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 1.0, "PhysicalSizeX": 1.0})
        tif.write(stack((5, 8, 8)), metadata={"axes": "ZYX", "PhysicalSizeZ": 4.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    assert open_image(path, series=0).scale == pytest.approx((2.0, 1.0, 1.0))
    assert open_image(path, series=1).scale == pytest.approx((4.0, 0.5, 0.5))


def test_ome_without_z_size_has_no_scale_for_a_stack(tmp_path):
    path = tmp_path / "xy_only.ome.tif"
    tifffile.imwrite(path, stack(), ome=True, metadata={"axes": "ZYX", "PhysicalSizeY": 0.4, "PhysicalSizeX": 0.4})
    assert open_image(path).scale is None


def test_plain_tiff_and_npy_have_no_scale(tmp_path):
    tifffile.imwrite(
        tmp_path / "dpi.tif", stack(), resolution=(72, 72), photometric="minisblack", metadata={"axes": "ZYX"}
    )  # a dpi placeholder is no voxel size
    np.save(tmp_path / "array.npy", stack())
    assert open_image(tmp_path / "dpi.tif").scale is None
    assert open_image(tmp_path / "array.npy").scale is None


# ----------------------------------------------------------------------------- what reaches the core


@pytest.fixture
def core_calls(monkeypatch, tiny_model):
    """Replace the core with a recorder: every iter_segment call's keyword arguments; the result is an empty Segmentation."""
    from cellrefine.axes import check_scale
    from cellrefine.postprocess import PostprocessSettings

    calls = []

    def fake_iter_segment(image, model, axes, device, **kwargs):
        calls.append({"axes": axes, **kwargs})
        yield from ()
        shape = tuple(n for n, a in zip(image.shape, axes) if a != "C")
        mode = kwargs["stack_mode"] if "Z" in axes else "2d"
        return cellrefine.inference.Segmentation(
            np.zeros(shape, np.uint8), np.zeros(shape, np.uint32), None, axes.replace("C", ""), "cpu", PostprocessSettings(), mode,
            check_scale(kwargs["scale"], axes),
        )  # fmt: skip

    monkeypatch.setattr(cellrefine.inference, "iter_segment", fake_iter_segment)
    monkeypatch.setattr(cellrefine, "load_model", lambda path=None, device="cpu": tiny_model)
    return calls


def test_file_voxel_size_reaches_the_core(capsys, tmp_path, core_calls):
    path = write_imagej(tmp_path / "ij.tif", stack(), spacing=2.0, resolution=(0.5, 0.25))
    code, out, err = run(capsys, "segment", path, "-o", tmp_path / "labels.tif")
    assert code == 0, err
    assert core_calls == [core_calls[0]] and core_calls[0]["scale"] == pytest.approx((2.0, 0.5, 0.25))
    assert core_calls[0]["stack_mode"] == "auto"
    assert "[auto; voxel (z, y, x) 2:0.5:0.25 (from the file, µm)]" in out


def test_scale_option_overrides_the_file(capsys, tmp_path, core_calls):
    path = write_imagej(tmp_path / "ij.tif", stack(), spacing=2.0, resolution=(0.5, 0.25))
    code, out, err = run(capsys, "segment", path, "-o", tmp_path / "labels.tif", "--scale", "4,1,1", "--stack-mode", "stitch")
    assert code == 0, err
    assert core_calls[0]["scale"] == (4.0, 1.0, 1.0)
    assert core_calls[0]["stack_mode"] == "stitch"
    assert "[stitch; voxel (z, y, x) 4:1:1 (--scale)]" in out


def test_no_voxel_size_anywhere_passes_none(capsys, tmp_path, core_calls):
    tifffile.imwrite(tmp_path / "plain.tif", stack(), photometric="minisblack", metadata={"axes": "ZYX"})
    code, out, err = run(capsys, "segment", tmp_path / "plain.tif", "-o", tmp_path / "labels.tif", "--stack-mode", "3d")
    assert code == 0, err
    assert core_calls[0]["scale"] is None and core_calls[0]["stack_mode"] == "3d"
    assert "voxel (z, y, x) 1:1:1 (none recorded)" in out


def test_z_y_x_scale_gives_y_x_to_2d_images_of_a_batch(capsys, tmp_path, core_calls):
    write_imagej(tmp_path / "a_stack.tif", stack(), spacing=2.0, resolution=(0.5, 0.5))
    tifffile.imwrite(tmp_path / "b_plane.tif", stack((12, 10)))
    code, out, err = run(capsys, "segment", tmp_path / "a_stack.tif", tmp_path / "b_plane.tif", "-o", tmp_path / "out", "--scale", "3,0.6,0.5")
    assert code == 0, err
    assert [call["scale"] for call in core_calls] == [(3.0, 0.6, 0.5), (0.6, 0.5)]


def test_labels_carry_the_input_files_voxel_size(capsys, tmp_path, core_calls):
    path = write_imagej(tmp_path / "ij.tif", stack(), spacing=2.0, resolution=(0.5, 0.25))
    code, out, err = run(capsys, "segment", path, "-o", tmp_path / "labels.tif", "--semantic")
    assert code == 0, err
    for written in (tmp_path / "labels.tif", tmp_path / "labels_classes.tif"):
        labels = open_image(written)  # read back as any input: OME-XML PhysicalSize*, which Fiji's Bio-Formats reads too
        assert labels.axes == "ZYX" and labels.scale == pytest.approx((2.0, 0.5, 0.25)) and labels.unit == "µm"
    # a 2D OME image in nm keeps its unit
    tifffile.imwrite(
        tmp_path / "flat.ome.tif",
        stack((12, 10)),
        ome=True,
        metadata={"axes": "YX", "PhysicalSizeY": 40, "PhysicalSizeYUnit": "nm", "PhysicalSizeX": 40, "PhysicalSizeXUnit": "nm"},
    )
    assert run(capsys, "segment", tmp_path / "flat.ome.tif", "-o", tmp_path / "flat_labels.tif")[0] == 0
    flat = open_image(tmp_path / "flat_labels.tif")
    assert flat.scale == pytest.approx((40.0, 40.0)) and flat.unit == "nm"
    # --scale has no unit: the labels stay a plain TIFF (no voxel size claimed), as do inputs without one
    assert run(capsys, "segment", path, "-o", tmp_path / "scaled.tif", "--scale", "4,1,1")[0] == 0
    tifffile.imwrite(tmp_path / "plain.tif", stack(), photometric="minisblack", metadata={"axes": "ZYX"})
    assert run(capsys, "segment", tmp_path / "plain.tif", "-o", tmp_path / "plain_labels.tif")[0] == 0
    for written in (tmp_path / "scaled.tif", tmp_path / "plain_labels.tif"):
        assert open_image(written).scale is None
        with tifffile.TiffFile(written) as tif:
            assert not tif.is_ome


_BROKEN_OME = (
    '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
    '<Image ID="Image:0"><Pixels PhysicalSizeZ="2.0" PhysicalSizeY="0.5" PhysicalSizeX="0.5"></OME>'  # <Image> never closed
)


def test_malformed_voxel_size_metadata_is_a_warning_for_a_stack(capsys, tmp_path, core_calls):
    path = tmp_path / "broken.ome.tif"
    tifffile.imwrite(path, stack(), description=_BROKEN_OME, metadata=None)
    with pytest.warns(UserWarning, match=r"broken\.ome\.tif: the voxel size in its TIFF metadata cannot be read \(ParseError: mismatched tag"):
        assert open_image(path, axes="ZYX").scale is None
    code, out, err = run(capsys, "segment", path, "--axes", "ZYX", "-o", tmp_path / "labels.tif")
    assert code == 0, err
    warning_lines = [line for line in err.splitlines() if "warning:" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("cellrefine segment: warning: broken.ome.tif: the voxel size")
    assert "--scale Z,Y,X" in warning_lines[0] and core_calls[0]["scale"] is None
    # the same file read as channels (no Z): its voxel size does not matter, so no warning
    code, out, err = run(capsys, "segment", path, "--axes", "CYX", "-o", tmp_path / "labels2.tif")
    assert code == 0 and "warning:" not in err, err


def test_y_x_scale_for_a_stack_is_refused_before_any_work(capsys, tmp_path, core_calls):
    tifffile.imwrite(tmp_path / "plane.tif", stack((12, 10)))
    tifffile.imwrite(tmp_path / "zstack.tif", stack(), photometric="minisblack", metadata={"axes": "ZYX"})
    code, out, err = run(capsys, "segment", tmp_path / "plane.tif", tmp_path / "zstack.tif", "-o", tmp_path / "out", "--scale", "0.5,0.5")
    assert code == 1
    assert "zstack.tif has axes ZYX: give --scale Z,Y,X (3 numbers), got 2." in err
    assert core_calls == [] and not (tmp_path / "out").exists()  # the 2D image was not segmented either


@pytest.mark.parametrize("option", [["--scale", "2,1,1"], ["--stack-mode", "3d"]])
def test_3d_options_with_distributed_are_refused(capsys, tmp_path, option):
    code, out, err = run(capsys, "segment", tmp_path / "in.zarr", "--distributed", *option)
    assert code == 1
    assert "--scale and --stack-mode 3d do not apply with --distributed: it segments plane by plane" in err


# ----------------------------------------------------------------------------- end to end, with the real core


@pytest.mark.parametrize(("mode", "ran"), [("auto", "3d"), ("3d", "3d"), ("stitch", "stitch")])
def test_stack_segmented_with_the_file_voxel_size(capsys, tmp_path, monkeypatch, pointwise_model, blobs, mode, ran):
    monkeypatch.setattr(cellrefine, "load_model", lambda path=None, device="cpu": pointwise_model)
    image, _ = blobs
    volume = (np.stack([image] * 4) * 1000).clip(0, None).astype(np.uint16)  # 4 equal planes: each blob a column through Z
    path = write_imagej(tmp_path / "blobs.tif", volume, spacing=2.0, resolution=(1.0, 1.0))
    code, out, err = run(capsys, "segment", path, "-o", tmp_path / "labels.tif", "--stack-mode", mode)
    assert code == 0, err
    assert f"[{ran}; voxel (z, y, x) 2:1:1 (from the file, µm)]" in out
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert labels.shape == volume.shape and labels.max() == 6  # the six blobs, each one object through the four planes
    for z in range(1, 4):
        np.testing.assert_array_equal(labels[z], labels[0])


# ----------------------------------------------------------------------------- finetune


@pytest.mark.parametrize(
    ("option", "expected", "source"), [([], [2.0, 0.5, 0.5], "from the file, µm"), (["--scale", "3,1,1"], [3.0, 1.0, 1.0], "--scale")]
)
def test_finetune_passes_the_voxel_size(capsys, tmp_path, tiny_model, blobs, option, expected, source):
    from cellrefine.model.io import load_model

    image, labels = blobs
    volume = (np.stack([image[:32, :32]] * 3) * 1000).clip(0, None).astype(np.uint16)
    write_imagej(tmp_path / "stack.tif", volume, spacing=2.0, resolution=(0.5, 0.5))
    tifffile.imwrite(tmp_path / "stack_labels.tif", np.stack([labels[:32, :32]] * 3).astype(np.uint16), photometric="minisblack")
    model_path = tiny_model.save(tmp_path / "tiny.safetensors")
    argv = ["finetune", tmp_path / "stack.tif", "--labels", tmp_path / "stack_labels.tif", "-o", tmp_path / "tuned.safetensors"]
    code, out, err = run(capsys, *argv, "--model", model_path, "--steps", "2", "--device", "cpu", *option)
    assert code == 0, err
    assert f"stack.tif: voxel (z, y, x) {':'.join(f'{v:g}' for v in expected)} ({source})" in out
    assert load_model(tmp_path / "tuned.safetensors").config["provenance"][-1]["scale"] == [expected]  # one scale per image
