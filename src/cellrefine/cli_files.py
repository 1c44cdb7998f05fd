"""The command line's files: finding inputs, reading them, planning and checking outputs, pairing training files.

Rules (also in ``cellrefine segment --help`` / ``cellrefine finetune --help``
and docs/user-guide.md):

- Inputs are files, folders (their ``.tif``/``.tiff`` files, sorted) or
  quoted glob patterns; a file named twice is used once.
- A multi-series TIFF is refused unless ``--series N`` says which series to
  read (0-based; the message lists the series, their shapes and axes).
  ``--series`` applies to multi-series files only; single-series files are
  read as they are.
- Outputs are planned and checked *before* anything is computed: an output
  that would overwrite an input, two inputs that would write the same output
  (``a.tif`` + ``a.tiff``, ``a.tif`` + ``a.ome.tif``), and an output location
  that cannot be written (a folder where the file goes, a parent that is a
  file, a folder without write permission) are refused with one line.
- Fine-tuning pairs images with label (and mask) files by *name*
  (:func:`pair_by_name`), never by position in a sorted list.
- The voxel size of a TIFF (:attr:`ImageFile.scale`) comes from its OME-XML
  (``PhysicalSizeZ/Y/X``; different units converted to µm), else its ImageJ
  metadata (``spacing`` for Z; 1 / X/YResolution, pixels per ``unit``, for X
  and Y). Plain TIFF resolution tags are not used (often a 72 dpi
  placeholder); a stack gets a voxel size only when its Z spacing is recorded.
  Metadata that is there but malformed gives a warning for a stack (one line
  on the command line), not an error: the stack is then taken as isotropic.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import warnings
from pathlib import Path

import numpy as np

__all__ = [
    "CLIError",
    "IMAGE_SUFFIXES",
    "NAME_ENDINGS",
    "ImageFile",
    "expand_inputs",
    "image_stem",
    "open_image",
    "plan_segment_outputs",
    "check_segment_outputs",
    "name_key",
    "pair_by_name",
]

_TIFF_SUFFIXES = (".tif", ".tiff")
#: File suffixes removed to get a name's stem, longest first.
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy")
#: Endings removed (one, case-insensitively, after ``_``, ``-``, ``.`` or a space) before names are compared for pairing.
NAME_ENDINGS = ("labels", "label", "lbl", "masks", "mask", "gt", "seg", "instances", "image", "img", "raw")
_TIFFFILE_TO_CELLREFINE = {"T": "T", "Z": "Z", "C": "C", "S": "C", "Y": "Y", "X": "X"}
_ENDING = re.compile(r"[_\-. ](" + "|".join(NAME_ENDINGS) + r")$", re.IGNORECASE)


class CLIError(Exception):
    """A user error on the command line (printed as one line, without a traceback)."""


def _same_file_key(path: Path) -> str:
    """A key equal for two spellings of one path (relative/absolute, symlinks, case on case-insensitive systems)."""
    return os.path.normcase(str(Path(path).expanduser().resolve()))


def expand_inputs(specs) -> list[Path]:
    """Files from paths, folders (their .tif/.tiff files) and glob patterns, in order, each once."""
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in _TIFF_SUFFIXES and p.is_file())
            if not found:
                raise CLIError(f"folder {path} contains no .tif/.tiff files.")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif any(ch in str(spec) for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(spec)) if Path(p).is_file())
            if not found:
                raise CLIError(f"pattern {spec!r} matches no file.")
            paths.extend(found)
        else:
            raise CLIError(f"input {spec} does not exist.")
    unique, seen = [], set()
    for path in paths:
        key = _same_file_key(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def image_stem(path: Path) -> str:
    """File name without its image suffix (``a.1.ome.tif`` → ``a.1``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _os_reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


@dataclasses.dataclass
class ImageFile:
    """An input file checked without reading its pixels: which series to read, its shape and its axes.

    ``scale``: the voxel size the file records, one number per spatial axis of
    ``axes`` ((z, y, x) or (y, x)), or None; ``unit``: its unit when known (``"µm"``).
    """

    path: Path
    series: int | None
    shape: tuple
    axes: str
    scale: tuple[float, ...] | None = None
    unit: str | None = None

    def read(self) -> np.ndarray:
        """The pixels, as checked by :func:`open_image`."""
        import tifffile

        try:
            if self.series is None:
                return np.load(self.path, allow_pickle=False)
            with tifffile.TiffFile(self.path) as tif:
                return tif.series[self.series].asarray()
        except OSError as error:
            raise CLIError(f"cannot read {self.path}: {_os_reason(error)}.") from None
        except (tifffile.TiffFileError, ValueError) as error:
            raise CLIError(f"cannot read {self.path}: {error}") from None


def _describe_series(series_list) -> str:
    return "; ".join(f"series {k}: shape {tuple(s.shape)}, axes {s.axes}" for k, s in enumerate(series_list))


def open_image(path: Path, axes: str | None = None, series: int | None = None) -> ImageFile:
    """Check an input file (format, series, axes) without reading its pixels.

    Axes: ``axes`` if given, else the TIFF's own axes when they use T/Z/C/Y/X
    (and are not just YX), else inferred (:mod:`cellrefine.axes`).

    Raises
    ------
    CLIError
        Unreadable file, a multi-series TIFF without ``series`` (the message
        lists the series), a ``series`` the file does not have, axes not
        matching the shape.
    """
    import tifffile

    from .axes import check_axes

    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
        except OSError as error:
            raise CLIError(f"cannot read {path}: {_os_reason(error)}.") from None
        except ValueError as error:
            raise CLIError(f"cannot read {path} as a .npy array: {error}") from None
        return ImageFile(path, None, tuple(array.shape), _checked_axes(check_axes, path, array.shape, axes))
    try:
        with tifffile.TiffFile(path) as tif:
            series_list = list(tif.series)
            if not series_list:
                raise CLIError(f"cannot read {path} as a TIFF: it holds no image.")
            if len(series_list) == 1:
                index = 0
            elif series is None:
                raise CLIError(
                    f"{path} holds {len(series_list)} image series ({_describe_series(series_list)}); "
                    "choose one with --series N (0-based), e.g. --series 0."
                )
            elif not 0 <= series < len(series_list):
                raise CLIError(f"{path} has no series {series}: it holds series 0 to {len(series_list) - 1} ({_describe_series(series_list)}).")
            else:
                index = series
            chosen = series_list[index]
            shape = tuple(int(n) for n in chosen.shape)
            file_axes = "".join(_TIFFFILE_TO_CELLREFINE.get(a, "?") for a in chosen.axes)
            sizes, unit, problem = _read_voxel_size(tif, index)
    except OSError as error:
        raise CLIError(f"cannot read {path}: {_os_reason(error)}.") from None
    except (tifffile.TiffFileError, ValueError) as error:
        raise CLIError(f"cannot read {path} as a TIFF: {error}") from None
    if axes is None and "?" not in file_axes and len(file_axes) == len(shape) and len(set(file_axes)) == len(file_axes) and len(shape) > 2:
        axes = file_axes
    axes = _checked_axes(check_axes, path, shape, axes)
    scale = _scale_for_axes(sizes, axes)
    if problem and "Z" in axes:  # only a stack's voxel size matters (3D mode)
        warnings.warn(
            f"{path.name}: the voxel size in its TIFF metadata cannot be read ({problem}); the stack is taken as isotropic "
            "unless you give --scale Z,Y,X.",
            stacklevel=2,
        )
    return ImageFile(path, index, shape, axes, scale, unit if scale is not None else None)


#: Length units in micrometres, to compare OME-XML sizes given in different units.
_MICROMETRES = {"Å": 1e-4, "pm": 1e-6, "nm": 1e-3, "µm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
#: The length units CellRefine writes into OME-XML (all valid OME ``UnitsLength`` values).
LENGTH_UNITS = frozenset(_MICROMETRES)
_MICRO_SPELLINGS = {"um", "micron", "microns", "micrometer", "micrometre", "\\u00b5m", "μm", "µm"}


def _unit(text) -> str | None:
    """A length unit spelled one way (``micron``, ``um``, ``\\u00B5m`` → ``µm``); None for none (``pixel``)."""
    unit = str(text or "").strip()
    if unit.lower() in _MICRO_SPELLINGS:
        return "µm"
    return None if unit.lower() in {"", "pixel", "pixels", "px"} else unit


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _ome_voxel_size(xml: str, index: int, n_series: int) -> tuple[dict, str | None]:
    """Sizes (one unit) from the ``Pixels`` of OME image ``index``; none when the series cannot be matched to an image."""
    import xml.etree.ElementTree as ElementTree

    images = ElementTree.fromstring(xml).findall("{*}Image")
    pixels = images[index if len(images) > 1 else 0].find("{*}Pixels") if len(images) in (1, n_series) else None
    if pixels is None:
        return {}, None
    sizes = {a: (_positive(pixels.get(f"PhysicalSize{a}")), _unit(pixels.get(f"PhysicalSize{a}Unit", "µm"))) for a in "ZYX"}  # µm: OME's default
    sizes = {a: size for a, size in sizes.items() if size[0] is not None}
    units = {unit for _, unit in sizes.values()}
    if len(units) <= 1:
        return {a: size for a, (size, _) in sizes.items()}, next(iter(units), None)
    if not units <= set(_MICROMETRES):
        return {}, None  # different units that cannot be compared
    return {a: size * _MICROMETRES[unit] for a, (size, unit) in sizes.items()}, "µm"


def _imagej_voxel_size(metadata: dict, page) -> tuple[dict, str | None]:
    """Sizes from ImageJ metadata: Z = ``spacing``, X and Y = 1 / the resolution tags (pixels per ``unit``)."""
    unit, spacing = _unit(metadata.get("unit")), _positive(metadata.get("spacing"))
    sizes = {a: 1.0 / (_positive(n) or 1.0) for a, n in zip("XY", getattr(page, "resolution", None) or (1.0, 1.0))}
    if spacing is not None:
        sizes["Z"] = spacing
    return ({}, None) if unit is None and spacing is None and sizes["X"] == sizes["Y"] == 1.0 else (sizes, unit)  # uncalibrated: none


def _read_voxel_size(tif, index: int) -> tuple[dict, str | None, str | None]:
    """``({"Z": z, "Y": y, "X": x}, unit, problem)`` of series ``index`` (see the module docstring).

    Sizes are missing when not recorded; ``problem`` says why metadata that is there could not be
    read (malformed OME-XML or ImageJ values), None otherwise.
    """
    try:
        if tif.is_ome and tif.ome_metadata:
            sizes, unit = _ome_voxel_size(tif.ome_metadata, index, len(tif.series))
            if sizes:
                return sizes, unit, None
        if tif.is_imagej and tif.imagej_metadata is not None:
            return (*_imagej_voxel_size(tif.imagej_metadata, tif.series[index].keyframe), None)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, SyntaxError) as error:  # ElementTree.ParseError is a SyntaxError
        return {}, None, f"{type(error).__name__}: {error}"
    return {}, None, None


def _scale_for_axes(sizes: dict, axes: str) -> tuple[float, ...] | None:
    """``sizes`` as one number per spatial axis of ``axes`` ((z, y, x) or (y, x)); None unless the file gives all of them."""
    spatial = [a for a in "ZYX" if a in axes]
    return tuple(float(sizes[a]) for a in spatial) if all(a in sizes for a in spatial) else None


def _checked_axes(check_axes, path: Path, shape, axes) -> str:
    try:
        return check_axes(shape, axes)
    except (ValueError, TypeError) as error:
        raise CLIError(f"{path.name}: {error}") from None


def plan_segment_outputs(inputs: list[Path], output: str | None, semantic: bool) -> list[tuple[Path, Path | None]]:
    """``(labels path, classes path or None)`` for each input.

    No ``output``: ``NAME_labels.tif`` beside each input. ``output`` ending in
    .tif/.tiff with one input: that file. Otherwise ``output`` is a folder
    holding ``NAME_labels.tif``. The classes file is ``NAME_classes.tif``
    beside the labels (``NAME`` without a ``_labels`` ending).
    """
    if output is None:
        targets = [p.with_name(image_stem(p) + "_labels.tif") for p in inputs]
    else:
        out = Path(output).expanduser()
        if out.suffix.lower() in _TIFF_SUFFIXES:
            if len(inputs) != 1:
                raise CLIError(f"{len(inputs)} inputs need an output folder, not the file {out}.")
            targets = [out]
        else:
            targets = [out / (image_stem(p) + "_labels.tif") for p in inputs]
    classes = [t.with_name(image_stem(t).removesuffix("_labels") + "_classes.tif") if semantic else None for t in targets]
    return list(zip(targets, classes))


def check_segment_outputs(inputs: list[Path], plans: list[tuple[Path, Path | None]]) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other, or that cannot be written.

    Raises
    ------
    CLIError
        An output is one of the inputs, or two inputs map to one output (both named).
    OSError
        An output location cannot be written (:func:`cellrefine.files.check_writable`; one line).
    """
    from .files import check_writable

    input_keys = {_same_file_key(p): p for p in inputs}
    input_inodes = {(s.st_dev, s.st_ino): p for p in inputs for s in [p.stat()]}  # hard links and other spellings
    owners: dict[str, tuple[Path, Path]] = {}
    for source, plan in zip(inputs, plans):
        for target in (t for t in plan if t is not None):
            key = _same_file_key(target)
            overwritten = input_keys.get(key)
            if overwritten is None and target.is_file():
                status = target.stat()
                overwritten = input_inodes.get((status.st_dev, status.st_ino))
            if overwritten is not None:
                raise CLIError(f"the output {target} would overwrite the input image {overwritten}; choose another output file or folder with -o.")
            if key in owners and owners[key][0] != source:
                raise CLIError(
                    f"{owners[key][0]} and {source} would both be written to {target}; rename one of them, or segment them separately with -o."
                )
            owners[key] = (source, target)
    for plan in plans:
        for target in (t for t in plan if t is not None):
            check_writable(target)


def name_key(path: Path) -> str:
    """The name a file is paired by: its stem (:func:`image_stem`) without one of :data:`NAME_ENDINGS`, case-folded.

    ``img01.tif``, ``img01_labels.tif``, ``IMG01-mask.tiff`` and ``img01_gt.ome.tif`` all give ``img01``.
    """
    stem = image_stem(path)
    return _ENDING.sub("", stem).casefold() or stem.casefold()


def _common_affix_keys(paths: list[Path]) -> list[str]:
    """Stems without the prefix and suffix all of them share (``img_01``, ``img_02`` → ``01``, ``02``)."""
    stems = [image_stem(p).casefold() for p in paths]
    prefix = os.path.commonprefix(stems)
    rests = [s[len(prefix) :] for s in stems]
    suffix = os.path.commonprefix([r[::-1] for r in rests])[::-1]
    return [r[: len(r) - len(suffix)] for r in rests]


def _matches(image_keys: list[str], other_keys: list[str]) -> bool:
    unique = len(set(image_keys)) == len(image_keys) and len(set(other_keys)) == len(other_keys)
    return unique and set(image_keys) == set(other_keys)


def pair_by_name(images: list[Path], others: list[Path], what: str = "label file") -> list[Path]:
    """``others`` reordered so that ``others[i]`` belongs to ``images[i]``, matched by name.

    Rule: names are compared by :func:`name_key` (``img01.tif`` ↔
    ``img01_labels.tif``); when that does not match every file one to one and
    each group has several files, by what differs within each group once
    the prefix and suffix shared by all its names are removed (``img_01.tif``
    ↔ ``lab_01.tif``). One image and one ``what`` are paired whatever their names.

    Raises
    ------
    CLIError
        The files cannot be matched one to one; the message lists the
        images without a ``what``, the ``what``s without an image, and names
        that occur twice.
    """
    if len(images) == 1 and len(others) == 1:
        return list(others)
    keys = [name_key(p) for p in images], [name_key(p) for p in others]
    if _matches(*keys):
        return [others[keys[1].index(k)] for k in keys[0]]
    if len(images) > 1 and len(others) > 1:
        affix = _common_affix_keys(images), _common_affix_keys(others)
        if _matches(*affix):
            return [others[affix[1].index(k)] for k in affix[0]]
    problems = []
    if len(images) != len(others):
        problems.append(f"{len(images)} image(s) but {len(others)} {what}(s)")
    for group, group_keys, name in ((images, keys[0], "image"), (others, keys[1], what)):
        repeated = sorted({k for k in group_keys if group_keys.count(k) > 1})
        for key in repeated:
            problems.append(f"{name}s with the same name {key!r}: " + ", ".join(p.name for p, k in zip(group, group_keys) if k == key))
    lonely_images = [p.name for p, k in zip(images, keys[0]) if k not in keys[1]]
    lonely_others = [p.name for p, k in zip(others, keys[1]) if k not in keys[0]]
    if lonely_images:
        problems.append(f"no {what} for: " + ", ".join(lonely_images))
    if lonely_others:
        problems.append("no image for: " + ", ".join(lonely_others))
    raise CLIError(
        "cannot pair images and "
        + what
        + "s by name ("
        + "; ".join(problems)
        + f"). Name each {what} after its image (img01.tif ↔ img01_labels.tif), or pass --pair order to pair them in the order given."
    )
