"""Checking the user's images, labels and reviewed masks, and cutting them into training planes."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Plane", "collect_planes", "reviewed_mask_from_labelled_planes", "KINDS"]

KINDS = ("instances", "semantic")


@dataclasses.dataclass
class Plane:
    """One reviewed 2D plane of the training data.

    Attributes
    ----------
    image : (C, Y, X) float32
        Normalised as for segmentation (:class:`cellrefine.reader.PlaneReader`).
    labels : (Y, X) int
        Instance ids (0 = background), or classes 0/1/2 for ``kind="semantic"``.
    mask : (Y, X) bool or None
        Reviewed pixels; None means every pixel.
    source : (int, int, int)
        (index of the image, t, z) the plane comes from.
    """

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
    source: tuple = (0, 0, 0)

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


def collect_planes(images, labels, masks=None, axes=None, kind: str = "instances", model=None) -> list[Plane]:
    """Validate the training inputs and return their reviewed planes.

    Planes whose mask has no reviewed pixel are skipped without being read
    or normalised.

    Parameters
    ----------
    images : array or list of arrays
        2D images or stacks (numpy, dask, zarr).
    labels : array or list of int arrays
        One per image, with the image's shape without its channel axis.
    masks : array or list of bool arrays (or None entries), optional
        Reviewed pixels per image; None = every pixel.
    axes : str or list of str, optional
        Axes of each image (inferred when None).
    kind : {"instances", "semantic"}
    model : Model, optional
        Gives the normalisation and input channels (see :class:`cellrefine.reader.PlaneReader`).

    Returns
    -------
    list of Plane

    Raises
    ------
    TypeError, ValueError
        Mismatched lengths, shapes or dtypes, classes outside 0..2, or nothing
        to learn from (no reviewed pixel, or no object and no mask).
    """
    from ..axes import check_axes, spatial_shape
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
    planes = []
    for index, image in enumerate(images):
        image = check_image(image)
        image_axes = check_axes(image.shape, axes_list[index])
        expected = spatial_shape(image.shape, image_axes)
        label = np.asarray(labels[index])
        if label.shape != expected:
            raise ValueError(
                f"labels[{index}] has shape {label.shape} but image {index} (axes {image_axes!r}) needs {expected}: one label per pixel, no channel axis."
            )
        if label.dtype.kind not in "iub":
            raise TypeError(f"labels[{index}] must be integers (instance ids or classes 0/1/2), got dtype {label.dtype}.")
        if kind == "semantic" and label.size and (label.min() < 0 or label.max() > 2):
            raise ValueError(
                f"labels[{index}] with kind='semantic' must hold classes 0 (background), 1 (cell), 2 (boundary); got values {label.min()}..{label.max()}."
            )
        if kind == "instances" and label.size and label.min() < 0:
            raise ValueError(f"labels[{index}] holds negative ids; instance labels are 0 (background) and positive object ids.")
        mask = None
        if masks is not None and masks[index] is not None:
            mask = np.asarray(masks[index])
            if mask.shape != expected:
                raise ValueError(f"masks[{index}] has shape {mask.shape} but must match labels[{index}] {expected}.")
            mask = mask.astype(bool, copy=False)
        reader = PlaneReader(image, image_axes, model)
        label_view = _tzyx(label, image_axes)
        mask_view = None if mask is None else _tzyx(mask, image_axes)
        n_t, n_z = reader.shape[:2]
        for t in range(n_t):
            for z in range(n_z):
                mask_plane = None if mask_view is None else np.array(mask_view[t, z])
                if mask_plane is not None and not mask_plane.any():
                    continue
                planes.append(Plane(reader.plane(t, z), np.array(label_view[t, z]), mask_plane, (index, t, z)))
    if not planes:
        raise ValueError("no pixel is marked as reviewed in any mask: nothing to learn from. Paint corrections or mark a region as reviewed first.")
    if all(plane.mask is None for plane in planes) and not any(plane.labels.any() for plane in planes):
        raise ValueError(
            "the labels contain no objects and no mask marks reviewed background: nothing to learn from. Paint some objects, or pass masks for reviewed background."
        )
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
    label_axes = check_axes(labels.shape, axes.upper().replace("C", "") if isinstance(axes, str) else axes)
    view = _tzyx(labels, label_axes)
    planes = view.any(axis=(2, 3))
    mask = np.broadcast_to(planes[:, :, None, None], view.shape)
    return from_tzyx(mask, label_axes).astype(bool, copy=False)
