"""The student's unlabeled pair selection (``student.mining``, ``student.mine_hard``), chosen once.

Each choice builds a pytorch-metric-learning miner (or None: every pair) whose ``(a1, p, a2, n)``
pairs the unlabeled ranking term of Eq. 9 is computed on, and says whether the student trains the
feature basis (Eqs. 3-6) for it. To add a choice: write the miner, add an entry to ``MININGS``
built from :class:`MiningInputs`, and add its name to ``StudentConfig.mining``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_metric_learning.miners import BaseMiner

from slade.basis.confident_pairs import ConfidentPairMiner, intersect_pairs
from slade.basis.feature_basis import FeatureBasis
from slade.context.miner import ContextualPairMiner
from slade.context.neighbourhood import ContextualSimilarity
from slade.errors import ConfigError


@dataclass
class MiningInputs:
    """What a mining choice may be built from."""

    basis: FeatureBasis
    miner: BaseMiner | None  # the PML miner of ``student.miner`` (None: none configured)
    context: ContextualSimilarity | None = None  # the pool's neighbourhoods (``contextual`` only)
    pseudo_labels: np.ndarray | None = None  # of every pool image
    context_threshold: float = 0.0
    context_negative_below: float = 0.0


@dataclass(frozen=True)
class Mining:
    """One ``student.mining`` choice."""

    build: Callable[[MiningInputs], BaseMiner | None]
    trains_basis: bool
    # The miner is called with the images' pool indices instead of their pseudo labels.
    by_index: bool = False
    # It keeps some pseudo pairs and drops others (a run of steps without any is warned about).
    filters: bool = True


MININGS: dict[str, Mining] = {
    # Eq. 7: same pseudo label and s_ij >= mu+, or different pseudo labels and s_ij <= mu-.
    "confident": Mining(lambda m: ConfidentPairMiner(m.basis), trains_basis=True),
    # Eq. 7 without the pseudo-label condition.
    "thresholds_only": Mining(lambda m: ConfidentPairMiner(m.basis, use_pseudo_labels=False),
                              trains_basis=True),
    # Not in the paper: drop only the pseudo pairs the basis contradicts (thresholds swapped).
    "lenient": Mining(lambda m: ConfidentPairMiner(m.basis, lenient=True), trains_basis=True),
    # The naive student: the PML miner's pairs of every pseudo label, no basis.
    "all_pairs": Mining(lambda m: m.miner, trains_basis=False, filters=False),
    # Not in the paper: the pseudo pairs whose k-reciprocal neighbourhoods in the pool agree
    # (context/), then the PML miner's choice among them when one is set.
    "contextual": Mining(lambda m: _contextual(m), trains_basis=False, by_index=True),
}


def _contextual(inputs: MiningInputs) -> ContextualPairMiner:
    if inputs.context is None or inputs.pseudo_labels is None:
        raise ConfigError("student.mining=contextual: no contextual similarity of the pool given")
    return ContextualPairMiner(inputs.context, inputs.pseudo_labels, inputs.context_threshold,
                               then=inputs.miner, negative_below=inputs.context_negative_below)


class IntersectionMiner(BaseMiner):
    """The pairs of ``first`` that ``second`` also selects (``student.mine_hard``: the hard ones)."""

    def __init__(self, first: BaseMiner, second: BaseMiner, **kwargs) -> None:
        super().__init__(**kwargs)
        self.first, self.second = first, second

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        return intersect_pairs(self.first(embeddings, labels), self.second(embeddings, labels),
                               len(embeddings))


def unlabeled_miner(mining: str, mine_hard: bool, inputs: MiningInputs) -> BaseMiner | None:
    """The miner of the unlabeled batch for ``student.mining`` and ``student.mine_hard``."""
    choice = MININGS[mining]
    miner = choice.build(inputs)
    if not mine_hard:
        return miner
    if not (choice.trains_basis and inputs.miner):  # (`contextual` applies student.miner itself)
        raise ConfigError("student.mine_hard needs student.miner and a mining that uses the "
                          f"basis (student.mining={mining})")
    return IntersectionMiner(miner, inputs.miner)


def pair_counts(pairs: tuple[torch.Tensor, ...] | None) -> dict[str, float]:
    """The positive and negative pairs mined (nothing when every pair is used)."""
    return {"pos_pairs": float(len(pairs[0])), "neg_pairs": float(len(pairs[2]))} if pairs else {}
