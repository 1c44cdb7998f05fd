"""Safe model files: safetensors weights + a JSON config, written atomically.

A model is saved either as one ``.safetensors`` file whose metadata holds the
JSON config, or as a folder with ``model.safetensors`` and a human-readable
``config.json``. Nothing is ever unpickled: a file that is not safetensors
(for instance a ``torch.save`` pickle) is refused with :class:`ModelFileError`.
The config is validated as a whole and the weights' shapes are compared with
it before any network is built (:mod:`cellrefine.model.config`); weights
holding NaN or Inf are neither saved nor loaded.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

from .bundled import BUNDLED_MODELS, DEFAULT_BUNDLED, bundled_model_path, bundled_name, bundled_names, describe_bundled
from .config import FORMAT, FORMAT_VERSION, ModelFileError, check_weights, validate_config

logger = logging.getLogger(__name__)

__all__ = ["Model", "ModelFileError", "load_model", "bundled_model_path", "bundled_names", "BUNDLED_MODEL", "FORMAT_VERSION"]

#: File stem (= config name) of the default bundled model (see :mod:`cellrefine.model.bundled` for all of them).
BUNDLED_MODEL = BUNDLED_MODELS[DEFAULT_BUNDLED].stem
_WEIGHTS_NAME = "model.safetensors"
_CONFIG_NAME = "config.json"
# Written by CellRefine 0.1 but never honoured (normalisation is always per stack and
# multichannel input is always averaged for a one-channel model): dropped when a config is read.
_UNUSED_KEYS = ("channels",)
_UNUSED_NORMALIZATION_KEYS = ("scope",)
# Suffixes of other model/weight formats: saving "model.pt" as a folder named "model.pt" is not what was meant.
_OTHER_FORMAT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".h5", ".hdf5", ".onnx", ".npz", ".json", ".zip", ".safetensor")


def _default_config() -> dict:
    from ..targets import CLASS_NAMES

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": "untrained",
        "architecture": {"in_channels": 1, "out_channels": 3, "depth": 3, "base_channels": 16, "norm": "batch"},
        "class_names": list(CLASS_NAMES),
        "normalization": {"low_percentile": 1.0, "high_percentile": 99.8},
        "postprocess": {},
        "provenance": [],
    }


def _drop_unused_keys(config: dict) -> None:
    for key in _UNUSED_KEYS:
        if config.pop(key, None) is not None:
            logger.debug("model config key %r is not used by CellRefine; dropped", key)
    normalization = config.get("normalization")
    if isinstance(normalization, dict):
        for key in _UNUSED_NORMALIZATION_KEYS:
            if normalization.pop(key, None) is not None:
                logger.debug("model config key 'normalization.%s' is not used by CellRefine; dropped", key)


class Model:
    """A U-Net plus the config that travels with it.

    Attributes
    ----------
    network : torch.nn.Module
        The :class:`~cellrefine.model.unet.UNet` (on the CPU unless moved).
    config : dict
        JSON-serialisable: ``format``/``format_version``, ``name``,
        ``architecture`` (the :class:`~cellrefine.model.unet.UNet` arguments),
        ``class_names``, ``normalization`` (``low_percentile`` and
        ``high_percentile``, applied once per stack), ``postprocess`` (the
        model's default :class:`~cellrefine.postprocess.PostprocessSettings`
        values) and ``provenance`` (a list of training records, oldest first).
        Keys written by earlier versions but never used (``channels``,
        ``normalization.scope``) are dropped.
    path : str
        Only on models from :func:`load_model`: the path it was given, or
        ``"bundled:<file stem>"`` for a bundled model (``"bundled:nuclei_v1"``,
        ``"bundled:cells_v1"``; ``load_model`` reads these back).
    """

    def __init__(self, network=None, config: dict | None = None):
        from .unet import UNet

        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a dict (see Model.config), got {type(config).__name__}.")
        if network is not None and not isinstance(network, UNet):
            raise TypeError(f"network must be a cellrefine UNet, got {type(network).__name__}.")
        merged = _default_config()
        if config:
            merged.update(copy.deepcopy(config))
        _drop_unused_keys(merged)
        if network is not None:
            merged["architecture"] = network.config()
        merged = validate_config(merged)
        if network is None:
            network = UNet(**merged["architecture"])
        self.network = network
        self.config = merged
        self.network.eval()

    @property
    def name(self) -> str:
        return str(self.config.get("name", "model"))

    @property
    def class_names(self) -> list:
        return list(self.config["class_names"])

    def copy(self) -> Model:
        """A deep copy (network weights on the CPU, config)."""
        network = copy.deepcopy(self.network).cpu()
        return Model(network, copy.deepcopy(self.config))

    def __repr__(self) -> str:
        arch = self.config["architecture"]
        n_params = sum(p.numel() for p in self.network.parameters())
        return f"Model(name={self.name!r}, depth={arch['depth']}, base_channels={arch['base_channels']}, parameters={n_params})"

    def save(self, path) -> Path:
        """Save atomically to ``path``.

        ``path`` ending in ``.safetensors`` (any case) → one file (config in
        its metadata); a name without such a suffix → a folder holding
        ``model.safetensors`` and ``config.json``. Missing parent folders are
        created. Files are written through :func:`cellrefine.files.atomic_write`:
        an existing model is replaced only once the new one is completely
        written, and a failed or interrupted save leaves it as it was.

        Returns
        -------
        pathlib.Path
            The file or folder written.

        Raises
        ------
        ModelFileError
            The config is invalid (see :func:`cellrefine.model.config.validate_config`),
            does not describe the network, or the weights hold NaN/Inf.
        ValueError
            ``path`` is an existing folder but ends in ``.safetensors``, an
            existing file where a folder is to go, or ends in another model
            format's suffix (``.pt``, ``.pth``, ``.ckpt``, ...).
        OSError
            Writing failed (not writable, disk full, ...): one line naming the
            path, the reason and what to do.
        """
        from safetensors.torch import save as save_bytes

        from ..files import atomic_write, write_bytes

        path = Path(path).expanduser()
        suffix = path.suffix.lower()
        single_file = suffix == ".safetensors"
        if suffix in _OTHER_FORMAT_SUFFIXES:
            raise ValueError(
                f"cannot save a model as {path.name!r}: CellRefine saves models as .safetensors files (or as a folder, "
                f"a name without a suffix); use {path.with_suffix('.safetensors').name!r}."
            )
        if single_file and path.is_dir():
            raise ValueError(
                f"cannot save the model to {path}: it is an existing folder, and a name ending in .safetensors is saved as one file; "
                "choose another name, or remove the folder."
            )
        if not single_file and path.exists() and not path.is_dir():
            raise ValueError(f"cannot save a model folder at {path}: a file with that name exists; pick another path or end it in .safetensors.")
        config = self._checked_config()
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        try:
            check_weights(state, config["architecture"])
        except ModelFileError as error:
            raise ModelFileError(f"model {self.name!r} was not saved: {error}") from None
        config_json = json.dumps(config, indent=2, sort_keys=True)
        payload = save_bytes(state, metadata={"cellrefine_config": config_json})
        if single_file:
            write_bytes(path, payload, make_parents=True)
        else:
            # both files are complete and on disk before either is renamed into place (weights first, then the small config)
            with atomic_write(path / _CONFIG_NAME, make_parents=True) as config_file:
                _write_synced(config_file, (config_json + "\n").encode())
                with atomic_write(path / _WEIGHTS_NAME) as weights:
                    _write_synced(weights, payload)
        logger.info("saved model %s to %s", self.name, path)
        return path

    def _checked_config(self) -> dict:
        """The config to write: validated, JSON-serialisable, describing this network."""
        try:
            config = validate_config(self.config)
        except ModelFileError as error:
            raise ModelFileError(f"model {self.name!r} was not saved: {error}") from None
        if hasattr(self.network, "config") and config["architecture"] != self.network.config():
            raise ModelFileError(
                f"model {self.name!r} was not saved: config['architecture'] {config['architecture']} does not describe the network "
                f"({self.network.config()}); the network is what is saved, so set model.config['architecture'] = model.network.config()."
            )
        try:
            json.dumps(config, allow_nan=True)
        except (TypeError, ValueError) as error:
            raise ModelFileError(f"model {self.name!r} was not saved: its config cannot be written as JSON ({error}).") from None
        return config


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _read_safetensors(path: Path, data: bytes | None = None):
    """``(state dict, metadata)`` of the safetensors file ``path`` (or of its bytes ``data``, e.g. from a package)."""
    from safetensors.torch import load as load_bytes

    if data is None:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise type(error)(f"could not read the model file {path}: {error.strerror or error}; check that it is readable.") from error
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:2] == b"PK":
        raise ModelFileError(
            f"{path} is a pickle/zip file (e.g. torch.save output), which can execute code; CellRefine only loads "
            "safetensors models. Re-save it with cellrefine's Model.save()."
        )
    try:
        state = load_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except Exception as error:
        raise ModelFileError(f"{path} is not a valid safetensors file ({error}); it may be truncated or of another format.") from error
    metadata = header.get("__metadata__") or {}
    return state, metadata


def _resolve(path) -> tuple[Path, Path | None]:
    """Return (weights file, config file or None)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model path {path} does not exist; pass a saved .safetensors file or model folder, or the name of a bundled model "
            f"({describe_bundled()})."
        )
    if path.is_dir():
        weights = path / _WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"model folder {path} has no {_WEIGHTS_NAME}; is it a CellRefine model folder?")
        config = path / _CONFIG_NAME
        return weights, config if config.is_file() else None
    return path, None


