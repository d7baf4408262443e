import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from slade.ssl.swav import (
    ProjectionQueue,
    SwAVLoss,
    SwAVProjectionHead,
    SwAVPrototypes,
    sinkhorn,
)

EPS = 0.05


def scores_from(probabilities, scale):
    """Scores whose exp(scores / scale) are the given numbers, so results can be worked by hand."""
    return scale * torch.tensor(probabilities, dtype=torch.float64).log()


def test_sinkhorn_one_iteration_by_hand():
    # exp(scores / eps) = [[1, 2, 1], [1, 1, 2]]; prototype sums over the batch are [2, 3, 3];
    # dividing gives [[1/2, 2/3, 1/3], [1/2, 1/3, 2/3]], whose rows sum to 3/2.
    codes = sinkhorn(scores_from([[1, 2, 1], [1, 1, 2]], EPS), EPS, iterations=1)
    expected = torch.tensor([[1 / 3, 4 / 9, 2 / 9], [1 / 3, 2 / 9, 4 / 9]], dtype=torch.float64)
    torch.testing.assert_close(codes, expected)


def test_sinkhorn_equal_partition():
    scores = F.normalize(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    codes = sinkhorn(scores, EPS, iterations=200)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(12))
    torch.testing.assert_close(codes.sum(dim=0), torch.full((4,), 12 / 4), atol=1e-3, rtol=0)


def test_sinkhorn_ignores_a_constant_shift():
    scores = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sinkhorn(scores + 7.5), sinkhorn(scores))


def test_sinkhorn_is_stable_for_large_scores():
    # scores / epsilon reach about 1e3, where a plain exp() overflows even in float64.
    scores = 50 * torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    assert (scores / EPS).abs().max() > 1e3
    codes = sinkhorn(scores, EPS)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(16))


def test_sinkhorn_rejects_zero_iterations():
    with pytest.raises(ValueError, match="at least one iteration"):
        sinkhorn(torch.zeros(2, 2), iterations=0)


