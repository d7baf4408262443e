"""Feature basis learning (METHOD.md, Eqs. 2-6).

A learnable basis ``W_a`` (``k x d``) maps an embedding to basis responses ``r = W_a f(x)``. Trained
with cross entropy on labeled data (Eq. 3) its rows become class-wise directions; the cosine of two
samples' responses (Eq. 4) is then a similarity that generalises from labeled to unlabeled data.
Same-cluster and different-cluster pairs of the unlabeled batch have their basis similarities
modelled by two Gaussians, pushed apart by ``L_SD`` (Eq. 5) and tracked by momentum (Eq. 6); their
means are the thresholds that decide which pseudo pairs are confident (Eq. 7, ``ConfidentPairMiner``).

Choices where the paper's exact form could not be recovered (configurable where it matters):

- The rows of ``W_a`` are L2-normalised, so responses are cosines and the cross-entropy ``scale``
  is a temperature (as in NormFace). This changes Eq. 4 too: the cosine of two response vectors is
  invariant to one scale shared by every row of ``W_a``, not to a different scale per row, so the
  similarity is that of the normalised basis, not of the raw ``W_a``.
- ``L_SD = [mu- - mu+ + margin]_+ + w (var+ + var-)`` is computed on the batch's statistics. The
  momentum Gaussians of Eq. 6 are kept without gradient and supply the thresholds of Eq. 7: blending
  the batch into a constant history before the loss would only scale its gradient by ``1 - beta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slade.engine.checkpoint import load_checkpoint, save_checkpoint
from slade.errors import CheckpointError

BASIS_FORMAT = "slade.feature-basis"


@dataclass
class PairStatistics:
    """Mean and variance of the similarities of same-label (pos) and different-label (neg) pairs.

    A statistic is ``None`` when the batch has no pair of that kind.
    """

    mu_pos: torch.Tensor | None
    var_pos: torch.Tensor | None
    mu_neg: torch.Tensor | None
    var_neg: torch.Tensor | None


def pair_statistics(similarity: torch.Tensor, labels: torch.Tensor) -> PairStatistics:
    """Gaussian statistics of a square similarity matrix, over each unordered pair once."""
    n = len(labels)
    i, j = torch.triu_indices(n, n, offset=1, device=similarity.device)
    values = similarity[i, j]
    same = labels[i] == labels[j]

    def moments(v: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if v.numel() == 0:
            return None, None
        mean = v.mean()
        return mean, (v - mean).pow(2).mean()

    return PairStatistics(*moments(values[same]), *moments(values[~same]))


def similarity_distribution_loss(stats: PairStatistics, margin: float, variance_weight: float
                                 ) -> torch.Tensor:
    """Eq. 5: separate the two Gaussians by ``margin`` and keep them narrow.

    Terms of a pair kind absent from the batch are left out.
    """
    zero = next(v for v in vars(stats).values() if v is not None) * 0.0
    loss = zero
    if stats.mu_pos is not None and stats.mu_neg is not None:
        loss = loss + F.relu(stats.mu_neg - stats.mu_pos + margin)
    for var in (stats.var_pos, stats.var_neg):
        if var is not None:
            loss = loss + variance_weight * var
    return loss


class FeatureBasis(nn.Module):
    """The basis ``W_a`` and the momentum Gaussians of basis similarity (Eqs. 2-6).

    Args:
        dim: embedding size ``d``.
        size: number of basis vectors ``k`` (SLADE's default: the number of labeled classes).
        scale: the scale of the basis responses in the cross entropy (Eq. 3).
        momentum: ``beta`` of Eq. 6.
    """

    # Buffers (registered by name below), declared for type checkers.
    mu_pos: torch.Tensor
    var_pos: torch.Tensor
    mu_neg: torch.Tensor
    var_neg: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, dim: int, size: int, scale: float = 16.0, momentum: float = 0.99,
                 normalise: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size, dim) / dim**0.5)
        self.scale = scale
        self.momentum = momentum
        self.normalise = normalise
        # Buffers, so that checkpoints keep the Gaussians.
        for name in ("mu_pos", "var_pos", "mu_neg", "var_neg"):
            self.register_buffer(name, torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Basis responses ``r = W_a f(x)`` (Eq. 2), rows of ``W_a`` normalised unless told not to."""
        return F.linear(z, F.normalize(self.weight, dim=1) if self.normalise else self.weight)

    def classification_loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 3: softmax cross entropy of the scaled responses against the class labels."""
        return F.cross_entropy(self.scale * self(z), labels)

    def similarity(self, z: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 4: ``s_ij = cos(r_i, r_j)`` between the rows of ``z`` and of ``ref`` (default ``z``)."""
        r = F.normalize(self(z), dim=1)
        r_ref = r if ref is None else F.normalize(self(ref), dim=1)
        return r @ r_ref.T

    def blend(self, stats: PairStatistics) -> PairStatistics:
        """The Gaussians Eq. 6 would make of ``stats``, with gradient through the batch's part."""
        if not bool(self.initialized):
            return stats
        beta = self.momentum

        def mix(batch: torch.Tensor | None, name: str) -> torch.Tensor | None:
            return None if batch is None else (1.0 - beta) * batch + beta * getattr(self, name)

        names = ("mu_pos", "var_pos", "mu_neg", "var_neg")
        return PairStatistics(*(mix(getattr(stats, n), n) for n in names))

    @torch.no_grad()
    def update_gaussians(self, stats: PairStatistics) -> None:
        """Eq. 6: ``mu <- (1 - beta) mu_batch + beta mu``; an absent pair kind keeps its Gaussian.

        The first batch initialises the Gaussians directly, so they need no burn-in from zero.
        """
        for name in ("mu_pos", "var_pos", "mu_neg", "var_neg"):
            batch = getattr(stats, name)
            if batch is None:
                continue
            current = getattr(self, name)
            beta = self.momentum if self.initialized else 0.0
            current.copy_((1.0 - beta) * batch.detach().float() + beta * current)
        if stats.mu_pos is not None and stats.mu_neg is not None:
            self.initialized.fill_(True)

    def gaussians(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in ("mu_pos", "var_pos", "mu_neg", "var_neg")}


def save_basis(path: str | Path, basis: FeatureBasis) -> Path:
    """Write ``basis`` (``W_a``, the Gaussians, scale, momentum, row normalisation) as a file of its own."""
    return save_checkpoint(path, {
        "format": BASIS_FORMAT,
        "scale": basis.scale,
        "momentum": basis.momentum,
        "normalise": basis.normalise,
        "state_dict": {k: v.detach().cpu() for k, v in basis.state_dict().items()},
    })


def load_basis(path: str | Path) -> FeatureBasis:
    """Read a basis :func:`save_basis` wrote (tensors and plain data only).

    Raises:
        CheckpointError: missing, unsafe, corrupt, or not a feature basis.
    """
    state = load_checkpoint(path, BASIS_FORMAT)
    try:
        weight = state["state_dict"]["weight"]
        basis = FeatureBasis(weight.shape[1], weight.shape[0], float(state["scale"]),
                             float(state["momentum"]), bool(state.get("normalise", True)))
        basis.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: incomplete feature basis ({str(exc)[:160]})") from None
    return basis
