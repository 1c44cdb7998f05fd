"""Command line: ``cellrefine segment`` and ``cellrefine finetune``.

Examples::

    cellrefine segment image.tif -o image_labels.tif
    cellrefine segment "data/*.tif" -o results/ --axes ZYX --semantic
    cellrefine segment stack.tif --scale 2,0.5,0.5 --stack-mode 3d   # voxel size (z, y, x); default: from the file
    cellrefine segment --sample -o sample_labels.tif
    cellrefine segment --sample --model cells -o cells_labels.tif   # the whole-cell model on its own sample
    cellrefine segment volume.zarr -o labels.zarr --distributed --workers 4   # big data: OME-Zarr labels, block by block
    cellrefine finetune img1.tif img2.tif --labels img1_labels.tif img2_labels.tif -o my_model
    cellrefine finetune images/ --labels labels/ -o my_model --steps 300
    cellrefine export --model my_model -o my_model.zip      # bioimage.io package (cli_export.py)

Safety: every input and output is checked before anything is computed (see
:mod:`cellrefine.cli_files`); every file is written through
:func:`cellrefine.files.atomic_write`, so a failed or interrupted write leaves
the previous file as it was. Errors are one line on stderr (exit 1; a
traceback only with ``--verbose``); Ctrl-C exits 130 with one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

from .cli_distributed import add_distributed_options, postprocess_from_args, run_distributed, wants_distributed
from .cli_files import CLIError, ImageFile, check_segment_outputs, expand_inputs, open_image, pair_by_name, plan_segment_outputs

__all__ = ["main", "build_parser", "CLIError", "expand_inputs"]

logger = logging.getLogger("cellrefine.cli")


def _progress_bar(description: str, unit: str, leave: bool = True):
    """A tqdm bar on stderr (its total is set by :func:`cellrefine.progress.run_to_end`), or a plain reporter without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _LogProgress(description)
    return tqdm(total=0, desc=description, unit=unit, leave=leave, file=sys.stderr)


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


def _write_tiff(path: Path, array: np.ndarray, axes: str, voxel_size: dict | None = None) -> None:
    """Write ``array`` as a zlib-compressed grey TIFF through a temporary file renamed over ``path`` (never half-written).

    ``voxel_size`` (``{"Z": 2.0, "Y": 0.5, "X": 0.5, "unit": "µm"}``, the input file's own): written
    as OME-XML ``PhysicalSize*``, so Fiji (Bio-Formats) and CellRefine read the labels with the
    image's calibration; None: a plain TIFF, as before.
    """
    import tifffile

    from .files import atomic_write

    metadata = {"axes": axes}
    if voxel_size:
        unit = voxel_size["unit"]
        metadata |= {key: value for a in "ZYX" if a in axes for key, value in ((f"PhysicalSize{a}", voxel_size[a]), (f"PhysicalSize{a}Unit", unit))}
    with atomic_write(path, make_parents=True) as temp:
        tifffile.imwrite(temp, array, compression="zlib", photometric="minisblack", metadata=metadata, ome=bool(voxel_size))


def _file_voxel_size(file: ImageFile, given) -> dict | None:
    """The input file's own voxel size and unit to write into its labels (none when ``--scale`` was given or the unit is unknown)."""
    from .cli_files import LENGTH_UNITS

    if given is not None or file.scale is None or file.unit not in LENGTH_UNITS:
        return None
    spatial = [letter for letter in "ZYX" if letter in file.axes]
    return {**dict(zip(spatial, file.scale)), "unit": file.unit}


def _open_all(paths: list[Path], axes: str | None, series: int | None) -> list[ImageFile]:
    """Check every input (format, series, axes) before any work."""
    return [open_image(path, axes, series) for path in paths]


