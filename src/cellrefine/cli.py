"""Command line: ``cellrefine segment`` and ``cellrefine finetune``.

Examples::

    cellrefine segment image.tif -o image_labels.tif
    cellrefine segment "data/*.tif" -o results/ --axes ZYX --semantic
    cellrefine segment --sample -o sample_labels.tif
    cellrefine finetune img1.tif img2.tif --labels lab1.tif lab2.tif -o my_model
    cellrefine finetune images/ --labels labels/ -o my_model --steps 300
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger("cellrefine.cli")

_TIFF_SUFFIXES = (".tif", ".tiff")
_TIFFFILE_TO_CELLREFINE = {"T": "T", "Z": "Z", "C": "C", "S": "C", "Y": "Y", "X": "X"}


class CLIError(Exception):
    """A user error on the command line (printed without a traceback)."""


def expand_inputs(specs) -> list[Path]:
    """Files from paths, folders (their .tif/.tiff files) and glob patterns, in order."""
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in _TIFF_SUFFIXES)
            if not found:
                raise CLIError(f"folder {path} contains no .tif/.tiff files.")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif any(ch in spec for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
            if not found:
                raise CLIError(f"pattern {spec!r} matches no file.")
            paths.extend(found)
        else:
            raise CLIError(f"input {spec} does not exist.")
    return paths


def read_image(path: Path, axes: str | None):
    """Read a TIFF (or .npy) and return ``(array, axes)``; axes from ``--axes``, the
    file's own axes metadata when it uses T/Z/C/Y/X, else inferred."""
    import tifffile

    from .axes import check_axes

    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        return array, check_axes(array.shape, axes)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise CLIError(f"cannot read {path} as a TIFF: it holds no image.")
            series = tif.series[0]
            array = series.asarray()
            file_axes = "".join(_TIFFFILE_TO_CELLREFINE.get(a, "?") for a in series.axes)
    except (tifffile.TiffFileError, OSError, ValueError) as error:
        raise CLIError(f"cannot read {path} as a TIFF: {error}") from None
    if axes is None and "?" not in file_axes and len(file_axes) == array.ndim and len(set(file_axes)) == len(file_axes) and array.ndim > 2:
        axes = file_axes
    return array, check_axes(array.shape, axes)


