"""Tests for cellrefine.model.io: safetensors round trips, atomic writes, no pickles."""

import json
import os

import pytest
import torch

import cellrefine
from cellrefine import files
from cellrefine.model.io import FORMAT_VERSION, Model, bundled_model_path, load_model


def _output(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 24, 20, generator=generator)
    model.network.eval()
    with torch.inference_mode():
        return model.network(x)


def _with_provenance(model):
    model.config["provenance"] = [{"kind": "finetune", "parent": "nuclei_v1", "steps": 3, "loss_curve": [0.5, 0.25]}]
    model.config["normalization"]["high_percentile"] = 99.5
    return model


@pytest.mark.parametrize("name", ["model.safetensors", "model_folder", "nested/dir/model.safetensors"])
def test_round_trip_keeps_predictions_and_config(tmp_path, tiny_model, name):
    import copy

    tiny_model = _with_provenance(tiny_model)
    # non-trivial BatchNorm statistics must survive too (buffers, not only parameters)
    for module in tiny_model.network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(0.25)
            module.running_var.fill_(2.0)
    expected_config = copy.deepcopy(tiny_model.config)
    path = tiny_model.save(tmp_path / name)
    assert path == tmp_path / name
    loaded = load_model(path)
    assert torch.equal(_output(loaded), _output(tiny_model))
    for key, value in tiny_model.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key
    assert loaded.config == expected_config
    assert loaded.config["provenance"][0]["loss_curve"] == [0.5, 0.25]
    assert loaded.name == "tiny"
    assert loaded.path == str(path)
    assert not loaded.network.training
    assert next(loaded.network.parameters()).device.type == "cpu"


def test_folder_layout(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())  # human-readable JSON
    assert config == tiny_model.config
    assert config["format"] == "cellrefine-model" and config["format_version"] == FORMAT_VERSION
    # loading accepts str paths too
    assert load_model(str(folder)).config == tiny_model.config


def test_saved_file_is_safetensors_not_pickle(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "model.safetensors")
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    assert 0 < header_length < len(data)
    assert data[8:9] == b"{"
    header = json.loads(data[8 : 8 + header_length])
    assert json.loads(header["__metadata__"]["cellrefine_config"]) == tiny_model.config
    assert set(header) - {"__metadata__"} == set(tiny_model.network.state_dict())
    assert not data.startswith(b"\x80") and not data.startswith(b"PK")
    assert b"torch._utils" not in data and b"_rebuild_tensor" not in data


def test_no_leftover_temporary_files(tmp_path, tiny_model):
    tiny_model.save(tmp_path / "model.safetensors")
    tiny_model.save(tmp_path / "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("name", ["model.safetensors", "folder"])
def test_saving_over_an_existing_model_replaces_it(tmp_path, make_model, name):
    first, second = make_model(seed=1), make_model(seed=2)
    second.config["name"] = "second"
    first.save(tmp_path / name)
    second.save(tmp_path / name)
    loaded = load_model(tmp_path / name)
    assert loaded.name == "second"
    assert torch.equal(_output(loaded), _output(second))
    assert not torch.equal(_output(loaded), _output(first))
    assert len(list(tmp_path.iterdir())) == 1


def test_failed_write_keeps_the_old_file(tmp_path, make_model, monkeypatch):
    old = make_model(seed=1)
    path = old.save(tmp_path / "model.safetensors")
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        make_model(seed=2).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # temporary file removed


def test_folder_over_a_file_is_refused(tmp_path, tiny_model):
    (tmp_path / "model").write_text("a file")
    with pytest.raises(ValueError, match="a file with that name exists"):
        tiny_model.save(tmp_path / "model")


def test_copy_is_independent(tiny_model):
    twin = tiny_model.copy()
    assert twin.config == tiny_model.config and twin.config is not tiny_model.config
    assert torch.equal(_output(twin), _output(tiny_model))
    with torch.no_grad():
        next(twin.network.parameters()).add_(1.0)
    twin.config["name"] = "changed"
    assert not torch.equal(_output(twin), _output(tiny_model))
    assert tiny_model.name == "tiny"


def test_model_config_defaults_and_no_aliasing():
    config = {"name": "x", "architecture": {"in_channels": 1, "out_channels": 3, "depth": 1, "base_channels": 2, "norm": "none"}}
    model = Model(config=config)
    model.config["architecture"]["depth"] = 5
    assert config["architecture"]["depth"] == 1
    assert model.class_names == ["background", "cell", "boundary"]
    assert model.config["normalization"]["low_percentile"] == 1.0
    assert model.config["provenance"] == []
    assert not model.network.training


def test_unused_config_keys_are_not_written(tmp_path, tiny_model):
    assert "channels" not in tiny_model.config
    assert tiny_model.config["normalization"] == {"low_percentile": 1.0, "high_percentile": 99.8}
    header = _metadata_config(tiny_model.save(tmp_path / "model.safetensors"))
    assert "channels" not in header and "scope" not in header["normalization"]


def test_unused_keys_of_older_files_are_dropped_on_load(tmp_path, tiny_model):
    """CellRefine 0.1 wrote ``channels`` and ``normalization.scope`` but never read them."""
    from safetensors.torch import save_file

    old_config = dict(tiny_model.config, channels="mean", normalization={"low_percentile": 2.0, "high_percentile": 99.0, "scope": "stack"})
    path = tmp_path / "old.safetensors"
    state = {k: v.contiguous() for k, v in tiny_model.network.state_dict().items()}
    save_file(state, str(path), metadata={"cellrefine_config": json.dumps(old_config)})  # as CellRefine 0.1 wrote it
    assert _metadata_config(path)["channels"] == "mean"  # written as an older version did
    loaded = load_model(path)
    assert "channels" not in loaded.config
    assert loaded.config["normalization"] == {"low_percentile": 2.0, "high_percentile": 99.0}
    resaved = _metadata_config(loaded.save(tmp_path / "new.safetensors"))
    assert "channels" not in resaved and resaved["normalization"] == {"low_percentile": 2.0, "high_percentile": 99.0}


def _metadata_config(path):
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return json.loads(header["__metadata__"]["cellrefine_config"])


def test_model_from_network_takes_its_architecture():
    from cellrefine.model.unet import UNet

    network = UNet(depth=1, base_channels=2, norm="group")
    model = Model(network, {"name": "n", "architecture": {"depth": 4}})
    assert model.config["architecture"] == network.config()
    assert model.network is network


def test_repr(tiny_model):
    n_params = sum(p.numel() for p in tiny_model.network.parameters())
    assert repr(tiny_model) == f"Model(name='tiny', depth=2, base_channels=4, parameters={n_params})"


def test_lazy_exports():
    assert cellrefine.load_model is load_model
    assert cellrefine.Model is Model
    assert "segment" in dir(cellrefine) and "finetune" in dir(cellrefine)


# The bundled model itself (present, loads, segments a known crop) is tested in test_bundled_model.py.


def test_bundled_model_path_is_inside_the_package():
    path = bundled_model_path()
    assert path.name == "nuclei_v1.safetensors"
    assert path.parent.name == "weights" and path.parent.parent.name == "model"
    assert os.path.isdir(path.parent.parent)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("name", ["model.safetensors", "folder"])
def test_saved_files_respect_the_umask(tmp_path, tiny_model, name):
    umask = os.umask(0o022)
    try:
        path = tiny_model.save(tmp_path / name)
    finally:
        os.umask(umask)
    written = [path] if path.is_file() else sorted(path.iterdir())
    for file in written:
        assert file.stat().st_mode & 0o777 == 0o644, file.name
