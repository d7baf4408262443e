"""One writer per run directory: an OS file lock on ``RUN/slade.lock``.

``slade run``, ``slade demo`` and ``slade tsne`` hold it while they write; a second writer stops at
once with one line naming the directory and the holder (host, PID, start time). The lock is the
kernel's (``fcntl.flock``), so it goes away with its process however that ends, ``kill -9``
included: the file itself stays, holding the last holder's name for the message. Readers
(``slade embed``, ``evaluate``, ``query``) take no lock and are never blocked. Under ``torchrun``
only rank 0 writes, so only rank 0 locks.

On a file system without lock support (some network mounts), an exclusively created marker
``slade.lock.held`` stands in; a marker left by a dead process is detected (same host, PID gone) and
reported with how to clear it, never taken over silently.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from slade import run_layout as layout
from slade.errors import SladeError


class RunDirectoryBusy(SladeError):
    """Another process is writing the run directory (or left a marker it cannot clear)."""


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}


def _describe(text: str) -> str:
    try:
        h = json.loads(text)
        return f"host {h['host']}, PID {h['pid']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Hold the run directory ``run_dir`` for writing (a context manager).

    Raises:
        RunDirectoryBusy: on entry, when another live process holds it.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / layout.LOCK
        self.marker = self.run_dir / f"{layout.LOCK}.held"
        self._fd: int | None = None
        self._marked = False

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            raise RunDirectoryBusy(
                f"{self.run_dir}: another slade process is writing this run directory "
                f"({_describe(holder)}); wait for it to end, or use another --out") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            os.close(fd)
            self._mark()
            return self
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        return self

    def _mark(self) -> None:
        """No kernel locks here: an exclusively created marker holds the directory instead."""
        try:
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            text = self.marker.read_text(errors="replace")
            try:
                h = json.loads(text)
                stale = h["host"] == socket.gethostname() and not _alive(int(h["pid"]))
            except (ValueError, KeyError, TypeError):
                stale = False
            if stale:
                raise RunDirectoryBusy(
                    f"{self.marker}: a stale lock left by a process that is gone ({_describe(text)}); "
                    "this file system has no file locks, so slade cannot tell for sure that nothing "
                    "writes here: delete the file if no slade process uses this directory") from None
            raise RunDirectoryBusy(
                f"{self.run_dir}: another slade process is writing this run directory "
                f"({_describe(text)}; {self.marker}, a file system without file locks); wait for it "
                "to end, delete that file if it is gone, or use another --out") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(_holder()))
        self._marked = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file stays
            self._fd = None
        if self._marked:
            self.marker.unlink(missing_ok=True)
            self._marked = False
