"""Hostile or broken model files and configs: clear errors at load/save, nothing allocated or written on a bad file."""

import copy
import errno
import json
import math
import os
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellrefine import files
from cellrefine.model import Model, ModelFileError, load_model, validate_config
from cellrefine.model import config as model_config
from cellrefine.model.config import ARCHITECTURE_LIMITS, MAX_PARAMETERS, check_weights, expected_weight_shapes
from cellrefine.model.unet import NORMALIZATIONS, UNet
from cellrefine.postprocess import PostprocessSettings

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write_raw(path, model, config, state=None):
    """A safetensors file as anyone could write it: ``state`` (default: the model's weights) + ``config`` as metadata."""
    from safetensors.torch import save_file

    state = state if state is not None else {k: v.contiguous() for k, v in model.network.state_dict().items()}
    save_file(state, str(path), metadata={"cellrefine_config": json.dumps(config)})
    return path


def _config_with(model, dotted, value):
    config = copy.deepcopy(model.config)
    *parents, key = dotted.split(".")
    section = config
    for parent in parents:
        section = section.setdefault(parent, {})
    section[key] = value
    return config


@pytest.fixture
def no_network_built(monkeypatch):
    """Fails the test if a UNet is constructed (the checks must come first)."""
    built = []
    original = UNet.__init__

    def recording_init(self, *args, **kwargs):
        built.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "__init__", recording_init)
    yield built
    assert built == [], f"a network was built before the file was refused: {built}"


# ----------------------------------------------------------------------------- config validation at load, naming the field

BAD_CONFIGS = [
    # architecture: bounded integers (True is not an integer), known norm, not too many weights
    ("architecture.base_channels", 4096, r"architecture\.base_channels must be an integer in \[1, 1024\], got 4096"),
    ("architecture.base_channels", 1e5, r"architecture\.base_channels must be an integer in \[1, 1024\], got 100000\.0"),
    ("architecture.base_channels", True, r"architecture\.base_channels must be an integer .* got True"),
    ("architecture.depth", "3", r"architecture\.depth must be an integer in \[1, 6\], got '3'"),
    ("architecture.depth", 0, r"architecture\.depth must be an integer in \[1, 6\], got 0"),
    ("architecture.in_channels", -1, r"architecture\.in_channels must be an integer in \[1, 64\]"),
    ("architecture.norm", "layer", r"architecture\.norm must be one of batch, group, instance, none, got 'layer'"),
    ("architecture.out_channels", 5, r"architecture\.out_channels must be 3 \(one per class in class_names\), got 5"),
    ("architecture.dropout", 0.5, r"unknown field\(s\) architecture\.dropout"),
    ("architecture", "unet", r"'architecture' must be a dict"),
    # normalization: known keys, finite numbers, 0 <= low < high <= 100
    ("normalization.gamma", 2.0, r"unknown setting\(s\) normalization\.gamma; known: low_percentile, high_percentile"),
    (
        "normalization.low_percentile",
        99.9,
        r"normalization needs 0 <= low_percentile < high_percentile <= 100, got low_percentile=99\.9, high_percentile=99\.8",
    ),
    ("normalization.high_percentile", 1.0, r"low_percentile < high_percentile .* got low_percentile=1\.0, high_percentile=1\.0"),
    ("normalization.high_percentile", 150, r"<= 100, got low_percentile=1\.0, high_percentile=150"),
    ("normalization.low_percentile", "1", r"normalization\.low_percentile must be a finite number, got '1'"),
    ("normalization.low_percentile", float("nan"), r"normalization\.low_percentile must be a finite number, got nan"),
    ("normalization.high_percentile", None, r"normalization\.high_percentile must be a finite number, got None"),
    ("normalization", [1, 99], r"'normalization' must be a dict, got list"),
    # postprocess: PostprocessSettings fields, in range
    ("postprocess.threshold", 0.5, r"unknown setting\(s\) postprocess\.threshold; known: foreground_threshold"),
    ("postprocess.foreground_threshold", 1.5, r"postprocess\.foreground_threshold must be in \[0, 1\], got 1\.5"),
    ("postprocess.seed_threshold", "high", r"postprocess\.seed_threshold must be a finite number, got 'high'"),
    ("postprocess.min_size", 2.5, r"postprocess\.min_size must be a whole number, got 2\.5"),
    ("postprocess.min_size", -3, r"postprocess\.min_size must be a non-negative integer, got -3"),
    ("postprocess.min_seed_size", False, r"postprocess\.min_seed_size must be a finite number, got False"),
    ("postprocess.stitch_threshold", 0, r"postprocess\.stitch_threshold must be in \(0, 1\], got 0"),
    ("postprocess.stitch_threshold", float("inf"), r"postprocess\.stitch_threshold must be a finite number, got inf"),
    ("postprocess", "defaults", r"'postprocess' must be a dict, got str"),
    # the rest
    ("format_version", "1", r"format_version must be a whole number >= 1 \(this CellRefine writes 1\), got '1'"),
    ("format_version", 0, r"format_version must be a whole number >= 1"),
    ("format_version", 1.5, r"format_version must be a whole number >= 1"),
    ("class_names", ["cell", "background", "boundary"], r"class_names must be \['background', 'cell', 'boundary'\]"),
    ("name", 7, r"name must be a string, got 7"),
    ("provenance", "trained on my data", r"provenance must be a list of training records"),
    ("provenance", [1, 2], r"provenance must be a list of training records"),
]


