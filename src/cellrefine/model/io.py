"""Safe model files: safetensors weights + a JSON config, written atomically.

A model is saved either as one ``.safetensors`` file whose metadata holds the
JSON config, or as a folder with ``model.safetensors`` and a human-readable
``config.json``. Nothing is ever unpickled: a file that is not safetensors
(for instance a ``torch.save`` pickle) is refused with :class:`ModelFileError`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["Model", "ModelFileError", "load_model", "BUNDLED_MODEL", "FORMAT_VERSION"]

FORMAT_VERSION = 1
BUNDLED_MODEL = "nuclei_v1"
_WEIGHTS_NAME = "model.safetensors"
_CONFIG_NAME = "config.json"
_CLASS_NAMES = ["background", "cell", "boundary"]


class ModelFileError(ValueError):
    """A model file is missing parts, corrupt, not safetensors, or does not match its config."""


def _default_config() -> dict:
    return {
        "format": "cellrefine-model",
        "format_version": FORMAT_VERSION,
        "name": "untrained",
        "architecture": {"in_channels": 1, "out_channels": 3, "depth": 3, "base_channels": 16, "norm": "batch"},
        "class_names": list(_CLASS_NAMES),
        "normalization": {"low_percentile": 1.0, "high_percentile": 99.8, "scope": "stack"},
        "channels": "mean",
        "postprocess": {},
        "provenance": [],
    }


class Model:
    """A U-Net plus the config that travels with it.

    Attributes
    ----------
    network : torch.nn.Module
        The :class:`~cellrefine.model.unet.UNet` (on the CPU unless moved).
    config : dict
        Architecture, class names, normalisation, provenance (a list of
        training records, oldest first), JSON-serialisable.
    """

    def __init__(self, network=None, config: dict | None = None):
        from .unet import UNet

        merged = _default_config()
        if config:
            merged.update(copy.deepcopy(config))
        if network is None:
            try:
                network = UNet(**merged["architecture"])
            except (TypeError, ValueError) as error:
                raise ModelFileError(f"model config has an invalid architecture {merged['architecture']!r}: {error}") from None
        else:
            merged["architecture"] = network.config()
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

        ``path`` ending in ``.safetensors`` → one file (config in its
        metadata); anything else → a folder holding ``model.safetensors`` and
        ``config.json``. Existing files are replaced only once the new ones
        are completely written.

        Returns
        -------
        pathlib.Path
            The file or folder written.
        """
        from safetensors.torch import save as save_bytes

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        config_json = json.dumps(self.config, indent=2, sort_keys=True)
        payload = save_bytes(state, metadata={"cellrefine_config": config_json})
        if path.suffix == ".safetensors":
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, payload)
        else:
            if path.exists() and not path.is_dir():
                raise ValueError(f"cannot save a model folder at {path}: a file with that name exists; pick another path or end it in .safetensors.")
            path.mkdir(parents=True, exist_ok=True)
            _atomic_write(path / _WEIGHTS_NAME, payload)
            _atomic_write(path / _CONFIG_NAME, (config_json + "\n").encode())
        logger.info("saved model %s to %s", self.name, path)
        return path


def _atomic_write(path: Path, data: bytes) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_safetensors(path: Path):
    from safetensors.torch import load as load_bytes

    data = path.read_bytes()
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
        raise FileNotFoundError(f"model path {path} does not exist; pass a saved .safetensors file or model folder, or None for the bundled model.")
    if path.is_dir():
        weights = path / _WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"model folder {path} has no {_WEIGHTS_NAME}; is it a CellRefine model folder?")
        config = path / _CONFIG_NAME
        return weights, config if config.is_file() else None
    return path, None


def bundled_model_path() -> Path:
    """Path of the bundled weights file inside the installed package."""
    return Path(str(resources.files("cellrefine.model") / "weights" / f"{BUNDLED_MODEL}.safetensors"))


def load_model(path=None, device: str = "cpu") -> Model:
    """Load a model saved by :meth:`Model.save`, or the bundled one.

    Parameters
    ----------
    path : str or Path, optional
        A ``.safetensors`` file or a model folder. None loads the bundled
        nuclei model shipped with the package.
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
        Where to put the network.

    Returns
    -------
    Model

    Raises
    ------
    FileNotFoundError
        The path (or the bundled weights) does not exist.
    ModelFileError
        The file is not safetensors (e.g. a pickle), is corrupt, or its
        weights do not match its config.
    """
    from ..device import resolve_device

    weights_path, config_path = _resolve(bundled_model_path() if path is None else path)
    state, metadata = _read_safetensors(weights_path)
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ModelFileError(f"{config_path} is not valid JSON ({error}).") from error
    elif "cellrefine_config" in metadata:
        try:
            config = json.loads(metadata["cellrefine_config"])
        except json.JSONDecodeError as error:
            raise ModelFileError(f"{weights_path} carries a corrupt config ({error}).") from error
    else:
        raise ModelFileError(f"{weights_path} has no CellRefine config (metadata 'cellrefine_config' or a config.json beside it).")
    if not isinstance(config, dict) or config.get("format") != "cellrefine-model":
        raise ModelFileError(f"{weights_path}: config is not a CellRefine model config (missing format='cellrefine-model').")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{weights_path} was written by a newer CellRefine (format {config['format_version']}); upgrade napari-cellrefine.")
    model = Model(config=config)
    try:
        model.network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(
            f"{weights_path}: weights do not match the architecture in its config {config['architecture']}: {str(error)[:300]}"
        ) from None
    model.network.to(resolve_device(device))
    model.network.eval()
    model.path = str(path) if path is not None else f"bundled:{BUNDLED_MODEL}"
    return model
