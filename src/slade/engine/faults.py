"""Fault injection for the reliability tests: die at a named point as a pre-empted job would.

``SLADE_KILL_AT=<point>`` makes the process send itself SIGKILL — no ``finally``, no flush — when it
reaches ``<point>``:

- ``<stage>:<step>``: before training step ``step`` (1-based) of ``stage`` (``teacher:4``);
- ``write:<file name>``: in an atomic write of that file, after the temporary file is written and
  before it is renamed into place (``write:embeddings.npy``);
- either with ``@<rank>``: only in that process of a ``torchrun`` run (``teacher:4@1``).

``SLADE_KILL_SIGNAL=TERM`` (or ``INT``) sends that signal instead of SIGKILL. Either is sent once.

``SLADE_FAIL_AT=write:<file name>`` (or ``write:<folder>/<file name>``: ``write:student/checkpoint.pt``)
with ``SLADE_FAIL_ERRNO=ENOSPC`` (the default; or ``EROFS``, ``EACCES``...) makes that atomic write
fail with the OS error instead, as a full or read-only disk would.

Unset (always, outside the tests) each costs one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

KILL_AT = "SLADE_KILL_AT"
FAIL_AT = "SLADE_FAIL_AT"


def kill_point(point: str) -> None:
    target = os.environ.get(KILL_AT)
    if target and target in (point, f"{point}@{os.environ.get('RANK', '0')}"):
        del os.environ[KILL_AT]  # once: a signal the process survives must not come back
        # SLADE_KILL_SIGNAL=TERM sends SIGTERM instead: a scheduler's graceful preemption.
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get('SLADE_KILL_SIGNAL', 'KILL')}"))


def fail_point(path: Path) -> None:
    if os.environ.get(FAIL_AT) in (f"write:{path.name}", f"write:{path.parent.name}/{path.name}"):
        code = getattr(errno, os.environ.get("SLADE_FAIL_ERRNO", "ENOSPC"))
        raise OSError(code, os.strerror(code), str(path))
