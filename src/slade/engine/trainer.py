"""The training loop every stage shares.

A stage supplies its modules, its batches and its loss terms (:class:`TrainingStage`); the engine
does the rest: AdamW with warm-up and cosine decay, bf16 autocast and channels-last on GPU, a
finite-loss guard that names the term, periodic evaluation, resumable checkpoints, a rich progress
bar and a JSONL log of every logged scalar.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from slade.config import TrainConfig
from slade.engine.checkpoint import load_checkpoint, save_checkpoint
from slade.errors import CheckpointError, TrainingError

TRAINING_STATE = "slade.training-state"


class TrainingStage(Protocol):
    """What a stage gives the engine."""

    name: str
    images_per_step: int

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state a checkpoint must hold (trained or not)."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; a group may carry ``lr_scale``."""

    def batches(self, start: int) -> Iterator[Any]:
        """The stage's batches from step ``start`` on."""

    def loss_terms(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one step; ``loss`` is the total that is minimised."""

    def log_values(self) -> dict[str, float]:
        """Extra scalars to log with the losses (mined pairs, Gaussian means...)."""


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_metrics: dict[str, float]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def show_progress() -> bool:
    if os.environ.get("SLADE_PROGRESS") is not None:
        return os.environ["SLADE_PROGRESS"] not in ("0", "", "false")
    return sys.stderr.isatty()


def warmup_cosine(total: int, warmup: int, start: int = 0) -> Callable[[int], float]:
    """LR multiplier: 0 before ``start``, then linear warm-up over ``warmup`` steps, then cosine
    decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < start:
            return 0.0
        step -= start
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - start - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    return batch


class JsonlLog:
    """Appends one JSON object per logged step; on resume drops entries past the resumed step."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if resume_step and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif path.exists():
            path.unlink()

    def write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def fit(
    stage: TrainingStage,
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    evaluate: Callable[[], dict[str, float]] | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``stage`` for ``config.steps`` steps, resuming from ``out_dir/checkpoint.pt``.

    Args:
        stage: the stage to train.
        config: optimisation and bookkeeping settings.
        out_dir: the stage's folder: ``checkpoint.pt`` (training state) and ``log.jsonl``.
        device: where to train.
        evaluate: returns retrieval metrics of the current model; called every
            ``config.eval_every`` steps (0: never) and at the end.
        fingerprint: what the run's checkpoint must match to be resumed (the stage config).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    modules = stage.modules()
    cuda = device.type == "cuda"
    for module in modules.values():
        module.to(device)
        if cuda:
            module.to(memory_format=torch.channels_last)
    groups = stage.parameter_groups()
    schedules = []
    for group in groups:
        group["lr"] = config.lr * group.pop("lr_scale", 1.0)
        schedules.append(warmup_cosine(config.steps, config.warmup_steps, group.pop("start_step", 0)))
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    checkpoint_path = out_dir / "checkpoint.pt"
    start = 0
    if checkpoint_path.exists():
        start = _restore(checkpoint_path, modules, optimizer, scheduler, fingerprint or {})
    log = JsonlLog(out_dir / "log.jsonl", start)

    def save(step: int) -> None:
        save_checkpoint(checkpoint_path, {
            "format": TRAINING_STATE,
            "stage": stage.name,
            "step": step,
            "fingerprint": fingerprint or {},
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        })

    batches = stage.batches(start)
    started = time.perf_counter()
    window_start, window_images = time.perf_counter(), 0
    metrics: dict[str, float] = {}
    progress = Progress(
        TextColumn(f"[bold]{stage.name}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
        disable=not show_progress(), transient=False,
    )
    with progress:
        task = progress.add_task(stage.name, total=config.steps, completed=start, status="")
        for module in modules.values():
            module.train()
        for step in range(start, config.steps):
            batch = to_device(next(batches), device, channels_last=cuda)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                terms = stage.loss_terms(batch, step)
            _check_finite(terms, stage.name, step, checkpoint_path)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if hasattr(stage, "after_backward"):  # e.g. SwAV's frozen prototypes
                stage.after_backward(step)
            optimizer.step()
            scheduler.step()
            window_images += stage.images_per_step
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                entry = {"step": done, "lr": scheduler.get_last_lr()[0]}
                entry.update({k: float(v.detach()) for k, v in terms.items()})
                entry.update(stage.log_values())
                entry["images_per_s"] = window_images / max(now - window_start, 1e-9)
                window_start, window_images = now, 0
                log.write(entry)
                progress.update(task, status=f"loss {entry['loss']:.4f}  "
                                f"{entry['images_per_s']:.0f} img/s")
            if evaluate and config.eval_every and done % config.eval_every == 0 and done < config.steps:
                metrics = _evaluate(evaluate, modules)
                log.write({"step": done, **{f"eval/{k}": v for k, v in metrics.items()}})
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                save(done)
            progress.update(task, completed=done)
    if evaluate:
        metrics = _evaluate(evaluate, modules)
        log.write({"step": config.steps, **{f"eval/{k}": v for k, v in metrics.items()}})
    if config.steps > start:
        save(config.steps)
    return TrainResult(config.steps - start, time.perf_counter() - started, metrics)


def _evaluate(evaluate: Callable[[], dict[str, float]], modules: dict[str, nn.Module]):
    for module in modules.values():
        module.eval()
    try:
        return evaluate()
    finally:
        for module in modules.values():
            module.train()


def _check_finite(terms: dict[str, torch.Tensor], stage: str, step: int, checkpoint: Path) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value.detach()).all():
            kept = f"; the last good checkpoint is {checkpoint}" if checkpoint.exists() else ""
            raise TrainingError(
                f"{stage} step {step + 1}: loss term '{name}' is {float(value.detach())}{kept}"
            )


def _restore(path: Path, modules, optimizer, scheduler, fingerprint: dict[str, Any]) -> int:
    state = load_checkpoint(path, TRAINING_STATE)
    if state.get("fingerprint", {}) != fingerprint:
        saved = state.get("fingerprint", {})
        differing = sorted(k for k in saved.keys() | fingerprint.keys()
                           if saved.get(k) != fingerprint.get(k))
        raise CheckpointError(
            f"{path}: was written with other settings ({', '.join(differing)}); "
            "remove it or use another run directory"
        )
    for name, module in modules.items():
        try:
            module.load_state_dict(state["modules"][name])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: does not match the '{name}' module ({str(exc)[:160]})") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def config_fingerprint(config: Any) -> dict[str, Any]:
    """A stage config as plain data, to compare on resume."""
    return json.loads(json.dumps(asdict(config)))
