"""Bundled models chosen by name (API, CLI), the phase-contrast cells sample, and what the wheel ships."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

import cellrefine as cr
from cellrefine.cli import main
from cellrefine.data import load_sample_cells, sample_cells, sample_cells_path
from cellrefine.model.bundled import BUNDLED_MODELS, bundled_model_path, bundled_names
from cellrefine.model.io import load_model


@pytest.fixture(scope="module")
def cells_model():
    return load_model("cells")


@pytest.fixture
def synthetic_field(make_image):
    """A 96 x 96 uint16 field of bright discs (seeded) and its instance labels: the same input for the CLI and the API."""
    image, labels = make_image((96, 96), noise=0.05, seed=3)
    return (image * 20000).clip(0, 65535).astype(np.uint16), labels.astype(np.uint16)


def test_bundled_names_and_files():
    assert bundled_names() == ("nuclei", "cells")
    for name, stem in (("nuclei", "nuclei_v1"), ("cells", "cells_v1")):
        path = bundled_model_path(name)
        assert path.name == f"{stem}.safetensors" and path.is_file()
        assert bundled_model_path(f"bundled:{stem}") == path
    assert bundled_model_path() == bundled_model_path("nuclei")
    with pytest.raises(ValueError, match="'nuclei'.*'cells'"):
        bundled_model_path("organoids")


@pytest.mark.parametrize(
    ("argument", "config_name"),
    [(None, "nuclei_v1"), ("nuclei", "nuclei_v1"), ("cells", "cells_v1"), ("bundled:cells", "cells_v1"), ("cells_v1", "cells_v1")],
)
def test_load_model_by_name(argument, config_name):
    model = load_model(argument)
    assert model.name == config_name
    assert model.path == f"bundled:{config_name}"
    assert load_model(model.path).name == config_name  # what Model.path records loads back


def test_existing_path_wins_over_a_bundled_name(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    tiny_model.save(tmp_path / "cells")  # a model folder named like the bundled model
    assert load_model("cells").name == "tiny"
    assert load_model("bundled:cells").name == "cells_v1"  # the prefix always means the bundled one
    assert load_model("nuclei").name == "nuclei_v1"


def test_unknown_names_list_the_bundled_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cels does not exist.*'nuclei': fluorescent.*'cells': whole cells in phase contrast"):
        load_model("cels")
    with pytest.raises(ValueError, match=r"'bundled:organoids' is not a bundled CellRefine model.*'nuclei'.*'cells'"):
        load_model("bundled:organoids")


def test_missing_bundled_weights_say_the_install_is_incomplete(tmp_path, monkeypatch):
    import cellrefine.model.io as model_io

    monkeypatch.setattr(model_io, "bundled_model_path", lambda name="nuclei": tmp_path / f"{name}_missing.safetensors")
    with pytest.raises(FileNotFoundError, match="bundled 'cells' model's weights are missing.*reinstall"):
        load_model("cells")


def test_cli_segment_with_the_cells_model(tmp_path, capsys, cells_model, synthetic_field):
    synthetic_image = synthetic_field[0]
    tifffile.imwrite(tmp_path / "field.tif", synthetic_image)
    code = main(["segment", str(tmp_path / "field.tif"), "-o", str(tmp_path / "labels.tif"), "--model", "cells", "--device", "cpu", "--semantic"])
    capsys.readouterr()
    assert code == 0
    expected = cr.segment(synthetic_image, model=cells_model, device="cpu")
    nuclei = cr.segment(synthetic_image, model=load_model("nuclei"), device="cpu")
    assert not np.array_equal(expected.semantic, nuclei.semantic)  # so the comparison below tells the two models apart
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), expected.instances)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels_classes.tif"), expected.semantic)


def test_cli_finetune_starts_from_the_cells_model(tmp_path, capsys, synthetic_field):
    synthetic_image, labels = synthetic_field
    tifffile.imwrite(tmp_path / "field.tif", synthetic_image)
    tifffile.imwrite(tmp_path / "field_labels.tif", labels)
    output = tmp_path / "tuned.safetensors"
    argv = ["finetune", str(tmp_path / "field.tif"), "--labels", str(tmp_path / "field_labels.tif"), "-o", str(output), "--model", "cells"]
    code = main([*argv, "--steps", "2", "--device", "cpu"])
    capsys.readouterr()
    assert code == 0
    record = load_model(output).config["provenance"][-1]
    assert (record["parent"], record["parent_file"], record["steps"]) == ("cells_v1", "bundled:cells_v1", 2)


def test_cells_sample():
    image = load_sample_cells()
    assert image.shape == (512, 512) and image.dtype == np.uint16
    assert sample_cells_path().stat().st_size < 600_000
    ((data, meta, kind),) = sample_cells()
    assert kind == "image" and data.shape == (512, 512)
    assert meta["name"] == "Cells (phase contrast)" and meta["metadata"]["cellrefine_axes"] == "YX"
    labels = load_sample_cells(labels=True)
    assert labels.shape == image.shape and labels.dtype == np.uint16
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(30))  # 29 cells, ids 1..29
    for index, box in enumerate(ndi.find_objects(labels), start=1):  # each cell is one 8-connected piece
        assert ndi.label(labels[box] == index, structure=np.ones((3, 3)))[1] == 1
    licence = sample_cells_path().with_name("LICENSE_Usiigaci_MIT.txt").read_text()
    assert "MIT License" in licence and "Okinawa Institute of Science" in licence
    assert "rows 0:512, columns 128:640" in sample_cells_path().with_name("SOURCES.txt").read_text()


def test_wheel_ships_the_cells_model_sample_and_licence(built_wheel):
    names = set(zipfile.ZipFile(built_wheel).namelist())
    expected = {f"cellrefine/model/weights/{model.file_name}" for model in BUNDLED_MODELS.values()} | {
        f"cellrefine/data/{name}" for name in ("cells_sample.tif", "cells_sample_labels.tif", "LICENSE_Usiigaci_MIT.txt", "SOURCES.txt")
    }
    assert expected <= names, sorted(expected - names)
