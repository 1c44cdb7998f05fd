#!/usr/bin/env bash
# Set up CellRefine in ./.venv: PyTorch (CPU build 2.13.0 unless a torch is already there), then the package.
#   bash scripts/setup.sh            # Python environment only
#   bash scripts/setup.sh --system   # also the system libraries Qt/napari need and Xvfb (Debian/Ubuntu, as root or via sudo)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == "--system" ]]; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \
    libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxcb-cursor0 \
    libxkbcommon-x11-0 libx11-xcb1 libegl1 libgl1 libglx-mesa0 libgl1-mesa-dri libdbus-1-3 libfontconfig1 >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! "$VPY" -c "import torch" 2>/dev/null; then
  # CPU build; real users install the torch build for their hardware first (see README).
  "$VPY" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
fi
"$VPY" -m pip install -q -e ".[testing]" 2>&1 | grep -v "^WARNING: Location" || true
"$VPY" -c "import cellrefine, torch; print(f'cellrefine {cellrefine.__version__}, torch {torch.__version__} ready in .venv')"
