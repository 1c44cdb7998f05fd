"""Checking the user's images, labels and reviewed masks, and cutting them into training planes.

What :func:`collect_planes` accepts (and so :func:`~cellrefine.training.finetune`):

* instance labels: non-negative integers of any size, 0 = background. Each
  plane's ids are relabelled 1..n before anything else sees them, so hashed
  ids (2**31 - 1) cost what small ids do;
* a bool array as instance labels is a foreground mask: each connected region
  of each plane (8-connected) becomes one object, with a :class:`LabelsWarning`
  (touching cells become one object; pass one id per cell to keep them apart);
* instance labels that look like a class map (only 0, 1, 2, with 1 or 2 in
  many separate regions, as ``Segmentation.semantic``) warn with a
  :class:`LabelsWarning` that points to ``kind="semantic"``;
* class maps (``kind="semantic"``): 0, 1, 2, or bool (True = cell);
* reviewed masks: bool, or integers 0/1, with the labels' shape; anything
  else (a string, floats, other values) is refused.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import ndimage as ndi

from .orientations import check_slice_axes, cut_plane, resolve_slice_axes, training_positions, z_factor

__all__ = ["Plane", "collect_planes", "reviewed_mask_from_labelled_planes", "KINDS", "LabelsWarning", "looks_like_class_map"]

KINDS = ("instances", "semantic")


class LabelsWarning(UserWarning):
    """Training labels were read in a way the user may not mean (a bool mask split into regions, a class map as instances)."""


@dataclasses.dataclass
class Plane:
    """One reviewed 2D plane of the training data.

    Attributes
    ----------
    image : (C, Y, X) float32
        Normalised as for segmentation (:class:`cellrefine.reader.PlaneReader`).
    labels : (Y, X) int
        Instance ids 1..n (0 = background; uint32 from :func:`collect_planes`),
        or classes 0/1/2 for ``kind="semantic"``.
    mask : (Y, X) bool or None
        Reviewed pixels; None means every pixel.
    source : (int, int, int)
        (index of the image, t, position) the plane comes from; the position
        is along ``orientation``: z for an XY plane, y for an XZ plane, x for
        a YZ plane.
    orientation : {"Z", "Y", "X"}
        The axis the plane was cut along (see
        :mod:`~cellrefine.training.orientations`): ``"Z"`` an XY plane (rows
        Y, columns X); ``"Y"`` an XZ plane and ``"X"`` a YZ plane, whose rows
        are Z resampled to the in-plane spacing (columns X, resp. Y).
    """

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
    source: tuple = (0, 0, 0)
    orientation: str = "Z"

    @property
    def shape(self) -> tuple:
        return tuple(self.labels.shape)

    @property
    def reviewed_pixels(self) -> int:
        return int(self.labels.size if self.mask is None else np.count_nonzero(self.mask))

    def reviewed_mask(self) -> np.ndarray:
        """The reviewed pixels as a (Y, X) bool array (all True when ``mask`` is None)."""
        return np.ones(self.shape, bool) if self.mask is None else self.mask


def _as_list(value, name: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray) or hasattr(value, "__array__") and not isinstance(value, (list, tuple)):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays (or one array), got {type(value).__name__}.")
    return list(value)


def _tzyx(array: np.ndarray, image_axes: str) -> np.ndarray:
    """View a label/mask array (the image's axes without C) as (T, Z, Y, X)."""
    from ..axes import to_tzcyx

    return to_tzcyx(array, image_axes.replace("C", ""))[:, :, 0]


def looks_like_class_map(labels: np.ndarray, min_regions: int = 3) -> bool:
    """Whether instance ``labels`` look like a class map: only the values 0, 1, 2, with 1 or 2 in ``min_regions`` or more separate regions.

    In instance labels each object has its own id, so an id in many separate
    (8-connected) regions is unusual; in a class map (e.g.
    ``Segmentation.semantic``: 0 background, 1 cell, 2 boundary) every cell is
    one more region of 1.

    Examples
    --------
    >>> semantic = np.zeros((9, 9), np.uint8); semantic[1:3, 1:3] = semantic[5:7, 1:3] = semantic[1:3, 5:7] = 1
    >>> looks_like_class_map(semantic), looks_like_class_map(semantic * 7)
    (True, False)
    """
    labels = np.asarray(labels)
    if labels.size == 0 or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 2:
        return False
    structure = np.ones((3,) * labels.ndim, bool)
    return any(ndi.label(labels == value, structure)[1] >= min_regions for value in (1, 2))


def _checked_labels(label: np.ndarray, index: int, kind: str) -> np.ndarray:
    """The dtype and value checks of ``labels[index]``; a bool class map becomes uint8 (True = cell)."""
    if label.dtype.kind not in "iub":
        raise TypeError(f"labels[{index}] must be integers (instance ids or classes 0/1/2), got dtype {label.dtype}; e.g. labels.astype(np.uint32).")
    if kind == "semantic":
        if label.dtype.kind == "b":
            return label.astype(np.uint8)
        if label.size and (label.min() < 0 or label.max() > 2):
            raise ValueError(
                f"labels[{index}] with kind='semantic' must hold classes 0 (background), 1 (cell), 2 (boundary); got values {label.min()}..{label.max()}."
            )
        return label
    if label.dtype.kind == "b":
        warnings.warn(
            f"labels[{index}] is a bool array: with kind='instances' it is read as a foreground mask, and each connected region of each "
            "plane (8-connected) becomes one object, so touching cells become one object. Pass integer labels with one id per cell to "
            "keep them apart, or kind='semantic' for a class map.",
            LabelsWarning,
            stacklevel=3,
        )
        return label
    if label.size and label.min() < 0:
        raise ValueError(f"labels[{index}] holds negative ids; instance labels are 0 (background) and positive object ids.")
    if looks_like_class_map(label):
        warnings.warn(
            f"labels[{index}] holds only the values 0, 1, 2, with the same value in many separate regions: it looks like a class map "
            "(e.g. Segmentation.semantic: 0 background, 1 cell, 2 boundary), not instance labels (one id per object). Pass "
            "kind='semantic' if it is a class map, or the instance labels (e.g. Segmentation.instances).",
            LabelsWarning,
            stacklevel=3,
        )
    return label


def _checked_mask(mask, index: int, expected: tuple) -> np.ndarray:
    """``masks[index]`` as a bool array, or a clear error: masks are bool or 0/1 integers of the labels' shape."""
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biu":
        shown = repr(mask.item()) if mask.ndim == 0 else f"an array of dtype {mask.dtype}"
        raise TypeError(
            f"masks[{index}] must be a bool array (True = reviewed) or integers 0/1 with the labels' shape, got {shown}; "
            "e.g. pass labels > 0, or None to count every pixel as reviewed."
        )
    if mask.shape != expected:
        raise ValueError(f"masks[{index}] has shape {mask.shape} but must match labels[{index}] {expected}.")
    if mask.dtype.kind in "iu" and mask.size and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(
            f"masks[{index}] holds values {mask.min()}..{mask.max()}; a reviewed mask holds 0 (not reviewed) and 1 (reviewed) only, "
            "or True/False. For a labels image, pass labels > 0."
        )
    return mask.astype(bool, copy=False)


def _instance_plane(labels: np.ndarray) -> np.ndarray:
    """One plane of instance labels with ids 1..n (uint32); a bool plane's connected regions become the objects."""
    from ..postprocess import relabel_sequential

    if labels.dtype.kind == "b":
        return ndi.label(labels, np.ones((3, 3), bool), output=np.uint32)[0]
    return relabel_sequential(labels)[0]


def _per_image(value, name: str, count: int, is_one) -> list:
    """``value`` for each of ``count`` images: one value for all, or a list/tuple with one per image."""
    if isinstance(value, (list, tuple)) and value and not is_one(value):
        if len(value) != count:
            raise ValueError(f"got {len(value)} {name} entries for {count} image(s); pass one for all images or one per image.")
        return list(value)
    return [value] * count


def _is_one_scale(scale) -> bool:
    """A scale (numbers), not a list of per-image scales (sequences or None)."""
    return not all(entry is None or (hasattr(entry, "__len__") and not isinstance(entry, str)) for entry in scale)


def collect_planes(
    images, labels, masks=None, axes=None, kind: str = "instances", model=None, *, scale=None, slice_axes: str = "auto"
) -> list[Plane]:
    """Validate the training inputs and return their training planes.

    Planes that are not training planes are skipped without being read or
    normalised (an XZ/YZ plane needs every Z plane of its time point read).
    In a stack, a plane in any orientation is a training plane only if its
    reviewed pixels hold a 2 x 2 square (see
    :mod:`~cellrefine.training.orientations`); in a 2D image any reviewed
    pixel makes its plane a training plane.

    Parameters
    ----------
    images : array or list of arrays
        2D images or stacks (numpy, dask, zarr).
    labels : array or list of int arrays
        One per image, with the image's shape without its channel axis (see
        the module docstring for bool labels and class maps). Instance ids are
        relabelled 1..n per plane in the returned planes.
    masks : array or list of bool arrays (or None entries), optional
        Reviewed pixels per image (bool, or integers 0/1); None = every pixel.
    axes : str or list of str, optional
        Axes of each image (inferred when None).
    kind : {"instances", "semantic"}
    model : Model, optional
        Gives the normalisation and input channels (see :class:`cellrefine.reader.PlaneReader`).
    scale : sequence of numbers, or list of them (one per image), optional
        Voxel size, as a napari layer's ``scale`` (see :func:`cellrefine.axes.check_scale`);
        XZ/YZ planes are resampled along Z by ``scale_z / scale_x`` (XZ) or
        ``scale_z / scale_y`` (YZ). None: isotropic.
    slice_axes : str
        The axes training planes are cut along: ``"Z"`` XY planes, ``"Y"`` XZ
        planes, ``"X"`` YZ planes, or a combination such as ``"ZYX"``;
        ``"auto"`` = ``"ZYX"`` for images with a Z axis of 2 planes or more and a mask, else ``"Z"``
        (see :func:`~cellrefine.training.orientations.resolve_slice_axes`).

    Returns
    -------
    list of Plane
        Per image and time point: the XY planes (by z), then the XZ planes (by y), then the YZ planes (by x).

    Raises
    ------
    TypeError, ValueError
        Mismatched lengths, shapes or dtypes, classes outside 0..2, masks
        that are not bool or 0/1, a bad ``scale`` or ``slice_axes`` (Y/X for
        an image without a Z axis), or nothing to learn from (no reviewed
        pixel, reviewed pixels that form no training plane, or no object and
        no mask).

    Warns
    -----
    LabelsWarning
        Bool instance labels (split into connected regions), or instance
        labels that look like a class map (:func:`looks_like_class_map`).
    """
    from ..axes import check_axes, check_scale, spatial_shape
    from ..reader import PlaneReader, check_image

    images = _as_list(images, "images")
    labels = _as_list(labels, "labels")
    masks = _as_list(masks, "masks")
    if not images:
        raise ValueError("images is empty; pass at least one image with its corrected labels.")
    if len(labels) != len(images):
        raise ValueError(f"got {len(images)} image(s) but {len(labels)} label image(s); pass one label image per image.")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"got {len(images)} image(s) but {len(masks)} mask(s); pass one mask per image, or masks=None.")
    axes_list = axes if isinstance(axes, (list, tuple)) else [axes] * len(images)
    if len(axes_list) != len(images):
        raise ValueError(f"got {len(axes_list)} axes strings for {len(images)} images.")
    if kind not in KINDS:
        raise ValueError(f"kind must be 'instances' or 'semantic', got {kind!r}.")
    slice_axes = check_slice_axes(slice_axes)
    scales = _per_image(scale, "scale", len(images), _is_one_scale)
    planes, reviewed_anywhere = [], False
    for index, image in enumerate(images):
        image = check_image(image)
        image_axes = check_axes(image.shape, axes_list[index])
        image_scale = check_scale(scales[index], image_axes)
        expected = spatial_shape(image.shape, image_axes)
        label = np.asarray(labels[index])
        if label.shape != expected:
            raise ValueError(
                f"labels[{index}] has shape {label.shape} but image {index} (axes {image_axes!r}) needs {expected}: one label per pixel, no channel axis."
            )
        label = _checked_labels(label, index, kind)
        mask = None
        if masks is not None and masks[index] is not None:
            mask = _checked_mask(masks[index], index, expected)
            reviewed_anywhere = reviewed_anywhere or bool(mask.any())
        reader = PlaneReader(image, image_axes, model)
        image_slice_axes = resolve_slice_axes(slice_axes, image_axes, reader.shape[1], index, has_mask=mask is not None)
        label_view = _tzyx(label, image_axes)
        mask_view = None if mask is None else _tzyx(mask, image_axes)
        for t in range(reader.shape[0]):
            planes.extend(
                _time_point_planes(
                    reader, label_view[t], None if mask_view is None else mask_view[t], kind, image_slice_axes, image_scale, (index, t)
                )
            )
    if not planes:
        if reviewed_anywhere:
            raise ValueError(
                "the reviewed pixels form no training plane: in a stack, a plane (XY, XZ or YZ) is trained on only where its reviewed "
                f"pixels hold a 2 x 2 square, and slice_axes {slice_axes!r} chooses the orientations. A correction painted "
                "in an XZ (YZ) view needs slice_axes with 'Y' ('X'), e.g. 'ZYX' (or 'auto'); mark a larger region as reviewed otherwise."
            )
        raise ValueError("no pixel is marked as reviewed in any mask: nothing to learn from. Paint corrections or mark a region as reviewed first.")
    if all(plane.mask is None for plane in planes) and not any(plane.labels.any() for plane in planes):
        raise ValueError(
            "the labels contain no objects and no mask marks reviewed background: nothing to learn from. Paint some objects, or pass masks for reviewed background."
        )
    return planes


