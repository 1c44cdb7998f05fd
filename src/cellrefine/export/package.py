"""Write a CellRefine model as a bioimage.io model package (.zip), check it, and read it back."""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import time
import warnings
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from ..model.config import ModelFileError
from .checks import spec_installed, validate_package

logger = logging.getLogger(__name__)

__all__ = [
    "export_bioimageio",
    "read_cellrefine_package",
    "default_test_image",
    "CELLREFINE_FILE",
    "ARCHITECTURE_CALLABLE",
]

#: The CellRefine model (safetensors + config) inside every package we write: what :func:`cellrefine.load_model` reads.
CELLREFINE_FILE = "cellrefine_model.safetensors"
ARCHITECTURE_FILE = "cellrefine_unet.py"
ARCHITECTURE_CALLABLE = "CellRefineUNet"
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_TEST_SIZE = 256
_ARCHITECTURE_HEADER = (
    "# CellRefine's U-Net (cellrefine/model/unet.py of napari-cellrefine {version}, BSD-3-Clause), followed by\n"
    "# CellRefineUNet: the same network run as CellRefine runs it, as described in this package's rdf.yaml.\n"
)
_ARCHITECTURE_FOOTER = '''

class CellRefineUNet(UNet):
    """:class:`UNet` as CellRefine runs it, returning class probabilities.

    The image is mirror-padded by the tiling halo (the U-Net paper's
    overlap-tile strategy, as cellrefine.tiling does), the logits are cropped
    back and turned into probabilities by a softmax over the channel axis.
    Spatial sizes must exceed the halo.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        halo = self.halo
        logits = super().forward(F.pad(x, (halo, halo, halo, halo), mode="reflect"))
        return torch.softmax(logits[..., halo : logits.shape[-2] - halo, halo : logits.shape[-1] - halo], dim=1)
'''


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_test_image() -> np.ndarray:
    """Field 0 of the bundled nuclei sample (520×696, uint16): the default test input (``_test_crop`` centres it:
    rows 132:388, columns 220:476 at 256×256, larger for deeper networks)."""
    from ..data import load_sample_nuclei

    return load_sample_nuclei()[0]


