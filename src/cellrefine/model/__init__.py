"""The U-Net and its safe file format."""

from .config import validate_config
from .io import BUNDLED_MODEL, Model, ModelFileError, bundled_model_path, load_model
from .unet import UNet

__all__ = ["UNet", "Model", "ModelFileError", "load_model", "validate_config", "bundled_model_path", "BUNDLED_MODEL"]
