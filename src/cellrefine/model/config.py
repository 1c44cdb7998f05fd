"""Model config validation and the weight checks done before a network is built.

A model config (``Model.config``, stored as JSON beside or inside the weights)
is checked as a whole when a model is loaded, created or saved; every problem
is a :class:`ModelFileError` (a ``ValueError``) that names the field, e.g.
``normalization.low_percentile``. The weights' names and shapes are compared
with the shapes the config's architecture implies (:func:`expected_weight_shapes`,
computed without building anything) before a network is allocated, so a file
whose config claims a huge network costs nothing, and weights holding NaN or
Inf are refused (:func:`check_weights`). This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

__all__ = [
    "ModelFileError",
    "FORMAT",
    "FORMAT_VERSION",
    "ARCHITECTURE_LIMITS",
    "NORMALIZATIONS",
    "MAX_PARAMETERS",
    "NORMALIZATION_KEYS",
    "validate_config",
    "validate_architecture",
    "expected_weight_shapes",
    "check_weights",
]

FORMAT = "cellrefine-model"
FORMAT_VERSION = 1
#: Inclusive ``(low, high)`` bounds of the integer architecture fields.
ARCHITECTURE_LIMITS = {"in_channels": (1, 64), "out_channels": (1, 64), "depth": (1, 6), "base_channels": (1, 1024)}
#: The ``architecture.norm`` values (as :data:`cellrefine.model.unet.NORMALIZATIONS`).
NORMALIZATIONS = ("batch", "group", "instance", "none")
#: Largest network a config may describe (2**28 parameters, 1 GiB in float32).
MAX_PARAMETERS = 2**28
#: The ``normalization`` section's keys (percentiles of the stack mapped to 0 and 1).
NORMALIZATION_KEYS = ("low_percentile", "high_percentile")
_DEFAULT_NORMALIZATION = {"low_percentile": 1.0, "high_percentile": 99.8}


class ModelFileError(ValueError):
    """A model file or model config is missing parts, corrupt, not safetensors, invalid, or does not match its weights."""


def _quoted(key) -> str:
    """A config key as it may appear in a one-line message: plain names as they are, anything else (newlines, odd types) by repr."""
    text = str(key)
    return text if text.isidentifier() else repr(key)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_architecture(architecture) -> dict:
    """Check a config's ``architecture`` section; return it with every field present.

    Parameters
    ----------
    architecture : dict
        :class:`~cellrefine.model.unet.UNet` arguments (``in_channels``,
        ``out_channels``, ``depth``, ``base_channels``, ``norm``); missing
        ones take the UNet defaults.

    Returns
    -------
    dict
        All five fields, as plain ``int``/``str``.

    Raises
    ------
    ModelFileError
        An unknown field, a non-integer (``True`` is not an integer), a value
        outside :data:`ARCHITECTURE_LIMITS`, an unknown ``norm``, or a network
        of more than :data:`MAX_PARAMETERS` parameters. The message starts
        with "model config has an invalid architecture" and names the field.
    """

    def invalid(text):
        return ModelFileError(f"model config has an invalid architecture: {text}")

    if not isinstance(architecture, dict):
        raise invalid(f"'architecture' must be a dict of UNet arguments, got {type(architecture).__name__}.")
    unknown = sorted(map(_quoted, set(architecture) - set(ARCHITECTURE_LIMITS) - {"norm"}))
    if unknown:
        raise invalid(f"unknown field(s) {', '.join('architecture.' + k for k in unknown)}; known: {', '.join([*ARCHITECTURE_LIMITS, 'norm'])}.")
    checked = {"in_channels": 1, "out_channels": 3, "depth": 3, "base_channels": 16, "norm": "batch"} | architecture
    for name, (low, high) in ARCHITECTURE_LIMITS.items():
        value = checked[name]
        if not _is_int(value) or not low <= value <= high:
            raise invalid(f"architecture.{name} must be an integer in [{low}, {high}], got {value!r}.")
        checked[name] = int(value)
    if not isinstance(checked["norm"], str) or checked["norm"] not in NORMALIZATIONS:
        raise invalid(f"architecture.norm must be one of {', '.join(NORMALIZATIONS)}, got {checked['norm']!r}.")
    widths = [checked["base_channels"] * 2**level for level in range(checked["depth"] + 1)]
    if checked["norm"] == "group" and any(width % min(8, width) for width in widths):
        raise invalid(
            f"architecture.base_channels {checked['base_channels']} does not fit norm 'group' at depth {checked['depth']}: the channels per level "
            f"{widths} must each be below 8 or a multiple of 8 (GroupNorm uses up to 8 groups); use 1, 2, 4 or a multiple of 8."
        )
    n_parameters = sum(math.prod(shape) for shape in expected_weight_shapes(checked).values())
    if n_parameters > MAX_PARAMETERS:
        raise invalid(
            f"depth {checked['depth']} with base_channels {checked['base_channels']} means {n_parameters:,} weights "
            f"(at most {MAX_PARAMETERS:,}); lower base_channels or depth."
        )
    return checked


def expected_weight_shapes(architecture: dict) -> dict:
    """Name → shape of every tensor in the state dict of ``UNet(**architecture)``, without building it.

    ``architecture`` must be complete and valid (see :func:`validate_architecture`).
    """
    in_channels, depth, base, norm = (architecture[k] for k in ("in_channels", "depth", "base_channels", "norm"))
    shapes = {}

    def double_conv(prefix, n_in, n_out):
        for index, n_from in ((0, n_in), (3, n_out)):
            shapes[f"{prefix}.{index}.weight"] = (n_out, n_from, 3, 3)
            if norm == "none":
                shapes[f"{prefix}.{index}.bias"] = (n_out,)
                continue
            shapes[f"{prefix}.{index + 1}.weight"] = shapes[f"{prefix}.{index + 1}.bias"] = (n_out,)
            if norm == "batch":
                shapes[f"{prefix}.{index + 1}.running_mean"] = shapes[f"{prefix}.{index + 1}.running_var"] = (n_out,)
                shapes[f"{prefix}.{index + 1}.num_batches_tracked"] = ()

    widths = [base * 2**level for level in range(depth + 1)]
    previous = in_channels
    for level in range(depth):
        double_conv(f"encoders.{level}", previous, widths[level])
        previous = widths[level]
    double_conv("bottleneck", widths[-2], widths[-1])
    for index, level in enumerate(reversed(range(depth))):
        shapes[f"upsamplers.{index}.weight"] = (widths[level + 1], widths[level], 2, 2)
        shapes[f"upsamplers.{index}.bias"] = (widths[level],)
        double_conv(f"decoders.{index}", 2 * widths[level], widths[level])
    shapes["head.weight"] = (architecture["out_channels"], widths[0], 1, 1)
    shapes["head.bias"] = (architecture["out_channels"],)
    return shapes


def check_weights(state: dict, architecture: dict) -> None:
    """Refuse weights that do not fit ``architecture`` or that hold NaN/Inf.

    Parameters
    ----------
    state : dict of str to torch.Tensor
        A state dict (e.g. read from a safetensors file).
    architecture : dict
        A complete, valid architecture (see :func:`validate_architecture`).

    Raises
    ------
    ModelFileError
        Missing or unexpected tensors or a wrong shape or kind of number
        (message: "weights do not match the architecture ..."), or
        non-finite values (message names the tensors).
    """
    expected = expected_weight_shapes(architecture)
    problems = []
    for name, shape in expected.items():
        if name in state:
            tensor = state[name]
            if tuple(tensor.shape) != shape:
                problems.append(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
            elif tensor.is_floating_point() != (not name.endswith("num_batches_tracked")):
                problems.append(f"{name} holds {tensor.dtype}")
    problems += [f"missing {name}" for name in expected if name not in state]
    problems += [f"unexpected {name}" for name in state if name not in expected]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ModelFileError(f"weights do not match the architecture {architecture}: {'; '.join(problems[:5])}{more}.")
    broken = [name for name in expected if state[name].is_floating_point() and not _all_finite(state[name])]
    if broken:
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        raise ModelFileError(
            f"the weights hold NaN or Inf values (in {', '.join(broken[:3])}{more}), so every prediction would be meaningless; "
            "this usually means training diverged (e.g. a too-high learning rate). Use the model it was fine-tuned from, or fine-tune again."
        )


def _all_finite(tensor) -> bool:
    """``tensor.isfinite().all()``, through NumPy (torch's small ops cost ~5 ms each on a busy CPU; this is ~100x faster)."""
    tensor = tensor.detach().cpu()
    try:
        array = tensor.numpy()
    except TypeError:  # bfloat16 has no NumPy dtype
        array = tensor.float().numpy()
    return bool(np.isfinite(array).all())


def _validate_section(config: dict, section: str, known: tuple) -> dict:
    values = config.get(section, {})
    if not isinstance(values, dict):
        raise ModelFileError(f"model config: '{section}' must be a dict, got {type(values).__name__} {values!r}.")
    unknown = sorted(map(_quoted, set(values) - set(known)))
    if unknown:
        raise ModelFileError(f"model config: unknown setting(s) {', '.join(f'{section}.{k}' for k in unknown)}; known: {', '.join(known)}.")
    for key, value in values.items():
        if not _is_number(value) or not math.isfinite(value):
            raise ModelFileError(f"model config: {section}.{key} must be a finite number, got {value!r}.")
    return values


def _validate_postprocess(config: dict) -> None:
    from ..postprocess import PostprocessSettings

    fields = {field.name: field for field in dataclasses.fields(PostprocessSettings)}
    values = _validate_section(config, "postprocess", tuple(fields))
    for key, value in values.items():
        if _is_int(fields[key].default) and int(value) != value:
            raise ModelFileError(f"model config: postprocess.{key} must be a whole number, got {value!r}.")
    try:
        PostprocessSettings(**values).validate()
    except ValueError as error:
        raise ModelFileError(f"model config: postprocess.{error}") from None


def validate_config(config: dict) -> dict:
    """Check a whole model config; return a copy with the ``architecture`` and ``normalization`` sections completed.

    Checked: ``format`` (``"cellrefine-model"``), ``format_version`` (an
    integer, not newer than this CellRefine's), ``name`` (a string),
    ``architecture`` (:func:`validate_architecture`), ``class_names`` (the
    three classes CellRefine's post-processing reads, in its order, one per
    output channel), ``normalization`` (only ``low_percentile`` and
    ``high_percentile``, finite, ``0 <= low < high <= 100``), ``postprocess``
    (only :class:`~cellrefine.postprocess.PostprocessSettings` fields, each
    in its range) and ``provenance`` (a list of dicts). Other top-level keys
    (e.g. ``license``) are kept as they are.

    Raises
    ------
    ModelFileError
        The first problem found, naming the field and what is allowed.
    """
    from ..targets import CLASS_NAMES

    if not isinstance(config, dict):
        raise ModelFileError(f"a model config must be a dict (a JSON object), got {type(config).__name__}.")
    if config.get("format", FORMAT) != FORMAT:
        raise ModelFileError(f"config is not a CellRefine model config (missing format='{FORMAT}'; got format={config.get('format')!r}).")
    version = config.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise ModelFileError(f"model config: format_version must be a whole number >= 1 (this CellRefine writes {FORMAT_VERSION}), got {version!r}.")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"this model was written by a newer CellRefine (format {version}, this one reads up to {FORMAT_VERSION}); upgrade napari-cellrefine."
        )
    checked = dict(config)
    if not isinstance(checked.get("name", ""), str):
        raise ModelFileError(f"model config: name must be a string, got {checked['name']!r}.")
    checked["architecture"] = validate_architecture(checked.get("architecture", {}))
    class_names = checked.get("class_names", list(CLASS_NAMES))
    if class_names != list(CLASS_NAMES):
        raise ModelFileError(
            f"model config: class_names must be {list(CLASS_NAMES)} (the classes CellRefine's post-processing reads, in this order), got {class_names!r}."
        )
    if checked["architecture"]["out_channels"] != len(CLASS_NAMES):
        raise ModelFileError(
            f"model config has an invalid architecture: architecture.out_channels must be {len(CLASS_NAMES)} "
            f"(one per class in class_names), got {checked['architecture']['out_channels']}."
        )
    normalization = _DEFAULT_NORMALIZATION | _validate_section(checked, "normalization", NORMALIZATION_KEYS)
    low, high = normalization["low_percentile"], normalization["high_percentile"]
    if not 0 <= low < high <= 100:
        raise ModelFileError(
            f"model config: normalization needs 0 <= low_percentile < high_percentile <= 100, got low_percentile={low!r}, high_percentile={high!r}."
        )
    checked["normalization"] = normalization
    _validate_postprocess(checked)
    provenance = checked.get("provenance", [])
    if not isinstance(provenance, list) or not all(isinstance(record, dict) for record in provenance):
        raise ModelFileError("model config: provenance must be a list of training records (dicts).")
    return checked
