"""The training loop every stage shares.

A stage supplies its modules, its batches and its loss terms (``engine/stage.py``); the engine
does the rest: AdamW with warm-up and cosine decay, the precision (``engine/precision.py``: bf16
autocast and channels-last on GPU by default, fp16 with a gradient scaler) and ``torch.compile``, a
finite-loss guard that names the term and rolls back to the last checkpoint, periodic evaluation,
resumable checkpoints (``engine/checkpoint.py``), a rich progress bar and a JSONL log of every
logged scalar. Batches are a pure function of their number (``data/batches.py``), so a resumed run
sees what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from slade import run_layout as layout
from slade.config import TrainConfig
from slade.engine import distributed
from slade.engine.checkpoint import CheckpointSaver, Position
from slade.engine.device import to_device
from slade.engine.faults import kill_point
from slade.engine.precision import Precision, resolve_precision
from slade.engine.preemption import StopSignals
from slade.engine.stage import TrainingStage
from slade.errors import DistributedError, TrainingError
from slade.io import write_text, writing
from slade.models.embedder import EmbeddingNet
from slade.tracking import TrackedLog, Tracking

log = logging.getLogger("slade")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_metrics: dict[str, float]


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
        with writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def commit(self, step: int) -> None:
        """The steps up to ``step`` are in a checkpoint (no rollback undoes them): the file has them
        already; a tracked log (``tracking.py``) sends them on."""


class _NoLog:
    """The log of a rank other than 0: rank 0 writes the run's files."""

    def truncate(self, step: int) -> None:
        pass

    def write(self, entry: dict[str, Any]) -> None:
        pass

    def commit(self, step: int) -> None:
        pass


History = JsonlLog | _NoLog | TrackedLog  # a stage's log: the file, nothing (rank > 0), or tracked too


def fit(
    stage: TrainingStage,
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    evaluate: Callable[[], dict[str, float]] | None = None,
    fingerprint: dict[str, Any] | None = None,
    precision: Precision | None = None,
    compile: bool = False,
    tracking: Tracking | None = None,
) -> TrainResult:
    """Train ``stage`` for ``config.steps`` steps, resuming from ``out_dir/checkpoint.pt``.

    A non-finite loss term or gradient never reaches the weights: the step is abandoned and, with
    ``config.nonfinite == "rollback"``, training goes back to the last checkpoint and skips the batch
    that failed (at most ``config.max_rollbacks`` times); with ``"stop"``, or past that number, a
    :class:`TrainingError` names the step and the term and leaves the checkpoint as it was. In fp16
    the gradient scaler owns non-finite gradients: it skips that step and lowers the scale.

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
            and inputs, ``fingerprint.py``).
        precision: autocast, layout and loss scaling (``train.precision``); None: ``auto``.
        compile: ``torch.compile`` the backbone of each embedding network (``train.compile``).
        tracking: where the logged scalars also go (TensorBoard, MLflow: ``tracking.py``).
    """
    main = distributed.is_main()  # the rank that writes files
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    precision = precision or resolve_precision("auto", device)
    if main:
        log.info("%s: %s, %s, compile %s", stage.name, device, precision.describe(),
                 "on" if compile else "off")
    modules, cuda = stage.modules(), device.type == "cuda"
    _place(modules, device, precision.channels_last, compile)
    optimizer, scheduler = _optimizer(stage.parameter_groups(), config)
    scaler = precision.scaler(device)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    checkpoint = CheckpointSaver(out_dir / layout.CHECKPOINT, stage, modules, optimizer, scheduler,
                                 fingerprint or {}, cuda, write=main, scaler=scaler)
    stop = StopSignals(stage.name)  # a signal during the first checkpoint's write: stop after step 1
    resumed = distributed.broadcast_flag(checkpoint.exists())  # rank 0's file decides
    with stop:
        if resumed:
            position = checkpoint.restore()
        else:
            position = Position()
            distributed.broadcast_modules(modules.values())
            if config.steps:  # the state a non-finite loss before the first checkpoint rolls back to
                checkpoint.save(position)
    start = position.step
    history: History = JsonlLog(out_dir / layout.LOG, start) if main else _NoLog()
    if main and tracking is not None:
        history = tracking.stage_log(stage.name, history, resumed)
    batches = _skipping(stage, position)
    started, speed = time.perf_counter(), _Throughput()
    metrics: dict[str, float] = {}
    with _progress_bar(stage.name, main and show_progress()) as progress, stop:
        task = progress.add_task(stage.name, total=config.steps, completed=start, status="")
        for module in modules.values():
            module.train()
        while position.step < config.steps:
            step = position.step
            kill_point(f"{stage.name}:{step + 1}")
            batch_number, batch = next(batches)
            position.batch = batch_number + 1
            terms, fault = _step(stage, to_device(batch, device, channels_last=precision.channels_last),
                                 step, optimizer, scaler, parameters, precision.autocast(device),
                                 checkpoint.path)
            if fault is not None:
                position = _recover(fault, stage.name, step, batch_number, position, config, checkpoint,
                                    history)
                batches = _skipping(stage, position)
                progress.update(task, completed=position.step)
                continue
            scaler.step(optimizer)  # optimizer.step(), but in fp16 not after an overflow
            scaler.update()
            scheduler.step()
            position.step += 1
            speed.images += stage.images_per_step
            done = position.step
            if done % config.log_every == 0 or done == config.steps:
                entry = _log_entry(done, scheduler, terms, stage, speed)
                history.write(entry)
                progress.update(task, status=f"loss {entry['loss']:.4f}  {entry['images_per_s']:.0f} img/s")
            if evaluate and config.eval_every and done % config.eval_every == 0 \
                    and done < config.steps:  # every rank: each embeds its share, rank 0 scores
                metrics = _evaluate(evaluate, modules, history, done)
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                checkpoint.save(position)
                history.commit(done)
            stop.check(done, checkpoint, position)  # after SIGTERM: the checkpoint, then stop
            progress.update(task, completed=done)
    if evaluate:
        metrics = _evaluate(evaluate, modules, history, config.steps)
    if config.steps > start:
        checkpoint.save(position)
    history.commit(position.step)
    return TrainResult(config.steps - start, time.perf_counter() - started, metrics)


