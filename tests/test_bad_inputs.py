"""Bad images, bad model files and bad devices give clear errors (never a crash deep inside)."""

import json
import pickle

import numpy as np
import pytest
import torch

from cellrefine.device import resolve_device
from cellrefine.inference import segment
from cellrefine.model.io import ModelFileError, load_model

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.filterwarnings("ignore::cellrefine.normalize.BlankImageWarning")  # many cases use all-zero images


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("image", "axes", "error", "match"),
    [
        (np.zeros((0, 5), np.float32), None, ValueError, r"image is empty \(shape \(0, 5\)\)"),
        (np.zeros((3, 0, 5), np.uint8), None, ValueError, "image is empty"),
        (np.zeros((1, 1, 1, 1, 4, 4), np.float32), None, ValueError, r"2 to 5 axes .* got 6 \(shape \(1, 1, 1, 1, 4, 4\)\)"),
        (np.zeros(7, np.float32), None, ValueError, "2 to 5 axes"),
        (np.zeros((4, 4), np.float32), "ZYX", ValueError, r"'ZYX' has 3 letters but the image has 2 dimensions \(shape \(4, 4\)\)"),
        (np.zeros((3, 4, 4), np.float32), "TZX", ValueError, "must contain both 'Y' and 'X'"),
        (np.zeros((3, 4, 4), np.float32), "ZQX", ValueError, "unknown letters"),
        (np.zeros((4, 4), np.complex64), None, TypeError, r"complex images are not supported \(dtype complex64\)"),
        (np.zeros((4, 4), object), None, TypeError, "image must be numeric .* got dtype object"),
        (np.full((4, 4), "a"), None, TypeError, "image must be numeric .* got dtype <U1"),
        ([["a", "b"], ["c", "d"]], None, TypeError, "image must be numeric"),
    ],
)
def test_bad_images(tiny_model, image, axes, error, match):
    with pytest.raises(error, match=match):
        segment(image, model=tiny_model, axes=axes, device="cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_non_finite_pixels(tiny_model, bad, dtype):
    image = np.ones((2, 8, 8), dtype)
    image[1, 3, 4] = bad
    with pytest.raises(ValueError, match=r"plane \(t=0, z=1\) contains NaN or infinite values.*np\.nan_to_num"):
        segment(image, model=tiny_model, axes="ZYX", device="cpu")


def test_nested_list_image_is_accepted(tiny_model):
    result = segment([[0, 1, 2], [3, 4, 5]], model=tiny_model, device="cpu")
    assert result.instances.shape == (2, 3)


def test_channel_mismatch_for_multichannel_model(make_model):
    model = make_model(in_channels=2)
    with pytest.raises(ValueError, match=r"the model expects 2 channels but the image has 3 \(axes 'CYX'\)"):
        segment(np.zeros((3, 8, 8), np.float32), model=model, axes="CYX", device="cpu")
    # the right number of channels works
    assert segment(np.zeros((2, 8, 8), np.float32), model=model, axes="CYX", device="cpu").instances.shape == (8, 8)


def test_bad_postprocess_settings(tiny_model):
    with pytest.raises(ValueError, match="min_size must be a non-negative integer"):
        segment(np.zeros((8, 8)), model=tiny_model, device="cpu", postprocess={"min_size": -1})
    with pytest.raises(TypeError):
        segment(np.zeros((8, 8)), model=tiny_model, device="cpu", postprocess={"no_such_setting": 1})


# ----------------------------------------------------------------------------- model files


def test_load_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_load_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a model at all", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}', b"\xff" * 64, b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}'],
)
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load_model(path)


def test_truncated_file(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(path)


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)
    import cellrefine

    assert cellrefine.ModelFileError is ModelFileError


@pytest.mark.parametrize("zipfile", [True, False])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_torch_save_pickle_is_refused(tmp_path, tiny_model, zipfile, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save(tiny_model.network.state_dict(), path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(ModelFileError, match="pickle/zip file"):
        load_model(path)


def test_pickle_in_model_folder_is_refused(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "model")
    with open(folder / "model.safetensors", "wb") as stream:
        pickle.dump(tiny_model.network.state_dict(), stream)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(folder)


def test_old_protocol_pickle_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=0))
    with pytest.raises(ModelFileError):
        load_model(path)


