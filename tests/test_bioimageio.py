"""bioimage.io export: the package validates, bioimageio.core reproduces its test output, CellRefine loads it back."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
import tifffile

import cellrefine as cr
from cellrefine.cli import main
from cellrefine.export import CELLREFINE_FILE, default_test_image, export_bioimageio, read_cellrefine_package, run_test_model, validate_package
from cellrefine.export.card import png_bytes
from cellrefine.export.rdf import input_size_rule, to_yaml
from cellrefine.model.io import Model, ModelFileError


def member(path, name):
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def npy(path, name):
    return np.load(io.BytesIO(member(path, name)), allow_pickle=False)


def rdf(path):
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(member(path, "rdf.yaml"))


@pytest.fixture(scope="module")
def bundled_package(tmp_path_factory):
    """The bundled model exported once (validated with bioimageio.spec when installed)."""
    path = tmp_path_factory.mktemp("export") / "nuclei_v1.zip"
    return export_bioimageio(cr.load_model(), path)


def test_package_holds_what_bioimageio_needs(bundled_package):
    names = set(zipfile.ZipFile(bundled_package).namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "weights.pt", "weights_torchscript.pt", "cellrefine_unet.py"} <= names
    assert {"test_input.npy", "test_output.npy", CELLREFINE_FILE} <= names
    description = rdf(bundled_package)
    assert description["type"] == "model" and description["format_version"].startswith("0.5.")
    assert description["license"] == "BSD-3-Clause" and len(description["cite"]) >= 2
    (raw,) = description["inputs"]
    scale_range = next(step for step in raw["preprocessing"] if step["id"] == "scale_range")
    assert scale_range["kwargs"]["min_percentile"] == 1.0 and scale_range["kwargs"]["max_percentile"] == 99.8
    (output,) = description["outputs"]
    assert output["axes"][1]["channel_names"] == ["background", "cell", "boundary"]
    assert output["axes"][2]["halo"] == cr.load_model().network.halo == 64
    state_dict = description["weights"]["pytorch_state_dict"]
    assert state_dict["architecture"]["callable"] == "CellRefineUNet"
    assert state_dict["architecture"]["kwargs"] == {"in_channels": 1, "out_channels": 3, "depth": 3, "base_channels": 16, "norm": "batch"}
    assert description["weights"]["torchscript"]["parent"] == "pytorch_state_dict"
    # test tensors: (batch, channel, y, x) on the size grid
    test_input, test_output = npy(bundled_package, "test_input.npy"), npy(bundled_package, "test_output.npy")
    assert test_input.shape == (1, 1, 256, 256) and test_input.dtype == np.float32
    assert test_output.shape == (1, 3, 256, 256)
    np.testing.assert_allclose(test_output.sum(axis=1), 1.0, atol=1e-5)
    size_min, step = input_size_rule(3, 64)
    assert (256 - size_min) % step == 0
    # the README carries the model card figures and the provenance
    readme = member(bundled_package, "README.md").decode()
    for text in ("482,483 parameters", "percentiles 1 / 99.8", "## Provenance", "**train**", "nuclei/train", "## Validation", "0.947", "doi:"):
        assert text in readme, text


def test_package_passes_bioimageio_spec_validation(bundled_package):
    pytest.importorskip("bioimageio.spec")
    assert validate_package(bundled_package) == "valid-format"


def test_bioimageio_core_reproduces_the_test_output(tmp_path, tiny_model):
    pytest.importorskip("bioimageio.core")
    path = export_bioimageio(tiny_model, tmp_path / "tiny.zip", validate=True)
    result = run_test_model(path, devices=["cpu"])
    assert result["status"] == "passed", result["errors"]
    passed = {name for name, status in result["details"] if status == "passed"}
    assert "Reproduce test outputs from test inputs (pytorch_state_dict)" in passed
    assert "Reproduce test outputs from test inputs (torchscript)" in passed


def test_test_output_is_what_cellrefine_predicts(bundled_package):
    # the package's preprocessing (scale_range) and network (mirror padding by the halo) reproduce cr.segment's probabilities
    test_input, test_output = npy(bundled_package, "test_input.npy"), npy(bundled_package, "test_output.npy")
    result = cr.segment(test_input[0, 0], model=cr.load_model(), device="cpu", precision="float32", return_probabilities=True)
    difference = np.abs(result.probabilities.astype(np.float32) - test_output[0])
    assert difference.max() < 2e-3  # probabilities are kept as float16 by segment
    assert np.array_equal(test_input[0, 0], default_test_image()[132:388, 220:476].astype(np.float32))  # the centred 256² crop of field 0


def test_load_model_reads_an_exported_package_back(bundled_package):
    original, loaded = cr.load_model(), cr.load_model(bundled_package)
    assert loaded.config == original.config and loaded.path == str(bundled_package)
    for key, value in original.network.state_dict().items():
        assert np.array_equal(value.numpy(), loaded.network.state_dict()[key].numpy()), key
    image = default_test_image()
    before, after = cr.segment(image, model=original, device="cpu"), cr.segment(image, model=loaded, device="cpu")
    assert before.instances.max() > 5
    np.testing.assert_array_equal(before.instances, after.instances)


def test_foreign_zip_files_are_refused_clearly(tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nformat_version: 0.5.4\n")
        archive.writestr("weights.pt", b"PK not ours")
    with pytest.raises(ModelFileError, match="bioimage.io model package that CellRefine did not write.*cellrefine export.*bioimageio.core"):
        cr.load_model(foreign)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ModelFileError, match="not a bioimage.io model package"):
        cr.load_model(other)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="not a valid zip file"):
        read_cellrefine_package(broken)


@pytest.mark.parametrize(
    ("name", "test_image", "error", "match"),
    [
        ("model.safetensors", None, ValueError, r"\.zip file.*'model\.zip'"),
        ("small.zip", np.zeros((40, 300), np.uint16), ValueError, "too small.*at least 60 px"),
        ("stack.zip", np.zeros((2, 80, 80), np.uint16), ValueError, r"2D \(Y, X\)"),
        ("nan.zip", np.full((80, 80), np.nan, np.float32), ValueError, "NaN or Inf"),
    ],
)
def test_export_refuses_bad_requests(tmp_path, tiny_model, name, test_image, error, match):
    with pytest.raises(error, match=match):
        export_bioimageio(tiny_model, tmp_path / name, test_image=test_image, validate=False)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_multichannel_models(tmp_path, make_model):
    with pytest.raises(ValueError, match="one-channel"):
        export_bioimageio(make_model(in_channels=2), tmp_path / "rgb.zip", validate=False)


def test_a_failed_validation_leaves_the_previous_package(tmp_path, tiny_model, monkeypatch):
    import cellrefine.export.package as package

    path = tmp_path / "model.zip"
    path.write_bytes(b"previous")

    def invalid(_path):
        raise ValueError("model.zip is not a valid bioimage.io package: (test)")

    monkeypatch.setattr(package, "validate_package", invalid)
    monkeypatch.setattr(package, "spec_installed", lambda: True)  # the check itself is replaced: bioimageio.spec need not be installed
    with pytest.raises(ValueError, match="not a valid bioimage.io package"):
        export_bioimageio(tiny_model, path, validate=True)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["model.zip"]


def test_custom_test_image_is_cropped_to_the_size_grid(tmp_path, tiny_model):
    image = np.random.default_rng(0).integers(0, 4000, (300, 150)).astype(np.uint16)
    path = export_bioimageio(tiny_model, tmp_path / "t.zip", test_image=image, authors=["Ada Lovelace"], validate=False)
    test_input = npy(path, "test_input.npy")
    size_min, step = input_size_rule(2, tiny_model.network.halo)
    assert test_input.shape[:2] == (1, 1) and all(n <= 256 and (n - size_min) % step == 0 for n in test_input.shape[2:])
    assert test_input.shape[3] == 148  # 150 rounded down to the grid (60 + k * 4)
    top, left = (300 - test_input.shape[2]) // 2, 1
    np.testing.assert_array_equal(test_input[0, 0], image[top : top + test_input.shape[2], left : left + 148])
    assert rdf(path)["authors"] == [{"name": "Ada Lovelace"}]


def test_fine_tune_provenance_is_in_the_readme(tmp_path, tiny_model):
    record = {
        "kind": "finetune",
        "date": "2026-12-01T00:00:00+00:00",
        "parent": "nuclei_v1",
        "steps": 20,
        "planned_steps": 20,
        "data_shapes": [[1, 64, 64]],
        "reviewed_pixels": [900],
        "metrics_before": {"reviewed_accuracy": 0.5},
        "metrics_after": {"reviewed_accuracy": 0.75},
    }
    model = Model(tiny_model.network, {**tiny_model.config, "provenance": [record]})
    readme = member(export_bioimageio(model, tmp_path / "t.zip", validate=False), "README.md").decode()
    assert "**finetune**, 2026-12-01" in readme and "1x64x64" in readme and "900 reviewed pixels" in readme
    assert "reviewed accuracy: 0.500 → 0.750" in readme
    assert "not on held-out data" in readme


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        assert struct.unpack(">I", data[position + 8 + length : position + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert not rows[:, 0].any()  # filter type 0
    return rows[:, 1:].reshape(height, width, 3)


def test_png_writer_round_trips_and_cover_is_two_to_one(bundled_package):
    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    np.testing.assert_array_equal(decode_png(png_bytes(image)), image)
    cover = decode_png(member(bundled_package, "cover.png"))
    assert cover.shape == (256, 512, 3) and cover.std() > 10
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        png_bytes(np.zeros((4, 4), np.uint8))


def test_yaml_writer_round_trips():
    yaml = pytest.importorskip("yaml")
    value = {
        "a": [1, 2.5, -0.0, 1e-06, True, None, "x: y", 'quote " and \\ and é', []],
        "b": {"c": [{"d": 1, "e": [1, {"f": "g"}]}], "empty": {}},
        "version": "0.5.4",
    }
    assert yaml.safe_load(to_yaml(value)) == value
    with pytest.raises(ValueError, match="plain word"):
        to_yaml({"a b": 1})


def test_cli_export_writes_a_package(tmp_path, tiny_model, capsys):
    model_path = tiny_model.save(tmp_path / "tiny.safetensors")
    image = np.random.default_rng(0).integers(0, 1000, (100, 120)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plane.tif", image)
    output = tmp_path / "out" / "tiny.zip"
    code = main(["export", "--model", str(model_path), "-o", str(output), "--test-image", str(tmp_path / "plane.tif"), "--no-validate"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"exported tiny to {output}" in captured.out
    assert npy(output, "test_input.npy").shape == (1, 1, 100, 120)
    assert cr.load_model(output).config == tiny_model.config


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-o", "model.safetensors"], "a bioimage.io package is a .zip file"),
        (["-o", "x.zip", "--test-image", "stack.tif"], "a 2D grey image"),
        (["-o", "x.zip", "--model", "missing.safetensors"], "does not exist"),
    ],
)
def test_cli_export_errors_are_one_line(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 80, 80), np.uint16), photometric="minisblack", metadata={"axes": "ZYX"})
    assert main(["export", *arguments]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cellrefine export: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.zip").exists()


def test_cli_export_test_needs_bioimageio_core(tmp_path, monkeypatch, capsys):
    import cellrefine.export

    monkeypatch.setattr(cellrefine.export, "core_installed", lambda: False)
    assert main(["export", "-o", str(tmp_path / "x.zip"), "--test"]) == 1
    assert "--test needs bioimageio.core: pip install 'napari-cellrefine[bioimageio]'" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()  # refused before any work
