"""The student's pair selection options (``student.mining``, ``student.mine_hard``)."""

import numpy as np
import pytest
import torch

from slade.basis.confident_pairs import ConfidentPairMiner
from slade.config import load_config
from slade.data.build import build_splits, prepare
from slade.errors import ConfigError
from slade.models.embedder import create_embedder
from slade.stages.student import StudentStage

SMALL = [
    "data.glyph_train_classes=8", "data.glyph_test_classes=4", "data.glyph_images_per_class=4",
    "data.glyph_pool_size=64", "model.width=8", "model.embedding_dim=16", "student.batch_size=16",
    "student.unlabeled_batch_size=32", "student.basis_warmup_steps=0",
    # SLADE as published unless a test says otherwise (the default student is the contextual one).
    "student.mining=confident", "student.miner=multi_similarity",
]


def student(*overrides):
    config = load_config(None, SMALL + list(overrides))
    data = prepare(build_splits(config.data, config.seed), config.data)
    torch.manual_seed(0)
    model = create_embedder(config.model, config.data.channels)
    pseudo_labels = np.arange(len(data.unlabeled)) % 8
    return StudentStage(model, data.labeled, data.unlabeled, pseudo_labels, config.student,
                        config.data, seed=0)


def as_set(a, b):
    return set(zip(a.tolist(), b.tolist(), strict=True))


def test_mine_hard_keeps_the_lenient_pairs_the_miner_also_selects():
    stage = student("student.mining=lenient", "student.mine_hard=true")
    calls = []
    loss = stage.loss

    def spy(embeddings, labels, indices_tuple=None):
        calls.append((embeddings.detach(), labels, indices_tuple))
        return loss(embeddings, labels, indices_tuple)

    stage.loss = spy
    stage.loss_terms(next(stage.batches(0)), step=0)
    z_u, y_u, used = calls[1]  # the unlabeled term
    lenient = ConfidentPairMiner(stage.basis, lenient=True)(z_u, y_u)
    mined = stage.miner(z_u, y_u)
    for kind in (0, 2):
        expected = as_set(*lenient[kind: kind + 2]) & as_set(*mined[kind: kind + 2])
        assert as_set(*used[kind: kind + 2]) == expected
    assert len(used[0]) < len(lenient[0]) or len(used[2]) < len(lenient[2])  # the miner dropped some
    assert len(used[0]) and len(used[2])


def test_mine_hard_without_basis_or_miner_is_refused():
    with pytest.raises(ConfigError, match="student.mine_hard needs"):
        student("student.mining=all_pairs", "student.mine_hard=true")
    with pytest.raises(ConfigError, match="student.mine_hard needs"):
        student("student.mine_hard=true", "student.miner=")


def test_steps_without_confident_pairs_are_warned_about_with_the_figures(caplog):
    stage = student()
    with torch.no_grad():  # Gaussians no cosine can pass for 50 steps: T1 above 1, T2 below -1
        stage.basis.mu_pos.fill_(50.0)
        stage.basis.mu_neg.fill_(-50.0)
        stage.basis.initialized.fill_(True)
    batch = next(stage.batches(0))
    with caplog.at_level("WARNING", logger="slade"):
        for step in range(49):
            terms = stage.loss_terms(batch, step)
        assert not caplog.records
        assert stage.last["pos_pairs"] == 0 and stage.last["neg_pairs"] == 0
        assert terms["rank_unlabeled"] == 0
        stage.loss_terms(batch, 49)
    (record,) = caplog.records
    message = record.getMessage()
    assert "student step 50: 50 steps in a row without confident positive and negative pairs" in message
    assert "(last: 0 positive, 0 negative; mu+ " in message
    assert "the unlabeled term is not training" in message


