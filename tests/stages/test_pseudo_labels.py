import numpy as np
import pytest

from slade import run_layout as layout
from slade.config import PseudoLabelConfig
from slade.errors import ConfigError, DataError
from slade.stages.pseudo_labels import PseudoLabels, cluster_statistics, dbscan, kmeans


def clustered(n_clusters=5, per_cluster=40, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    x = np.repeat(centres, per_cluster, axis=0) + 0.05 * rng.normal(size=(n_clusters * per_cluster, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(n_clusters), per_cluster)


def test_kmeans_recovers_well_separated_clusters():
    x, truth = clustered()
    labels, distances, centroids = kmeans(x, 5, iterations=20, seed=0, redo=5)
    assert centroids.shape == (5, 16)
    stats = cluster_statistics(labels, 5, truth)
    assert stats["purity"] == 1.0 and stats["nmi"] == pytest.approx(1.0)
    assert stats["size_min"] == stats["size_max"] == 40 and stats["empty"] == 0
    assert (distances >= 0).all() and distances.max() < 0.1


def test_kmeans_is_deterministic_for_a_seed():
    x, _ = clustered(seed=1)
    a, _, _ = kmeans(x, 7, 10, seed=3)
    b, _, _ = kmeans(x, 7, 10, seed=3)
    assert np.array_equal(a, b)


def test_statistics_of_impure_clusters_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    hidden = np.array([5, 5, 6, 6, 6, 7])
    stats = cluster_statistics(labels, 4, hidden)
    assert stats["purity"] == pytest.approx(5 / 6)
    assert stats["empty"] == 1 and stats["singletons"] == 1 and stats["size_median"] == 1.5
    assert "purity" not in cluster_statistics(labels, 4, None)


def test_too_many_clusters_or_empty_pool():
    x, _ = clustered(n_clusters=2, per_cluster=3)
    message = r"pseudo_labels.clusters=10 is larger than the unlabeled pool \(6 images\)"
    with pytest.raises(DataError, match=message):
        kmeans(x, 10, 5, 0)
    with pytest.raises(DataError, match="the unlabeled pool is empty"):
        kmeans(np.zeros((0, 4), np.float32), 2, 5, 0)


def test_table_round_trip(tmp_path):
    table = PseudoLabels(np.array([2, 0, 1]), np.array([0.5, 0.25, 0.125], np.float32),
                         ["a.png", "zip:/x.zip!b, c.png", "tiles:/s.png#3"])
    table.write(tmp_path / layout.TABLE)
    again = PseudoLabels.read(tmp_path / layout.TABLE)
    assert again.sources == table.sources
    assert np.array_equal(again.labels, table.labels)
    assert np.allclose(again.distances, table.distances)


def test_dbscan_finds_the_clusters_itself_and_leaves_stray_images_out():
    x, truth = clustered(n_clusters=6, per_cluster=30, dim=16, seed=2)
    rng = np.random.default_rng(5)
    stray = rng.normal(size=(3, 16)).astype(np.float32)  # fewer than min_samples: no cluster of their own
    stray /= np.linalg.norm(stray, axis=1, keepdims=True)
    pool = np.concatenate([x, stray])
    cfg = PseudoLabelConfig(method="dbscan", eps=0.6, min_samples=4, neighbours=20, context_k=20,
                            context_k2=3)
    labels, distances, k = dbscan(pool, cfg)
    assert k == 6  # no number of clusters given
    inside = labels[: len(x)]
    assert (inside >= 0).all() and (labels[len(x):] == -1).all()
    stats = cluster_statistics(inside, k, truth)
    assert stats["purity"] == 1.0 and stats["nmi"] == pytest.approx(1.0)
    assert np.isnan(distances[len(x):]).all() and (distances[: len(x)] < 0.1).all()
    with_outliers = cluster_statistics(labels, k, np.concatenate([truth, np.full(3, 9)]))
    assert with_outliers["outliers"] == 3 and with_outliers["images"] == len(x)
    assert with_outliers["purity"] == 1.0 and with_outliers["size_min"] == 30


def test_dbscan_with_no_dense_neighbourhood_or_too_many_neighbours_is_refused():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with pytest.raises(DataError, match=r"pseudo_labels.eps=0.01: DBSCAN found no cluster in the 40 pool"):
        dbscan(x, PseudoLabelConfig(method="dbscan", eps=0.01, neighbours=10, context_k=5))
    larger = "a neighbourhood larger than the pool"
    with pytest.raises(ConfigError, match=rf"pseudo_labels.neighbours=40: {larger}"):
        dbscan(x, PseudoLabelConfig(method="dbscan", neighbours=40, context_k=5))
    with pytest.raises(ConfigError, match=rf"pseudo_labels.context_k=50: {larger}"):
        dbscan(x, PseudoLabelConfig(method="dbscan", context_k=50))
