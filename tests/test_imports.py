"""The core stays free of Qt/napari (and of torch until needed); the wheel ships a valid manifest."""

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GUI_MODULES = ("qtpy", "PyQt6", "PyQt5", "PySide6", "PySide2", "napari", "magicgui")


def run_python(code: str) -> str:
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_public_api_imports_no_gui_toolkit():
    code = (
        "import sys, cellrefine\n"
        "cellrefine.segment; cellrefine.finetune; cellrefine.load_model; cellrefine.iter_segment; cellrefine.iter_finetune\n"
        "import cellrefine.cli, cellrefine.metrics, cellrefine.data, cellrefine.device, cellrefine.model\n"
        f"print(','.join(m for m in {GUI_MODULES!r} if m in sys.modules))\n"
    )
    assert run_python(code) == ""


def test_import_cellrefine_does_not_import_torch():
    code = "import sys, cellrefine\nprint('torch' in sys.modules)\n"
    assert run_python(code) == "False"


def test_numpy_only_modules_do_not_import_torch():
    # the CLI's --help and the pure helpers stay quick: torch is imported when a model is needed
    code = (
        "import sys\n"
        "import cellrefine.cli, cellrefine.axes, cellrefine.normalize, cellrefine.targets, cellrefine.postprocess\n"
        "import cellrefine.metrics, cellrefine.inference, cellrefine.training\n"
        "import cellrefine.reader, cellrefine.tiling, cellrefine.progress\n"
        "print('torch' in sys.modules)\n"
    )
    assert run_python(code) == "False"


def test_importing_the_network_runs_no_torch_ops():
    # no import-time side effects: the oneDNN fused-op probe runs on first use, not at import
    code = "import torch\nfrom torch.profiler import profile\nwith profile() as prof:\n    import cellrefine.model.unet\nprint(len(prof.events()))\n"
    assert run_python(code).splitlines()[-1] == "0"


def test_lazy_attribute_loads_torch_when_needed():
    code = "import sys, cellrefine\ncellrefine.Model\nprint('torch' in sys.modules)\n"
    assert run_python(code) == "True"


def test_sample_data_contribution():
    from cellrefine.data import load_sample_nuclei, sample_nuclei, sample_nuclei_path

    assert sample_nuclei_path().is_file()
    ((data, meta, kind),) = sample_nuclei()
    assert kind == "image"
    assert data.shape == (4, 520, 696) and data.dtype == np.uint16
    assert meta["metadata"]["cellrefine_axes"] == "TYX"
    np.testing.assert_array_equal(load_sample_nuclei(), data)


def test_manifest_pure_python_names_resolve():
    yaml = pytest.importorskip("yaml")
    import importlib

    manifest = yaml.safe_load((REPO_ROOT / "napari.yaml").read_text())
    pure = [c["python_name"] for c in manifest["contributions"]["commands"] if "._qt." not in c["python_name"]]
    assert pure  # the sample-data command
    for python_name in pure:
        module, attribute = python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), python_name


def test_wheel_ships_the_manifest(built_wheel, tmp_path):
    wheel = built_wheel
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "cellrefine/napari.yaml" in names
        manifest_bytes = archive.read("cellrefine/napari.yaml")
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        assert "cellrefine/data/nuclei_sample.tif" in names
        assert not any(n.startswith("tests/") for n in names)
    assert manifest_bytes == (REPO_ROOT / "napari.yaml").read_bytes()
    assert "[napari.manifest]" in entry_points and "napari-cellrefine = cellrefine:napari.yaml" in entry_points
    assert "cellrefine = cellrefine.cli:main" in entry_points

    import npe2

    extracted = tmp_path / "napari.yaml"
    extracted.write_bytes(manifest_bytes)
    manifest = npe2.PluginManifest.from_file(extracted)
    assert manifest.name == "napari-cellrefine"
    assert {c.id for c in manifest.contributions.commands} >= {
        "napari-cellrefine.segment_widget",
        "napari-cellrefine.finetune_widget",
        "napari-cellrefine.sample_nuclei",
        "napari-cellrefine.sample_cells",
    }
    assert [s.key for s in manifest.contributions.sample_data] == ["nuclei", "cells"]
