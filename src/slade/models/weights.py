"""Backbone weights from outside the run: a local state dict (``model.weights``) or timm's
pretrained weights from the Hugging Face hub (``model.pretrained``).

A local file is read without unpickling objects and loaded by name, the way timm loads its own
pretrained weights: the first convolution is adapted to the image channels, the classifier head
is left out (the embedding network has none), and a tensor of another shape stops with one line.
The hub is asked through its own machinery only: its cache first, in the hub's offline mode, so
that cached weights load without network; then a download.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn

from slade.engine.checkpoint import load_plain
from slade.errors import CheckpointError

log = logging.getLogger("slade")

# The wrappers training scripts save a state dict in (Lightning and timm's train.py: `state_dict`).
CONTAINERS = ("state_dict", "model_state_dict", "model")
# Key prefixes of a wrapped network: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass
class LoadedWeights:
    """What ``model.weights`` filled in: tensor names loaded, missing, left out and ignored."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the backbone, not in the file: stay random
    head: list[str] = field(default_factory=list)  # the file's classifier head, left out as expected
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the backbone: ignored


def require_weights_file(path: str | Path) -> Path:
    """``path`` when it is a file, else one line naming it (before a run does any work)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.weights: {path}: weights file not found")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: ``.safetensors``, or ``.pt`` / ``.pth`` / ``.bin`` read with
    ``weights_only=True``, unwrapped from the usual containers and prefixes.

    Raises:
        CheckpointError: one line starting ``model.weights: PATH``: missing, corrupt, unsafe, of an
            unknown format, or not a state dict.
    """
    path = require_weights_file(path)
    if path.suffix == ".safetensors":
        try:
            state: Any = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"model.weights: {path}: corrupt or truncated safetensors file "
                                  f"({_first_line(exc)})") from None
    elif path.suffix in TORCH_SUFFIXES:
        try:
            state = _unwrap(load_plain(path, "weights file"))
        except CheckpointError as exc:
            raise CheckpointError(f"model.weights: {exc}") from None
    else:
        raise CheckpointError(f"model.weights: {path}: unknown weights format {path.suffix!r} "
                              f"(.safetensors, {', '.join(TORCH_SUFFIXES)})")
    if not isinstance(state, dict) or not state:
        what = "an empty mapping" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"model.weights: {path}: not a state dict (it holds {what})")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"model.weights: {path}: not a state dict ({key!r} holds a "
                                  f"{type(value).__name__}, not a tensor)")
    return _without_wrapper_prefixes(state)


def _unwrap(state: Any) -> Any:
    while isinstance(state, dict):
        inner = next((state[k] for k in CONTAINERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            return state
        state = inner
    return state


def _without_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def load_weights(backbone: nn.Module, path: str | Path, name: str, in_chans: int) -> LoadedWeights:
    """Load the state dict in ``path`` into ``backbone`` (called ``name`` in messages) by name.

    The first convolution (timm's ``pretrained_cfg["first_conv"]``) is adapted to ``in_chans``
    channels as timm does for its pretrained weights, and the classifier head
    (``pretrained_cfg["classifier"]``) is left out. What was loaded, what stays random and what was
    ignored is logged.

    Raises:
        CheckpointError: the file cannot be read (see :func:`read_state_dict`), a tensor has
            another shape than the backbone's (the first one is named with both shapes), or no
            tensor of the file is one of the backbone's.
    """
    path = Path(path)
    state = read_state_dict(path)
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    own = backbone.state_dict()
    _adapt_first_conv(state, own, cfg.get("first_conv"), in_chans, path)
    head_names = _names(cfg.get("classifier"))
    report = LoadedWeights()
    for key, value in state.items():
        if key in own:
            if own[key].shape != value.shape:
                raise CheckpointError(
                    f"model.weights: {path}: {key} is {_shape(value)} in the file but {_shape(own[key])} "
                    f"in {name} (weights of another architecture?)")
            report.loaded.append(key)
        elif any(key.startswith(head + ".") for head in head_names):
            report.head.append(key)
        else:
            report.unexpected.append(key)
    if not report.loaded:
        raise CheckpointError(
            f"model.weights: {path}: none of its {len(state)} tensors is one of {name}'s (the file's first "
            f"is {next(iter(state))!r}, {name}'s {next(iter(own))!r}): weights of another architecture?")
    report.head.sort()  # `fc.bias, fc.weight` whatever order the file keeps
    # BatchNorm's step counters are not weights: a file without them loses nothing.
    report.missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    backbone.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    head = f"; its classifier head ({', '.join(report.head)}) left out, as expected" if report.head else ""
    log.info("model.weights: %s: %d tensors loaded into %s%s", path, len(report.loaded), name, head)
    if report.missing:
        log.warning("model.weights: %s: not in the file, so left as initialised: %d of %s's tensors (%s)",
                    path, len(report.missing), name, _some(report.missing))
    if report.unexpected:
        log.warning("model.weights: %s: not %s's, so ignored: %d of the file's tensors (%s)",
                    path, name, len(report.unexpected), _some(report.unexpected))
    return report


def _adapt_first_conv(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], first_conv: Any,
                      in_chans: int, path: Path) -> None:
    """Weights for 3-channel images fed grey ones (or the like): timm's ``adapt_input_conv``."""
    for conv in _names(first_conv):
        key = conv + ".weight"
        if key not in state or key not in own or state[key].ndim != 4:
            continue
        weight, target = state[key], own[key]
        if weight.shape[1] != target.shape[1] and weight.shape[0] == target.shape[0] \
                and weight.shape[2:] == target.shape[2:]:
            state[key] = adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])
            log.info("model.weights: %s: %s adapted from %d to %d input channels", path, key,
                     weight.shape[1], in_chans)


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value or ())


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "a scalar"


def _some(keys: list[str], shown: int = 6) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def create_pretrained(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)``: the weights from the hub's cache
    (in the hub's offline mode: no network), else downloaded by the hub.

    Without network and without a cached copy the hub's download fails after its own retries, or at
    once when ``HF_HUB_OFFLINE=1``; either way one line names the weights and ``model.weights``.

    Raises:
        CheckpointError: the weights cannot be found or downloaded.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        if not constants.HF_HUB_OFFLINE:
            try:
                with _hub_offline():
                    return timm.create_model(name, pretrained=True, **kwargs)
            except (LocalEntryNotFoundError, OfflineModeIsEnabled):
                pass  # not cached: the hub downloads them
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as exc:  # the hub's errors are OSErrors; timm's own RuntimeErrors
        if isinstance(exc, LocalEntryNotFoundError):
            why = f"not in the hub's cache ({constants.HF_HUB_CACHE}) and the hub cannot be reached"
        else:
            why = f"{type(exc).__name__}: {_first_line(exc)}"
        raise CheckpointError(
            f"model.pretrained: cannot load the pretrained weights of {name} ({_hub_source(name)}): "
            f"{why}; give a local copy as model.weights: PATH with model.pretrained: false") from None


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """The hub's offline mode (``HF_HUB_OFFLINE``) for a while: its cache only, no request."""
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_source(name: str) -> str:
    """Where timm takes ``name``'s default pretrained weights from: a hub repository or a URL."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag
        cfg = None
    if cfg is None:
        return "no weights registered in timm"
    url = cfg.url[0] if isinstance(cfg.url, tuple) else cfg.url
    return cfg.hf_hub_id or url or "no source registered in timm"
