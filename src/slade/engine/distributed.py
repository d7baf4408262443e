"""Data-parallel training across the processes ``torchrun`` starts (gloo on CPU, NCCL on GPU).

Every rank runs the whole pipeline. Each training step, a rank loads its contiguous slice of the
global batch (``data/batches.py``), embeds it, and :func:`gather` collects the embeddings of all
ranks with autograd, so that every loss, miner, basis statistic and Gaussian update sees the global
batch exactly as a single process would. Gradients are then averaged across ranks with one
all-reduce per step (:func:`average_gradients`, what ``DistributedDataParallel`` does after its
backward): since every rank computes the same global loss and ``gather``'s backward sums the
ranks' gradients, the average is the single-process gradient of the global batch. SwAV keeps its
per-rank loss and balances its Sinkhorn assignment across ranks instead (``ssl/swav.py``).

Embedding for evaluation and for pseudo labels is shared: each rank embeds its contiguous part of
the images and rank 0 receives them all (``inference.embed_dataset(across_ranks=True)``). Only
rank 0 writes files (checkpoints, logs, models, metrics, pseudo labels), scores retrieval and runs
k-means; the others wait at :func:`barrier` and read what it wrote. BatchNorm layers become
``SyncBatchNorm`` on GPU; on CPU (where PyTorch has no SyncBatchNorm) each rank normalises with its
own slice's statistics.

A rank that dies makes the others' next collective fail (or, past ``SLADE_DIST_TIMEOUT`` seconds,
time out); they stop with a :class:`DistributedError`, and ``torchrun`` stops the rest.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from slade.errors import ConfigError, DistributedError

# What gloo and NCCL say when a peer is gone or silent (they raise plain RuntimeErrors).
_LOST_PEER = re.compile(r"gloo|nccl|connection|timed out|timeout|socket|broken pipe|peer", re.IGNORECASE)


_owned = False  # whether setup() made the process group (then finish() ends it)


def timeout() -> datetime.timedelta:
    """How long a rank waits for the others (a dead or hung rank must not block the rest forever)."""
    return datetime.timedelta(seconds=float(os.environ.get("SLADE_DIST_TIMEOUT", "1800")))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local}, but this machine has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout())
    global _owned
    _owned = True
    # torchrun sends SIGTERM to the survivors when a rank fails: stop with a message, not silently.
    signal.signal(signal.SIGTERM, _terminated)
    return device


def finish() -> None:
    """Leave the process group that :func:`setup` joined, once every rank is done: a rank that
    exits while another still uses the group can abort (gloo: "terminate called without an
    active exception")."""
    global _owned
    if _owned and active():
        barrier()
        dist.destroy_process_group()
    _owned = False


def _stopping() -> None:
    """This rank is already stopping with a message: torchrun's SIGTERM must not cut it short."""
    if signal.getsignal(signal.SIGTERM) is _terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _terminated(signum, frame) -> None:
    _stopping()
    raise DistributedError(f"rank {rank()} of {world_size()}: stopped by torchrun (SIGTERM), which "
                           "stops every process when one fails; its report names the rank")


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed collective (a peer died or timed out) into a :class:`DistributedError`."""
    try:
        yield
    except RuntimeError as exc:
        if not active() or not _LOST_PEER.search(str(exc)):
            raise
        # gloo's message, without the source location it starts with ("[.../pair.cc:545] ").
        first = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip())
        first = first.splitlines()[0][:160] if first else type(exc).__name__
        _stopping()
        raise DistributedError(
            f"rank {rank()} of {world_size()}: lost contact with another process of the distributed "
            f"run during {what}: it stopped or did not answer within {timeout().total_seconds():.0f} s "
            f"({first})") from None


def barrier() -> None:
    if active():
        with collective("a barrier"):
            dist.barrier()


def shard(n: int, part: tuple[int, int] | None = None) -> slice:
    """This rank's contiguous part of a global batch of ``n`` (m-per-class groups stay whole when
    ``n / world_size`` is a multiple of m); ``part``: ``(rank, world_size)`` when not this process's."""
    index, world = part or (rank(), world_size())
    if n % world:
        raise ConfigError(f"a global batch of {n} does not split evenly over {world} processes")
    size = n // world
    return slice(index * size, (index + 1) * size)


def gather(x: torch.Tensor) -> torch.Tensor:
    """The global batch: every rank's ``x`` concatenated in rank order, differentiable.

    Its backward sums the gradients every rank computes for this rank's part.
    """
    if not active():
        return x
    with collective("gathering a batch"):
        return _Gather.apply(x.contiguous())


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's part (gloo has no reduce-scatter)
        return grad.chunk(world_size())[rank()]


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Average the gradients over ranks with a single all-reduce of one flat buffer."""
    if not active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    with collective("averaging gradients"):
        dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks (e.g. SwAV's per-rank losses, to log the global one)."""
    if not active():
        return values
    values = values.detach().float().clone()
    with collective("averaging logged values"):
        dist.all_reduce(values)
    return values / world_size()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (so that all take the same branch)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=_device())
    with collective("agreeing on a step"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (so all take the same branch)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=_device())
    with collective("waiting for rank 0"):
        dist.broadcast(t, 0)
    return bool(t.item())


def broadcast_modules(modules: Iterable[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not active():
        return
    with collective("broadcasting the model"):
        for module in modules:
            for tensor in module.state_dict().values():
                if tensor.dtype == torch.bool:  # gloo does not send booleans
                    flag = tensor.to(torch.uint8)
                    dist.broadcast(flag, 0)
                    tensor.copy_(flag.bool())
                else:
                    dist.broadcast(tensor, 0)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers of ``module`` (in place) normalise over the global batch: CUDA only."""
    if active() and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def all_gather(x: torch.Tensor, what: str) -> list[torch.Tensor]:
    """Every rank's ``x`` (same shape on every rank), in rank order; no autograd."""
    if not active():
        return [x]
    parts = [torch.empty_like(x) for _ in range(world_size())]
    with collective(what):
        dist.all_gather(parts, x.contiguous())
    return parts


def all_gather_object(obj: Any, what: str) -> list[Any]:
    """Every rank's picklable ``obj`` (small: lists of indices, messages), in rank order."""
    if not active():
        return [obj]
    objs: list[Any] = [None] * world_size()
    with collective(what):
        dist.all_gather_object(objs, obj)
    return objs


def comm_device() -> torch.device:
    """Where this rank's tensors must be for a collective: its GPU under NCCL, else the CPU."""
    return _device() if active() else torch.device("cpu")


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
