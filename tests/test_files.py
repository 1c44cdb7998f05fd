"""Tests for cellrefine.files: every write is temp + fsync + rename; failures leave the old file and no temporary."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellrefine import files
from cellrefine.files import TEMP_PREFIX, atomic_write, check_writable, write_bytes


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_creates_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "labels.tif"
    with atomic_write(path) as temp:
        assert temp.parent == tmp_path  # same folder: the rename is atomic
        assert temp.name.startswith(TEMP_PREFIX) and temp.name.endswith("-labels.tif")  # hidden, same suffix
        assert temp.is_file() and temp.stat().st_size == 0
        assert not path.exists()  # nothing visible until the block ends
        temp.write_bytes(b"new content")
    assert path.read_bytes() == b"new content"
    assert _names(tmp_path) == ["labels.tif"]


def test_temporary_keeps_a_double_suffix(tmp_path):
    with atomic_write(tmp_path / "cells.ome.tif") as temp:
        assert temp.name.endswith(".ome.tif")
        temp.write_bytes(b"x")


def test_long_names_give_a_valid_temporary_name(tmp_path):
    path = tmp_path / ("n" * 240 + ".tif")
    write_bytes(path, b"abc")
    assert path.read_bytes() == b"abc" and _names(tmp_path) == [path.name]


def test_write_bytes_replaces_and_returns_the_path(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    assert write_bytes(path, b"new") == path
    assert path.read_bytes() == b"new"
    assert _names(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [ValueError("bad data"), KeyboardInterrupt(), RuntimeError("writer crashed")])
def test_an_error_in_the_block_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old content")
    with pytest.raises(type(error)) as raised, atomic_write(path) as temp:
        with open(temp, "wb") as stream:
            stream.write(b"half of the new")  # mid-way through the write
        raise error
    assert raised.value is error  # not wrapped: only OSErrors are reworded
    assert path.read_bytes() == b"old content"
    assert _names(tmp_path) == ["out.bin"]


def test_an_error_in_the_block_with_no_old_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.bin") as temp:
        temp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_disk_full_in_the_block_is_one_clear_line(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    original = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with (
        pytest.raises(
            OSError, match=r"could not write .*out\.bin: No space left on device; the disk is full.*\(the existing out\.bin is unchanged\)\."
        ) as raised,
        atomic_write(path),
    ):
        raise original
    assert raised.value.errno == errno.ENOSPC and raised.value.__cause__ is original
    assert "\n" not in str(raised.value)
    assert path.read_bytes() == b"old" and _names(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt()])
def test_failing_fsync_keeps_the_old_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def failing_fsync(fd):
        raise failure

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(type(failure)):
        write_bytes(path, b"new content that never lands")
    assert path.read_bytes() == b"old" and _names(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("failure", [OSError("rename failed"), KeyboardInterrupt()])
def test_failing_rename_keeps_the_old_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def failing_replace(src, dst):
        raise failure

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(type(failure)):
        write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and _names(tmp_path) == ["out.bin"]


def test_permission_denied_names_the_path_and_what_to_do(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.os, "open", denied)
    with pytest.raises(
        PermissionError, match=r"could not write .*out\.bin: Permission denied; you may not write there; choose a folder .*nothing was written"
    ):
        write_bytes(tmp_path / "out.bin", b"x")
    assert _names(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_read_only_folder_for_real(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="you may not write there"):
            write_bytes(folder / "out.bin", b"x")
    finally:
        folder.chmod(0o755)


def test_an_existing_folder_at_the_path_is_refused_and_kept(tmp_path):
    (tmp_path / "out.tif").mkdir()
    (tmp_path / "out.tif" / "inside").write_text("keep me")
    with pytest.raises(IsADirectoryError, match=r"could not write .*out\.tif: .*a folder has that name"):
        write_bytes(tmp_path / "out.tif", b"x")
    assert (tmp_path / "out.tif" / "inside").read_text() == "keep me"
    assert _names(tmp_path) == ["out.tif"]


@pytest.mark.parametrize("make_parents", [False, True])
def test_a_parent_that_is_a_file_is_refused(tmp_path, make_parents):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match="could not write .*part of the path is a file, not a folder"):
        write_bytes(tmp_path / "file" / "sub" / "out.bin", b"x", make_parents=make_parents)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_missing_parent_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="its folder does not exist"):
        write_bytes(tmp_path / "missing" / "out.bin", b"x")
    assert write_bytes(tmp_path / "missing" / "deeper" / "out.bin", b"x", make_parents=True).read_bytes() == b"x"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_permissions_new_files_follow_the_umask_replaced_files_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    try:
        new = write_bytes(tmp_path / "new.bin", b"x")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        private = tmp_path / "private.bin"
        private.write_bytes(b"old")
        private.chmod(0o600)
        write_bytes(private, b"new")
        assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_bytes() == b"new"
    finally:
        os.umask(umask)


# ----------------------------------------------------------------------------- folders (e.g. zarr stores)


def test_folder_write_replaces_the_whole_folder(tmp_path):
    store = tmp_path / "labels.zarr"
    store.mkdir()
    (store / "old_chunk").write_text("old")
    with atomic_write(store, folder=True) as temp:
        assert temp.is_dir() and temp.name.endswith("-labels.zarr") and not any(temp.iterdir())
        (temp / "sub").mkdir()
        (temp / "sub" / "chunk").write_text("new")
    assert _names(store) == ["sub"] and (store / "sub" / "chunk").read_text() == "new"
    assert _names(tmp_path) == ["labels.zarr"]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_failed_folder_write_keeps_the_old_folder(tmp_path, error):
    store = tmp_path / "labels.zarr"
    store.mkdir()
    (store / "old_chunk").write_text("old")
    with pytest.raises(type(error)), atomic_write(store, folder=True) as temp:
        (temp / "chunk").write_text("partial")
        raise error
    assert _names(store) == ["old_chunk"] and _names(tmp_path) == ["labels.zarr"]


def test_folder_write_over_a_file_is_refused(tmp_path):
    (tmp_path / "labels.zarr").write_text("a file")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"), atomic_write(tmp_path / "labels.zarr", folder=True) as temp:
        (temp / "chunk").write_text("new")
    assert (tmp_path / "labels.zarr").read_text() == "a file"
    assert _names(tmp_path) == ["labels.zarr"]


# ----------------------------------------------------------------------------- check_writable


def test_check_writable_accepts_new_paths_and_creates_nothing(tmp_path):
    assert check_writable(tmp_path / "a" / "b" / "out.tif") == tmp_path / "a" / "b" / "out.tif"
    assert check_writable(str(tmp_path / "out.tif")) == tmp_path / "out.tif"
    (tmp_path / "existing.tif").write_bytes(b"x")
    check_writable(tmp_path / "existing.tif")
    (tmp_path / "store.zarr").mkdir()
    check_writable(tmp_path / "store.zarr", folder=True)
    assert _names(tmp_path) == ["existing.tif", "store.zarr"]


def test_check_writable_refusals(tmp_path, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(IsADirectoryError, match=r"could not write .*folder: .*a folder has that name"):
        check_writable(tmp_path / "folder")
    with pytest.raises(NotADirectoryError, match="file is a file, not a folder"):
        check_writable(tmp_path / "file", folder=True)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder; part of the path is a file"):
        check_writable(tmp_path / "file" / "deeper" / "out.tif")
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="is not writable; you may not write there"):
        check_writable(tmp_path / "out.tif")


# ----------------------------------------------------------------------------- a real interrupted process


def test_ctrl_c_during_a_write_in_another_process_keeps_the_old_file(tmp_path):
    """A child process writes half of a new file and gets SIGINT: the old file survives, no temporary is left."""
    path = tmp_path / "labels.tif"
    path.write_bytes(b"old labels")
    code = textwrap.dedent(
        f"""
        import os, signal
        from cellrefine.files import atomic_write
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with SIGINT ignored
        with atomic_write({str(path)!r}) as temp:
            with open(temp, "wb") as stream:
                stream.write(b"half of the new labels")
                stream.flush()
            os.kill(os.getpid(), signal.SIGINT)
            raise SystemExit("not interrupted")
        """
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0 and "KeyboardInterrupt" in completed.stderr, completed.stderr
    assert path.read_bytes() == b"old labels"
    assert _names(tmp_path) == ["labels.tif"]


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_process_leaves_the_old_file_and_only_a_hidden_temporary(tmp_path):
    path = tmp_path / "labels.tif"
    path.write_bytes(b"old labels")
    code = textwrap.dedent(
        f"""
        import os, signal
        from cellrefine.files import atomic_write
        with atomic_write({str(path)!r}) as temp:
            temp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert completed.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"old labels"
    leftovers = [name for name in _names(tmp_path) if name != "labels.tif"]
    assert len(leftovers) == 1 and leftovers[0].startswith(TEMP_PREFIX)  # nothing can clean up after SIGKILL; it is hidden