def _distributed_worker(rank, store_path, scores, out_path):
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        torch.save(sinkhorn(scores.chunk(2)[rank], EPS, 3), f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sinkhorn_over_two_ranks_matches_the_whole_batch(tmp_path):
    scores = 20 * torch.randn(10, 4, generator=torch.Generator().manual_seed(3))
    out = str(tmp_path / "codes")
    mp.spawn(_distributed_worker, args=(str(tmp_path / "store"), scores, out), nprocs=2)
    gathered = torch.cat([torch.load(f"{out}.{rank}") for rank in range(2)])
    torch.testing.assert_close(gathered, sinkhorn(scores, EPS, 3))


def test_loss_two_crops_by_hand():
    t = 0.1
    # Crop 1: exp(s1 / eps) = M, so softmax(s1 / t) is proportional to M ** (eps / t) = sqrt(M);
    # its one-iteration codes are worked out in test_sinkhorn_one_iteration_by_hand.
    m = [[1, 2, 1], [1, 1, 2]]
    s1 = scores_from(m, EPS)
    q1 = [[1 / 3, 4 / 9, 2 / 9], [1 / 3, 2 / 9, 4 / 9]]
    # Crop 2: softmax(s2 / t) = P, and exp(s2 / eps) = P ** 2 = [[4, 1, 1], [1, 1, 4]] / 16;
    # prototype sums [5, 2, 5] / 16 give [[4/5, 1/2, 1/5], [1/5, 1/2, 4/5]], rows summing to 3/2.
    p = [[1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 4, 1 / 2]]
    s2 = scores_from(p, t)
    q2 = [[8 / 15, 1 / 3, 2 / 15], [2 / 15, 1 / 3, 8 / 15]]

    def cross_entropy(codes, probabilities):
        return -sum(
            sum(c * math.log(pr) for c, pr in zip(code_row, prob_row, strict=True))
            for code_row, prob_row in zip(codes, probabilities, strict=True)
        ) / len(codes)

    sqrt_m = [[math.sqrt(x) / sum(math.sqrt(y) for y in row) for x in row] for row in m]
    expected = (cross_entropy(q1, p) + cross_entropy(q2, sqrt_m)) / 2
    loss = SwAVLoss(temperature=t, epsilon=EPS, iterations=1)([s1, s2], [])
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_loss_averages_over_all_other_crops_and_codes_only_large_crops():
    g = torch.Generator().manual_seed(4)
    a, b, c = (torch.randn(5, 3, generator=g) for _ in range(3))

    def ce(codes_from, predicted_by):
        logp = F.log_softmax(predicted_by / 0.1, dim=1)
        return -(sinkhorn(codes_from) * logp).sum(dim=1).mean()

    expected = ((ce(a, b) + ce(a, c)) / 2 + (ce(b, a) + ce(b, c)) / 2) / 2
    torch.testing.assert_close(SwAVLoss()([a, b], [c]), expected)


def test_loss_appends_queue_scores_before_sinkhorn():
    g = torch.Generator().manual_seed(5)
    a, b, qa, qb = (torch.randn(n, 3, generator=g) for n in (4, 4, 6, 6))
    codes_a = sinkhorn(torch.cat([a, qa]))[:4]
    codes_b = sinkhorn(torch.cat([b, qb]))[:4]
    expected = (
        -(codes_a * F.log_softmax(b / 0.1, dim=1)).sum(dim=1).mean()
        - (codes_b * F.log_softmax(a / 0.1, dim=1)).sum(dim=1).mean()
    ) / 2
    torch.testing.assert_close(SwAVLoss()([a, b], [], queue_scores=[qa, qb]), expected)
    # Scores of an empty queue change nothing.
    empty = torch.zeros(0, 3)
    torch.testing.assert_close(
        SwAVLoss()([a, b], [], queue_scores=[empty, empty]), SwAVLoss()([a, b], [])
    )


def test_no_gradient_flows_through_the_codes():
    g = torch.Generator().manual_seed(6)
    s1 = torch.randn(4, 3, generator=g, requires_grad=True)
    s2 = torch.randn(4, 3, generator=g, requires_grad=True)
    SwAVLoss()([s1, s2], []).backward()
    # Only the prediction term depends on s1: d/ds1 of CE(q2, softmax(s1 / t)) / 2 over 4 samples.
    expected = (F.softmax(s1.detach() / 0.1, dim=1) - sinkhorn(s2)) / (0.1 * 4 * 2)
    torch.testing.assert_close(s1.grad, expected)
    assert not sinkhorn(s1).requires_grad


def test_prototypes_are_unit_norm_and_score_cosine_similarity():
    prototypes = SwAVPrototypes(dim=4, n_prototypes=3)
    with torch.no_grad():
        prototypes.weight.mul_(5.0)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(7))
    scores = prototypes(z)
    torch.testing.assert_close(prototypes.weight.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(
        scores, F.cosine_similarity(z[:, None], prototypes.weight[None], dim=2)
    )


def test_prototypes_can_be_called_twice_before_backward():
    # e.g. once for the crops and once, without gradient, for the queue's scores.
    prototypes = SwAVPrototypes(dim=4, n_prototypes=3)
    z = torch.randn(6, 4, requires_grad=True)
    scores = prototypes(z)
    with torch.no_grad():
        prototypes(torch.randn(2, 4))
    scores.sum().backward()
    assert prototypes.weight.grad is not None


def test_frozen_prototypes_get_no_gradient_then_do():
    torch.manual_seed(8)
    prototypes = SwAVPrototypes(dim=4, n_prototypes=3, freeze_steps=2)
    # Weight decay and momentum would move the prototypes even with a zero gradient.
    optimizer = torch.optim.SGD(prototypes.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    z = torch.randn(8, 4)
    for step in range(3):
        optimizer.zero_grad()
        scores = prototypes(z)
        before = prototypes.weight.detach().clone()
        SwAVLoss()([scores[:4], scores[4:]], []).backward()
        prototypes.cancel_gradients(step)
        optimizer.step()
        if step < 2:
            assert prototypes.weight.grad is None
            torch.testing.assert_close(prototypes.weight, before, rtol=0, atol=0)
        else:
            assert prototypes.weight.grad.abs().sum() > 0
            assert not torch.equal(prototypes.weight, before)


def test_queue_is_fifo_newest_first():
    queue = ProjectionQueue(length=5, dim=2)
    assert queue.projections.shape == (0, 2)
    rows = torch.arange(12.0).reshape(6, 2)
    queue.enqueue(rows[0:2])
    torch.testing.assert_close(queue.projections, rows[[0, 1]])
    queue.enqueue(rows[2:4])
    queue.enqueue(rows[4:6])
    # Full: the newest batch in front, the oldest row (row 1) gone.
    torch.testing.assert_close(queue.projections, rows[[4, 5, 2, 3, 0]])


def test_queue_state_dict_round_trip():
    queue = ProjectionQueue(length=4, dim=3)
    queue.enqueue(torch.randn(3, 3, requires_grad=True))
    restored = ProjectionQueue(length=4, dim=3)
    restored.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"queue", "filled"}
    torch.testing.assert_close(restored.projections, queue.projections)
    assert len(restored.projections) == 3


def test_projection_head_shape_and_layers():
    head = SwAVProjectionHead(in_dim=8, hidden_dim=16, out_dim=4)
    assert [type(layer) for layer in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 4)
    assert not torch.allclose(out.norm(dim=1), torch.ones(5))


def test_toy_training_lowers_the_loss():
    # Four clusters in 2-D and four prototypes; crops are noisy copies, the small ones noisier.
    # The step below is the reference use of the API: queue scores, enqueue, cancel_gradients.
    torch.manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    backbone = nn.Sequential(nn.Linear(2, 32), nn.ReLU())
    head = SwAVProjectionHead(32, 32, 16)
    prototypes = SwAVPrototypes(16, 4, freeze_steps=5)
    queues = [ProjectionQueue(length=64, dim=16) for _ in range(2)]
    criterion = SwAVLoss()
    params = [*backbone.parameters(), *head.parameters(), *prototypes.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    batch = 32
    losses = []
    for step in range(50):
        points = centres[torch.randint(4, (batch,))] + 0.3 * torch.randn(batch, 2)
        crops = [points + 0.1 * torch.randn(batch, 2) for _ in range(2)]
        crops += [points + 0.3 * torch.randn(batch, 2) for _ in range(2)]
        z = head(backbone(torch.cat(crops)))
        scores = prototypes(z).chunk(4)
        with torch.no_grad():
            queue_scores = [prototypes(q.projections) for q in queues]
        for queue, crop_z in zip(queues, z.chunk(4)[:2], strict=True):
            queue.enqueue(crop_z)
        loss = criterion(list(scores[:2]), list(scores[2:]), queue_scores)
        optimizer.zero_grad()
        loss.backward()
        prototypes.cancel_gradients(step)
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 0.3 and last < 0.05, (first, last)
    # Each cluster has found a prototype of its own.
    head.eval()
    with torch.no_grad():
        assigned = prototypes(head(backbone(centres))).argmax(dim=1)
    assert sorted(assigned.tolist()) == [0, 1, 2, 3]
