"""``cellrefine segment IN.zarr -o OUT.zarr --distributed``: the command line of :mod:`cellrefine.distributed`.

Examples::

    cellrefine segment volume.ome.zarr --distributed                      # labels/cells inside the image, LocalCluster
    cellrefine segment volume.zarr -o labels.zarr --distributed --workers 4 --block-size 1024
    cellrefine segment volume.zarr -o labels.zarr --distributed --scheduler tcp://10.0.0.5:8786

The run is resumable: run the same command again after a crash or Ctrl-C and
the blocks already done are skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .cli_files import CLIError

__all__ = ["add_distributed_options", "wants_distributed", "run_distributed", "default_output"]


#: distributed.segment keyword <- command-line attribute
_SEGMENT_OPTIONS = (
    ("axes", "axes"),
    ("name", "label_name"),
    ("scheduler", "scheduler"),
    ("workers", "workers"),
    ("block_size", "block_size"),
    ("object_size", "object_size"),
    ("device", "device"),
    ("skip_blank", "skip_blank"),
    ("zarr_format", "zarr_format"),
    ("overwrite", "overwrite"),
)


def postprocess_from_args(args, model):
    """The model's post-processing settings with the thresholds given on the command line, validated."""
    from .postprocess import PostprocessSettings

    given = {
        name: getattr(args, name)
        for name in ("foreground_threshold", "seed_threshold", "boundary_weight", "min_size", "stitch_threshold")
        if getattr(args, name) is not None
    }
    return PostprocessSettings(**{**model.config.get("postprocess", {}), **given}).validate()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def add_distributed_options(parser: argparse.ArgumentParser) -> None:
    """The big-data options of ``cellrefine segment`` (``--distributed`` and the options it takes)."""
    group = parser.add_argument_group(
        "big data (zarr / OME-Zarr, block by block on dask.distributed)",
        "Segment a zarr array or OME-Zarr image block by block and write OME-Zarr labels (labels/NAME). Without -o the labels "
        "go inside an OME-Zarr input (NGFF layout) or into NAME_labels.zarr beside a plain zarr array. Resumable: run the same "
        "command again after a crash or Ctrl-C and finished blocks are skipped.",
    )
    group.add_argument("--distributed", action="store_true", help="segment one zarr / OME-Zarr input block by block on a dask cluster")
    group.add_argument("--workers", type=_positive, metavar="N", help="workers of the local cluster (default 1); each uses cores/N threads")
    group.add_argument(
        "--scheduler", metavar="ADDRESS", help="use a running dask scheduler, e.g. tcp://host:8786 (dask-jobqueue, dask-kubernetes, Coiled)"
    )
    group.add_argument("--block-size", type=_positive, metavar="N", help="block core size in Y and X, pixels (default 1024)")
    group.add_argument("--object-size", type=_positive, metavar="N", help="diameter of the largest object in pixels, part of the halo (default 64)")
    group.add_argument("--skip-blank", action="store_true", help="skip blocks with nothing brighter than the background")
    group.add_argument("--label-name", default="cells", metavar="NAME", help="name of the labels image, labels/NAME (default: cells)")
    group.add_argument("--zarr-format", type=int, choices=[2, 3], help="format of a new output store: 2 (NGFF 0.4, default) or 3 (NGFF 0.5)")
    group.add_argument("--overwrite", action="store_true", help="start again when the output holds labels/NAME from another run or program")


def wants_distributed(args) -> bool:
    """True for ``--distributed``; a zarr input without it is refused with a hint (it would be read as a folder of TIFFs)."""
    from .zarr_io import is_zarr_path

    if getattr(args, "distributed", False):
        return True
    for spec in args.inputs:
        if is_zarr_path(spec):
            raise CLIError(
                f"{spec} is a zarr store: add --distributed to segment it block by block into OME-Zarr labels "
                "(on this machine, or on a cluster with --scheduler)."
            )
    given = [f"--{name.replace('_', '-')}" for name in ("workers", "scheduler", "block_size", "object_size") if getattr(args, name, None) is not None]
    if given:
        raise CLIError(f"{', '.join(given)} only apply with --distributed.")
    return False


def default_output(source: str, is_ngff_image: bool, name: str) -> str:
    """Without ``-o``: the OME-Zarr input itself (labels next to the image), else ``STEM_labels.zarr`` beside a plain zarr array."""
    if is_ngff_image:
        return source
    path = Path(source.rstrip("/"))
    stem = path.name[: -len(".zarr")] if path.name.lower().endswith(".zarr") else path.name
    return str(path.with_name(f"{stem}_labels.zarr"))


def _bar():
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is installed with dask
        return None
    return tqdm(total=0, desc="blocks", unit="task", file=sys.stderr, leave=False)


def run_distributed(args) -> int:
    """``cellrefine segment … --distributed``: one zarr input, labels written as OME-Zarr; prints one summary line."""
    from . import load_model

    try:
        import distributed  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as error:
        raise CLIError(
            f"--distributed needs dask.distributed and zarr ({error}); install them with: pip install 'napari-cellrefine[distributed]'"
        ) from None
    from .distributed import segment
    from .inference import SegmentationCancelled
    from .zarr_io import is_zarr_path, open_zarr

    if args.sample or len(args.inputs) != 1:
        raise CLIError("--distributed segments one zarr / OME-Zarr input at a time; give exactly one (no --sample).")
    source = args.inputs[0]
    if not is_zarr_path(source):
        raise CLIError(f"--distributed reads zarr arrays and OME-Zarr images; {source} is not one (convert it, e.g. with bioformats2raw).")
    if args.workers is not None and args.scheduler is not None:
        raise CLIError("give --workers (a cluster on this machine) or --scheduler (a running cluster), not both.")
    for name in ("semantic", "series", "tile_size"):
        if getattr(args, name, None) not in (None, False):
            raise CLIError(f"--{name.replace('_', '-')} is not available with --distributed.")
    image = open_zarr(source)  # fails early, with one line, on a missing or unreadable store
    if not getattr(args, "verbose", False):  # dask's INFO lines (here and in worker processes) only with --verbose
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)
    output = args.output or default_output(source, image.group is not None, args.label_name)
    model = load_model(args.model)
    settings = postprocess_from_args(args, model)
    bar = _bar()
    try:
        options = {name: getattr(args, attribute) for name, attribute in _SEGMENT_OPTIONS}
        result = segment(source, output, model, postprocess=settings, progress=bar, **options)
    except SegmentationCancelled as error:  # pragma: no cover - the CLI never cancels; Ctrl-C is KeyboardInterrupt
        raise CLIError(str(error)) from error
    finally:
        if bar is not None:
            bar.close()
    where = f"scheduler {args.scheduler}" if args.scheduler else f"{args.workers or 1} local worker(s)"
    print(  # noqa: T201 - the command line's summary line
        f"{Path(source).name}: shape {image.shape} -> {result.n_objects} objects, labels {result.shape} axes {result.axes}; "
        f"{result.blocks} blocks ({result.computed} segmented, resumed {result.resumed}, blank {result.blank}) on {where} "
        f"in {result.seconds['total']:.1f} s; wrote {result.labels_path}",
        flush=True,
    )
    return 0
