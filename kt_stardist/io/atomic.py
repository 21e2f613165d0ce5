"""Atomic writes: nothing half-written is ever left behind.

Every file kt-stardist writes goes through :func:`atomic_write` (file objects) or
:func:`atomic_path` (writers that need a path): the data goes to a temporary file beside the
target, which is fsynced and renamed onto it with :func:`os.replace` only on success. An OS
error while writing (disk full, read-only, permissions) becomes one line,
:class:`kt_stardist.errors.OutputError`, and the previous file is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from kt_stardist.errors import InputError, KtError, OutputError

__all__ = ["atomic_write", "atomic_path"]


def _file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give (temp files are created 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: OS errors that mean "this output cannot be written here"
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def _is_write_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and not isinstance(e, KtError) and e.errno in _WRITE_ERRNOS


def _write_failed(path, err: OSError) -> OutputError:
    """One line for an OS error while writing ``path`` (disk full, read-only, permissions)."""
    what = err.strerror or type(err).__name__
    return OutputError(f"{path}: cannot write ({what}); nothing was changed there")


def _prepare_target(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", **open_kwargs):
    """Open a temporary file beside ``path`` for writing; move it onto ``path`` on success.

    Yields the open file object. On normal exit the file is flushed, fsynced and renamed onto
    ``path`` with :func:`os.replace` (atomic on one file system); if the block raises, the
    temporary file is deleted and the exception re-raised, so ``path`` is either the old file
    or the complete new one, never half-written. Text modes default to UTF-8.
    Missing parent folders are created.
    """
    if not any(c in mode for c in "wax"):
        raise ValueError(f"atomic_write: mode must be a write mode, got {mode!r}")
    path = _prepare_target(path)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        tmp = tempfile.NamedTemporaryFile(
            mode=mode.replace("x", "w").replace("a", "w"), delete=False, dir=path.parent,
            prefix=f".{path.name}.", suffix=".tmp", **open_kwargs,
        )
    except OSError as e:
        raise _write_failed(path, e) from None
    try:
        with tmp as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp.name, _file_mode())
        os.replace(tmp.name, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        if _is_write_error(e):
            raise _write_failed(path, e) from None
        raise


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix) for writers that need a path.

    For tifffile, h5py, ``matplotlib.savefig`` and the like: write to the yielded path; on
    success it is fsynced and renamed onto ``path``, on error it is deleted and the error
    re-raised. The suffix (e.g. ``.ome.tif``, ``.png``) is kept, so writers that pick the
    format from the name still work.
    """
    path = _prepare_target(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(
        (".ome.tif", ".ome.tiff")) else path.suffix
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp-", suffix=suffix)
    except OSError as e:
        raise _write_failed(path, e) from None
    os.close(fd)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise OSError(f"{path}: the writer produced no file")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _is_write_error(e):
            raise _write_failed(path, e) from None
        raise
