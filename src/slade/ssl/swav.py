"""SwAV: the projection head, prototypes, Sinkhorn-Knopp codes and swapped-prediction loss.

Stage 0 of SLADE pre-trains the backbone with SwAV, from "Unsupervised Learning of Visual Features
by Contrasting Cluster Assignments", Caron et al., NeurIPS 2020 (https://arxiv.org/abs/2006.09882).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class SwAVProjectionHead(nn.Sequential):
    """The SwAV projection MLP: Linear -> BatchNorm1d -> ReLU -> Linear, output not normalised.

    Args:
        in_dim: Width of the backbone features.
        hidden_dim: Width of the hidden layer.
        out_dim: Width of the projections fed to `SwAVPrototypes`.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class SwAVPrototypes(nn.Linear):
    """`n_prototypes` learnable unit vectors; the forward pass scores projections against them.

    Freezing: call `cancel_gradients(step)` between `loss.backward()` and `optimizer.step()`. It
    drops the prototypes' gradient (sets it to None, as SwAV does) while `step < freeze_steps`, so
    every torch optimiser skips them, weight decay and momentum included. Gradients are still
    computed, which keeps the autograd graph the same every step, as DistributedDataParallel needs.

    Args:
        dim: Width of the projections.
        n_prototypes: Number of prototypes (clusters) K.
        freeze_steps: Number of first optimisation steps during which the prototypes stay fixed.
    """

    def __init__(self, dim: int, n_prototypes: int, freeze_steps: int = 0) -> None:
        super().__init__(dim, n_prototypes, bias=False)
        self.freeze_steps = freeze_steps

    def forward(self, z: Tensor) -> Tensor:
        """Cosine similarities (batch, K) of the projections `z` (batch, dim) to the prototypes.

        The stored prototypes are renormalised in place first, so they stay on the unit sphere
        between optimiser steps. The write goes through `.data` so autograd does not see an in-place
        change: after the first call of a step the weights are already unit-norm, and a later call
        (the queue's scores, another crop resolution) must not invalidate the first call's graph.
        """
        self.weight.data.copy_(F.normalize(self.weight.data, dim=1))
        return F.linear(F.normalize(z, dim=1), self.weight)

    def cancel_gradients(self, step: int) -> None:
        """Drop the prototypes' gradient while `step < freeze_steps` (call after `backward()`)."""
        if step < self.freeze_steps:
            self.weight.grad = None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _logsumexp_over_batch(log_q: Tensor) -> Tensor:
    """Log of each prototype's total mass over the batch, over all ranks when distributed."""
    if not _distributed():
        return torch.logsumexp(log_q, dim=0, keepdim=True)
    # Every rank subtracts the same global max, so exp() stays in range and the sums add up.
    top = log_q.amax(dim=0, keepdim=True)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    mass = (log_q - top).exp().sum(dim=0, keepdim=True)
    dist.all_reduce(mass)
    return mass.log() + top


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp codes: soft assignments that split the batch equally among the prototypes.

    Works in log-space, so scores / epsilon of any size stay finite. When `torch.distributed` is
    initialised, the sums over the batch run over the batches of all ranks, as in SwAV's
    `distributed_sinkhorn`.

    Args:
        scores: Prototype scores, shape (batch, K).
        epsilon: Entropy regularisation; smaller gives sharper codes.
        iterations: Number of Sinkhorn-Knopp iterations (at least 1).

    Returns:
        Codes Q, shape (batch, K), without gradient; each row sums to 1 and each prototype's column
        sums to about batch / K.
    """
    if iterations < 1:
        raise ValueError(f"sinkhorn needs at least one iteration, got {iterations}")
    # At least float32: half precision is too coarse for the sharp codes epsilon 0.05 gives.
    log_q = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)) / epsilon
    for _ in range(iterations):
        # Equal partition: every prototype gets the same total mass. The constant the total should
        # be (batch / K) is left out because the row normalisation below removes it anyway.
        log_q = log_q - _logsumexp_over_batch(log_q)
        # Each sample's codes form a distribution over the prototypes.
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q.exp()


class SwAVLoss(nn.Module):
    """Swapped prediction: the codes of each large crop are predicted from every other crop.

    Args:
        temperature: Softmax temperature of the predictions.
        epsilon: Sinkhorn entropy regularisation.
        iterations: Sinkhorn-Knopp iterations.
    """

    def __init__(
        self, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.epsilon = epsilon
        self.iterations = iterations

    def forward(
        self,
        high_res_scores: list[Tensor],
        low_res_scores: list[Tensor],
        queue_scores: list[Tensor] | None = None,
    ) -> Tensor:
        """Mean cross-entropy between each large crop's codes and the other crops' predictions.

        Args:
            high_res_scores: Prototype scores (batch, K) of each large crop; codes come from these.
            low_res_scores: Prototype scores (batch, K) of each small crop; these only predict.
            queue_scores: Per large crop, scores (queue, K) of its queued projections against the
                current prototypes; appended before Sinkhorn so small batches still spread over
                all prototypes, and dropped from the codes after.
        """
        crops = high_res_scores + low_res_scores
        if len(high_res_scores) < 1 or len(crops) < 2:
            raise ValueError("SwAVLoss needs at least one large crop and two crops in all")
        if queue_scores is not None and len(queue_scores) != len(high_res_scores):
            raise ValueError("queue_scores needs one entry per large crop")
        losses = []
        for i, scores in enumerate(high_res_scores):
            if queue_scores is not None:
                scores = torch.cat([scores, queue_scores[i]])
            codes = sinkhorn(scores, self.epsilon, self.iterations)[: len(high_res_scores[i])]
            cross_entropies = [
                -(codes * F.log_softmax(other / self.temperature, dim=1)).sum(dim=1).mean()
                for v, other in enumerate(crops)
                if v != i
            ]
            losses.append(torch.stack(cross_entropies).mean())
        return torch.stack(losses).mean()


class ProjectionQueue(nn.Module):
    """A FIFO queue of past projections of one large crop, SwAV's help for small batches.

    Use one queue per large crop. Each step, score the queued projections against the current
    prototypes under `torch.no_grad()` and pass them to `SwAVLoss` as `queue_scores`, then enqueue
    this step's projections of the crop. The queue starts empty and grows to `length` rows; its rows
    are a buffer, so the model's `state_dict` keeps them. Under DistributedDataParallel keep it
    outside the wrapped module: each rank queues its own projections, and DDP's buffer broadcast
    would overwrite them with rank 0's.

    Args:
        length: Number of past projections kept.
        dim: Width of the projections.
    """

    queue: Tensor  # buffers
    filled: Tensor

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("queue", torch.zeros(length, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def projections(self) -> Tensor:
        """The stored projections, newest first, shape (filled, dim)."""
        return self.queue[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, projections: Tensor) -> None:
        """Add a batch (batch, dim) at the front, dropping the oldest rows beyond `length`."""
        length = len(self.queue)
        self.queue.copy_(
            torch.cat([projections.detach().to(self.queue.dtype), self.queue])[:length]
        )
        self.filled.fill_(min(int(self.filled) + len(projections), length))