# ----------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    old=st.one_of(st.none(), st.binary(max_size=64)),
    new=st.binary(max_size=256),
    name=st.text(st.characters(categories=["L", "N"], max_codepoint=0x2FF), min_size=1, max_size=20).map(lambda s: s + ".tif"),
    fail=st.booleans(),
)
def test_property_the_file_is_old_or_new_never_partial(tmp_path_factory, old, new, name, fail):
    folder = tmp_path_factory.mktemp("prop")
    path = folder / name
    if old is not None:
        path.write_bytes(old)
    try:
        with atomic_write(path) as temp:
            temp.write_bytes(new[: len(new) // 2])
            if fail:
                raise ValueError("stop")
            temp.write_bytes(new)
    except ValueError:
        assert fail
    if fail:
        assert (path.read_bytes() if old is not None else None) == old
    else:
        assert path.read_bytes() == new
    assert _names(folder) == ([] if fail and old is None else [name])


def test_real_writers_tifffile_and_zarr(tmp_path):
    """The two writers the project uses for outputs work on the temporary path and their outputs read back."""
    import numpy as np

    tifffile = pytest.importorskip("tifffile")
    zarr = pytest.importorskip("zarr")
    labels = np.arange(12, dtype=np.uint32).reshape(3, 4)
    (tmp_path / "labels.ome.tif").write_bytes(b"old")
    with atomic_write(tmp_path / "labels.ome.tif") as temp:
        tifffile.imwrite(temp, labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.ome.tif"), labels)
    for offset in range(2):  # the second write replaces the first store
        with atomic_write(tmp_path / "labels.zarr", folder=True) as temp:
            zarr.save(str(temp), labels + offset)
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "labels.zarr"), mode="r")[:], labels + 1)
    assert _names(tmp_path) == ["labels.ome.tif", "labels.zarr"]
