"""cellrefine.zarr_io: lazy zarr / OME-Zarr reading, OME-Zarr labels writing, read back by zarr and ome-zarr."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from cellrefine import zarr_io  # noqa: E402


def _ome_image(path, data, axes: str, version: str = "0.4", scale=None):
    """An OME-Zarr image written by the ome-zarr package (an independent writer)."""
    ome_writer = pytest.importorskip("ome_zarr.writer")
    from ome_zarr.format import FormatV04, FormatV05

    fmt = FormatV05() if version == "0.5" else FormatV04()
    group = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    pixel_size = None if scale is None else dict(zip(axes.lower(), scale))
    ome_writer.write_image(data, group, axes=axes.lower(), fmt=fmt, scale_factors=(), scale=pixel_size)
    return path


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_array_opens_lazily_without_axes(tmp_path, zarr_format):
    data = np.arange(6 * 40 * 50, dtype=np.uint16).reshape(6, 40, 50)
    array = zarr.create_array(str(tmp_path / "plain.zarr"), shape=data.shape, chunks=(1, 20, 25), dtype=data.dtype, zarr_format=zarr_format)
    array[:] = data
    image = zarr_io.open_zarr(tmp_path / "plain.zarr")
    assert isinstance(image.array, zarr.Array)  # not read: indexing reads what is asked for
    assert image.axes is None and image.zarr_format == zarr_format and image.shape == data.shape
    np.testing.assert_array_equal(image.array[2, 5:9, 7], data[2, 5:9, 7])
    np.testing.assert_array_equal(image.to_dask()[3].compute(), data[3])
    assert zarr_io.is_zarr_path(tmp_path / "plain.zarr") and not zarr_io.is_zarr_path(tmp_path / "x.tif")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_image_axes_and_scale_from_ngff_metadata(tmp_path, version):
    data = np.random.default_rng(0).integers(0, 200, (2, 5, 32, 48), dtype=np.uint8)
    path = _ome_image(tmp_path / "img.ome.zarr", data, "CZYX", version, scale=(1.0, 2.0, 0.5, 0.5))
    image = zarr_io.open_zarr(path)
    assert image.axes == "CZYX"
    assert image.ngff_version == version
    assert image.scale == (1.0, 2.0, 0.5, 0.5)
    assert len(image.levels) == 1 and image.group == ""
    np.testing.assert_array_equal(image.array[1, 3], data[1, 3])


def test_bioformats2raw_store_opens_its_first_series(tmp_path):
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    data = np.ones((3, 16, 16), np.uint16)
    _ome_image(tmp_path / "b2r.zarr" / "0", data, "ZYX")
    image = zarr_io.open_zarr(tmp_path / "b2r.zarr")
    assert image.axes == "ZYX" and image.group == "0" and image.shape == (3, 16, 16)


def test_unreadable_inputs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no zarr array or group"):
        zarr_io.open_zarr(tmp_path / "missing.zarr")
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("a", shape=(4, 4), dtype="u1")
    group.create_array("b", shape=(4, 4), dtype="u1")
    with pytest.raises(ValueError, match=r"arrays in it: a, b.*image.zarr/0"):
        zarr_io.open_zarr(tmp_path / "two.zarr")
    with pytest.raises(ValueError, match="t, c, z, y and x"):
        zarr_io.ngff_axes([{"name": "angle"}, {"name": "y"}, {"name": "x"}], 3)
    with pytest.raises(ValueError, match="do not match its 3 dimensions"):
        zarr_io.ngff_axes([{"name": "y"}, {"name": "x"}], 3)
    assert zarr_io.ngff_axes(None, 3) == "ZYX"  # NGFF 0.1/0.2: implicit tczyx
    assert zarr_io.ngff_axes(["t", "y", "x"], 3) == "TYX"  # NGFF 0.3: names


@pytest.mark.parametrize("zarr_format, version", [(2, "0.4"), (3, "0.5")])
def test_labels_written_block_by_block_read_back_as_ngff_labels(tmp_path, zarr_format, version):
    output = tmp_path / "out.zarr"
    labels = np.zeros((4, 40, 60), np.uint32)
    labels[1:3, 5:20, 10:30] = 7
    labels[0, 30:40, 40:60] = 9
    group, array = zarr_io.create_labels(output, labels.shape, "ZYX", (2, 20, 30), zarr_format=zarr_format)
    assert zarr_io.list_labels(output) == []  # no NGFF metadata until finished: readers do not see a partial image
    for z in (0, 2):
        for y in (0, 20):
            for x in (0, 30):
                array[z : z + 2, y : y + 20, x : x + 30] = labels[z : z + 2, y : y + 20, x : x + 30]
    zarr_io.finish_labels(output, "cells", "ZYX", scale=(2.0, 0.5, 0.5), extra={"cellrefine": {"status": "complete"}})

    # zarr alone
    root = zarr.open_group(str(output), mode="r")
    attrs = dict(root["labels/cells"].attrs)
    ome = attrs["ome"] if version == "0.5" else attrs
    assert ome["multiscales"][0]["axes"] == [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert ome["multiscales"][0]["datasets"][0] == {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}
    assert "image-label" in ome and attrs["cellrefine"] == {"status": "complete"}
    np.testing.assert_array_equal(root["labels/cells/0"][:], labels)
    assert zarr_io.list_labels(output) == ["cells"]
    opened = zarr_io.open_labels(output)
    assert opened.axes == "ZYX" and opened.ngff_version == version and opened.zarr_format == zarr_format

    # the ome-zarr package's reader sees a labels image with these axes
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(output / "labels" / "cells")))())
    assert any(isinstance(spec, Label) for spec in nodes[0].specs)
    assert [axis["name"] for axis in nodes[0].metadata["axes"]] == ["z", "y", "x"]
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), labels)

    zarr_io.remove_labels(output, "cells")
    assert zarr_io.list_labels(output) == [] and "cells" not in zarr.open_group(str(output / "labels"), mode="r")


def test_labels_inside_an_ome_zarr_image_are_found_by_ome_zarr(tmp_path):
    data = np.zeros((32, 32), np.uint16)
    path = _ome_image(tmp_path / "img.zarr", data, "YX")
    _, array = zarr_io.create_labels(path, (32, 32), "YX", (16, 16))
    array[:] = 3
    zarr_io.finish_labels(path, "cells", "YX", source_image=str(path))
    attrs = dict(zarr.open_group(str(path / "labels" / "cells"), mode="r").attrs)
    assert attrs["image-label"]["source"] == {"image": "../../"}

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(path)))())
    labels = [node for node in nodes if any(isinstance(spec, Label) for spec in node.specs)]
    assert len(labels) == 1 and np.asarray(labels[0].data[0]).max() == 3


def test_create_labels_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="label name"):
        zarr_io.create_labels(tmp_path / "o.zarr", (4, 4), "YX", (4, 4), name="../up")
    with pytest.raises(ValueError, match="T, Z, Y, X in that order"):
        zarr_io.create_labels(tmp_path / "o.zarr", (4, 4), "XY", (4, 4))
    with pytest.raises(ValueError, match="zarr_format must be 2 or 3"):
        zarr_io.create_labels(tmp_path / "o.zarr", (4, 4), "YX", (4, 4), zarr_format=4)
    assert zarr_io.labels_axes("TCZYX") == "TZYX" and zarr_io.labels_axes("YXC") == "YX"