def _time_point_planes(reader, label_volume, mask_volume, kind: str, slice_axes: str, scale: tuple, where: tuple) -> list[Plane]:
    """The training planes of one (Z, Y, X) time point: XY planes by z, then XZ by y, then YZ by x."""
    index, t = where
    mask_volume = None if mask_volume is None else np.asarray(mask_volume)
    positions = training_positions(mask_volume, reader.shape[1:], slice_axes)
    cut = {letter: positions[letter] for letter in "YX" if positions[letter].size}
    if not positions["Z"].any() and not cut:
        return []

    def labels_of(plane):
        return _instance_plane(plane) if kind == "instances" else plane

    planes, image_parts = [], {letter: [] for letter in cut}
    for z in range(reader.shape[1]):
        if not (positions["Z"][z] or cut):
            continue
        image_plane = reader.plane(t, z)
        if positions["Z"][z]:
            mask_plane = None if mask_volume is None else np.array(mask_volume[z])
            planes.append(Plane(image_plane, labels_of(np.array(label_volume[z])), mask_plane, (index, t, z)))
        for letter, kept in cut.items():  # the rows (y) or columns (x) of the XZ/YZ planes
            image_parts[letter].append(image_plane[:, kept, :] if letter == "Y" else image_plane[:, :, kept])
    for letter, kept in cut.items():
        factor = z_factor(scale, letter)
        image_part = np.stack(image_parts.pop(letter))  # (Z, C, n, X) or (Z, C, Y, n)
        sub = (slice(None), kept) if letter == "Y" else (slice(None), slice(None), kept)
        label_part = np.asarray(label_volume[sub])
        mask_part = None if mask_volume is None else mask_volume[sub]
        for i, position in enumerate(kept.tolist()):
            image_plane = cut_plane(image_part, letter, i, factor, order=1)
            label_plane = labels_of(cut_plane(label_part, letter, i, factor, order=0))
            mask_plane = None if mask_part is None else cut_plane(mask_part, letter, i, factor, order=0)
            planes.append(Plane(image_plane, label_plane, mask_plane, (index, t, position), letter))
    return planes


