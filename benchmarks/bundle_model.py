"""Copy a training checkpoint into the package as the bundled model.

    python benchmarks/bundle_model.py runs/nuclei_v1/step_04000.safetensors --foreground-threshold 0.8 --seed-threshold 0.8

Sets the model's name and its default post-processing (chosen on the validation
split with benchmarks/evaluate.py) and writes
src/cellrefine/model/weights/nuclei_v1.safetensors atomically.
"""

import argparse
from pathlib import Path

import cellrefine as cr
from cellrefine.postprocess import PostprocessSettings

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("checkpoint")
parser.add_argument("--foreground-threshold", type=float, default=0.5)
parser.add_argument("--seed-threshold", type=float, default=0.6)
parser.add_argument("--min-size", type=int, default=15)
parser.add_argument("--name", default="nuclei_v1")
args = parser.parse_args()

model = cr.load_model(args.checkpoint)
settings = PostprocessSettings(foreground_threshold=args.foreground_threshold, seed_threshold=args.seed_threshold, min_size=args.min_size).validate()
model.config["postprocess"] = {
    k: getattr(settings, k) for k in ("foreground_threshold", "seed_threshold", "min_seed_size", "min_size", "stitch_threshold")
}
model.config["name"] = args.name
model.config["license"] = "BSD-3-Clause (weights); trained on CC0 data (DSB2018 stage1_train, BBBC039v1 training split)"
target = Path(__file__).resolve().parents[1] / "src" / "cellrefine" / "model" / "weights" / f"{args.name}.safetensors"
model.save(target)
print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB) from {args.checkpoint}; postprocess {model.config['postprocess']}")