@pytest.mark.parametrize(("field", "value", "match"), BAD_CONFIGS, ids=[f"{f}={v!r}" for f, v, _ in BAD_CONFIGS])
def test_bad_config_is_refused_at_load_naming_the_field(tmp_path, tiny_model, no_network_built, field, value, match):
    path = _write_raw(tmp_path / "model.safetensors", tiny_model, _config_with(tiny_model, field, value))
    with pytest.raises(ModelFileError, match=match) as raised:
        load_model(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(("field", "value", "match"), BAD_CONFIGS, ids=[f"{f}={v!r}" for f, v, _ in BAD_CONFIGS])
def test_bad_config_is_refused_by_model_and_save(tmp_path, tiny_model, field, value, match):
    config = _config_with(tiny_model, field, value)
    if not field.startswith("architecture"):  # a given network sets the architecture
        with pytest.raises(ModelFileError, match=match):
            Model(tiny_model.network, config)
    with pytest.raises(ModelFileError, match=match):
        Model(config=config)
    tiny_model.config = config  # edited after creation: refused at save, nothing written
    with pytest.raises(ModelFileError, match=f"model 'tiny' was not saved: .*{match}" if field != "name" else match):
        tiny_model.save(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_bad_config_in_a_model_folder_names_config_json(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["postprocess"] = {"foreground_threshold": 0.8, "seed_treshold": 0.7}  # a typo
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=r"config\.json: model config: unknown setting\(s\) postprocess\.seed_treshold"):
        load_model(folder)


def test_huge_architecture_is_refused_before_any_allocation(tmp_path, tiny_model, no_network_built):
    # every field within its bounds, but 512 channels at depth 6 would be ~30 billion weights
    config = _config_with(tiny_model, "architecture", {"in_channels": 1, "out_channels": 3, "depth": 6, "base_channels": 512, "norm": "batch"})
    path = _write_raw(tmp_path / "model.safetensors", tiny_model, config)
    with pytest.raises(ModelFileError, match=r"invalid architecture: depth 6 with base_channels 512 means [\d,]+ weights \(at most [\d,]+\); lower"):
        load_model(path)


def test_plausible_architecture_with_other_weights_is_refused_before_building(tmp_path, tiny_model, no_network_built):
    # the old code built the (here 1024-channel, 0.5 GB) network first and compared afterwards
    config = _config_with(tiny_model, "architecture.base_channels", 1024)
    config["architecture"]["depth"] = 1
    path = _write_raw(tmp_path / "model.safetensors", tiny_model, config)
    with pytest.raises(
        ModelFileError,
        match=r"weights do not match the architecture .*'base_channels': 1024.*\}: encoders\.0\.0\.weight has shape \(4, 1, 3, 3\), expected \(1024, 1, 3, 3\)",
    ):
        load_model(path)


def test_missing_unexpected_and_wrongly_typed_tensors_are_named(tmp_path, tiny_model, no_network_built):
    state = {k: v.contiguous() for k, v in tiny_model.network.state_dict().items()}
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["head.weight"] = state["head.weight"].to(torch.int32)
    path = _write_raw(tmp_path / "model.safetensors", tiny_model, tiny_model.config, state)
    with pytest.raises(ModelFileError, match=r"weights do not match .*head\.weight holds torch\.int32; missing head\.bias; unexpected extra\.weight"):
        load_model(path)


def test_a_valid_but_unusual_file_still_loads(tmp_path, tiny_model):
    """Missing optional sections take the defaults; extra top-level keys (e.g. a licence) are kept; half-precision weights are fine."""
    config = {"format": "cellrefine-model", "architecture": tiny_model.config["architecture"], "license": "CC0", "name": "bare"}
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tiny_model.network.state_dict().items()}
    model = load_model(_write_raw(tmp_path / "model.safetensors", tiny_model, config, state))
    assert model.config["license"] == "CC0" and model.name == "bare"
    assert model.config["normalization"] == {"low_percentile": 1.0, "high_percentile": 99.8}
    assert model.config["postprocess"] == {} and model.config["provenance"] == [] and model.config["format_version"] == 1


def test_integral_floats_are_accepted_for_whole_number_settings(tiny_model):
    config = _config_with(tiny_model, "postprocess", {"min_size": 20.0, "min_seed_size": 3})
    assert validate_config(config)["postprocess"] == {"min_size": 20.0, "min_seed_size": 3}


def test_limits_match_the_network():
    assert model_config.NORMALIZATIONS == NORMALIZATIONS
    assert ARCHITECTURE_LIMITS["depth"][1] == 6  # UNet's own maximum


# ----------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize(
    ("tensor", "value"), [("encoders.0.0.weight", float("nan")), ("bottleneck.1.running_var", float("inf")), ("head.bias", -math.inf)]
)
def test_non_finite_weights_are_not_saved_and_the_old_file_is_kept(tmp_path, make_model, tensor, value):
    path = make_model(seed=1).save(tmp_path / "model.safetensors")
    before = path.read_bytes()
    broken = make_model(seed=2)
    with torch.no_grad():
        broken.network.state_dict()[tensor].view(-1)[0] = value
    with pytest.raises(ModelFileError, match=rf"model 'tiny' was not saved: the weights hold NaN or Inf values \(in {re.escape(tensor)}\)"):
        broken.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_non_finite_weights_are_refused_at_load(tmp_path, tiny_model, no_network_built):
    state = {k: v.clone().contiguous() for k, v in tiny_model.network.state_dict().items()}
    for name in ("encoders.0.0.weight", "encoders.1.0.weight", "decoders.0.0.weight", "head.weight"):
        state[name].view(-1)[-1] = float("nan")
    path = _write_raw(tmp_path / "model.safetensors", tiny_model, tiny_model.config, state)
    with pytest.raises(
        ModelFileError,
        match=r"NaN or Inf values \(in encoders\.0\.0\.weight, encoders\.1\.0\.weight, decoders\.0\.0\.weight and 1 more\), so every prediction would be meaningless; this usually means training diverged",
    ):
        load_model(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_weights_are_found_in_every_float_type(tiny_model, dtype):
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tiny_model.network.state_dict().items()}
    check_weights(state, tiny_model.config["architecture"])
    state["decoders.1.3.weight"][0, 0, 1, 1] = float("nan")
    with pytest.raises(ModelFileError, match=r"NaN or Inf values \(in decoders\.1\.3\.weight\)"):
        check_weights(state, tiny_model.config["architecture"])