def reviewed_mask_from_labelled_planes(labels, axes: str | None) -> np.ndarray:
    """The reviewed mask of labels drawn without a record of what was reviewed: every plane holding a label.

    Use it for a labels layer painted from scratch (not a CellRefine result):
    each (t, z) plane with at least one non-zero label counts as fully
    reviewed, planes without any label are left out of training.

    Parameters
    ----------
    labels : array
        Labels with the image's axes without C (e.g. (T, Z, Y, X) or (Y, X)).
    axes : str or None
        Axes of ``labels`` (a ``"C"`` in it, as in the image's axes, is
        ignored); None infers them (see :mod:`cellrefine.axes`).

    Returns
    -------
    mask : bool array of ``labels.shape``
        All False when no plane holds a label.

    Examples
    --------
    >>> labels = np.zeros((3, 4, 4), int); labels[1, 0, 0] = 5
    >>> reviewed_mask_from_labelled_planes(labels, "ZYX").any(axis=(1, 2)).tolist()
    [False, True, False]
    """
    from ..axes import check_axes, from_tzyx

    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels must be integers (0 = unlabelled), got dtype {labels.dtype}; e.g. labels.astype(np.uint32).")
    label_axes = check_axes(labels.shape, axes.upper().replace("C", "") if isinstance(axes, str) else axes)
    view = _tzyx(labels, label_axes)
    planes = view.any(axis=(2, 3))
    mask = np.broadcast_to(planes[:, :, None, None], view.shape)
    return from_tzyx(mask, label_axes).astype(bool, copy=False)
