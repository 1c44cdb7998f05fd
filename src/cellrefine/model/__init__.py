"""The U-Net and its safe file format."""

from .io import BUNDLED_MODEL, Model, ModelFileError, load_model
from .unet import UNet

__all__ = ["UNet", "Model", "ModelFileError", "load_model", "BUNDLED_MODEL"]
