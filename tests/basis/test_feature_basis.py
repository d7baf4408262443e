import math

import pytest
import torch
import torch.nn.functional as F

from slade.basis.feature_basis import (
    FeatureBasis,
    PairStatistics,
    pair_statistics,
    similarity_distribution_loss,
)


def basis_with(weight, **kwargs):
    basis = FeatureBasis(weight.shape[1], weight.shape[0], **kwargs)
    with torch.no_grad():
        basis.weight.copy_(weight)
    return basis


def test_responses_are_cosines_to_normalised_rows():
    basis = basis_with(torch.tensor([[2.0, 0.0], [0.0, 5.0], [3.0, 4.0]]))
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    expected = torch.tensor([[1.0, 0.0, 0.6], [0.6, 0.8, 0.36 + 0.64]])
    assert torch.allclose(basis(z), expected)


def test_classification_loss_is_scaled_softmax_cross_entropy():
    basis = basis_with(torch.eye(2), scale=10.0)
    z = torch.tensor([[1.0, 0.0]])
    # logits (10, 0) against label 0: log(1 + e^-10)
    assert basis.classification_loss(z, torch.tensor([0])).item() == pytest.approx(
        math.log(1 + math.exp(-10)), abs=1e-7)
    assert basis.classification_loss(z, torch.tensor([1])).item() == pytest.approx(
        10 + math.log(1 + math.exp(-10)), rel=1e-5)


def test_similarity_is_cosine_of_responses():
    basis = basis_with(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))  # drops the third axis
    z = F.normalize(torch.tensor([[1.0, 1.0, 5.0], [1.0, 0.0, -3.0], [0.0, 1.0, 0.0]]), dim=1)
    s = basis.similarity(z)
    assert s[0, 1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert s[1, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(s.diagonal(), torch.ones(3))
    assert torch.allclose(basis.similarity(z[:1], z[1:]), s[:1, 1:])


def test_pair_statistics_use_each_unordered_pair_once():
    s = torch.tensor([
        [1.0, 0.8, 0.1, 0.3],
        [0.8, 1.0, -0.1, 0.1],
        [0.1, -0.1, 1.0, 0.6],
        [0.3, 0.1, 0.6, 1.0],
    ])
    stats = pair_statistics(s, torch.tensor([0, 0, 1, 1]))
    assert stats.mu_pos.item() == pytest.approx(0.7)            # (0.8 + 0.6) / 2
    assert stats.var_pos.item() == pytest.approx(0.01)
    assert stats.mu_neg.item() == pytest.approx(0.1)            # (0.1 + 0.3 - 0.1 + 0.1) / 4
    assert stats.var_neg.item() == pytest.approx((0 + 0.04 + 0.04 + 0) / 4)


def test_pair_statistics_with_one_kind_missing():
    stats = pair_statistics(torch.eye(3), torch.tensor([0, 1, 2]))
    assert stats.mu_pos is None and stats.var_pos is None
    assert stats.mu_neg.item() == 0.0


def test_similarity_distribution_loss_by_hand():
    t = torch.tensor
    stats = PairStatistics(t(0.5), t(0.02), t(0.3), t(0.04))
    # hinge [0.3 - 0.5 + 0.5]_+ = 0.3, plus 2 * (0.02 + 0.04)
    assert similarity_distribution_loss(stats, margin=0.5, variance_weight=2.0).item() == \
        pytest.approx(0.42)
    separated = PairStatistics(t(0.9), t(0.0), t(0.1), t(0.0))
    assert similarity_distribution_loss(separated, 0.5, 1.0).item() == 0.0
    only_neg = PairStatistics(None, None, t(0.3), t(0.04))
    assert similarity_distribution_loss(only_neg, 0.5, 1.0).item() == pytest.approx(0.04)


def test_loss_gradient_pushes_gaussians_apart():
    pos = torch.tensor([0.2, 0.3], requires_grad=True)
    neg = torch.tensor([0.25, 0.35], requires_grad=True)
    stats = PairStatistics(pos.mean(), pos.var(unbiased=False), neg.mean(), neg.var(unbiased=False))
    similarity_distribution_loss(stats, 0.5, 0.0).backward()
    assert (pos.grad < 0).all() and (neg.grad > 0).all()


def test_momentum_update_initialises_then_averages_and_keeps_absent_kinds():
    basis = FeatureBasis(4, 3, momentum=0.9)
    t = torch.tensor
    basis.update_gaussians(PairStatistics(t(0.8), t(0.01), t(0.1), t(0.02)))
    assert basis.gaussians() == pytest.approx(
        {"mu_pos": 0.8, "var_pos": 0.01, "mu_neg": 0.1, "var_neg": 0.02})
    basis.update_gaussians(PairStatistics(None, None, t(0.2), t(0.04)))
    g = basis.gaussians()
    assert g["mu_pos"] == pytest.approx(0.8) and g["var_pos"] == pytest.approx(0.01)
    assert g["mu_neg"] == pytest.approx(0.1 * 0.1 + 0.9 * 0.1 + 0.1 * 0.1)  # 0.1*0.2 + 0.9*0.1
    assert g["var_neg"] == pytest.approx(0.1 * 0.04 + 0.9 * 0.02)


def test_gaussians_are_checkpointed():
    basis = FeatureBasis(4, 3)
    basis.update_gaussians(PairStatistics(*(torch.tensor(v) for v in (0.7, 0.1, 0.2, 0.05))))
    restored = FeatureBasis(4, 3)
    restored.load_state_dict(basis.state_dict())
    assert restored.gaussians() == basis.gaussians()
    assert bool(restored.initialized)


def test_plain_basis_responses_are_the_linear_map():
    weight = torch.tensor([[2.0, 0.0], [0.0, 5.0], [3.0, 4.0]])
    basis = basis_with(weight, normalise=False)
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert torch.allclose(basis(z), z @ weight.T)


def test_blend_gives_the_momentum_gaussians_with_a_damped_gradient():
    basis = FeatureBasis(2, 2, momentum=0.9)
    first = PairStatistics(*(torch.tensor(v) for v in (0.8, 0.01, 0.1, 0.02)))
    assert basis.blend(first) is first  # nothing to blend with before the first update
    basis.update_gaussians(first)
    mu = torch.tensor(0.5, requires_grad=True)
    blended = basis.blend(PairStatistics(mu, torch.tensor(0.03), torch.tensor(0.2), None))
    assert float(blended.mu_pos.detach()) == pytest.approx(0.1 * 0.5 + 0.9 * 0.8)
    assert float(blended.mu_neg) == pytest.approx(0.1 * 0.2 + 0.9 * 0.1)
    assert blended.var_neg is None
    blended.mu_pos.backward()
    assert float(mu.grad) == pytest.approx(0.1)
    before = basis.gaussians()
    basis.blend(first)
    assert basis.gaussians() == before  # blending does not update


def test_basis_file_keeps_the_plain_reading(tmp_path):
    from slade.basis.feature_basis import load_basis, save_basis

    weight = torch.tensor([[2.0, 0.0], [0.0, 5.0], [3.0, 4.0]])
    for normalise in (True, False):
        basis = basis_with(weight, normalise=normalise, scale=1.0)
        back = load_basis(save_basis(tmp_path / f"basis_{normalise}.pt", basis))
        z = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
        assert back.normalise is normalise and torch.allclose(back(z), basis(z))