def _stem(path: Path) -> str:
    """File name without its image suffix (``a.1.ome.tif`` → ``a.1``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _output_paths(inputs: list[Path], output: str | None) -> list[Path]:
    if output is None:
        return [p.with_name(_stem(p) + "_labels.tif") for p in inputs]
    out = Path(output)
    if len(inputs) == 1 and out.suffix.lower() in _TIFF_SUFFIXES:
        return [out]
    if out.suffix.lower() in _TIFF_SUFFIXES:
        raise CLIError(f"{len(inputs)} inputs need an output folder, not the file {out}.")
    return [out / (_stem(p) + "_labels.tif") for p in inputs]


def _progress_bar(total_files: int, index: int, name: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return _LogProgress(name)
    return tqdm(total=0, desc=f"[{index + 1}/{total_files}] {name}", unit="tile", leave=False, file=sys.stderr)


class _LogProgress:
    """Minimal progress reporter when tqdm is not installed: prints every 10 %."""

    def __init__(self, name):
        self.name, self.total, self.done, self.shown = name, 0, 0, -1

    def update(self, n):
        self.done += n
        percent = int(100 * self.done / max(self.total, 1)) // 10 * 10
        if percent != self.shown:
            self.shown = percent
            print(f"{self.name}: {percent}%", file=sys.stderr, flush=True)

    def close(self):
        pass


def cmd_segment(args) -> int:
    import tifffile

    from . import load_model, segment
    from .data import sample_nuclei_path
    from .postprocess import PostprocessSettings

    specs = list(args.inputs)
    if args.sample:
        specs.append(str(sample_nuclei_path()))
    if not specs:
        raise CLIError("give at least one input image (a file, a folder or a glob), or --sample.")
    inputs = expand_inputs(specs)
    outputs = _output_paths(inputs, args.output)
    model = load_model(args.model, device=args.device)
    given = {
        name: getattr(args, name)
        for name in ("foreground_threshold", "seed_threshold", "min_size", "stitch_threshold")
        if getattr(args, name) is not None
    }
    settings = PostprocessSettings(**{**model.config.get("postprocess", {}), **given}).validate()
    for index, (source, target) in enumerate(zip(inputs, outputs)):
        image, axes = read_image(source, args.axes)
        bar = _progress_bar(len(inputs), index, source.name)
        try:
            result = segment(image, model=model, axes=axes, device=args.device, progress=bar, postprocess=settings, tile_size=args.tile_size)
        finally:
            bar.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(target, result.instances, compression="zlib", photometric="minisblack", metadata={"axes": result.axes})
        written = [str(target)]
        if args.semantic:
            semantic_path = target.with_name(_stem(target).removesuffix("_labels") + "_classes.tif")
            tifffile.imwrite(semantic_path, result.semantic, compression="zlib", photometric="minisblack", metadata={"axes": result.axes})
            written.append(str(semantic_path))
        counts = np.bincount(result.semantic.ravel(), minlength=3) / result.semantic.size
        print(
            f"{source.name}: shape {image.shape} axes {axes} -> {int(result.instances.max())} objects "
            f"(cell {100 * counts[1]:.1f} %, boundary {100 * counts[2]:.1f} %, background {100 * counts[0]:.1f} % of pixels) "
            f"on {result.device}; wrote {', '.join(written)}"
        )
    return 0


def cmd_finetune(args) -> int:
    from . import finetune, load_model

    images = expand_inputs(args.images)
    labels = expand_inputs(args.labels)
    masks = expand_inputs(args.masks) if args.masks else None
    if len(images) != len(labels):
        raise CLIError(f"{len(images)} image(s) but {len(labels)} label file(s): give one label image per image, in the same order.")
    if masks is not None and len(masks) != len(images):
        raise CLIError(f"{len(images)} image(s) but {len(masks)} mask file(s).")
    model = load_model(args.model, device=args.device)
    arrays, axes_list, label_arrays, mask_arrays = [], [], [], []
    for index, path in enumerate(images):
        array, axes = read_image(path, args.axes)
        arrays.append(array)
        axes_list.append(axes)
        label_arrays.append(read_image(labels[index], None)[0])
        if masks is not None:
            mask_arrays.append(read_image(masks[index], None)[0] > 0)
    try:
        from tqdm import tqdm

        bar = tqdm(total=0, desc="fine-tuning", unit="step", file=sys.stderr)
    except ImportError:
        bar = _LogProgress("fine-tuning")
    try:
        tuned = finetune(
            model,
            arrays,
            label_arrays,
            mask_arrays if masks else None,
            axes=axes_list,
            steps=args.steps,
            device=args.device,
            progress=bar,
            kind=args.kind,
            seed=args.seed,
        )
    finally:
        bar.close()
    path = tuned.save(args.output)
    record = tuned.config["provenance"][-1]
    print(
        f"fine-tuned {model.name} for {record['steps']} steps in {record['seconds']:.0f} s; reviewed-pixel accuracy "
        f"{record['metrics_before']['reviewed_accuracy']:.3f} -> {record['metrics_after'].get('reviewed_accuracy', float('nan')):.3f}; saved {path}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellrefine",
        description="CellRefine: U-Net segmentation of cells/nuclei (cell / boundary / background + instances) and fine-tuning on corrected labels.",
        epilog="Run 'cellrefine segment --help' or 'cellrefine finetune --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('cellrefine').__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="segment images and write instance labels as TIFF",
        description="Segment 2D images or stacks (files, folders or glob patterns) and write uint32 instance labels "
        "(0 = background) as TIFF in the input's axis order, without the channel axis.",
    )
    seg.add_argument("inputs", nargs="*", help="TIFF (or .npy) files, folders of TIFFs, or quoted glob patterns")
    seg.add_argument("-o", "--output", help="output TIFF (one input) or folder; default: NAME_labels.tif beside each input")
    seg.add_argument("--sample", action="store_true", help="also segment the bundled sample stack (4 BBBC039 fields, axes TYX)")
    seg.add_argument("--axes", help="axes of the inputs over TZCYX, e.g. YX, YXC, CYX, ZYX, TYX, TZCYX (default: from the file, else inferred)")
    seg.add_argument("--model", help="a saved model (.safetensors file or folder); default: the bundled nuclei model")
    seg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: auto (CUDA, then MPS, then CPU)")
    seg.add_argument("--semantic", action="store_true", help="also write NAME_classes.tif (0 background, 1 cell, 2 boundary)")
    seg.add_argument("--tile-size", type=int, default=None, help="tile core size in pixels (default by device)")
    seg.add_argument(
        "--foreground-threshold", type=float, help="cell+boundary probability for foreground (default: the model's, 0.8 for the bundled one)"
    )
    seg.add_argument("--seed-threshold", type=float, help="cell probability for watershed seeds (default: the model's, 0.8 for the bundled one)")
    seg.add_argument("--min-size", type=int, help="smallest object kept, in pixels (default: the model's, 15)")
    seg.add_argument("--stitch-threshold", type=float, help="IoU linking objects across Z planes (default: the model's, 0.25)")
    seg.set_defaults(func=cmd_segment)

    ft = sub.add_parser(
        "finetune",
        help="fine-tune a model on corrected labels and save it",
        description="Fine-tune the bundled (or --model) network on images and their corrected instance labels; "
        "optional masks mark the reviewed pixels (others are ignored).",
    )
    ft.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    ft.add_argument("--labels", nargs="+", required=True, help="label images (instance ids), one per image, same order")
    ft.add_argument("--masks", nargs="+", help="reviewed-pixel masks (non-zero = reviewed), one per image")
    ft.add_argument("-o", "--output", required=True, help="output model: a folder, or a file ending in .safetensors")
    ft.add_argument("--model", help="starting model (default: the bundled nuclei model)")
    ft.add_argument("--axes", help="axes of the images (default: from the file, else inferred)")
    ft.add_argument("--kind", default="instances", choices=["instances", "semantic"], help="labels are instance ids (default) or classes 0/1/2")
    ft.add_argument("--steps", type=int, default=None, help="optimisation steps (default 150 on CPU, 400 on GPU)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ft.set_defaults(func=cmd_finetune)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``cellrefine`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .model.io import ModelFileError

    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, FileNotFoundError, ModelFileError) as error:
        if args.verbose:
            raise
        print(f"cellrefine {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