def _scale_for(file: ImageFile, given: tuple[float, ...] | None) -> tuple[tuple[float, ...] | None, str]:
    """The voxel size for ``file`` (one number per spatial axis, or None = 1, 1, 1) and where it came from.

    ``--scale`` wins over the file's metadata; a ``Z,Y,X`` given for a 2D image gives its ``Y,X``.
    """
    spatial = "".join(letter for letter in "ZYX" if letter in file.axes)
    if given is None:
        if file.scale is None:
            return None, "none recorded"
        return file.scale, "from the file" + (f", {file.unit}" if file.unit else "")
    if len(given) == 3 and "Z" not in file.axes:
        given = given[1:]  # Z,Y,X for a batch with 2D images too: their Y,X
    if len(given) != len(spatial):
        raise CLIError(f"{file.path.name} has axes {file.axes}: give --scale {','.join(spatial)} ({len(spatial)} numbers), got {len(given)}.")
    return given, "--scale"  # positive and finite (checked by argparse)


def _voxel_text(result, file: ImageFile, source: str) -> str:
    """`` [3d; voxel (z, y, x) 2:0.5:0.5 (from the file, µm)]`` for a stack (what the core ran), '' for a 2D image."""
    if "Z" not in file.axes:
        return ""
    return f" [{result.stack_mode}; voxel (z, y, x) {':'.join(f'{v:g}' for v in result.scale)} ({source})]"


def _sample_path(model_argument) -> Path:
    """The bundled sample that suits ``--model``: the phase-contrast crop for the bundled cells model, else the nuclei stack."""
    from .data import sample_cells_path, sample_nuclei_path
    from .model.bundled import bundled_name

    return sample_cells_path() if bundled_name(model_argument) == "cells" else sample_nuclei_path()


def cmd_segment(args) -> int:
    from . import load_model
    from .inference import SegmentationCancelled, iter_segment
    from .progress import run_to_end

    if wants_distributed(args):  # zarr / OME-Zarr, block by block (cellrefine.cli_distributed)
        if args.scale is not None or args.stack_mode == "3d":
            raise CLIError("--scale and --stack-mode 3d do not apply with --distributed: it segments plane by plane and links objects across Z.")
        return run_distributed(args)
    specs = list(args.inputs)
    if args.sample:
        specs.append(str(_sample_path(args.model)))
    if not specs:
        raise CLIError("give at least one input image (a file, a folder or a glob), or --sample.")
    inputs = expand_inputs(specs)
    plans = plan_segment_outputs(inputs, args.output, args.semantic)
    check_segment_outputs(inputs, plans)  # nothing overwritten that should not be, every output writable
    files = _open_all(inputs, args.axes, args.series)
    scales = [_scale_for(file, args.scale) for file in files]  # every voxel size checked before any work
    model = load_model(args.model, device=args.device)
    settings = postprocess_from_args(args, model)
    for index, (file, (target, classes_path), (scale, scale_source)) in enumerate(zip(files, plans, scales)):
        image = file.read()
        bar = _progress_bar(f"[{index + 1}/{len(files)}] {file.path.name}", "tile", leave=False)
        try:
            generator = iter_segment(
                image, model, file.axes, args.device, postprocess=settings, tile_size=args.tile_size, scale=scale, stack_mode=args.stack_mode
            )
            result = run_to_end(generator, bar, cancelled=SegmentationCancelled)
        finally:
            bar.close()
        voxel_size = _file_voxel_size(file, args.scale)
        _write_tiff(target, result.instances, result.axes, voxel_size)
        written = [str(target)]
        if classes_path is not None:
            _write_tiff(classes_path, result.semantic, result.axes, voxel_size)
            written.append(str(classes_path))
        counts = np.bincount(result.semantic.ravel(), minlength=3) / result.semantic.size
        series = "" if file.series in (None, 0) else f" series {file.series}"
        print(
            f"{file.path.name}{series}: shape {image.shape} axes {file.axes} -> {int(result.instances.max())} objects "
            f"(cell {100 * counts[1]:.1f} %, boundary {100 * counts[2]:.1f} %, background {100 * counts[0]:.1f} % of pixels) "
            f"on {result.device}{_voxel_text(result, file, scale_source)}; wrote {', '.join(written)}",
            flush=True,
        )
    return 0


