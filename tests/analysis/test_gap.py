"""Domain-classifier accuracy and kernel MMD, on data whose answer is known."""

import numpy as np
import pytest

from slade.analysis.gap import domain_classifier_accuracy, domain_gap, median_bandwidth, mmd_rbf
from slade.errors import DataError


def test_mmd_matches_the_hand_computed_value():
    a, b = np.array([[0.0], [1.0]]), np.array([[3.0], [5.0]])
    # k(x, y) = exp(-(x - y)^2 / 2): within a, one pair at distance 1; within b, one at 2;
    # across, distances 3, 5, 2 and 4.
    within = np.exp(-0.5) + np.exp(-2.0)
    across = (np.exp(-4.5) + np.exp(-12.5) + np.exp(-2.0) + np.exp(-8.0)) / 4
    mmd2, sigma = mmd_rbf(a, b, sigma=1.0)
    assert sigma == 1.0
    assert mmd2 == pytest.approx(within - 2 * across, abs=1e-12)


def test_median_heuristic_takes_the_median_pairwise_distance():
    assert median_bandwidth(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)  # 1, 2, 3
    _, sigma = mmd_rbf(np.array([[0.0], [1.0]]), np.array([[3.0], [4.0]]))
    assert sigma == pytest.approx(2.5)  # pooled: 1, 3, 4, 2, 3, 1 -> (2 + 3) / 2


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = mmd_rbf(a, b)
    small, _ = mmd_rbf(a, b + 0.5)
    large, _ = mmd_rbf(a, b + 2.0)
    assert abs(same) < 0.005
    assert 0.02 < small < large


def test_domain_classifier_separates_shifted_sources_and_not_one_source():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    separable, spread = domain_classifier_accuracy(a, rng.normal(size=(60, 16)) + 3.0)
    assert separable == 1.0 and spread == 0.0
    chance, _ = domain_classifier_accuracy(a, rng.normal(size=(200, 16)))
    assert 0.4 < chance < 0.6


def test_the_classifier_is_balanced_so_chance_is_one_half():
    rng = np.random.default_rng(1)
    # 20 against 400 of one distribution: predicting the majority would score 0.95 unbalanced.
    accuracy, _ = domain_classifier_accuracy(rng.normal(size=(20, 4)), rng.normal(size=(400, 4)))
    assert accuracy < 0.75


def test_domain_gap_reports_both_measures():
    rng = np.random.default_rng(2)
    gap = domain_gap(rng.normal(size=(50, 8)), rng.normal(size=(80, 8)) + 3.0)
    assert set(gap) == {"domain_accuracy", "domain_accuracy_std", "mmd2", "mmd_sigma"}
    assert gap["domain_accuracy"] == 1.0 and gap["mmd2"] > 0.5


def test_a_pool_of_one_image_is_refused():
    with pytest.raises(DataError, match=r"the unlabeled sample has 1 image\(s\).*at least 2 of each"):
        domain_classifier_accuracy(np.zeros((5, 3)), np.zeros((1, 3)))
    with pytest.raises(DataError, match="the unlabeled sample has 1 image"):
        mmd_rbf(np.zeros((5, 3)), np.zeros((1, 3)))
