import torch
from pytorch_metric_learning.losses import ContrastiveLoss

from slade.basis.confident_pairs import ConfidentPairMiner, intersect_pairs
from slade.basis.feature_basis import FeatureBasis


def make_miner(use_pseudo_labels=True, lenient=False):
    # Identity basis on 2-D embeddings: basis similarity is the plain cosine.
    basis = FeatureBasis(2, 2)
    with torch.no_grad():
        basis.weight.copy_(torch.eye(2))
        basis.mu_pos.fill_(0.9)
        basis.mu_neg.fill_(0.2)
    return ConfidentPairMiner(basis, use_pseudo_labels, lenient=lenient)


def unit(*degrees):
    rad = torch.deg2rad(torch.tensor(degrees))
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def pairs(output):
    a1, p, a2, n = output
    return (sorted(zip(a1.tolist(), p.tolist(), strict=True)),
            sorted(zip(a2.tolist(), n.tolist(), strict=True)))


def test_keeps_only_pairs_whose_similarity_agrees_with_the_pseudo_label():
    # cos(0, 20) = 0.94 >= T1; cos(0, 50) = 0.64 < T1; cos(0, 90) = 0 <= T2; cos(50, 90) = 0.77 > T2
    z = unit(0, 20, 50, 90)
    labels = torch.tensor([0, 0, 0, 1])
    positives, negatives = pairs(make_miner()(z, labels))
    assert positives == [(0, 1), (1, 0)]
    assert negatives == [(0, 3), (3, 0)]


def test_thresholds_only_ablation_ignores_pseudo_labels():
    z = unit(0, 20, 50, 90)
    labels = torch.tensor([0, 1, 2, 3])  # all different: the pseudo-label rule would find no positive
    positives, negatives = pairs(make_miner(use_pseudo_labels=False)(z, labels))
    assert positives == [(0, 1), (1, 0)]
    # cos(20, 90) = 0.34 > T2, so only (0, 3) is a confident negative
    assert negatives == [(0, 3), (3, 0)]
    assert pairs(make_miner()(z, labels))[0] == []


def test_mined_pairs_drive_any_pml_pair_loss():
    z = unit(0, 20, 50, 90)
    labels = torch.tensor([0, 0, 0, 1])
    loss_fn = ContrastiveLoss(pos_margin=0.0, neg_margin=1.5)
    loss = loss_fn(z, labels, make_miner()(z, labels))
    # positives (0,1),(1,0) at distance 2 sin(10 deg); negatives (0,3),(3,0) at sqrt(2): each
    # kind is averaged over its non-zero pairs, then the two are summed
    d_pos = 2 * torch.sin(torch.deg2rad(torch.tensor(10.0)))
    expected = d_pos + (1.5 - 2**0.5)
    assert torch.isclose(loss, expected, atol=1e-5)


def test_lenient_mining_drops_only_the_pairs_the_basis_contradicts():
    # T1 = mu- = 0.2, T2 = mu+ = 0.9. Same label: cos(0, 50) = 0.64, cos(20, 50) = 0.87 and
    # cos(50, 100) = 0.64 are kept now; cos(0, 100) = -0.17 and cos(20, 100) = 0.17 are below 0.2:
    # contradicted. Different label: cos(50, 60) = 0.98 > 0.9 is contradicted; the others
    # (0.5, 0.77, 0.77) are kept.
    z = unit(0, 20, 50, 100, 60)
    labels = torch.tensor([0, 0, 0, 0, 1])
    positives, negatives = pairs(make_miner(lenient=True)(z, labels))
    same = [(0, 1), (0, 2), (1, 2), (2, 3)]
    assert positives == sorted(same + [(j, i) for i, j in same])
    assert (2, 4) not in negatives and (4, 2) not in negatives
    assert sorted(negatives) == sorted([(i, 4) for i in (0, 1, 3)] + [(4, i) for i in (0, 1, 3)])


def test_intersect_pairs_keeps_the_pairs_in_both():
    t = torch.tensor
    a = (t([0, 1, 2]), t([1, 0, 3]), t([0, 3]), t([4, 0]))
    b = (t([1, 2]), t([0, 0]), t([3, 0, 1]), t([0, 4, 2]))
    got = intersect_pairs(a, b, 5)
    assert [x.tolist() for x in got] == [[1], [0], [0, 3], [4, 0]]