# ----------------------------------------------------------------------------- Model.save edge cases


def test_existing_folder_named_safetensors_is_refused_and_kept(tmp_path, tiny_model):
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"model\.safetensors: it is an existing folder, and a name ending in \.safetensors is saved as one file"):
        tiny_model.save(folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("name", ["model.SAFETENSORS", "Model.SafeTensors"])
def test_upper_case_suffix_saves_one_file(tmp_path, tiny_model, name):
    path = tiny_model.save(tmp_path / name)
    assert path == tmp_path / name and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [name]
    loaded = load_model(path)
    for key, value in tiny_model.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value)


@pytest.mark.parametrize(
    ("name", "suggestion"), [("model.pt", "model.safetensors"), ("weights.PTH", "weights.safetensors"), ("m.safetensor", "m.safetensors")]
)
def test_other_model_suffixes_are_refused(tmp_path, tiny_model, name, suggestion):
    with pytest.raises(ValueError, match=rf"CellRefine saves models as \.safetensors files .*use '{suggestion}'"):
        tiny_model.save(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["model.safetensors", "folder"])
def test_read_only_folder_gives_one_clear_error(tmp_path, tiny_model, monkeypatch, name):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.os, "open", denied)  # as in a read-only folder (the tests may run as root, who may write anywhere)
    if name == "folder":
        (tmp_path / name).mkdir()
    with pytest.raises(
        PermissionError, match=rf"could not write .*{name}.*: Permission denied; you may not write there; choose a folder you can write to"
    ):
        tiny_model.save(tmp_path / name)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_read_only_folder_for_real(tmp_path, tiny_model):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="you may not write there"):
            tiny_model.save(tmp_path / "model.safetensors")
    finally:
        tmp_path.chmod(0o755)


