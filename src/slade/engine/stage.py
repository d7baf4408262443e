"""What a stage gives the training loop (``engine/trainer.py``): its modules, batches and loss.

A stage implements the four methods that raise here; the hooks do nothing unless overridden, as a
LightningModule's do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class TrainingStage:
    """A stage the engine trains: ``name`` (for logs and messages) and images per step (for speed)."""

    name: str
    images_per_step: int

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state a checkpoint must hold (trained or not)."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; a group may carry ``lr_scale`` and ``start_step``."""
        raise NotImplementedError

    def batches(self, start: int) -> Iterator[Any]:
        """The stage's batches from batch number ``start`` on (a pure function of the number)."""
        raise NotImplementedError

    def loss_terms(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one step; ``loss`` is the total that is minimised."""
        raise NotImplementedError

    def after_backward(self, step: int) -> None:
        """Called after the backward pass, before the gradients are checked and applied."""

    def log_values(self) -> dict[str, float]:
        """Extra scalars to log with the losses (mined pairs, Gaussian means...)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Counters a checkpoint must keep besides the modules."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
