"""Checkpoints: saved atomically, loaded without unpickling arbitrary objects."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from slade.errors import CheckpointError
from slade.io import atomic_write


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
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unsafe content"
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors and plain data, which "
            f"would run code when unpickled ({reason[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a slade checkpoint (no 'format' entry)")
    if kind is not None and state["format"] != kind:
        raise CheckpointError(f"{path}: is a {state['format']} checkpoint, expected {kind}")
    return state