def test_parent_that_is_a_file_gives_one_clear_error(tmp_path, tiny_model):
    (tmp_path / "results").write_text("a file")
    with pytest.raises(NotADirectoryError, match=r"could not write .*results.*part of the path is a file, not a folder"):
        tiny_model.save(tmp_path / "results" / "model.safetensors")


def test_architecture_edited_after_creation_is_refused_at_save(tmp_path, tiny_model):
    tiny_model.config["architecture"]["depth"] = 3
    with pytest.raises(ModelFileError, match=r"was not saved: config\['architecture'\] .* does not describe the network"):
        tiny_model.save(tmp_path / "model.safetensors")


def test_config_that_is_not_json_is_refused_at_save(tmp_path, tiny_model):
    tiny_model.config["provenance"] = [{"when": object()}]
    with pytest.raises(ModelFileError, match="cannot be written as JSON"):
        tiny_model.save(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("name", ["model.safetensors", "folder"])
def test_a_save_that_fails_mid_way_keeps_the_old_model(tmp_path, make_model, monkeypatch, failure, name):
    old = make_model(seed=1)
    path = old.save(tmp_path / name)
    snapshot = {p.name: p.read_bytes() for p in ([path] if path.is_file() else path.iterdir())}
    calls = []

    def failing_fsync(fd):  # the new bytes are in the temporary file; the disk gives up before it is renamed
        calls.append(fd)
        raise failure

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(type(failure)) as raised:
        make_model(seed=2).save(path)
    assert calls
    if isinstance(failure, OSError):
        assert "disk is full" in str(raised.value) and "is unchanged" in str(raised.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in ([path] if path.is_file() else path.iterdir())} == snapshot
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert torch.equal(load_model(path).network.head.weight, old.network.head.weight)


def test_folder_save_failing_on_the_second_file_keeps_both_old_files(tmp_path, make_model, monkeypatch):
    path = make_model(seed=1).save(tmp_path / "folder")
    snapshot = {p.name: p.read_bytes() for p in path.iterdir()}
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("-config.json") and "w" in mode:
            raise OSError(errno.EFBIG, "File too large")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match=r"config\.json: File too large"):
        make_model(seed=2).save(path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == snapshot


# ----------------------------------------------------------------------------- properties

_ARCHITECTURES = st.fixed_dictionaries(
    {
        "in_channels": st.integers(1, 3),
        "out_channels": st.just(3),
        "depth": st.integers(1, 3),
        "base_channels": st.integers(1, 6),
        "norm": st.sampled_from(NORMALIZATIONS),
    }
)


@FAST
@given(architecture=_ARCHITECTURES, out_channels=st.integers(1, 4))
def test_property_validation_accepts_exactly_what_builds_with_the_expected_shapes(architecture, out_channels):
    from cellrefine.model.config import validate_architecture

    architecture = architecture | {"out_channels": out_channels}
    try:
        network = UNet(**architecture)
    except ValueError:  # e.g. GroupNorm with 12 channels (not divisible by 8 groups)
        with pytest.raises(ModelFileError, match="does not fit norm 'group'"):
            validate_architecture(architecture)
        return
    assert validate_architecture(architecture) == architecture
    assert expected_weight_shapes(architecture) == {k: tuple(v.shape) for k, v in network.state_dict().items()}


@FAST
@given(architecture=_ARCHITECTURES, seed=st.integers(0, 2**16), as_folder=st.booleans(), low=st.floats(0, 49), high=st.floats(50, 100))
def test_property_save_load_round_trip_is_exact(tmp_path_factory, architecture, seed, as_folder, low, high):
    if architecture["norm"] == "group":
        architecture = architecture | {"base_channels": min(architecture["base_channels"], 4) // 3 + 1}  # 1 or 2: fits GroupNorm
    generator = torch.Generator().manual_seed(seed)
    model = Model(config={"name": f"m{seed}", "architecture": architecture, "normalization": {"low_percentile": low, "high_percentile": high}})
    with torch.no_grad():
        for tensor in model.network.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    folder = tmp_path_factory.mktemp("round")
    loaded = load_model(model.save(folder / ("model" if as_folder else "model.safetensors")))
    assert loaded.config == model.config
    state = model.network.state_dict()
    assert loaded.network.state_dict().keys() == state.keys()
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, state[key]), key


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
_FIELDS = [
    "format",
    "format_version",
    "name",
    "class_names",
    "provenance",
    *(f"architecture.{k}" for k in [*ARCHITECTURE_LIMITS, "norm", "extra"]),
    "architecture",
    *(f"normalization.{k}" for k in ["low_percentile", "high_percentile", "scope2"]),
    "normalization",
    *(f"postprocess.{f}" for f in [*PostprocessSettings.__dataclass_fields__, "other"]),
    "postprocess",
]


@settings(max_examples=150, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(_FIELDS), _JSON), min_size=1, max_size=3))
def test_property_random_configs_give_a_valid_config_or_a_value_error(changes):
    """Whatever a file's config holds, validation either raises ModelFileError or returns a config that segmentation can use."""
    from cellrefine.normalize import percentile_range
    from cellrefine.targets import CLASS_NAMES

    config = {"format": "cellrefine-model", "format_version": 1, "name": "x", "architecture": {"depth": 2, "base_channels": 4}}
    for dotted, value in changes:
        *parents, key = dotted.split(".")
        section = config
        for parent in parents:
            if not isinstance(section.get(parent), dict):
                section[parent] = {}
            section = section[parent]
        section[key] = value
    try:
        checked = validate_config(config)
    except ModelFileError as error:
        assert str(error) and "\n" not in str(error)
        return
    architecture = checked["architecture"]
    assert all(low <= architecture[k] <= high and type(architecture[k]) is int for k, (low, high) in ARCHITECTURE_LIMITS.items())
    assert sum(math.prod(s) for s in expected_weight_shapes(architecture).values()) <= MAX_PARAMETERS
    PostprocessSettings(**checked.get("postprocess", {})).validate()
    normalization = checked["normalization"]
    percentile_range(torch.arange(100.0).numpy(), normalization["low_percentile"], normalization["high_percentile"])
    assert checked.get("class_names", list(CLASS_NAMES)) == list(CLASS_NAMES)


@FAST
@given(data=st.data())
def test_property_any_non_finite_value_is_found(data):
    architecture = {"in_channels": 1, "out_channels": 3, "depth": 1, "base_channels": 2, "norm": data.draw(st.sampled_from(NORMALIZATIONS))}
    state = {
        k: torch.zeros(s) if not k.endswith("num_batches_tracked") else torch.zeros((), dtype=torch.long)
        for k, s in expected_weight_shapes(architecture).items()
    }
    check_weights(state, architecture)
    name = data.draw(st.sampled_from(sorted(k for k in state if not k.endswith("num_batches_tracked"))))
    flat = state[name].view(-1)
    flat[data.draw(st.integers(0, flat.numel() - 1))] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    with pytest.raises(ModelFileError, match=rf"NaN or Inf values \(in {re.escape(name)}\)"):
        check_weights(state, architecture)
