"""Checkpoints: saved atomically, loaded without unpickling arbitrary objects; a training stage's
resumable state (:class:`CheckpointSaver`)."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slade.errors import CheckpointError
from slade.fingerprint import fingerprint_differences
from slade.io import atomic_write

TRAINING_STATE = "slade.training-state"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file, then rename: a killed save leaves the old file intact."""
    return atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only.

    Args:
        path: the file.
        kind: when given, the ``format`` the checkpoint must declare (``slade.embedder``,
            ``slade.training-state``).

    Raises:
        CheckpointError: missing, corrupt, unsafe (contains pickled objects), or of another kind.
    """
    path = Path(path)
    state = load_plain(path, "checkpoint")
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a slade checkpoint (no 'format' entry)")
    if kind is not None and state["format"] != kind:
        raise CheckpointError(f"{path}: is a {state['format']} checkpoint, expected {kind}")
    return state


def load_plain(path: Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain containers only) on the CPU.

    Raises:
        CheckpointError: one line naming the file, ``what`` it is, and why: missing, corrupt, or
            unsafe (it holds pickled objects, which would run code when loaded).
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unsafe content"
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors and plain data, which "
            f"would run code when unpickled ({reason[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated {what} ({first[:160]})") from None


@dataclass
class Position:
    """Where training stands: the next step, the next batch number, and the batches skipped.

    ``batch`` runs ahead of ``step`` by the number of batches skipped after a non-finite loss.
    """

    step: int = 0
    batch: int = 0
    skipped: list[int] = field(default_factory=list)
    rollbacks: int = 0


class CheckpointSaver:
    """A training stage's ``checkpoint.pt``: everything the rest of its training depends on.

    It holds the stage's modules (with their buffers: BatchNorm statistics, the basis Gaussians,
    SwAV queues), the optimiser, the schedule, the fp16 gradient scaler, the random generators, the
    position in the batch stream, the stage's own counters (``TrainingStage.extra_state``) and the
    fingerprint it was made with. Under ``torchrun`` only rank 0 writes it; every rank restores from it.
    """

    def __init__(self, path: Path, stage, modules: dict[str, nn.Module], optimizer, scheduler,
                 fingerprint: dict[str, Any], cuda: bool = False, write: bool = True,
                 scaler: torch.amp.GradScaler | None = None) -> None:
        self.path, self.stage, self.modules = path, stage, modules
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.fingerprint, self.cuda, self.write = fingerprint, cuda, write

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, position: Position) -> None:
        if not self.write:  # the others read it only after the next collective, so never half-written
            return
        save_checkpoint(self.path, {
            "format": TRAINING_STATE,
            "stage": self.stage.name,
            "step": position.step,
            "position": asdict(position),
            "fingerprint": self.fingerprint,
            "modules": {name: m.state_dict() for name, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            # Empty unless fp16: a disabled scaler has no state.
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "stage_state": self.stage.extra_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.cuda else [],
        })

    def restore(self) -> Position:
        """Load every part of the state back; returns the position to continue from.

        Raises:
            CheckpointError: unreadable, made with another fingerprint, or not fitting a module.
        """
        path, state = self.path, load_checkpoint(self.path, TRAINING_STATE)
        differing = fingerprint_differences(state.get("fingerprint", {}), self.fingerprint)
        if differing:
            raise CheckpointError(
                f"{path}: was written with other settings ({', '.join(differing[:8])}); "
                "remove it or use another run directory"
            )
        for name, module in self.modules.items():
            try:
                module.load_state_dict(state["modules"][name])
            except (KeyError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{path}: does not match the '{name}' module ({str(exc)[:160]})") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and self.scaler.is_enabled() and state.get("scaler"):
            # A checkpoint of another precision has none: the scaler then starts afresh.
            self.scaler.load_state_dict(state["scaler"])
        self.stage.load_extra_state(state.get("stage_state", {}))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        saved = state.get("position") or {"step": int(state["step"]), "batch": int(state["step"])}
        return Position(int(saved["step"]), int(saved["batch"]), [int(b) for b in saved.get("skipped", [])],
                        int(saved.get("rollbacks", 0)))
