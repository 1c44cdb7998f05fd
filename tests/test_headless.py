"""A headless install (no Qt, no napari) imports and segments; the wheel's core requirements hold no GUI toolkit.

``test_fresh_venv_install_segments`` really runs ``pip install .`` in a new
virtual environment (torch linked in from this one, everything else from the
package index) and segments there; it needs the index and ~1 minute, so it
runs only with ``CELLREFINE_TEST_FRESH_INSTALL=1``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Top-level modules a headless install must not need (Qt bindings, napari and its GUI stack).
GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "shiboken6", "napari", "magicgui", "superqt", "vispy", "app_model", "npe2")
CORE_REQUIREMENTS = {"numpy", "scipy", "scikit-image", "tifffile", "torch", "safetensors"}

BLOCKER = textwrap.dedent(
    f"""
    import sys
    from importlib.abc import MetaPathFinder

    BLOCKED = {GUI_MODULES!r}
    attempts = []

    class BlockGUI(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in BLOCKED or top.startswith("napari"):
                attempts.append(name)
                raise ImportError(f"{{name}} is blocked: a headless install has no Qt/napari")
            return None

    sys.meta_path.insert(0, BlockGUI())
    """
)


def run_blocked(code: str, cwd: Path) -> str:
    script = BLOCKER + textwrap.dedent(code) + "\nprint('attempted:', ','.join(sorted(set(attempts))))\n"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


def test_blocker_blocks(tmp_path):
    out = run_blocked("try:\n    import qtpy\nexcept ImportError as e:\n    print('refused', e)\n", tmp_path)
    assert "refused qtpy is blocked" in out and "attempted: qtpy" in out


def test_core_and_cli_segment_with_qt_and_napari_blocked(tmp_path):
    import tifffile

    import cellrefine as cr
    from cellrefine.data import load_sample_nuclei

    image = load_sample_nuclei()[0, :192, :256]
    tifffile.imwrite(tmp_path / "plane.tif", image)
    model = cr.load_model()
    expected = cr.segment(image, model=model, device="cpu", precision="float32").instances
    expected_cli = cr.segment(image, model=model, device="cpu").instances  # the CLI's default precision
    np.save(tmp_path / "expected.npy", expected)
    np.save(tmp_path / "expected_cli.npy", expected_cli)
    out = run_blocked(
        """
        import numpy as np, tifffile
        import cellrefine as cr
        from cellrefine.data import load_sample_nuclei
        from cellrefine.cli import main

        image = load_sample_nuclei()[0, :192, :256]
        seg = cr.segment(image, model=cr.load_model(), device="cpu", precision="float32")
        print("objects", int(seg.instances.max()), "same", bool(np.array_equal(seg.instances, np.load("expected.npy"))))
        assert main(["segment", "plane.tif", "-o", "labels.tif", "--device", "cpu"]) == 0
        print("cli same", bool(np.array_equal(tifffile.imread("labels.tif"), np.load("expected_cli.npy"))))
        """,
        tmp_path,
    )
    assert f"objects {int(expected.max())} same True" in out
    assert "cli same True" in out
    assert int(expected.max()) > 5
    assert out.splitlines()[-1] == "attempted: "  # nothing even tried to import a GUI toolkit


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0].lower()


def test_wheel_requires_no_gui_toolkit_without_an_extra(built_wheel):
    wheel = built_wheel
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        text = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    core = {_requirement_name(r) for r in requires if "extra ==" not in r}
    gui = {m.lower() for m in GUI_MODULES} | {"pyqt6-qt6", "napari-plugin-engine"}
    assert core >= CORE_REQUIREMENTS
    assert not core & gui, f"core requirements pull a GUI toolkit: {sorted(core & gui)}"

    def extra(name):
        return {_requirement_name(r) for r in requires if re.search(rf"extra\s*==\s*['\"]{name}['\"]", r)}

    napari_stack = {"napari", "magicgui", "qtpy", "pyqt6"}
    assert extra("napari") >= napari_stack
    # [all] and [testing] (what scripts/setup.sh installs) bring the plugin's stack (hatchling inlines "napari-cellrefine[napari]")
    assert extra("all") >= napari_stack | {"bioimageio-spec", "bioimageio-core"}
    assert extra("testing") >= napari_stack | {"bioimageio-core", "pytest-qt"}
    # the napari plugin route: the manifest entry point and the widgets are still in the wheel
    assert "napari-cellrefine = cellrefine:napari.yaml" in entry_points
    assert "cellrefine/_qt/finetune_widget.py" in names and "cellrefine/napari.yaml" in names


def _torch_and_its_requirements() -> list[list[Path]]:
    """Top-level files/folders of torch and of each distribution it requires here, one list per distribution (to link into a fresh venv)."""
    from packaging.requirements import Requirement

    distributions, seen, todo = [], set(), ["torch"]
    while todo:
        name = todo.pop()
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        distribution = metadata.distribution(name)
        todo += [Requirement(r).name for r in distribution.requires or [] if Requirement(r).marker is None or Requirement(r).marker.evaluate()]
        tops = {Path(str(file)).parts[0] for file in distribution.files or []}
        distributions.append(sorted(Path(distribution.locate_file(top)) for top in tops if top not in ("..", "__pycache__")))
    return distributions


@pytest.mark.skipif(
    os.environ.get("CELLREFINE_TEST_FRESH_INSTALL") != "1", reason="needs the package index and ~1 min: set CELLREFINE_TEST_FRESH_INSTALL=1"
)
def test_fresh_venv_install_segments(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    for entries in _torch_and_its_requirements():  # "torch preinstalled", as the README asks
        if not any((site / entry.name).exists() for entry in entries):  # the venv's own setuptools stays
            for entry in entries:
                (site / entry.name).symlink_to(entry)
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(REPO_ROOT)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    code = (
        "import importlib.util, cellrefine as cr\n"
        "from cellrefine.data import load_sample_nuclei\n"
        f"print('gui', [m for m in {GUI_MODULES!r} if importlib.util.find_spec(m)])\n"
        "print('objects', int(cr.segment(load_sample_nuclei()[0, :192, :256], device='cpu').instances.max()))\n"
    )
    completed = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "gui []" in completed.stdout
    assert int(re.search(r"objects (\d+)", completed.stdout).group(1)) > 5
