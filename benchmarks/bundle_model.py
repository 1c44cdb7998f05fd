"""Copy a training checkpoint into the package as the bundled model.

    python benchmarks/bundle_model.py runs/nuclei_v1/final.safetensors --foreground-threshold 0.8 --seed-threshold 0.7

Sets the model's name, licence and default post-processing (chosen on the
validation split with benchmarks/evaluate.py), appends a ``"bundle"``
provenance record (thresholds before and after, where they were chosen, the
source checkpoint's file name, library versions), replaces absolute machine
paths in the provenance by their last two parts (``/data/nuclei/train`` →
``nuclei/train``) and writes src/cellrefine/model/weights/NAME.safetensors
atomically (``Model.save``). The weights are not touched, except that
``--float16`` stores them in half precision (half the file; ``load_model``
builds a float32 network and casts them back, so inference and fine-tuning run
as before; report the scores of the bundled file).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import ntpath
import posixpath
from pathlib import Path

from cellrefine.training.calibrate import POSTPROCESS_KEYS  # every PostprocessSettings field, boundary_weight included

LICENSE = "BSD-3-Clause (weights); trained on CC0 data (DSB2018 stage1_train, BBBC039v1 training split)"
WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "cellrefine" / "model" / "weights"


def portable_path(text: str) -> str:
    """``text`` without its machine-specific part: the last two parts of an absolute path, else unchanged."""
    if not isinstance(text, str) or not (posixpath.isabs(text) or ntpath.isabs(text)):
        return text
    parts = [part for part in text.replace("\\", "/").split("/") if part and not part.endswith(":")]
    return "/".join(parts[-2:])


def portable_provenance(records: list) -> list:
    """A copy of provenance ``records`` in which every absolute path (at any depth) is made portable."""

    def clean(value):
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return portable_path(value)

    return [clean(copy.deepcopy(record)) for record in records]


def bundle_record(before: dict, after: dict, source: str, chosen_on: str, date: str | None = None, note: str | None = None) -> dict:
    """The provenance record of a bundling step (JSON-serialisable)."""
    import numpy
    import torch

    import cellrefine

    record = {
        "kind": "bundle",
        "source": portable_path(str(source)),
        "postprocess_before": dict(before),
        "postprocess_after": dict(after),
        "chosen_on": chosen_on,
        "date": date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"cellrefine": cellrefine.__version__, "torch": torch.__version__.split("+")[0], "numpy": numpy.__version__},
    }
    if note:
        record["note"] = note
    return record


def bundle(
    model, postprocess: dict, name: str, source: str, chosen_on: str, date: str | None = None, note: str | None = None, license: str = LICENSE
):
    """Give ``model`` its bundled name, licence, post-processing defaults and provenance (in place); returns it."""
    from cellrefine.postprocess import PostprocessSettings

    settings = PostprocessSettings(**postprocess).validate()
    after = {key: getattr(settings, key) for key in POSTPROCESS_KEYS}
    before = dict(model.config.get("postprocess") or {})
    model.config["provenance"] = portable_provenance(model.config.get("provenance") or [])
    model.config["provenance"].append(bundle_record(before, after, source, chosen_on, date=date, note=note))
    model.config["postprocess"] = after
    model.config["name"] = name
    model.config["license"] = license
    return model


def main(argv=None) -> int:
    import cellrefine as cr
    from cellrefine.postprocess import PostprocessSettings

    defaults = PostprocessSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--foreground-threshold", type=float, default=defaults.foreground_threshold)
    parser.add_argument("--seed-threshold", type=float, default=defaults.seed_threshold)
    parser.add_argument("--boundary-weight", type=float, default=defaults.boundary_weight)
    parser.add_argument("--min-seed-size", type=int, default=defaults.min_seed_size)
    parser.add_argument("--min-size", type=int, default=defaults.min_size)
    parser.add_argument("--stitch-threshold", type=float, default=defaults.stitch_threshold)
    parser.add_argument(
        "--chosen-on", default="nuclei/val with benchmarks/evaluate.py", help="where the thresholds were chosen (goes in the provenance)"
    )
    parser.add_argument("--name", default="nuclei_v1")
    parser.add_argument("--float16", action="store_true", help="store the weights in float16 (half the file size)")
    parser.add_argument("--license", default=LICENSE, help="the weights' licence and what data they were trained on")
    args = parser.parse_args(argv)

    model = cr.load_model(args.checkpoint)
    postprocess = {key: getattr(args, key) for key in POSTPROCESS_KEYS}
    bundle(model, postprocess, args.name, args.checkpoint, args.chosen_on, license=args.license)
    if args.float16:
        model.network.half()
    target = model.save(WEIGHTS / f"{args.name}.safetensors")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB) from {args.checkpoint}; postprocess {model.config['postprocess']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