def _pairs(args, images: list[Path], others: list[Path], what: str) -> list[Path]:
    if args.pair == "name":
        return pair_by_name(images, others, what)
    if len(images) != len(others):
        raise CLIError(f"{len(images)} image(s) but {len(others)} {what}(s): --pair order needs one {what} per image, in the same order.")
    return others


def cmd_finetune(args) -> int:
    from . import finetune, load_model
    from .files import check_writable
    from .training import finetune_summary

    images = expand_inputs(args.images)
    labels = _pairs(args, images, expand_inputs(args.labels), "label file")
    masks = _pairs(args, images, expand_inputs(args.masks), "mask file") if args.masks else None
    output = Path(args.output).expanduser()
    check_writable(output, folder=output.suffix.lower() != ".safetensors")
    print(f"training pairs ({'image <- labels, mask' if masks else 'image <- labels'}, paired by {args.pair}):")
    for index, image_path in enumerate(images):
        print(f"  {image_path.name} <- {labels[index].name}" + (f", {masks[index].name}" if masks else ""), flush=True)
    image_files = _open_all(images, args.axes, args.series)
    scales = [_scale_for(file, args.scale) for file in image_files]  # --scale, else the file's, else None (1, 1, 1)
    for file, (scale, source) in zip(image_files, scales):
        if "Z" in file.axes:
            print(f"  {file.path.name}: voxel (z, y, x) {':'.join(f'{v:g}' for v in scale or (1, 1, 1))} ({source})", flush=True)
    label_files = _open_all(labels, None, args.series)
    mask_files = _open_all(masks, None, args.series) if masks else None
    model = load_model(args.model, device=args.device)
    arrays = [file.read() for file in image_files]
    label_arrays = [file.read() for file in label_files]
    mask_arrays = [file.read() > 0 for file in mask_files] if mask_files else None
    bar = _progress_bar("fine-tuning", "step")
    try:
        tuned = finetune(
            model,
            arrays,
            label_arrays,
            mask_arrays,
            axes=[file.axes for file in image_files],
            steps=args.steps,
            device=args.device,
            progress=bar,
            kind=args.kind,
            seed=args.seed,
            scale=[scale for scale, _ in scales],  # one per image (iter_finetune's scale=)
        )
    finally:
        bar.close()
    path = tuned.save(output)
    record = tuned.config["provenance"][-1]
    print(f"fine-tuned {model.name} for {record['steps']} steps in {record['seconds']:.0f} s; saved {path}")
    for line in finetune_summary(tuned):  # the same words as the napari widget
        print(f"  {line}")
    return 0


def _voxel_size(text: str) -> tuple[float, ...]:
    """An argparse type: ``Z,Y,X`` or ``Y,X``, positive finite numbers (the voxel size, e.g. ``2,0.5,0.5``)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) not in (2, 3) or not all(np.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be Z,Y,X or Y,X: two or three positive numbers separated by commas, e.g. 2,0.5,0.5; got {text!r}")
    return values


_MODEL_HELP = "a bundled model name (nuclei, cells) or a saved model (.safetensors file or folder); default: nuclei"
_SCALE_HELP = (
    "voxel size, e.g. 2,0.5,0.5 (Z,Y,X; Y,X for 2D images; any unit, only the ratios matter). "
    "Default: the file's (OME-XML PhysicalSize, ImageJ spacing and resolution), else 1,1,1"
)


def _whole_number(low: int):
    """An argparse type: an integer >= ``low``, with a message saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


_DEVICES = ["auto", "cpu", "cuda", "mps"]


