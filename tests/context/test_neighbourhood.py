"""Contextual similarity over a pool (k-reciprocal neighbourhoods) and the miner built on it."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from slade.context.miner import ContextualPairMiner
from slade.context.neighbourhood import k_reciprocal_encoding, neighbour_jaccard
from slade.errors import ConfigError


def blobs(n_classes=40, per_class=25, noise=1.2, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_encodings_are_distributions_and_similarity_is_a_symmetric_overlap():
    x, _ = blobs()
    context = k_reciprocal_encoding(x, k=10, k2=4)
    np.testing.assert_allclose(context.encodings.sum(axis=1).A1, 1.0, atol=1e-5)
    m = context.matrix(np.arange(30)).numpy()
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T, atol=1e-6)
    assert m.min() >= 0.0 and m.max() <= 1.0 + 1e-6
    # The batch matrix and the pair lookup agree, and match the definition on dense rows.
    dense = context.encodings[[3, 17]].toarray()
    expected = np.minimum(dense[0], dense[1]).sum() / np.maximum(dense[0], dense[1]).sum()
    assert m[3, 17] == pytest.approx(expected, rel=1e-5)
    assert context.pairs(np.array([3]), np.array([17]))[0] == pytest.approx(expected, rel=1e-5)


def test_far_apart_groups_share_no_neighbourhood():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 8)) * 0.05 + np.eye(8)[0] * 5
    b = rng.normal(size=(12, 8)) * 0.05 + np.eye(8)[1] * 5
    x = np.concatenate([a, b]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = k_reciprocal_encoding(x, k=5, k2=2).matrix(np.arange(24)).numpy()
    assert m[:12, 12:].max() == 0.0
    assert m[:12, :12].mean() > 0.2 and m[12:, 12:].mean() > 0.2


def test_neighbourhoods_rank_same_class_pairs_above_the_cosine():
    """On noisy blobs the pool's context separates same-class from other pairs better than the
    pair's own cosine (the reason the signal exists)."""
    x, labels = blobs()
    i, j = np.triu_indices(len(x), 1)
    close = np.einsum("ij,ij->i", x[i], x[j]) > 0.2  # the pairs a cluster could join
    i, j = i[close], j[close]
    truth = labels[i] == labels[j]
    cosine = roc_auc_score(truth, np.einsum("ij,ij->i", x[i], x[j]))
    reciprocal = roc_auc_score(truth, k_reciprocal_encoding(x, k=20, k2=6).pairs(i, j))
    jaccard = roc_auc_score(truth, neighbour_jaccard(x, k=20).pairs(i, j))
    assert reciprocal > cosine + 0.02 and jaccard > cosine
    assert reciprocal > 0.9


def test_a_neighbourhood_larger_than_the_pool_is_refused():
    x, _ = blobs(n_classes=2, per_class=5)
    with pytest.raises(ConfigError, match=r"student.context_k=10: a neighbourhood larger than the pool "
                                          r"\(10 images\)"):
        k_reciprocal_encoding(x, k=10)
    with pytest.raises(ConfigError, match="at least 1"):
        k_reciprocal_encoding(x, k=0)
    with pytest.raises(ConfigError, match=r"student.context_k=10: a neighbourhood larger than the pool "
                                          r"\(10 images\); it must be below 10"):
        neighbour_jaccard(x, k=10)


def test_miner_keeps_same_label_pairs_with_context_and_other_pairs_without():
    x, labels = blobs(n_classes=6, per_class=10, noise=1.0)
    context = k_reciprocal_encoding(x, k=8, k2=3)
    pseudo = labels // 2  # each pseudo label joins two classes: half its pairs are wrong
    miner = ContextualPairMiner(context, pseudo, threshold=0.15)
    batch = torch.tensor([0, 1, 2, 10, 11, 12, 20, 21, 30, 31, 45, 46])
    a1, p, a2, n = miner(torch.zeros(len(batch), 4), batch)
    sim = context.matrix(batch.numpy()).numpy()
    pl = pseudo[batch.numpy()]
    expected_pos = {(a, b) for a in range(12) for b in range(12)
                    if a != b and pl[a] == pl[b] and sim[a, b] >= 0.15}
    expected_neg = {(a, b) for a in range(12) for b in range(12) if pl[a] != pl[b] and sim[a, b] < 0.15}
    assert set(zip(a1.tolist(), p.tolist(), strict=True)) == expected_pos
    assert set(zip(a2.tolist(), n.tolist(), strict=True)) == expected_neg
    assert expected_pos and expected_neg
    # Kept positives are mostly right although half of the pseudo pairs are wrong.
    truth = labels[batch.numpy()]
    right = [truth[a] == truth[b] for a, b in expected_pos]
    assert np.mean(right) > 0.5


def test_miner_can_read_same_label_pairs_without_context_as_negatives():
    x, labels = blobs(n_classes=6, per_class=10, noise=1.0)
    context = k_reciprocal_encoding(x, k=8, k2=3)
    pseudo = labels // 2
    batch = torch.tensor([0, 1, 2, 10, 11, 12, 20, 21, 30, 31, 45, 46])
    z = torch.zeros(len(batch), 4)
    dropped = ContextualPairMiner(context, pseudo, threshold=0.15)(z, batch)
    relabeled = ContextualPairMiner(context, pseudo, threshold=0.15, negative_below=0.15)(z, batch)
    sim = context.matrix(batch.numpy()).numpy()
    pl, truth = pseudo[batch.numpy()], labels[batch.numpy()]
    fixed = {(a, b) for a in range(12) for b in range(12) if a != b and pl[a] == pl[b] and sim[a, b] < 0.15}
    assert fixed  # the pseudo label joins two classes: some of its pairs share no context
    assert set(zip(relabeled[0].tolist(), relabeled[1].tolist(), strict=True)) == \
        set(zip(dropped[0].tolist(), dropped[1].tolist(), strict=True))
    negatives = set(zip(relabeled[2].tolist(), relabeled[3].tolist(), strict=True))
    assert negatives == set(zip(dropped[2].tolist(), dropped[3].tolist(), strict=True)) | fixed
    assert np.mean([truth[a] != truth[b] for a, b in fixed]) > 0.5  # mostly two classes in truth
    with pytest.raises(ValueError, match=r"negative_below=0.2: must be in \[0, threshold=0.15\]"):
        ContextualPairMiner(context, pseudo, threshold=0.15, negative_below=0.2)


def test_miner_then_lets_a_pml_miner_choose_among_the_kept_pairs():
    from pytorch_metric_learning.miners import MultiSimilarityMiner

    x, labels = blobs(n_classes=6, per_class=10, noise=1.0)
    context = k_reciprocal_encoding(x, k=8, k2=3)
    pseudo = labels // 2
    batch = torch.tensor([0, 1, 2, 10, 11, 12, 20, 21, 30, 31, 45, 46])
    z = torch.nn.functional.normalize(torch.from_numpy(x[batch.numpy()]), dim=1)
    plain = ContextualPairMiner(context, pseudo, threshold=0.15)(z, batch)
    ms = MultiSimilarityMiner(0.1)(z, torch.as_tensor(pseudo[batch.numpy()]))
    both = ContextualPairMiner(context, pseudo, threshold=0.15, then=MultiSimilarityMiner(0.1))(z, batch)
    for kind in (0, 2):
        expected = (set(zip(plain[kind].tolist(), plain[kind + 1].tolist(), strict=True))
                    & set(zip(ms[kind].tolist(), ms[kind + 1].tolist(), strict=True)))
        assert set(zip(both[kind].tolist(), both[kind + 1].tolist(), strict=True)) == expected
