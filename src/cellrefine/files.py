"""Writing files so that they appear complete or not at all.

Every file CellRefine writes (models, label images, class maps, zarr stores)
goes through :func:`atomic_write`: the content is written to a temporary file
(or folder) next to the target, flushed to disk, and renamed over the target
in one step. A failed write, a full disk or Ctrl-C leaves the previous file
untouched and no temporary file behind; an ``OSError`` comes back as one line
naming the path, the reason and what to do. :func:`check_writable` checks an
output location before any work is done.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["atomic_write", "write_bytes", "check_writable", "TEMP_PREFIX"]

#: Temporary names are ``TEMP_PREFIX + random hex + "-" + target name`` (hidden, same suffix as the target).
TEMP_PREFIX = ".partial-"

_HINTS = {
    errno.EACCES: "you may not write there; choose a folder you can write to or change its permissions",
    errno.EPERM: "you may not write there; choose a folder you can write to or change its permissions",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.ENOSPC: "the disk is full; free some space or choose another disk",
    errno.EDQUOT: "your disk quota is full; free some space or choose another disk",
    errno.EFBIG: "the file is larger than this file system allows; choose another disk",
    errno.EISDIR: "a folder has that name; choose a file name or remove the folder",
    errno.ENOTDIR: "part of the path is a file, not a folder; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
    errno.ENOENT: "its folder does not exist; create it or choose another path",
}


def _clear_error(error: OSError, path: Path, existed: bool) -> OSError:
    """``error`` as the same kind of OSError with one line: path, reason, what to do, what is left."""
    reason = error.strerror or str(error) or type(error).__name__
    hint = _HINTS.get(error.errno, "check the path and that the disk is writable, then try again")
    left = f"the existing {path.name} is unchanged" if existed else "nothing was written"
    message = f"could not write {path}: {reason}; {hint} ({left})."
    try:
        clear = type(error)(message)
    except TypeError:  # an OSError subclass with another signature
        clear = OSError(message)
    clear.errno = error.errno
    clear.written_path = path
    return clear


def _create_temp(path: Path, folder: bool) -> Path:
    """Create an empty temporary file/folder beside ``path`` (permissions from the umask)."""
    for _ in range(100):
        temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name[-200:]}"
        try:
            if folder:
                os.mkdir(temp, 0o777)
            else:
                os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _fsync_folder(path: Path) -> None:
    """Flush a folder's entries (POSIX). Best effort: some file systems refuse it, which loses nothing already renamed."""
    if os.name != "posix":
        return
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError as error:
        logger.debug("could not flush folder %s: %s", path, error)
    finally:
        os.close(handle)


def _remove(temp: Path | None) -> None:
    if temp is None:
        return
    if temp.is_dir() and not temp.is_symlink():
        shutil.rmtree(temp, ignore_errors=True)
    else:
        temp.unlink(missing_ok=True)


def _replace_folder(temp: Path, path: Path) -> None:
    """Rename folder ``temp`` to ``path``; an existing folder there is moved aside first and removed after."""
    if not path.exists():
        os.rename(temp, path)
        return
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{path} is a file, not a folder")
    aside = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(4)}-old-{path.name[-200:]}"
    os.rename(path, aside)
    try:
        os.rename(temp, path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside)


@contextlib.contextmanager
def atomic_write(path, *, folder: bool = False, make_parents: bool = False) -> Iterator[Path]:
    """Write ``path`` through a temporary file in the same folder, renamed over it at the end.

    Use as ``with atomic_write(path) as temp: writer(temp, ...)``. ``temp``
    exists (empty) and ends with ``path``'s name, so writers that look at the
    suffix (``.tif``, ``.ome.tif``, ``.zarr``) behave as for ``path``. When
    the block ends normally the content is flushed to disk (fsync) and
    ``temp`` replaces ``path`` in one rename; a new file gets the usual
    permissions (umask), a replaced one keeps its permissions. When the block
    raises anything (including ``KeyboardInterrupt``) ``temp`` is removed and
    ``path`` is left as it was.

    Parameters
    ----------
    path : str or Path
        The file (or, with ``folder=True``, the folder) to write.
    folder : bool
        Write a folder (e.g. a zarr store): ``temp`` is an empty folder; an
        existing folder at ``path`` is replaced as a whole.
    make_parents : bool
        Create missing parent folders.

    Yields
    ------
    pathlib.Path
        The temporary path to write to.

    Raises
    ------
    OSError
        Any ``OSError`` raised while writing (in the block too) comes back as
        the same kind of error with one line: "could not write PATH: reason;
        what to do (the existing NAME is unchanged)", chained to the original,
        with the attribute ``written_path`` (the path that could not be written).
    """
    path = Path(path).expanduser()
    existed = path.exists()
    temp = None
    try:
        if make_parents:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # the parent itself is a file
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        if not folder and path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        mode = stat.S_IMODE(path.stat().st_mode) if existed and path.is_file() and not folder else None
        temp = _create_temp(path, folder)
        yield temp
        if folder:
            for root, _, names in os.walk(temp):
                for name in names:
                    _fsync_file(Path(root, name))
            _replace_folder(temp, path)
        else:
            _fsync_file(temp)
            if mode is not None:
                os.chmod(temp, mode)
            os.replace(temp, path)
        temp = None
        _fsync_folder(path.parent)
    except OSError as error:
        _remove(temp)
        if getattr(error, "written_path", None) is not None:  # already one clear line (a nested atomic_write)
            raise
        raise _clear_error(error, path, existed) from error
    except BaseException:
        _remove(temp)
        raise


def write_bytes(path, data: bytes, *, make_parents: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write`; returns the path."""
    path = Path(path).expanduser()
    with atomic_write(path, make_parents=make_parents) as temp, open(temp, "wb") as stream:
        stream.write(data)
    return path


def check_writable(path, *, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written; returns it as a Path.

    Refused (``OSError`` subclasses with one clear line): a folder where a file
    is to go (or a file where a folder is to go), a parent that is a file, and
    a nearest existing parent folder that is not writable. Missing parent
    folders are fine (they are created when writing with ``make_parents``).
    Nothing is created.
    """
    path = Path(path).expanduser()
    problem = None
    if path.is_dir() and not folder:
        problem = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    elif folder and path.exists() and not path.is_dir():
        problem = NotADirectoryError(errno.ENOTDIR, f"{path.name} is a file, not a folder")
    else:
        parent = path.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            problem = NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a folder")
        elif not os.access(parent, os.W_OK | os.X_OK):
            problem = PermissionError(errno.EACCES, f"{parent} is not writable")
    if problem is not None:
        raise _clear_error(problem, path, path.exists())
    return path
