"""The training loop every stage shares.

A stage supplies its modules, its batches and its loss terms (:class:`TrainingStage`); the engine
does the rest: AdamW with warm-up and cosine decay, bf16 autocast and channels-last on GPU, a
finite-loss guard that names the term and rolls back to the last checkpoint, periodic evaluation,
resumable checkpoints, a rich progress bar and a JSONL log of every logged scalar.

A checkpoint holds everything the rest of the run depends on: the stage's modules (with their
buffers: BatchNorm statistics, the basis Gaussians, SwAV queues), the optimiser, the schedule, the
random generators, the position in the batch stream and the stage's own counters. Batches are a pure
function of their number (``data/batches.py``), so a resumed run sees what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from slade.config import TrainConfig
from slade.engine import distributed
from slade.engine.checkpoint import load_checkpoint, save_checkpoint
from slade.engine.faults import kill_point
from slade.errors import CheckpointError, DistributedError, TrainingError
from slade.io import write_text

log = logging.getLogger("slade")

TRAINING_STATE = "slade.training-state"
CHECKPOINT = "checkpoint.pt"
# Settings that do not change what a stage computes (`rounds` adds stages after it): a checkpoint or
# a finished stage made with other values of these is still used.
BOOKKEEPING = ("eval_every", "checkpoint_every", "log_every", "num_workers", "nonfinite", "max_rollbacks",
               "rounds")


class TrainingStage(Protocol):
    """What a stage gives the engine."""

    name: str
    images_per_step: int

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state a checkpoint must hold (trained or not)."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; a group may carry ``lr_scale``."""

    def batches(self, start: int) -> Iterator[Any]:
        """The stage's batches from batch number ``start`` on (a pure function of the number)."""

    def loss_terms(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one step; ``loss`` is the total that is minimised."""

    def log_values(self) -> dict[str, float]:
        """Extra scalars to log with the losses (mined pairs, Gaussian means...)."""

    # Optional: ``after_backward(step)`` (e.g. SwAV's frozen prototypes), and ``extra_state()`` /
    # ``load_extra_state(state)`` for counters a checkpoint must keep besides the modules.


@dataclass
class Position:
    """Where training stands: the next step, the next batch number, and the batches skipped.

    ``batch`` runs ahead of ``step`` by the number of batches skipped after a non-finite loss.
    """

    step: int = 0
    batch: int = 0
    skipped: list[int] = field(default_factory=list)
    rollbacks: int = 0


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
    """Appends one JSON object per logged step; on resume drops entries past the resumed step.

    A line cut short by a killed process is dropped too.
    """

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if resume_step and path.exists():
            self.truncate(resume_step)
        elif path.exists():
            path.unlink()

    def truncate(self, step: int) -> None:
        """Keep the entries of steps up to ``step``."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


class _NoLog:
    """The log of a rank other than 0: rank 0 writes the run's files."""

    def truncate(self, step: int) -> None:
        pass

    def write(self, entry: dict[str, Any]) -> None:
        pass


def fit(
    stage: TrainingStage,
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    evaluate: Callable[[], dict[str, float]] | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``stage`` for ``config.steps`` steps, resuming from ``out_dir/checkpoint.pt``.

    A non-finite loss term or gradient never reaches the weights: the step is abandoned and, with
    ``config.nonfinite == "rollback"``, training goes back to the last checkpoint and skips the batch
    that failed (at most ``config.max_rollbacks`` times); with ``"stop"``, or past that number, a
    :class:`TrainingError` names the step and the term and leaves the checkpoint as it was.

    Under ``torchrun`` (``engine/distributed.py``) every rank calls ``fit`` with its slice of each
    batch; gradients are averaged over ranks, every rank takes the same branch after a non-finite
    value, and only rank 0 writes the checkpoint and the log and evaluates. A rank that loses the
    others raises :class:`DistributedError` naming the step and the last checkpoint.

    Args:
        stage: the stage to train.
        config: optimisation and bookkeeping settings.
        out_dir: the stage's folder: ``checkpoint.pt`` (training state) and ``log.jsonl``.
        device: where to train.
        evaluate: returns retrieval metrics of the current model; called every
            ``config.eval_every`` steps (0: never) and at the end.
        fingerprint: what the run's checkpoint must match to be resumed (the stage's settings
            and inputs, ``stages/common.py``).
    """
    main = distributed.is_main()  # the rank that writes files
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint or {}
    modules = stage.modules()
    cuda = device.type == "cuda"
    for module in modules.values():
        distributed.sync_batchnorm(module, device)  # in place; on CUDA under torchrun only
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
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    checkpoint_path = out_dir / CHECKPOINT

    def save(position: Position) -> None:
        if not main:  # the others read it only after the next collective, so never half-written
            return
        save_checkpoint(checkpoint_path, {
            "format": TRAINING_STATE,
            "stage": stage.name,
            "step": position.step,
            "position": asdict(position),
            "fingerprint": fingerprint,
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "stage_state": stage.extra_state() if hasattr(stage, "extra_state") else {},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if cuda else [],
        })

    def restore() -> Position:
        return _restore(checkpoint_path, stage, modules, optimizer, scheduler, fingerprint)

    if distributed.broadcast_flag(checkpoint_path.exists()):  # rank 0's file decides
        position = restore()
    else:
        position = Position()
        distributed.broadcast_modules(modules.values())
        if config.steps:
            save(position)  # the state a non-finite loss before the first checkpoint rolls back to
    start = position.step
    history = JsonlLog(out_dir / "log.jsonl", start) if main else _NoLog()
    batches = _skipping(stage, position)
    started = time.perf_counter()
    window_start, window_images = time.perf_counter(), 0
    metrics: dict[str, float] = {}
    progress = Progress(
        TextColumn(f"[bold]{stage.name}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
        disable=not (main and show_progress()), transient=False,
    )
    with progress:
        task = progress.add_task(stage.name, total=config.steps, completed=start, status="")
        for module in modules.values():
            module.train()
        while position.step < config.steps:
            step = position.step
            kill_point(f"{stage.name}:{step + 1}")
            batch_number, batch = next(batches)
            batch = to_device(batch, device, channels_last=cuda)
            position.batch = batch_number + 1
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda), \
                        distributed.collective("the forward pass"):
                    terms = stage.loss_terms(batch, step)
                fault = _agreed(_nonfinite_term(terms))
                if fault is None:
                    optimizer.zero_grad(set_to_none=True)
                    with distributed.collective("the backward pass"):
                        terms["loss"].backward()
                    if hasattr(stage, "after_backward"):  # e.g. SwAV's frozen prototypes
                        stage.after_backward(step)
                    distributed.average_gradients(parameters)  # same on every rank, so is the check
                    fault = _nonfinite_gradient(parameters)
            except DistributedError as exc:
                raise DistributedError(f"{stage.name} step {step + 1}: {exc}; the last checkpoint is "
                                       f"{checkpoint_path}") from None
            if fault is not None:
                position = _recover(fault, stage.name, step, batch_number, position, config,
                                    checkpoint_path, restore)
                save(position)  # keeps the skipped batch and the rollback count
                history.truncate(position.step)
                history.write({"step": position.step, "rollback": {
                    "failed_step": step + 1, "fault": fault[0], "value": str(fault[1]),
                    "skipped_batch": batch_number}})
                batches = _skipping(stage, position)
                progress.update(task, completed=position.step)
                continue
            optimizer.step()
            scheduler.step()
            position.step += 1
            window_images += stage.images_per_step
            done = position.step
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                entry = {"step": done, "lr": scheduler.get_last_lr()[0]}
                # The mean over ranks: a stage's terms may be per rank (SwAV's).
                logged = distributed.mean(torch.stack([v.detach().float() for v in terms.values()]))
                entry.update(zip(terms, logged.tolist(), strict=True))
                entry.update(stage.log_values())
                entry["images_per_s"] = window_images / max(now - window_start, 1e-9)
                window_start, window_images = now, 0
                history.write(entry)
                progress.update(task, status=f"loss {entry['loss']:.4f}  "
                                f"{entry['images_per_s']:.0f} img/s")
            if evaluate and config.eval_every and done % config.eval_every == 0 \
                    and done < config.steps:  # every rank: each embeds its share, rank 0 scores
                metrics = _evaluate(evaluate, modules)
                history.write({"step": done, **{f"eval/{k}": v for k, v in metrics.items()}})
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                save(position)
            progress.update(task, completed=done)
    if evaluate:
        metrics = _evaluate(evaluate, modules)
        history.write({"step": config.steps, **{f"eval/{k}": v for k, v in metrics.items()}})
    if config.steps > start:
        save(position)
    return TrainResult(config.steps - start, time.perf_counter() - started, metrics)


def _agreed(fault: tuple[str, float] | None) -> tuple[str, float] | None:
    """``fault``, or a stand-in when another rank met one: every rank must roll back together."""
    if distributed.any_rank(fault is not None) and fault is None:
        return "a loss term on another process", float("nan")
    return fault


def _skipping(stage: TrainingStage, position: Position) -> Iterator[tuple[int, Any]]:
    """``(number, batch)`` from batch ``position.batch`` on, but for the numbers in ``skipped``."""
    skipped = set(position.skipped)
    for number, batch in enumerate(stage.batches(position.batch), start=position.batch):
        if number not in skipped:
            yield number, batch


def _recover(fault: tuple[str, float], stage: str, step: int, batch_number: int, position: Position,
             config: TrainConfig, checkpoint: Path, restore: Callable[[], Position]) -> Position:
    """Roll back to the checkpoint and skip the failed batch, or raise (``nonfinite: stop``)."""
    what = f"{stage} step {step + 1}: {fault[0]} is {fault[1]}"
    if config.nonfinite == "stop":
        raise TrainingError(f"{what}; the last good checkpoint is {checkpoint}")
    if position.rollbacks >= config.max_rollbacks:
        raise TrainingError(f"{what}, after {position.rollbacks} rollback(s) (max_rollbacks="
                            f"{config.max_rollbacks}); the last good checkpoint is {checkpoint}")
    skipped, rollbacks = sorted({*position.skipped, batch_number}), position.rollbacks + 1
    restored = restore()
    restored.skipped, restored.rollbacks = skipped, rollbacks
    log.warning("%s; rolled back to step %d of %s, skipping batch %d (rollback %d of at most %d)",
                what, restored.step, checkpoint, batch_number, rollbacks, config.max_rollbacks)
    return restored


def _evaluate(evaluate: Callable[[], dict[str, float]], modules: dict[str, nn.Module]):
    for module in modules.values():
        module.eval()
    try:
        return evaluate()
    finally:
        for module in modules.values():
            module.train()


def _nonfinite_term(terms: dict[str, torch.Tensor]) -> tuple[str, float] | None:
    """``("loss term '<name>'", value)`` of the first NaN or infinite term; the total comes last."""
    names = [n for n in terms if n != "loss"] + ["loss"]
    if torch.isfinite(torch.stack([terms[n].detach().float().sum() for n in names])).all():
        return None  # one device sync for every term
    for name in names:
        value = terms[name].detach()
        if not torch.isfinite(value).all():
            return f"loss term '{name}'", float(value[~torch.isfinite(value)].reshape(-1)[0])
    return None


def _nonfinite_gradient(parameters: list[torch.Tensor]) -> tuple[str, float] | None:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    # The norm of the norms: NaN or Inf when any gradient is (or when they overflow, as bad).
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return None if torch.isfinite(norm) else ("the gradient norm", float(norm))


def _restore(path: Path, stage: TrainingStage, modules: dict[str, nn.Module], optimizer, scheduler,
             fingerprint: dict[str, Any]) -> Position:
    state = load_checkpoint(path, TRAINING_STATE)
    differing = fingerprint_differences(state.get("fingerprint", {}), fingerprint)
    if differing:
        raise CheckpointError(
            f"{path}: was written with other settings ({', '.join(differing[:8])}); "
            "remove it or use another run directory"
        )
    for name, module in modules.items():
        try:
            module.load_state_dict(state["modules"][name])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: does not match the '{name}' module ({str(exc)[:160]})") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if hasattr(stage, "load_extra_state"):
        stage.load_extra_state(state.get("stage_state", {}))
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    saved = state.get("position") or {"step": int(state["step"]), "batch": int(state["step"])}
    return Position(int(saved["step"]), int(saved["batch"]), [int(b) for b in saved.get("skipped", [])],
                    int(saved.get("rollbacks", 0)))


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two fingerprints.

    Only keys present in both count, so that a setting added to (or removed from) the code since the
    fingerprint was written does not make every existing run stale.
    """
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    return sorted(k for k in flat_saved.keys() & flat_current.keys() if flat_saved[k] != flat_current[k])


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def config_fingerprint(config: Any) -> dict[str, Any]:
    """A config section as plain data, to compare on resume (bookkeeping settings left out)."""
    return {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k not in BOOKKEEPING}
