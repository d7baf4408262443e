import numpy as np
import pytest

from slade.data.batches import MPerClassBatches, RandomBatches
from slade.errors import DataError


def test_m_per_class_batches_have_m_images_of_each_chosen_class():
    labels = np.repeat(np.arange(10), 5)
    sampler = MPerClassBatches(labels, m=4, batch_size=16, seed=0)
    for b in range(20):
        batch = sampler(b)
        counts = np.bincount(labels[batch.indices])
        assert sorted(counts[counts > 0].tolist()) == [4, 4, 4, 4]
        # classes with >= m images are sampled without replacement
        assert len(set(batch.indices.tolist())) == 16


def test_batches_are_a_pure_function_of_seed_and_number():
    labels = np.repeat(np.arange(10), 5)
    a, b = MPerClassBatches(labels, 4, 16, seed=1), MPerClassBatches(labels, 4, 16, seed=1)
    assert np.array_equal(a(7).indices, b(7).indices) and a(7).seed == b(7).seed
    assert not np.array_equal(a(7).indices, a(8).indices)
    other = MPerClassBatches(labels, 4, 16, seed=2)
    assert not np.array_equal(a(7).indices, other(7).indices)


def test_small_classes_are_sampled_with_replacement():
    labels = np.array([0, 0, 1, 1, 1, 1])
    batch = MPerClassBatches(labels, m=3, batch_size=6, seed=0)(0)
    assert np.bincount(labels[batch.indices]).tolist() == [3, 3]


def test_too_few_classes_for_a_batch_is_an_error():
    with pytest.raises(DataError, match="needs 8 classes, but there are only 3"):
        MPerClassBatches(np.repeat(np.arange(3), 4), m=2, batch_size=16, seed=0)


def test_random_batches_cover_each_epoch_once():
    sampler = RandomBatches(10, 3, seed=0)
    epoch = np.concatenate([sampler(b).indices for b in range(3)])
    assert len(set(epoch.tolist())) == 9
    assert not np.array_equal(sampler(0).indices, sampler(3).indices)  # a new permutation
