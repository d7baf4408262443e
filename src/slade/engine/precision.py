"""Numeric precision (``train.precision``): the autocast dtype, the memory layout, gradient scaling.

``auto`` is bf16 autocast with channels-last images and weights on CUDA and plain fp32 on the CPU.
``fp16`` scales the loss (``torch.amp.GradScaler``) so that small gradients do not underflow; bf16
has fp32's range and needs no scaler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from slade.errors import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """What ``train.precision`` means on one device.

    Attributes:
        name: the precision computed in: ``fp32``, ``bf16`` or ``fp16``.
        setting: what was asked for (``auto`` or one of the above).
        channels_last: images and weights in channels-last layout (on CUDA, where it is faster).
    """

    name: str
    setting: str
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return _DTYPES[self.name]

    @property
    def scaled(self) -> bool:
        """Whether the loss is scaled (fp16): its gradients would underflow otherwise."""
        return self.name == "fp16"

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The autocast context of the forward pass (a no-op for fp32)."""
        dtype = self.dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (disabled, it passes everything through)."""
        return torch.amp.GradScaler(device.type, enabled=self.scaled)

    def describe(self) -> str:
        """``bf16 (auto), channels-last`` and the like, for the line printed when a stage starts."""
        text = self.name if self.setting == self.name else f"{self.name} ({self.setting})"
        return text + (", channels-last" if self.channels_last else "")


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """The precision ``setting`` (``train.precision``) gives on ``device``.

    Raises:
        ConfigError: ``fp16`` without CUDA, or an unknown setting.
    """
    cuda = device.type == "cuda"
    if setting == "auto":
        return Precision("bf16" if cuda else "fp32", setting, cuda)
    if setting not in _DTYPES:
        raise ConfigError(f"train.precision: unknown precision {setting!r} (auto, fp32, bf16 or fp16)")
    if setting == "fp16" and not cuda:
        # A config asking for fp16 was written for a GPU: stop before any work rather than run it
        # another way.
        raise ConfigError(f"train.precision: fp16 needs CUDA, and the device is {device}; "
                          "use bf16 (or auto) on the CPU")
    return Precision(setting, setting, cuda)
