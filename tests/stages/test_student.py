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
