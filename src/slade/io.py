"""Writing run artefacts so that a killed run never leaves a file a rerun would trust.

Everything is written to a temporary name in the same folder and renamed into place, which is
atomic on POSIX file systems. A write the disk refuses (full, read-only, no permission) becomes a
:class:`~slade.errors.WriteError` naming the file and the cause, and leaves the old file in place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from slade.engine.faults import fail_point, kill_point
from slade.errors import WriteError

PARTIAL_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)


# The OS errors that say the disk, not the program, refused a write.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
_NEARLY_FULL = 1 << 20  # bytes


def disk_error(path: Path, exc: BaseException) -> WriteError | None:
    """The one-line error for a write of ``path`` that failed with ``exc``; None if not the disk's."""
    code = getattr(exc, "errno", None)
    if code not in DISK_ERRORS and isinstance(exc, (OSError, RuntimeError)):
        # torch.save and np.save report a short write without its errno: ask the file system.
        try:
            if shutil.disk_usage(path.parent).free < _NEARLY_FULL:
                code = errno.ENOSPC
        except OSError:
            pass
    if code not in DISK_ERRORS:
        return None
    where = getattr(exc, "filename", None) or path
    if str(where).endswith(PARTIAL_SUFFIX):  # the temporary name of an atomic write: name its target
        where = path
    return WriteError(f"cannot write {where}: {os.strerror(code)} ({errno.errorcode[code]}); "
                      "what was written before is intact, rerun once the disk allows it to resume")


@contextmanager
def writing(path: str | Path) -> Iterator[Path]:
    """Turn a write of ``path`` the disk refuses into a :class:`WriteError`."""
    path = Path(path)
    try:
        yield path
    except (OSError, RuntimeError) as exc:
        error = disk_error(path, exc)
        if error is None:
            raise
        raise error from exc


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)``, flush it to disk and rename the result to ``path``.

    A process killed before the rename leaves ``path`` as it was (and a ``.<name>.*.tmp`` file that
    nothing reads; see :func:`remove_partial_writes`); so does a disk that refuses the write, which
    raises :class:`WriteError`.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
        os.close(fd)
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts get the usual permissions
            write(Path(tmp))
            fail_point(path)
            with open(tmp, "rb+") as f:  # the rename must not reach the disk before the data
                os.fsync(f.fileno())
            kill_point(f"write:{path.name}")
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def reserve(path: str | Path, size: int) -> None:
    """Allocate ``size`` bytes of ``path`` on disk now, so that a memory map of it never meets a
    full disk (which would kill the process with SIGBUS) and a full one fails here with ENOSPC."""
    if hasattr(os, "posix_fallocate") and size > 0:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # the file system cannot: write as before
                return
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        finally:
            os.close(fd)


def _fsync_folder(folder: Path) -> None:
    # The rename itself survives a power cut only once the folder is flushed (not on Windows).
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_partial_writes(folder: str | Path) -> None:
    """Delete the temporary files that killed atomic writes left in ``folder``."""
    for tmp in Path(folder).glob(f".*{PARTIAL_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, array)

    return atomic_write(path, write)


def link_tree(source: str | Path, target: str | Path) -> None:
    """Copy the folder ``source`` to ``target`` as hard links (nothing is copied where the file
    system has them; a plain copy where it does not): a finished stage reused by another run."""
    shutil.copytree(source, target, copy_function=_link)


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)