def _save_raw(path, model, config):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.network.state_dict().items()}
    save_file(state, str(path), metadata=None if config is None else {"cellrefine_config": json.dumps(config)})
    return path


def test_weights_not_matching_config(tmp_path, tiny_model):
    config = json.loads(json.dumps(tiny_model.config))
    config["architecture"]["base_channels"] = 8
    path = _save_raw(tmp_path / "model.safetensors", tiny_model, config)
    with pytest.raises(ModelFileError, match="weights do not match the architecture"):
        load_model(path)


def test_folder_config_not_matching_weights(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["architecture"]["depth"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(folder)


def test_folder_config_not_json(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "model")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(folder)


def test_safetensors_without_config(tmp_path, tiny_model):
    path = _save_raw(tmp_path / "model.safetensors", tiny_model, None)
    with pytest.raises(ModelFileError, match="has no CellRefine config"):
        load_model(path)


def test_config_of_another_format(tmp_path, tiny_model):
    path = _save_raw(tmp_path / "model.safetensors", tiny_model, {"format": "something-else"})
    with pytest.raises(ModelFileError, match="not a CellRefine model config"):
        load_model(path)


def test_config_from_a_newer_version(tmp_path, tiny_model):
    config = dict(tiny_model.config, format_version=99)
    path = _save_raw(tmp_path / "model.safetensors", tiny_model, config)
    with pytest.raises(ModelFileError, match="newer CellRefine"):
        load_model(path)


def test_config_with_unknown_architecture_argument(tmp_path, tiny_model):
    config = json.loads(json.dumps(tiny_model.config))
    config["architecture"]["dropout"] = 0.5
    path = _save_raw(tmp_path / "model.safetensors", tiny_model, config)
    with pytest.raises(ModelFileError, match="invalid architecture"):
        load_model(path)


def test_config_with_invalid_architecture_value(tmp_path, tiny_model):
    config = json.loads(json.dumps(tiny_model.config))
    config["architecture"]["depth"] = 0
    path = _save_raw(tmp_path / "model.safetensors", tiny_model, config)
    with pytest.raises(ModelFileError, match="invalid architecture"):
        load_model(path)


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")
def test_cuda_on_a_cpu_machine(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="device='cuda' was requested but PyTorch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        segment(np.zeros((8, 8)), model=tiny_model, device="cuda")
    path = tiny_model.save(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        load_model(path, device="cuda")


@pytest.mark.parametrize("device", ["tpu", "gpu", "xla:0"])
def test_unknown_device(tiny_model, device):
    with pytest.raises(ValueError, match=f"unknown device '{device}'"):
        resolve_device(device)
    with pytest.raises(ValueError, match="unknown device"):
        segment(np.zeros((8, 8)), model=tiny_model, device=device)


def test_device_of_wrong_type():
    with pytest.raises(TypeError, match="device must be a string"):
        resolve_device(0)


def test_valid_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


def test_device_names_are_case_insensitive():
    assert resolve_device("Auto").type in ("cpu", "cuda", "mps")
    assert resolve_device("CPU") == torch.device("cpu")


# ----------------------------------------------------------------------------- numeric arguments (issue 11)

_IMAGE = np.zeros((2, 16, 16), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": -1, "tile_size": 64}, ValueError, r"batch_size must be between 1 and 4096 \(tiles per forward pass, e.g. 4\) .* got -1"),
        ({"batch_size": 0}, ValueError, "batch_size must be between 1 and 4096"),
        ({"batch_size": 10**6}, ValueError, "batch_size must be between 1 and 4096"),
        ({"batch_size": True}, TypeError, r"batch_size must be a whole number .* got True \(bool\)"),
        ({"batch_size": 2.0}, TypeError, r"batch_size must be a whole number .* got 2.0 \(float\)"),
        ({"batch_size": "4"}, TypeError, "batch_size must be a whole number"),
        ({"tile_size": -5}, ValueError, r"tile_size must be between 1 and 65536 \(pixels per side of a tile, e.g. 512; .*\) .* got -5"),
        ({"tile_size": 0}, ValueError, "tile_size must be between 1 and 65536"),
        ({"tile_size": 2**20}, ValueError, "tile_size must be between 1 and 65536"),
        ({"tile_size": True}, TypeError, r"tile_size must be a whole number .* got True \(bool\)"),
        ({"tile_size": 64.5}, TypeError, "tile_size must be a whole number"),
        ({"precision": "fp16"}, ValueError, "precision must be one of"),
        ({"precision": None}, ValueError, "precision must be one of"),
        ({"planes": []}, ValueError, "planes is empty; pass None to segment every plane"),
        ({"planes": [(0, 2)]}, ValueError, r"plane index \(0, 2\) is outside the stack \(T=1, Z=2\)"),
        ({"planes": [(0, -1)]}, ValueError, "outside the stack"),
        ({"planes": [(True, 0)]}, TypeError, r"planes must hold \(t, z\) pairs of integers, got \(True, 0\)"),
        ({"planes": [(0,)]}, TypeError, r"planes must hold \(t, z\) pairs of integers, got \(0,\)"),
        ({"planes": [(0, 1.0)]}, TypeError, "pairs of integers"),
        ({"planes": "01"}, TypeError, r"planes must be a list of \(t, z\) index pairs"),
        ({"planes": 3}, TypeError, "planes must be a list"),
        ({"return_probabilities": "yes"}, TypeError, "return_probabilities must be True or False, got 'yes'"),
        ({"overlap_postprocess": 1}, TypeError, "overlap_postprocess must be True or False, got 1"),
        ({"postprocess": "fast"}, TypeError, "postprocess must be a PostprocessSettings, a dict of its fields or None, got str"),
    ],
)
def test_bad_numeric_and_option_arguments(tiny_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        segment(_IMAGE, model=tiny_model, axes="ZYX", device="cpu", **kwargs)


def test_valid_numeric_arguments_of_other_integer_types(tiny_model):
    result = segment(_IMAGE, model=tiny_model, axes="ZYX", device="cpu", tile_size=np.int64(16), batch_size=np.int32(2), planes=np.array([[0, 1]]))
    assert result.instances.shape == (2, 16, 16)


def test_duplicate_planes_are_segmented_once(pointwise_model, blobs):
    image, _ = blobs
    stack = np.stack([image, image])
    progress = []
    result = segment(stack, model=pointwise_model, axes="ZYX", device="cpu", planes=[(0, 1), (0, 1)], progress=lambda d, t: progress.append(t))
    assert set(progress) == {1} and result.instances[1].max() == 6 and result.instances[0].max() == 0


@pytest.mark.parametrize(("tile_size", "batch_size"), [(-5, 1), (0, 1), (16, 0), (True, 1)])
def test_predict_probabilities_checks_its_arguments(tiny_model, tile_size, batch_size):
    from cellrefine.tiling import predict_probabilities

    with pytest.raises((ValueError, TypeError), match="must be"):
        predict_probabilities(tiny_model.network, np.zeros((1, 16, 16), np.float32), tile_size=tile_size, batch_size=batch_size, device="cpu")


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_network_with_nan_weights_raises_instead_of_finding_nothing(tiny_model, precision):
    image = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    segment(image, model=tiny_model, device="cpu", precision=precision)  # a cached inference copy of the good weights exists
    with torch.no_grad():
        next(tiny_model.network.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"the network's weights are not finite \(encoders.0.0.weight holds NaN or Inf\)"):
        segment(image, model=tiny_model, device="cpu", precision=precision)


def test_network_giving_nan_probabilities_raises(pointwise_model):
    pointwise_model.network.forward = lambda x: torch.full((x.shape[0], 3, *x.shape[2:]), float("nan"))  # runs as it is (patched)
    with pytest.raises(ValueError, match="the network produced NaN or infinite probabilities"):
        segment(np.eye(16, dtype=np.float32), model=pointwise_model, device="cpu")