def _place(modules: dict[str, nn.Module], device: torch.device, channels_last: bool, compile: bool) -> None:
    for module in modules.values():
        distributed.sync_batchnorm(module, device)  # in place; on CUDA under torchrun only
        module.to(device)
        if channels_last:
            module.to(memory_format=torch.channels_last)
        if compile and isinstance(module, EmbeddingNet):
            # The backbone, not the whole network: SwAV calls forward_features, which bypasses the
            # network's own __call__. In place, so the state dict's keys do not change.
            module.backbone.compile()


def _optimizer(groups: list[dict[str, Any]], config: TrainConfig):
    """AdamW over the stage's groups, each with its own warm-up and cosine schedule."""
    schedules = []
    for group in groups:
        group["lr"] = config.lr * group.pop("lr_scale", 1.0)
        schedules.append(warmup_cosine(config.steps, config.warmup_steps, group.pop("start_step", 0)))
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)


def _step(stage: TrainingStage, batch: Any, step: int, optimizer, scaler: torch.amp.GradScaler,
          parameters: list[torch.Tensor], autocast: contextlib.AbstractContextManager,
          checkpoint: Path) -> tuple[dict[str, torch.Tensor], tuple | None]:
    """One step's loss terms and gradients; ``(terms, fault)``, fault None when all are finite."""
    try:
        with autocast, distributed.collective("the forward pass"):
            terms = stage.loss_terms(batch, step)
        fault = _agreed(_nonfinite_term(terms))
        if fault is None:
            optimizer.zero_grad(set_to_none=True)
            with distributed.collective("the backward pass"):
                scaler.scale(terms["loss"]).backward()
            stage.after_backward(step)  # e.g. SwAV's frozen prototypes
            distributed.average_gradients(parameters)  # same on every rank, so is the check
            scaler.unscale_(optimizer)
            if not scaler.is_enabled():  # in fp16 an overflow is the scaler's to handle
                fault = _nonfinite_gradient(parameters)
    except DistributedError as exc:
        raise DistributedError(f"{stage.name} step {step + 1}: {exc}; the last checkpoint is "
                               f"{checkpoint}") from None
    return terms, fault


class _Throughput:
    """Images trained since the last logged step, and when that was."""

    def __init__(self) -> None:
        self.since, self.images = time.perf_counter(), 0

    def per_second(self, now: float) -> float:
        rate = self.images / max(now - self.since, 1e-9)
        self.since, self.images = now, 0
        return rate


def _log_entry(done: int, scheduler, terms: dict[str, torch.Tensor], stage: TrainingStage,
               speed: _Throughput) -> dict[str, Any]:
    now = time.perf_counter()
    entry = {"step": done, "lr": scheduler.get_last_lr()[0]}
    # The mean over ranks: a stage's terms may be per rank (SwAV's).
    logged = distributed.mean(torch.stack([v.detach().float() for v in terms.values()]))
    entry.update(zip(terms, logged.tolist(), strict=True))
    entry.update(stage.log_values())
    entry["images_per_s"] = speed.per_second(now)
    return entry


def _progress_bar(name: str, enabled: bool) -> Progress:
    return Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


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
             config: TrainConfig, checkpoint: CheckpointSaver, history: History) -> Position:
    """Roll back to the checkpoint and skip the failed batch, or raise (``nonfinite: stop``).

    The log loses the steps rolled back and records the rollback; the checkpoint keeps the skipped
    batch and the rollback count.
    """
    what, path = f"{stage} step {step + 1}: {fault[0]} is {fault[1]}", checkpoint.path
    if config.nonfinite == "stop":
        raise TrainingError(f"{what}; the last good checkpoint is {path}")
    if position.rollbacks >= config.max_rollbacks:
        raise TrainingError(f"{what}, after {position.rollbacks} rollback(s) (max_rollbacks="
                            f"{config.max_rollbacks}); the last good checkpoint is {path}")
    skipped, rollbacks = sorted({*position.skipped, batch_number}), position.rollbacks + 1
    restored = checkpoint.restore()
    restored.skipped, restored.rollbacks = skipped, rollbacks
    log.warning("%s; rolled back to step %d of %s, skipping batch %d (rollback %d of at most %d)",
                what, restored.step, path, batch_number, rollbacks, config.max_rollbacks)
    checkpoint.save(restored)
    history.truncate(restored.step)
    history.write({"step": restored.step, "rollback": {
        "failed_step": step + 1, "fault": fault[0], "value": str(fault[1]), "skipped_batch": batch_number}})
    return restored


def _evaluate(evaluate: Callable[[], dict[str, float]], modules: dict[str, nn.Module],
              history: History, step: int) -> dict[str, float]:
    """The metrics of the modules in eval mode, logged at ``step``."""
    for module in modules.values():
        module.eval()
    try:
        metrics = evaluate()
    finally:
        for module in modules.values():
            module.train()
    history.write({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    return metrics


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
