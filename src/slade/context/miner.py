"""Pseudo pairs kept by their contextual similarity, as a pytorch-metric-learning miner (not in SLADE).

On omniglot-shift a k-means cluster of the teacher's embeddings joins two or three characters, so
most of its same-cluster pairs are wrong, while different-cluster pairs are almost all right
(``benchmarks/results/pool_purity.md``). The miner keeps the same-cluster pairs whose contextual
similarity (``context/neighbourhood.py``) reaches ``threshold`` as positives, and the
different-cluster pairs below it as negatives; any PML pair loss trains on them. With
``negative_below``, the same-cluster pairs below that similarity are negatives too (a label fixed
rather than a pair dropped: in a cluster, the pairs whose neighbourhoods share nothing are mostly
two characters).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_metric_learning.miners import BaseMiner

from slade.basis.confident_pairs import intersect_pairs
from slade.context.neighbourhood import ContextualSimilarity


class ContextualPairMiner(BaseMiner):
    """Pseudo pairs filtered by the contextual similarity of the two images in the pool.

    Call it as ``miner(embeddings, indices)`` with the images' indices in the pool: it knows their
    pseudo labels and their neighbourhoods (the embeddings only fix the device).

    Args:
        similarity: the pool's contextual similarity.
        pseudo_labels: the pseudo label of every pool image.
        threshold: positives need ``sim >= threshold``; negatives need ``sim < threshold``.
        negative_below: same-label pairs with ``sim < negative_below`` are negatives (0: none, they
            are dropped); at most ``threshold``. A ``then`` miner that picks by label drops them.
        then: a PML miner that then chooses among the kept pairs (called with the pseudo labels).
    """

    def __init__(self, similarity: ContextualSimilarity, pseudo_labels: np.ndarray, threshold: float,
                 then: BaseMiner | None = None, negative_below: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= negative_below <= threshold:
            raise ValueError(f"negative_below={negative_below}: must be in [0, threshold={threshold}]")
        self.similarity = similarity
        self.pseudo_labels = torch.as_tensor(np.asarray(pseudo_labels))
        self.threshold = threshold
        self.negative_below = negative_below
        self.then = then
        self.last_similarity: torch.Tensor | None = None

    def kept_share(self) -> float:
        """The share of the last batch's same-label pairs kept as positives."""
        sim = self.last_similarity
        return float((sim >= self.threshold).float().mean()) if sim is not None and sim.numel() else 0.0

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        if ref_emb is not embeddings:
            raise ValueError("ContextualPairMiner pairs a batch with itself only")
        indices = labels.cpu()
        sim = self.similarity.matrix(indices).to(embeddings.device)
        pseudo = self.pseudo_labels[indices].to(embeddings.device)
        same = pseudo[:, None] == pseudo[None, :]
        same.fill_diagonal_(False)
        different = pseudo[:, None] != pseudo[None, :]
        close = sim >= self.threshold
        a1, p = torch.where(same & close)
        a2, n = torch.where((different & ~close) | (same & (sim < self.negative_below)))
        self.last_similarity = sim[same]
        if self.then is None:
            return a1, p, a2, n
        return intersect_pairs((a1, p, a2, n), self.then(embeddings, pseudo), len(embeddings))