def _add_model_options(parser, model_help: str, axes_help: str) -> None:
    """``--model``, ``--axes`` and ``--device``, shared by the commands."""
    parser.add_argument("--model", help=model_help)
    parser.add_argument("--axes", help=axes_help)
    parser.add_argument("--device", default="auto", choices=_DEVICES, help="default: auto (CUDA, then MPS, then CPU)")
    parser.add_argument(
        "--series",
        type=_whole_number(0),
        metavar="N",
        help="which series of a multi-series TIFF to read (0-based); without it such a file is refused and its series listed. "
        "Single-series files are read as they are",
    )


def _command(sub, func, summary: str, description: str) -> argparse.ArgumentParser:
    """The sub-command named after ``func`` (``cmd_NAME``), which runs it."""
    command = sub.add_parser(func.__name__.removeprefix("cmd_"), help=summary, description=description)
    command.set_defaults(func=func)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellrefine",
        description="CellRefine: U-Net segmentation of cells/nuclei (cell / boundary / background + instances) and fine-tuning on corrected labels.",
        epilog="Run 'cellrefine segment --help' or 'cellrefine finetune --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('cellrefine').__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seg = _command(
        sub,
        cmd_segment,
        "segment images and write instance labels as TIFF",
        "Segment 2D images or stacks (files, folders or glob patterns) and write uint32 instance labels "
        "(0 = background) as TIFF in the input's axis order, without the channel axis. Before anything is computed, "
        "every input is read-checked and every output checked: an output that would overwrite an input, two inputs "
        "with the same output name (a.tif + a.tiff) and an output that cannot be written are refused. Files are "
        "written to a temporary name and renamed, so an error or Ctrl-C never leaves a half-written file.",
    )
    seg.add_argument("inputs", nargs="*", help="TIFF (or .npy) files, folders of TIFFs, or quoted glob patterns")
    seg.add_argument("-o", "--output", help="output TIFF (one input) or folder; default: NAME_labels.tif beside each input")
    seg.add_argument(
        "--sample",
        action="store_true",
        help="also segment the bundled sample that suits the model: 4 BBBC039 nuclei fields (axes TYX), or with "
        "--model cells a 512x512 phase-contrast crop (Usiigaci, axes YX)",
    )
    _add_model_options(seg, _MODEL_HELP, "axes of the inputs over TZCYX, e.g. YX, YXC, CYX, ZYX, TYX, TZCYX (default: from the file, else inferred)")
    seg.add_argument("--semantic", action="store_true", help="also write NAME_classes.tif (0 background, 1 cell, 2 boundary)")
    seg.add_argument("--tile-size", type=_whole_number(1), default=None, help="tile core size in pixels (default by device)")
    seg.add_argument(
        "--foreground-threshold", type=float, help="cell+boundary probability for foreground (default: the model's, 0.8 for the bundled one)"
    )
    seg.add_argument("--seed-threshold", type=float, help="cell probability for watershed seeds (default: the model's, 0.7 for the bundled one)")
    seg.add_argument(
        "--boundary-weight",
        type=float,
        help="share of the boundary probability that counts towards the foreground, 0-1 (default: the model's; 1 = cell + boundary)",
    )
    seg.add_argument("--min-size", type=int, help="smallest object kept, in pixels (default: the model's, 15)")
    seg.add_argument("--stitch-threshold", type=float, help="IoU linking objects across Z planes (default: the model's, 0.25)")
    seg.add_argument("--scale", type=_voxel_size, metavar="Z,Y,X", help=_SCALE_HELP)
    seg.add_argument(
        "--stack-mode",
        choices=["auto", "3d", "stitch"],
        default="auto",
        help="Z stacks: 3d = XY, XZ and YZ views fused (Z resampled to isotropic by the voxel size, --scale) and a 3D watershed; stitch = "
        "plane by plane, objects linked across Z by IoU (--stitch-threshold); auto (default) = 3d for stacks of several planes (the "
        "measured better choice, see the user guide), else stitch. 2D images ignore it",
    )
    add_distributed_options(seg)

    ft = _command(
        sub,
        cmd_finetune,
        "fine-tune a model on corrected labels and save it",
        "Fine-tune the bundled (or --model) network on images and their corrected instance labels; "
        "optional masks mark the reviewed pixels (others are ignored). Label and mask files are paired with the images "
        "by name: equal names once the suffix (.tif, .tiff, .ome.tif, .npy) and one ending _labels, _label, _lbl, _masks, "
        "_mask, _gt, _seg, _instances, _image, _img or _raw (also with - or .; any case) are removed, e.g. img01.tif <- "
        "img01_labels.tif; failing that, by what differs once the prefix and suffix shared by all names of a group are "
        "removed (img_01.tif <- lab_01.tif). Files that do not match are listed and nothing is done; --pair order pairs "
        "them in the order given instead. The pairs are printed before training.",
    )
    ft.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    ft.add_argument("--labels", nargs="+", required=True, help="label images (instance ids), one per image, paired by name")
    ft.add_argument("--masks", nargs="+", help="reviewed-pixel masks (non-zero = reviewed), one per image, paired by name")
    ft.add_argument("--pair", choices=["name", "order"], default="name", help="pair images with labels/masks by name (default) or in the order given")
    ft.add_argument("-o", "--output", required=True, help="output model: a folder, or a file ending in .safetensors")
    _add_model_options(ft, "starting model: " + _MODEL_HELP, "axes of the images (default: from the file, else inferred)")
    ft.add_argument("--scale", type=_voxel_size, metavar="Z,Y,X", help=_SCALE_HELP)
    ft.add_argument("--kind", default="instances", choices=["instances", "semantic"], help="labels are instance ids (default) or classes 0/1/2")
    ft.add_argument("--steps", type=_whole_number(1), default=None, help="optimisation steps (default 150 on every device; more on a GPU is cheap)")
    ft.add_argument("--seed", type=int, default=0)
    from .cli_export import add_export_command

    add_export_command(sub)  # cellrefine export: a bioimage.io package (cli_export.py)
    return parser