def load_model(path=None, device: str = "cpu") -> Model:
    """Load a model saved by :meth:`Model.save`, or a bundled one by name.

    Parameters
    ----------
    path : str or Path, optional
        A ``.safetensors`` file, a model folder, a bioimage.io package
        (``.zip``) written by ``cellrefine export``
        (:func:`cellrefine.export.export_bioimageio`), or the name of a model
        shipped with the package: ``"nuclei"`` (fluorescent/stained nuclei;
        also what None loads) or ``"cells"`` (whole cells in phase contrast),
        see :mod:`cellrefine.model.bundled`. An existing file or folder
        of the same name wins over a bundled name; ``"bundled:cells"`` always
        means the bundled model (as do the ``"bundled:cells_v1"`` strings that
        :attr:`Model.path` records).
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
        Where to put the network.

    Returns
    -------
    Model

    Raises
    ------
    FileNotFoundError
        The path does not exist and is not a bundled name (the message lists
        the bundled models), or the bundled weights are missing (a broken
        install).
    ValueError
        ``"bundled:NAME"`` with a ``NAME`` that is not bundled.
    ModelFileError
        The file is not safetensors (e.g. a pickle), is corrupt, its config
        is invalid (the message names the field, see
        :func:`cellrefine.model.config.validate_config`), its weights' names
        or shapes do not match the config (checked before any network is
        built), or the weights hold NaN/Inf; or a ``.zip`` that is not a
        package written by ``cellrefine export`` (the message says what is
        supported).
    OSError
        The file cannot be read (e.g. permissions).
    """
    from ..device import resolve_device

    name = DEFAULT_BUNDLED if path is None else bundled_name(path)
    if name is None:
        weights_path, config_path = _resolve(path)
    else:
        bundled_path = bundled_model_path() if name == DEFAULT_BUNDLED else bundled_model_path(name)
        if not bundled_path.is_file():
            raise FileNotFoundError(
                f"the bundled {name!r} model's weights are missing ({bundled_path}): the installation is incomplete; reinstall napari-cellrefine."
            )
        weights_path, config_path = bundled_path, None
    package = None
    if config_path is None and weights_path.suffix.lower() == ".zip":  # a bioimage.io package: its attached CellRefine file
        from ..export import read_cellrefine_package

        package = read_cellrefine_package(weights_path)
    state, metadata = _read_safetensors(weights_path, package)
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFileError(f"{config_path} is not valid JSON ({error}).") from error
    elif "cellrefine_config" in metadata:
        try:
            config = json.loads(metadata["cellrefine_config"])
        except json.JSONDecodeError as error:
            raise ModelFileError(f"{weights_path} carries a corrupt config ({error}).") from error
    else:
        raise ModelFileError(f"{weights_path} has no CellRefine config (metadata 'cellrefine_config' or a config.json beside it).")
    source = config_path or weights_path
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFileError(f"{source}: config is not a CellRefine model config (missing format='{FORMAT}').")
    merged = _default_config() | config
    _drop_unused_keys(merged)
    try:
        config = validate_config(merged)
        check_weights(state, config["architecture"])
    except ModelFileError as error:
        raise ModelFileError(f"{source}: {error}") from None
    model = Model(config=config)
    try:
        model.network.load_state_dict(state, strict=True)
    except RuntimeError as error:  # check_weights compares names and shapes first; this is a safety net
        raise ModelFileError(
            f"{weights_path}: weights do not match the architecture in its config {config['architecture']}: {str(error)[:300]}"
        ) from None
    model.network.to(resolve_device(device))
    model.network.eval()
    model.path = str(path) if name is None else f"bundled:{BUNDLED_MODELS[name].stem}"
    return model