def contextual_student(threshold: float):
    """A contextual student over random pool embeddings; pseudo label = index % 8."""
    from slade.context.neighbourhood import k_reciprocal_encoding

    config = load_config(None, SMALL + ["student.mining=contextual", "student.miner=",
                                        f"student.context_threshold={threshold}"])
    data = prepare(build_splits(config.data, config.seed), config.data)
    torch.manual_seed(0)
    model = create_embedder(config.model, config.data.channels)
    pseudo_labels = np.arange(len(data.unlabeled)) % 8
    pool = torch.nn.functional.normalize(torch.randn(len(data.unlabeled), 16), dim=1).numpy()
    context = k_reciprocal_encoding(pool, k=6, k2=2)
    return StudentStage(model, data.labeled, data.unlabeled, pseudo_labels, config.student,
                        config.data, seed=0, context=context), context, pseudo_labels


def test_contextual_mining_keeps_same_label_pairs_whose_neighbourhoods_agree():
    stage, context, pseudo_labels = contextual_student(0.2)
    assert not stage.trains_basis and set(stage.modules()["basis"].state_dict())  # kept, untrained
    calls = []
    loss = stage.loss

    def spy(embeddings, labels, indices_tuple=None):
        calls.append((labels, indices_tuple))
        return loss(embeddings, labels, indices_tuple)

    stage.loss = spy
    batch = next(stage.batches(0))
    terms = stage.loss_terms(batch, step=0)
    assert set(terms) == {"rank_labeled", "rank_unlabeled", "loss"}
    idx = batch[1][2].numpy()
    sim = context.matrix(idx).numpy()
    pl = pseudo_labels[idx]
    _, used = calls[1]
    assert as_set(*used[:2]) == {(a, b) for a in range(len(idx)) for b in range(len(idx))
                                 if a != b and pl[a] == pl[b] and sim[a, b] >= 0.2}
    assert as_set(*used[2:]) == {(a, b) for a in range(len(idx)) for b in range(len(idx))
                                 if pl[a] != pl[b] and sim[a, b] < 0.2}
    assert stage.last["pos_pairs"] == len(used[0]) < (np.bincount(pl) * (np.bincount(pl) - 1)).sum()
    assert 0.0 < stage.last["context_kept"] < 1.0


def test_contextual_mining_needs_the_pool_context_and_warns_when_starved(caplog):
    with pytest.raises(ConfigError, match="student.mining=contextual: no contextual similarity"):
        student("student.mining=contextual")
    stage, _, _ = contextual_student(2)
    batch = next(stage.batches(0))
    with caplog.at_level("WARNING", logger="slade"):
        for step in range(50):
            stage.loss_terms(batch, step)
    (record,) = caplog.records
    message = record.getMessage()
    assert "50 steps in a row without contextual positive and negative pairs" in message
    assert "student.context_threshold 2.000" in message
    assert "same-cluster contextual similarity mean" in message


def test_random_unlabeled_batches_ignore_the_pseudo_labels():
    per_label = student("student.mining=all_pairs")
    random = student("student.mining=all_pairs", "student.unlabeled_sampling=random")
    counts = [np.bincount(np.arange(64)[per_label.unlabeled_batches(b).indices] % 8, minlength=8)
              for b in range(5)]
    assert all(sorted(c[c > 0]) == [4] * 8 for c in counts)  # 8 pseudo labels, 4 images each
    drawn = [random.unlabeled_batches(b).indices for b in range(2)]  # one epoch of 64 = 2 batches
    assert sorted(np.concatenate(drawn).tolist()) == list(range(64))


def test_unlabeled_batches_never_draw_an_image_without_pseudo_label_or_a_cluster_of_one():
    from slade.stages.student import _pseudo_label_batches

    config = load_config(None, SMALL + ["student.unlabeled_batch_size=8", "student.unlabeled_m_per_class=2"])
    labels = np.array([-1, 0, 0, 1, 1, 2, -1, 2, 3, 3, 4, 4, 5, -1])  # 5: a cluster of one
    batches = _pseudo_label_batches(labels, config.student, seed=0)
    drawn = np.concatenate([batches(b).indices for b in range(50)])
    assert set(drawn.tolist()) == set(np.flatnonzero((labels >= 0) & (labels != 5)).tolist())
