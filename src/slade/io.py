"""Writing run artefacts so that a killed run never leaves a file a rerun would trust.

Everything is written to a temporary name in the same folder and renamed into place, which is
atomic on POSIX file systems.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slade.engine.faults import kill_point

PARTIAL_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, flush it to disk and rename the result to ``path``.

    A process killed before the rename leaves ``path`` as it was (and a ``.<name>.*.tmp`` file that
    nothing reads; see :func:`remove_partial_writes`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts get the usual permissions
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:  # the rename must not reach the disk before the data
            os.fsync(f.fileno())
        kill_point(f"write:{path.name}")
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
