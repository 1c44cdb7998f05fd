"""The bioimage.io model description (``rdf.yaml``, spec 0.5) of a CellRefine model, and a small YAML writer.

Pure Python: the description is built as a dict from the model's config and
the files of the package (names + SHA-256), and written as block-style YAML
with every string double-quoted (JSON escapes are valid YAML), so no YAML
library is needed to write it.
"""

from __future__ import annotations

import datetime
import json
import math
import re

__all__ = [
    "FORMAT_VERSION",
    "TENSOR_INPUT",
    "TENSOR_OUTPUT",
    "CITATIONS",
    "input_size_rule",
    "build_rdf",
    "to_yaml",
]

#: bioimage.io model spec version written (validated with bioimageio.spec 0.5.12).
FORMAT_VERSION = "0.5.4"
TENSOR_INPUT = "raw"
TENSOR_OUTPUT = "probabilities"
#: Epsilon of the spec's ``scale_range``: ``(x - p_low) / (p_high - p_low + eps)``.
SCALE_RANGE_EPS = 1e-6

CITATIONS = [
    {
        "text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015.",
        "doi": "10.1007/978-3-319-24574-4_28",
    },
    {
        "text": "Caicedo J.C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. Nature Methods 16, 2019 "
        "(DSB2018 / BBBC038v1, training data of the bundled model).",
        "doi": "10.1038/s41592-019-0612-7",
    },
    {
        "text": "Ljosa V., Sokolnicki K.L., Carpenter A.E. Annotated high-throughput microscopy image sets for validation. Nature Methods 9, 2012 "
        "(Broad Bioimage Benchmark Collection: BBBC039v1, training and validation data of the bundled model).",
        "doi": "10.1038/nmeth.2083",
    },
]


def input_size_rule(depth: int, halo: int) -> tuple[int, int]:
    """``(min, step)`` of the spatial input sizes: multiples of the U-Net grid ``2**depth``, larger than both halos."""
    grid = 2**depth
    return 2 * halo + grid, grid


def _tags(config: dict) -> list[str]:
    tags = ["cellrefine", "unet2d", "pytorch", "2d", "segmentation", "instance-segmentation", "semantic-segmentation"]
    text = " ".join([str(config.get("name", ""))] + [str(r.get("data", "")) for r in config.get("provenance") or []]).lower()
    for word, tag in (("nucle", "nuclei"), ("cell", "cells"), ("em", "electron-microscopy")):
        if re.search(rf"\b{word}", text) and tag not in tags:
            tags.append(tag)
    if "nuclei" in tags:
        tags.append("fluorescence-light-microscopy")
    return tags


def display_name(config: dict) -> str:
    """The package's ``name``: 'CellRefine ' + the model's name, in the characters the spec allows."""
    name = re.sub(r"[^A-Za-z0-9 _\-()]", "-", str(config.get("name") or "model"))
    return f"CellRefine {name}"[:128]


def build_rdf(config: dict, files: dict, *, architecture_callable: str, pytorch_version: str, authors: list, license: str, halo: int) -> dict:
    """The model description as a dict (keys in the order written).

    Parameters
    ----------
    config : dict
        The CellRefine model config (validated).
    files : dict
        Package file role -> ``(name, sha256)`` for ``weights``, ``torchscript``,
        ``architecture``, ``test_input``, ``test_output``, ``sample_input``,
        ``sample_output``, ``cover``, ``readme``, ``cellrefine``.
    architecture_callable : str
        Name of the ``torch.nn.Module`` in the architecture file.
    pytorch_version : str
    authors : list of dict
        ``{"name": ...}`` (optionally ``affiliation``, ``orcid``, ``github_user``).
    license : str
        SPDX identifier.
    halo : int
        Output halo (pixels per side) that makes tiled prediction exact.
    """
    arch = config["architecture"]
    norm = config["normalization"]
    low, high = float(norm["low_percentile"]), float(norm["high_percentile"])
    size_min, size_step = input_size_rule(arch["depth"], halo)
    classes = [str(name) for name in config["class_names"]]
    post = config.get("postprocess") or {}

    def file(role: str) -> dict:
        name, sha256 = files[role]
        return {"source": name, "sha256": sha256}

    description = (
        f"CellRefine 2D U-Net ({', '.join(classes)} probabilities) for cell/nucleus instance segmentation; "
        f"percentile-normalised ({low:g}-{high:g}) grey input. CellRefine turns the probabilities into instances by a seeded watershed."
    )
    space = [{"id": axis, "type": "space", "size": {"min": size_min, "step": size_step}} for axis in ("y", "x")]
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": display_name(config),
        "description": description,
        "authors": authors,
        "cite": CITATIONS,
        "license": license,
        "tags": _tags(config),
        "documentation": files["readme"][0],
        "covers": [files["cover"][0]],
        "attachments": [file("cellrefine")],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [
            {
                "id": TENSOR_INPUT,
                "description": "one grey channel, any intensity range (colour images: average the channels first)",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["grey"]}, *space],
                "test_tensor": file("test_input"),
                "sample_tensor": file("sample_input"),
                "data": {"type": "float32"},
                "preprocessing": [
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                    {
                        "id": "scale_range",
                        "kwargs": {"axes": ["channel", "y", "x"], "min_percentile": low, "max_percentile": high, "eps": SCALE_RANGE_EPS},
                    },
                ],
            }
        ],
        "outputs": [
            {
                "id": TENSOR_OUTPUT,
                "description": f"class probabilities ({', '.join(classes)}), softmax over the channel axis",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": classes},
                    *({"id": axis, "type": "space", "size": {"tensor_id": TENSOR_INPUT, "axis_id": axis}, "halo": halo} for axis in ("y", "x")),
                ],
                "test_tensor": file("test_output"),
                "sample_tensor": file("sample_output"),
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                **file("weights"),
                "architecture": {**file("architecture"), "callable": architecture_callable, "kwargs": dict(arch)},
                "pytorch_version": pytorch_version,
            },
            "torchscript": {**file("torchscript"), "parent": "pytorch_state_dict", "pytorch_version": pytorch_version},
        },
        "config": {
            "cellrefine": {
                "model_name": str(config.get("name", "")),
                "model_file": files["cellrefine"][0],
                "class_names": classes,
                "normalization": {"low_percentile": low, "high_percentile": high},
                "postprocess": dict(post),
                "instances": "seeded watershed on the cell/boundary probabilities (cellrefine.postprocess) with the thresholds above",
            }
        },
    }


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if exponent and "." not in mantissa else text  # YAML 1.1 reads 1e-06 as a string
    return json.dumps(str(value))  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for dicts/lists of str, int, float, bool and None (keys must be plain words)."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                raise ValueError(f"YAML key {key!r} is not a plain word; quote-free keys only.")
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_empty_or_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {nested[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_empty_or_scalar(item)}")
    else:
        raise TypeError(f"to_yaml needs a dict or list at the top, got {type(value).__name__}.")
    return "\n".join(lines)


def _empty_or_scalar(item) -> str:
    if isinstance(item, dict):
        return "{}"
    if isinstance(item, list):
        return "[]"
    return _scalar(item)
