"""Graceful preemption: on SIGTERM or SIGINT, finish the step, write a checkpoint, exit 75.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM and, after a grace period, SIGKILL.
While a stage trains, the first SIGTERM or SIGINT only asks the loop to stop: the current step
finishes, the checkpoint is written, and the process exits with :data:`PREEMPTED_EXIT` (75,
``EX_TEMPFAIL``: try again later), so that a rerun of the same command resumes to the result an
uninterrupted run gives. A second signal ends the process at once (the checkpoint being written, if
any, is an atomic write: the previous one stays). Under ``torchrun`` the ranks agree every step, so
every rank stops after the same step.

Outside the training loops (reading data, k-means, evaluation, the analysis, a checkpoint written
before the first step) there is no step to finish: under :class:`StopAnywhere` the first signal
stops the command at once with the same exit status, as Python's own KeyboardInterrupt would, and
an atomic write it interrupts leaves the previous file.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import TypeVar

from slade.engine import distributed
from slade.engine.checkpoint import CheckpointSaver, Position
from slade.errors import PREEMPTED_EXIT, Preempted

log = logging.getLogger("slade")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


_H = TypeVar("_H", bound="_Handlers")


class _Handlers:
    """While active, SIGTERM and SIGINT go to ``self._handle`` (in the main thread only, where
    Python runs signal handlers); the previous handlers come back on exit."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}

    def __enter__(self: _H) -> _H:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        raise NotImplementedError


class StopAnywhere(_Handlers):
    """While active, the first SIGTERM / SIGINT raises :class:`Preempted` wherever the process is
    (a training loop's :class:`StopSignals` inside it defers the signal to the end of the step)."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        for sig in SIGNALS:  # a second signal, during the unwinding, ends the process at once
            signal.signal(sig, signal.SIG_DFL)
        raise Preempted(f"{self.command}: stopped by {signal.Signals(signum).name} outside a training "
                        "step; finished stages and checkpoints are on disk; rerun the same command to "
                        f"resume (exit {PREEMPTED_EXIT})")


class StopSignals(_Handlers):
    """While active, SIGTERM / SIGINT set :attr:`received` instead of ending the process."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self.received: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second signal: stop now, as without a handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        log.warning("%s: %s received: finishing the step, then writing a checkpoint (a second signal "
                    "stops at once)", self.stage, signal.Signals(signum).name)

    def check(self, step: int, checkpoint: CheckpointSaver, position: Position) -> None:
        """After a step: when any rank was signalled, write the checkpoint and raise :class:`Preempted`."""
        if not distributed.any_rank(self.received is not None):
            return
        checkpoint.save(position)
        name = signal.Signals(self.received).name if self.received else "a signal on another process"
        raise Preempted(f"{self.stage}: stopped by {name} after step {step}; the checkpoint "
                        f"{checkpoint.path} holds it; rerun the same command to resume "
                        f"(exit {PREEMPTED_EXIT})")