def _test_crop(image, size_min: int, step: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"test_image must be a 2D (Y, X) grey image, got shape {image.shape}; pass one plane (average colour channels first).")
    if image.dtype.kind not in "biuf":
        raise TypeError(f"test_image must hold numbers, got dtype {image.dtype}.")
    if not np.isfinite(image).all():
        raise ValueError("test_image holds NaN or Inf values; pass a finite image.")
    sizes = []
    for n in image.shape:
        if n < size_min:
            raise ValueError(f"test_image {image.shape} is too small: both sides must be at least {size_min} px for this model.")
        sizes.append(size_min + (min(n, max(_TEST_SIZE, size_min)) - size_min) // step * step)
    (height, width), (top, left) = sizes, ((image.shape[0] - sizes[0]) // 2, (image.shape[1] - sizes[1]) // 2)
    return image[top : top + height, left : left + width]


def _architecture_source() -> str:
    from .. import __version__

    source = (resources.files("cellrefine.model") / "unet.py").read_text(encoding="utf-8")
    return _ARCHITECTURE_HEADER.format(version=__version__) + source + _ARCHITECTURE_FOOTER


def _architecture_network(source: str, model):
    """``CellRefineUNet`` built from the architecture ``source`` written to the package, holding ``model``'s weights (CPU, float32)."""
    import types

    module = types.ModuleType("cellrefine_unet_export")
    exec(compile(source, ARCHITECTURE_FILE, "exec"), module.__dict__)  # our own source text (cellrefine/model/unet.py + the footer)
    network = getattr(module, ARCHITECTURE_CALLABLE)(**model.network.config())
    network.load_state_dict(model.network.state_dict())
    return network.cpu().float().eval()


def _torch_files(model, architecture: str, test_input: np.ndarray, low: float, high: float) -> dict:
    """State dict, TorchScript, test output and normalised input (CPU, float32, evaluation mode)."""
    import torch

    from .rdf import SCALE_RANGE_EPS

    network = _architecture_network(architecture, model)
    lo, hi = (float(v) for v in np.percentile(test_input.astype(np.float64), [low, high]))
    normalized = ((test_input - lo) / (hi - lo + SCALE_RANGE_EPS)).astype(np.float32)
    x = torch.from_numpy(normalized)
    state = {key: value.detach().contiguous() for key, value in network.state_dict().items()}
    weights = io.BytesIO()
    torch.save(state, weights)
    probabilities = network
    with torch.no_grad():
        output = probabilities(x).numpy().astype(np.float32)
        with warnings.catch_warnings():  # sizes are multiples of the grid, so the traced graph (no padding) holds for every allowed size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: still what bioimage.io's torchscript format is
            traced = torch.jit.trace(probabilities, x, check_trace=False)  # checked once below, on the test input
        if not np.allclose(traced(x).numpy(), output, atol=1e-5):
            raise RuntimeError("the TorchScript copy of the network does not reproduce its output; please report this as a CellRefine bug.")
    script = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.save: still what bioimage.io's torchscript format is
        torch.jit.save(traced, script)
    return {"weights": weights.getvalue(), "torchscript": script.getvalue(), "output": output, "normalized": normalized[0, 0]}


def _tiff(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(array), photometric="minisblack", compression="zlib")
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def export_bioimageio(model, path, *, test_image=None, authors=None, license: str = "BSD-3-Clause", validate: bool | None = None) -> Path:
    """Write ``model`` as a bioimage.io model package (spec 0.5, a ``.zip``).

    The package holds ``rdf.yaml``; ``pytorch_state_dict`` weights with the
    architecture source (CellRefine's ``unet.py`` plus a ``CellRefineUNet``
    returning softmax probabilities) and a TorchScript copy; preprocessing in
    the spec's terms (``scale_range`` with the model's percentiles, 1 / 99.8
    for the bundled model, over each image); a test input and its expected
    output; a cover image; a README with the model card figures, provenance,
    licence and citations; and the CellRefine model itself
    (``cellrefine_model.safetensors``), which :func:`cellrefine.load_model`
    reads back.

    Parameters
    ----------
    model : Model
        A one-channel CellRefine model (see :func:`cellrefine.load_model`).
    path : str or Path
        The package to write, ending in ``.zip``; written atomically.
    test_image : (Y, X) array, optional
        Raw grey image for the test input (centre-cropped to at most
        256×256 on the model's size grid). Default: a crop of the bundled
        nuclei sample.
    authors : list of str or dict, optional
        Names (or bioimage.io author dicts). Default: "CellRefine developers".
    license : str
        SPDX licence identifier of the weights (default BSD-3-Clause).
    validate : bool, optional
        Validate the written package with ``bioimageio.spec`` before it
        replaces ``path``: True requires it, None (default) validates when
        it is installed, False skips.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        ``path`` does not end in ``.zip``, the model has more than one input
        channel, the test image is unusable, or the package is invalid.
    ImportError
        ``validate=True`` but ``bioimageio.spec`` is not installed.
    OSError
        The package cannot be written (one line naming the path and reason).
    """
    from ..files import atomic_write, check_writable
    from ..model.config import validate_config
    from ..model.io import Model
    from .card import cover_image, package_readme, png_bytes
    from .rdf import build_rdf, input_size_rule, to_yaml

    if not isinstance(model, Model):
        raise TypeError(f"model must be a cellrefine Model (cellrefine.load_model()), got {type(model).__name__}.")
    path = Path(path).expanduser()
    if path.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file; got {path.name!r}, use {path.with_suffix('.zip').name!r}.")
    if validate is True and not spec_installed():
        raise ImportError("validate=True needs bioimageio.spec: pip install 'napari-cellrefine[bioimageio]' (or pass validate=None/False).")
    check_writable(path)
    config = validate_config(copy.deepcopy(model.config))
    arch = config["architecture"] = model.network.config()
    if arch["in_channels"] != 1:
        raise ValueError(f"bioimage.io export supports one-channel (grey) models; {model.name!r} has {arch['in_channels']} input channels.")
    halo = int(model.network.halo)
    size_min, step = input_size_rule(arch["depth"], halo)
    raw = _test_crop(default_test_image() if test_image is None else test_image, size_min, step)
    test_input = raw.astype(np.float32)[None, None]
    norm = config["normalization"]
    architecture = _architecture_source()
    tensors = _torch_files(model, architecture, test_input, norm["low_percentile"], norm["high_percentile"])
    import torch

    from ..training import finetune_summary

    cellrefine_bytes = _model_bytes(model)
    contents = {
        "weights.pt": tensors["weights"],
        "weights_torchscript.pt": tensors["torchscript"],
        ARCHITECTURE_FILE: architecture.encode(),
        "test_input.npy": _npy(test_input),
        "test_output.npy": _npy(tensors["output"]),
        "cover.png": png_bytes(cover_image(tensors["normalized"], tensors["output"][0])),
        "sample_input.tif": _tiff(test_input[0, 0]),
        "sample_output.tif": _tiff(tensors["output"][0]),
        CELLREFINE_FILE: cellrefine_bytes,
    }
    parameters = sum(p.numel() for p in model.network.parameters())
    readme = package_readme(
        config,
        parameters=parameters,
        halo=halo,
        size_rule=(size_min, step),
        test_shape=test_input.shape,
        summary=finetune_summary(model),
        license=license,
        model_file=CELLREFINE_FILE,
    )
    contents["README.md"] = readme.encode()
    roles = {
        "weights": "weights.pt",
        "torchscript": "weights_torchscript.pt",
        "architecture": ARCHITECTURE_FILE,
        "test_input": "test_input.npy",
        "test_output": "test_output.npy",
        "sample_input": "sample_input.tif",
        "sample_output": "sample_output.tif",
        "cover": "cover.png",
        "readme": "README.md",
        "cellrefine": CELLREFINE_FILE,
    }
    files = {role: (name, _sha256(contents[name])) for role, name in roles.items()}
    rdf = build_rdf(
        config,
        files,
        architecture_callable=ARCHITECTURE_CALLABLE,
        pytorch_version=torch.__version__.split("+")[0],
        authors=_authors(authors),
        license=license,
        halo=halo,
    )
    rdf_text = "# bioimage.io model description written by CellRefine (cellrefine export)\n" + to_yaml(rdf) + "\n"
    with atomic_write(path, make_parents=True) as temp:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in {"rdf.yaml": rdf_text.encode(), **contents}.items():
                member = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
                member.external_attr, member.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED  # readable by all once unpacked
                archive.writestr(member, data)
        if validate is not False and (validate or spec_installed()):
            validate_package(temp)
    logger.info("exported %s as a bioimage.io package to %s", model.name, path)
    return path


def _model_bytes(model) -> bytes:
    """The model as CellRefine's single-file safetensors (config in its metadata), as :meth:`Model.save` writes it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cellrefine-export-") as folder:
        target = Path(folder) / CELLREFINE_FILE
        model.save(target)
        return target.read_bytes()


def _authors(authors) -> list:
    if authors is None:
        return [{"name": "CellRefine developers"}]
    if isinstance(authors, (str, dict)):
        authors = [authors]
    result = []
    for author in authors:
        if isinstance(author, str) and author.strip():
            result.append({"name": author.strip()})
        elif isinstance(author, dict) and str(author.get("name", "")).strip():
            result.append({key: str(value) for key, value in author.items()})
        else:
            raise ValueError(f"each author must be a non-empty name or a dict with a 'name', got {author!r}.")
    return result


def read_cellrefine_package(path) -> bytes:
    """The CellRefine model file (safetensors bytes) inside a package written by :func:`export_bioimageio`.

    Raises
    ------
    ModelFileError
        ``path`` is not a zip file, not a bioimage.io package, or a
        bioimage.io package not written by CellRefine (the message says what
        is supported).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if CELLREFINE_FILE in names:
                return archive.read(CELLREFINE_FILE)
    except zipfile.BadZipFile as error:
        raise ModelFileError(
            f"{path} is not a valid zip file ({error}); CellRefine loads .safetensors models, model folders and "
            "the bioimage.io packages (.zip) written by 'cellrefine export'."
        ) from None
    if names & set(_RDF_NAMES) or any(name.endswith(".bioimageio.yaml") for name in names):
        raise ModelFileError(
            f"{path} is a bioimage.io model package that CellRefine did not write (it has no {CELLREFINE_FILE}). CellRefine loads "
            "its own models: .safetensors files, model folders, and the bioimage.io packages written by 'cellrefine export'. "
            "Run other bioimage.io models with bioimageio.core or another bioimage.io consumer."
        )
    raise ModelFileError(
        f"{path} is a zip file but not a bioimage.io model package (no rdf.yaml); CellRefine loads .safetensors models, "
        "model folders and the bioimage.io packages written by 'cellrefine export'."
    )