def _say(line: str) -> None:
    """Print one line on stderr, above a progress bar if one is shown."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, file=sys.stderr, flush=True)
    else:
        tqdm.write(line, file=sys.stderr)


_INTERRUPTED = {
    "segment": "interrupted (Ctrl-C); the files reported as written are complete, nothing half-written was left.",
    "finetune": "interrupted (Ctrl-C); no model was saved.",
    "export": "interrupted (Ctrl-C); no package was written (a previous file of that name is unchanged).",
}


def _one_line(error: BaseException) -> str:
    """An error as one line: an OSError as 'PATH: reason' unless it already is a clear line (cellrefine.files)."""
    if isinstance(error, OSError) and getattr(error, "written_path", None) is None and error.strerror:
        names = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
        text = f"{names}: {error.strerror}" if names else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def main(argv=None) -> int:
    """Entry point of the ``cellrefine`` command.

    Returns 0 on success, 1 after an error (one line on stderr; ``--verbose``
    re-raises it with its traceback), 2 for a usage error and 130 after Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .model.io import ModelFileError
    from .normalize import BlankImageWarning

    def show(message, category, filename, lineno, file=None, line=None):
        _say(f"cellrefine {args.command}: warning: {' '.join(str(message).split())}")

    try:
        with warnings.catch_warnings():  # warnings as one line each, restored afterwards
            warnings.simplefilter("always", BlankImageWarning)  # once per image, not once per run
            warnings.showwarning = show
            return args.func(args)
    except KeyboardInterrupt:
        print(f"cellrefine {args.command}: {_INTERRUPTED[args.command]}", file=sys.stderr, flush=True)
        return 130
    except (CLIError, ValueError, TypeError, OSError, ModelFileError) as error:
        if args.verbose:
            raise
        print(f"cellrefine {args.command}: error: {_one_line(error)}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
