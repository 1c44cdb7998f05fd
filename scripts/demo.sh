#!/usr/bin/env bash
# Set everything up and segment the bundled sample stack from the command line (headless).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p results
.venv/bin/cellrefine segment --sample -o results/sample_labels.tif --semantic
.venv/bin/python - <<'PY'
import numpy as np, tifffile
labels = tifffile.imread("results/sample_labels.tif")
print(f"summary: results/sample_labels.tif {labels.shape} {labels.dtype}; objects per field:",
      [int(len(np.unique(frame)) - 1) for frame in labels])
PY
echo "In napari: .venv/bin/napari, then File > Open Sample > CellRefine > Nuclei, then Plugins > CellRefine > Segment."
