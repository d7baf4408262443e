"""The student's unlabeled pair selection, chosen once (``slade/mining.py``)."""

import typing

import pytest
import torch
from pytorch_metric_learning.miners import MultiSimilarityMiner

from slade.basis.confident_pairs import ConfidentPairMiner, intersect_pairs
from slade.basis.feature_basis import FeatureBasis
from slade.config import StudentConfig
from slade.errors import ConfigError
from slade.mining import MININGS, IntersectionMiner, MiningInputs, pair_counts, unlabeled_miner


def inputs(miner=True):
    torch.manual_seed(0)
    return MiningInputs(FeatureBasis(4, 3), MultiSimilarityMiner() if miner else None)


def test_every_configurable_mining_has_a_choice():
    choices = typing.get_args(typing.get_type_hints(StudentConfig)["mining"])
    assert sorted(MININGS) == sorted(choices)


@pytest.mark.parametrize(("mining", "use_pseudo_labels", "lenient"), [
    ("confident", True, False), ("thresholds_only", False, False), ("lenient", True, True)])
def test_basis_minings_are_confident_pair_miners_of_the_basis(mining, use_pseudo_labels, lenient):
    given = inputs()
    miner = unlabeled_miner(mining, False, given)
    assert type(miner) is ConfidentPairMiner and miner.basis is given.basis
    assert (miner.use_pseudo_labels, miner.lenient) == (use_pseudo_labels, lenient)
    assert MININGS[mining].trains_basis


def test_all_pairs_is_the_configured_miner_or_every_pair():
    given = inputs()
    assert unlabeled_miner("all_pairs", False, given) is given.miner
    assert unlabeled_miner("all_pairs", False, inputs(miner=False)) is None
    assert not MININGS["all_pairs"].trains_basis


def test_mine_hard_intersects_the_basis_miner_with_the_configured_one():
    given = inputs()
    miner = unlabeled_miner("lenient", True, given)
    assert type(miner) is IntersectionMiner and miner.second is given.miner
    assert type(miner.first) is ConfidentPairMiner and miner.first.lenient
    with pytest.raises(ConfigError, match=r"student.mine_hard needs .*\(student.mining=all_pairs\)"):
        unlabeled_miner("all_pairs", True, given)
    with pytest.raises(ConfigError, match="student.mine_hard needs student.miner"):
        unlabeled_miner("confident", True, inputs(miner=False))


def test_intersection_miner_keeps_the_pairs_both_select():
    class Fixed(MultiSimilarityMiner):
        def __init__(self, pairs):
            super().__init__()
            self.pairs = tuple(torch.tensor(p) for p in pairs)

        def mine(self, embeddings, labels, ref_emb, ref_labels):
            return self.pairs

    a = Fixed([[0, 1, 2], [1, 0, 3], [0, 2], [2, 3]])
    b = Fixed([[1, 2], [0, 3], [0], [3]])
    z, y = torch.eye(4), torch.tensor([0, 0, 1, 1])
    got = IntersectionMiner(a, b)(z, y)
    assert [t.tolist() for t in got] == [[1, 2], [0, 3], [], []]
    assert [t.tolist() for t in got] == [t.tolist() for t in intersect_pairs(a.pairs, b.pairs, 4)]
    assert pair_counts(got) == {"pos_pairs": 2.0, "neg_pairs": 0.0} and pair_counts(None) == {}
