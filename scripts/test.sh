#!/usr/bin/env bash
# Set everything up (system libraries for Qt + Xvfb, venv, torch CPU, package) and run the full test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
export XDG_CONFIG_HOME=$(mktemp -d) XDG_CACHE_HOME=$(mktemp -d) XDG_RUNTIME_DIR=$(mktemp -d)
chmod 700 "$XDG_RUNTIME_DIR"
# lint and format first (configured in pyproject.toml)
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
# pytest-xvfb starts a virtual display for the napari tests (never QT_QPA_PLATFORM=offscreen: it crashes napari's canvas)
exec .venv/bin/python -m pytest tests "$@"
