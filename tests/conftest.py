"""Shared fixtures for the pure (non-Qt) tests: a tiny U-Net model and a toy blobs image."""

from __future__ import annotations

import numpy as np
import pytest

TINY_CONFIG = {
    "name": "tiny",
    "architecture": {"in_channels": 1, "out_channels": 3, "depth": 2, "base_channels": 4, "norm": "batch"},
}


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """The project's wheel, built once per test session (``python -m build --wheel``)."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("dist")
    root = Path(__file__).resolve().parents[1]
    completed = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(root)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    """The suite runs next to other jobs on small machines: keep torch to one thread."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_tiny_model(seed: int = 0, **architecture):
    """A depth-2, 4-channel U-Net with seeded random weights (untrained)."""
    import torch

    from cellrefine.model.io import Model

    config = {"name": TINY_CONFIG["name"], "architecture": {**TINY_CONFIG["architecture"], **architecture}}
    torch.manual_seed(seed)
    return Model(config=config)


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def make_model():
    """Factory fixture: ``make_model(seed=0, **architecture)`` builds another tiny model."""
    return make_tiny_model


@pytest.fixture
def make_image():
    """Factory fixture: ``make_image(shape, noise, seed)`` is :func:`make_blobs`."""
    return make_blobs


def make_blobs(shape=(64, 64), noise: float = 0.05, seed: int = 0):
    """A toy fluorescence image and its instance labels.

    Four separated discs (radius 6) plus two overlapping discs (radius 6,
    centres 10 px apart) that touch along a 7-pixel vertical line; bright (1.0)
    objects on a dark (0.1) background, a darker seam (0.4) along the contact
    and a little Gaussian noise.

    Returns
    -------
    image : (Y, X) float32
    instances : (Y, X) int32, ids 1..6 (ids 5 and 6 touch)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    instances = np.zeros(shape, np.int32)
    centres = [(12, 12), (12, 50), (50, 12), (50, 50), (31, 25), (31, 35)]
    for index, (cy, cx) in enumerate(centres, start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 6**2
        instances[disc & (instances == 0)] = index
    image = np.where(instances > 0, 1.0, 0.1) + noise * rng.standard_normal(shape)
    # a darker seam where the two touching discs meet, as in real nuclei
    seam = (instances == 5) & (np.roll(instances, -1, axis=1) == 6) | (instances == 6) & (np.roll(instances, 1, axis=1) == 5)
    image[seam] = 0.4
    return image.astype(np.float32), instances


@pytest.fixture
def blobs():
    return make_blobs()


def _make_pointwise_class():
    import torch

    from cellrefine.model.unet import UNet

    class PointwiseNet(UNet):
        """A hand-wired "network" whose class logits depend only on each pixel's value.

        After normalisation the blobs image has background near 0, objects near 0.9
        and the seam between the touching discs near 0.3, so: low values are
        background, high values cell, and a band around 0.35 is boundary. Being
        local, it makes the whole segmentation pipeline's answer predictable.
        Subclassing UNet keeps ``grid``, ``halo``, ``in_channels``, ``out_channels``.
        """

        def __init__(self):
            super().__init__(in_channels=1, out_channels=3, depth=1, base_channels=1, norm="none")

        def forward(self, x):
            value = x[:, :1]
            background = 20 * (0.2 - value)
            cell = 20 * (value - 0.6)
            boundary = 20 * (0.15 - (value - 0.35).abs())
            return torch.cat([background, cell, boundary], dim=1)

    return PointwiseNet


def make_pointwise_model():
    """A Model wrapping :class:`PointwiseNet` (segments :func:`make_blobs` correctly)."""
    from cellrefine.model.io import Model

    return Model(network=_make_pointwise_class()(), config={"name": "pointwise"})


@pytest.fixture
def pointwise_model():
    return make_pointwise_model()


@pytest.fixture
def load_benchmark():
    """Load a script of ``benchmarks/`` as a module (its helpers, not its ``main``): ``load_benchmark("diagnose_outlines")``."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


# Hypothesis: the same examples on every run (CI must not fail by chance), no per-example deadline (shared 2-core machines)
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("cellrefine", derandomize=True, deadline=None, print_blob=True)
_hypothesis_settings.load_profile("cellrefine")
