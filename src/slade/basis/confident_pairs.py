"""Confident pseudo pairs (METHOD.md, Eq. 7) as a pytorch-metric-learning miner.

Because it returns PML's ``(a1, p, a2, n)`` pair indices, the unlabeled ranking term of Eq. 9 can be
any PML pair loss: ``loss(embeddings, pseudo_labels, indices_tuple=miner(embeddings, pseudo_labels))``.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from slade.basis.feature_basis import FeatureBasis


class ConfidentPairMiner(BaseMiner):
    """Keeps the pseudo pairs whose basis similarity agrees with their pseudo label.

    Positives: same pseudo label and ``s_ij >= T1``; negatives: different pseudo label and
    ``s_ij <= T2``, with ``T1 = mu+`` and ``T2 = mu-`` the means of the basis's momentum Gaussians.

    Args:
        basis: the feature basis whose similarity (Eq. 4) and Gaussians (Eq. 6) decide.
        use_pseudo_labels: ``False`` gives the ablation that keeps every pair above ``T1`` as a
            positive and every pair below ``T2`` as a negative, whatever their pseudo labels.
        lenient: swap the thresholds (``T1 = mu-``, ``T2 = mu+``): drop only the pseudo pairs
            the basis contradicts (a same-label pair less similar than an average
            different-label pair, and the converse), not every pair it is unsure of. Not in the
            paper: an ablation (``student.mining: lenient``).
    """

    def __init__(self, basis: FeatureBasis, use_pseudo_labels: bool = True, lenient: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.basis = basis
        self.use_pseudo_labels = use_pseudo_labels
        self.lenient = lenient

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        same_source = ref_emb is embeddings
        similarity = self.basis.similarity(embeddings, None if same_source else ref_emb)
        t1, t2 = self.basis.mu_pos, self.basis.mu_neg
        if self.lenient:
            t1, t2 = t2, t1
        if self.use_pseudo_labels:
            a1, p, a2, n = lmu.get_all_pairs_indices(labels, labels if same_source else ref_labels)
            keep_pos = similarity[a1, p] >= t1
            keep_neg = similarity[a2, n] <= t2
            return a1[keep_pos], p[keep_pos], a2[keep_neg], n[keep_neg]
        positive = similarity >= t1
        negative = similarity <= t2
        if same_source:
            positive.fill_diagonal_(False)
            negative.fill_diagonal_(False)
        a1, p = torch.where(positive)
        a2, n = torch.where(negative)
        return a1, p, a2, n


def intersect_pairs(a: tuple, b: tuple, n: int) -> tuple:
    """The pairs of PML pair tuple ``a`` that are also in ``b`` (indices below ``n``)."""
    out = []
    for (ia, ja), (ib, jb) in (((a[0], a[1]), (b[0], b[1])), ((a[2], a[3]), (b[2], b[3]))):
        keep = torch.isin(ia * n + ja, ib * n + jb)
        out += [ia[keep], ja[keep]]
    return tuple(out)
