"""Fixtures for the napari/Qt tests: isolated config dirs, a tiny model, small images.

Run with ``python -m pytest tests/_qt`` (pytest-xvfb starts a virtual display;
do not set QT_QPA_PLATFORM=offscreen, napari's canvas needs OpenGL).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

TINY_CONFIG = {"name": "tiny", "architecture": {"in_channels": 1, "out_channels": 3, "depth": 2, "base_channels": 4, "norm": "batch"}}


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_dirs(tmp_path_factory):
    """XDG config/cache/data/runtime dirs in a temporary folder for the whole session."""
    patch = pytest.MonkeyPatch()
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        path = tmp_path_factory.mktemp(name.lower())
        path.chmod(0o700)
        patch.setenv(name, str(path))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _fresh_config(tmp_path, monkeypatch):
    """A fresh config dir per test, so the recent-models list starts empty."""
    config = tmp_path / "config"
    config.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))


@pytest.fixture(autouse=True)
def _no_leaked_workers(qtbot):
    """Every test must await its workers: none may still run, and no Python thread may be left over."""
    before = set(threading.enumerate())
    yield
    from qtpy.QtCore import QThreadPool
    from superqt.utils import WorkerBase

    qtbot.wait(20)  # deliver queued "finished" signals (workers leave the set on the GUI thread)
    running = list(WorkerBase._worker_set)
    for worker in running:
        worker.quit()
    QThreadPool.globalInstance().waitForDone(20_000)
    qtbot.wait(10)
    leftovers = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not running, f"test left {len(running)} worker(s) running; await them with qtbot.waitSignal(worker.finished)"
    assert not leftovers, f"test left threads behind: {leftovers}"


@pytest.fixture
def tiny_model():
    """An untrained depth-2 U-Net with 4 base channels (fast on a CPU)."""
    import torch

    from cellrefine.model.io import Model

    torch.manual_seed(0)
    return Model(config=TINY_CONFIG)


def make_blobs(shape=(64, 64), n=6, seed=0):
    """A float32 image of bright disks on a dark noisy background, and their instance labels."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros(shape, np.uint32)
    for index in range(1, n + 1):
        cy, cx = rng.integers(8, height - 8), rng.integers(8, width - 8)
        radius = rng.integers(4, 8)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = index
    image = (labels > 0).astype(np.float32) * 100 + rng.normal(10, 3, shape).astype(np.float32)
    return image, labels


@pytest.fixture
def blobs():
    return make_blobs()


@pytest.fixture
def viewer(make_napari_viewer, tiny_model):
    """A viewer whose CellRefine session uses the tiny model."""
    from cellrefine._qt.session import get_session

    viewer = make_napari_viewer()
    get_session(viewer).set_model(tiny_model)
    return viewer


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to napari's show_error / show_warning."""
    from napari.utils import notifications

    seen = {"error": [], "warning": []}
    monkeypatch.setattr(notifications, "show_error", lambda message: seen["error"].append(str(message)))
    monkeypatch.setattr(notifications, "show_warning", lambda message: seen["warning"].append(str(message)))
    return seen


def finish(qtbot, worker, timeout=60_000):
    """Wait for ``worker.finished``. Call it right after ``widget.run()``: workers start
    on the next event-loop turn, so the signal cannot be missed."""
    assert worker is not None, "the widget did not start a worker (see the notifications)"
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass
