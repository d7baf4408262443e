"""Retrieval metrics: hand-worked cases, pytorch-metric-learning's AccuracyCalculator, a brute-force
reference, the exact block search itself, memory planning and bad input."""

from __future__ import annotations

import logging
import math
import threading
import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from slade.errors import DataError
from slade.evaluation import knn
from slade.evaluation.retrieval import evaluate_embeddings

logging.getLogger("PML").setLevel(logging.ERROR)

PML_KEYS = {"precision_at_1": "precision@1", "r_precision": "r_precision",
            "mean_average_precision_at_r": "map@r", "NMI": "nmi"}


def on_circle(degrees, scale=None):
    """Unit vectors at the given angles, optionally scaled (the metrics normalise)."""
    a = np.radians(np.asarray(degrees, dtype=np.float64))
    x = np.stack([np.cos(a), np.sin(a)], axis=1)
    return (x * (1.0 if scale is None else np.asarray(scale)[:, None])).astype(np.float32)


def clustered(n, d, classes, seed, sigma=1.0, lone=0, centres=None):
    """Gaussian classes; the first ``lone`` items get labels nobody else has."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((classes + lone, d))
    labels = rng.integers(0, classes, n)
    labels[:lone] = classes + np.arange(lone)
    x = centres[labels] + sigma * rng.standard_normal((n, d))
    return x.astype(np.float32), labels, centres


def pml(query, labels, gallery=None, gallery_labels=None):
    """AccuracyCalculator with its defaults on the L2-normalised embeddings."""
    calc = AccuracyCalculator(include=tuple(PML_KEYS), device=torch.device("cpu"))
    norm = [None if a is None else torch.nn.functional.normalize(torch.from_numpy(a), dim=1)
            for a in (query, gallery)]
    lab = [None if a is None else torch.from_numpy(a) for a in (labels, gallery_labels)]
    return calc.get_accuracy(norm[0], lab[0], norm[1], lab[1])


def assert_matches_pml(ours, ref):
    for pml_key, key in PML_KEYS.items():
        assert ours[key] == pytest.approx(ref[pml_key], abs=1e-6), key
    assert ours["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)


def brute_force(query, labels, ks, gallery=None, gallery_labels=None):
    """Every metric from a full float64 similarity matrix and a full sort."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    same = gallery is None
    g, gl = (q, labels) if same else (gallery / np.linalg.norm(gallery, axis=1, keepdims=True),
                                      gallery_labels)
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    if same:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, : len(g) - same]
    hits = gl[order] == labels[:, None]
    r = (gl[None, :] == labels[:, None]).sum(1) - same
    keep = r > 0
    hits, r = hits[keep], r[keep]
    out = {f"recall@{k}": hits[:, :k].any(1).mean() for k in ks}
    out["precision@1"] = hits[:, 0].mean()
    in_r = hits & (np.arange(1, hits.shape[1] + 1) <= r[:, None])
    out["r_precision"] = (in_r.sum(1) / r).mean()
    prec = np.cumsum(in_r, 1) / np.arange(1, hits.shape[1] + 1)
    out["map@r"] = ((prec * in_r).sum(1) / r).mean()
    return out


# --- hand-worked cases ------------------------------------------------------------------------


def test_same_source_by_hand():
    # angles 0, 10, 25, 45, 60, 200 degrees; labels 0 0 1 0 1 2 (label 2 is alone: left out).
    # Neighbours by angle (labels):  q0: 1 2 3 4 5 -> 0 1 0 1 .  R=2: hits at ranks 1, 3
    #                                q1: 0 2 3 4 5 -> 0 1 0 1 .  R=2: hits at ranks 1, 3
    #                                q2: 1 3 0 4 5 -> 0 0 0 1 .  R=1: hit at rank 4
    #                                q3: 4 2 1 0 5 -> 1 1 0 0 .  R=2: hits at ranks 3, 4
    #                                q4: 3 2 1 0 5 -> 0 1 0 0 .  R=1: hit at rank 2
    # recall@1 = 2/5, recall@2 = 3/5, recall@4 = 5/5; R-precision = (1/2 + 1/2 + 0 + 0 + 0) / 5;
    # MAP@R = ((1/2)(1) + (1/2)(1) + 0 + 0 + 0) / 5.
    x = on_circle([0, 10, 25, 45, 60, 200], scale=[1, 3, 0.5, 2, 7, 1])
    labels = np.array([0, 0, 1, 0, 1, 2])
    m = evaluate_embeddings(x, labels, ks=(1, 2, 4))
    assert m == pytest.approx({"recall@1": 0.4, "recall@2": 0.6, "recall@4": 1.0,
                               "precision@1": 0.4, "r_precision": 0.2, "map@r": 0.2,
                               "nmi": m["nmi"]})
    assert_matches_pml(m, pml(x, labels))


def test_query_gallery_by_hand():
    # gallery at 10, 20, 30, 40, 50, 90 degrees with labels 7 3 7 3 7 3 (R = 3 for labels 7, 3).
    # q at 0 (7):   7 3 7 3 7 3 -> R-prec 2/3, MAP@R (1/3)(1 + 2/3)   = 5/9
    # q at 95 (3):  3 7 3 7 3 7 -> R-prec 2/3, MAP@R 5/9
    # q at 43 (3):  3 7 7 3 7 3 -> R-prec 1/3, MAP@R (1/3)(1)         = 1/3
    # q at 22 (7):  3 7 7 3 7 3 -> R-prec 2/3, MAP@R (1/3)(1/2 + 2/3) = 7/18, first hit at rank 2
    # q at 180 (9): no gallery item has label 9 -> left out of every metric but NMI.
    gallery = on_circle([10, 20, 30, 40, 50, 90])
    gallery_labels = np.array([7, 3, 7, 3, 7, 3])
    query = on_circle([0, 95, 43, 22, 180], scale=[2, 1, 5, 1, 1])
    labels = np.array([7, 3, 3, 7, 9])
    m = evaluate_embeddings(query, labels, gallery, gallery_labels, ks=(1, 2, 6))
    assert m == pytest.approx({"recall@1": 3 / 4, "recall@2": 1.0, "recall@6": 1.0,
                               "precision@1": 3 / 4, "r_precision": 7 / 12, "map@r": 11 / 24,
                               "nmi": m["nmi"]})
    assert_matches_pml(m, pml(query, labels, gallery, gallery_labels))


def test_own_position_is_removed_not_the_first_neighbour():
    # Items 0 and 1 are identical but differently labelled: each one's nearest other item is the
    # other (similarity 1, a miss). Dropping "the first neighbour" instead of the query itself
    # could drop the twin and find item 3 (label 0) for query 0.
    x = np.array([[1, 0], [1, 0], [0, 1], [np.sin(0.17), np.cos(0.17)]], dtype=np.float32)
    labels = np.array([0, 1, 1, 0])
    for chunk in (16, 4096):
        m = evaluate_embeddings(x, labels, ks=(1,), nmi=False, chunk_size=chunk)
        assert m["recall@1"] == 0.0 and m["r_precision"] == 0.0 and m["map@r"] == 0.0


def test_single_class_nmi_and_perfect_retrieval():
    x = on_circle([0, 1, 2, 3])
    m = evaluate_embeddings(x, np.zeros(4, dtype=int), ks=(1, 3))
    assert m == pytest.approx({"recall@1": 1.0, "recall@3": 1.0, "precision@1": 1.0,
                               "r_precision": 1.0, "map@r": 1.0, "nmi": 1.0})


def test_no_query_can_retrieve_anything_gives_nan():
    with pytest.warns(UserWarning, match="NaN"):
        m = evaluate_embeddings(on_circle([0, 90, 180]), np.array([0, 1, 2]), ks=(1,), nmi=False)
    assert all(math.isnan(v) for v in m.values())


# --- pytorch-metric-learning and a brute-force reference --------------------------------------


@pytest.mark.parametrize("chunk", [16, 112, 4096])
def test_same_source_matches_pml(chunk):
    # 1000 items, 40 classes of different sizes, 6 lone labels; chunk 112 gives 9 blocks with a
    # ragged last one, chunk 16 gives 63.
    x, labels, _ = clustered(1000, 16, 40, seed=1, lone=6)
    ours = evaluate_embeddings(x, labels, chunk_size=chunk)
    assert_matches_pml(ours, pml(x, labels))
    assert ours == pytest.approx({**ours, **brute_force(x, labels, (1, 2, 4, 8))}, abs=1e-12)


def test_query_gallery_matches_pml():
    x, labels, centres = clustered(700, 16, 30, seed=2, lone=4)
    g, gl, _ = clustered(900, 16, 30, seed=3, centres=centres)
    ours = evaluate_embeddings(x, labels, g, gl, ks=(1, 5, 10), chunk_size=96)
    assert_matches_pml(ours, pml(x, labels, g, gl))
    assert ours == pytest.approx({**ours, **brute_force(x, labels, (1, 5, 10), g, gl)}, abs=1e-12)


def spy_searches(monkeypatch):
    """Records the (search, window) of every exact search evaluate_embeddings starts."""
    calls = []
    same_source, streaming = knn.exact_same_source, knn.exact_streaming

    def windowed(*args, window=None, **kwargs):
        calls.append(("symmetric", window))
        return same_source(*args, window=window, **kwargs)

    def streamed(*args, **kwargs):
        calls.append(("streaming", None))
        return streaming(*args, **kwargs)

    monkeypatch.setattr(knn, "exact_same_source", windowed)
    monkeypatch.setattr(knn, "exact_streaming", streamed)
    return calls


def test_memory_bound_picks_a_window_or_streaming_and_all_agree(monkeypatch):
    # 3000 queries, k = 70 or so, chunk 128: the running top k of all 24 row blocks needs
    # 2.5 MB. 1 MB fits a window of a few row blocks; 0.3 MB not even two: streaming.
    calls = spy_searches(monkeypatch)
    x, labels, _ = clustered(3000, 32, 60, seed=4, sigma=1.5)
    full = evaluate_embeddings(x, labels, nmi=False, chunk_size=128)
    windowed = evaluate_embeddings(x, labels, nmi=False, chunk_size=128, max_memory_mb=1)
    streaming = evaluate_embeddings(x, labels, nmi=False, chunk_size=128, max_memory_mb=0.3)
    assert calls[0] == ("symmetric", None)
    assert calls[1][0] == "symmetric" and 2 <= calls[1][1] < 24
    assert calls[2] == ("streaming", None)
    assert windowed == pytest.approx(full, abs=1e-12)
    assert streaming == pytest.approx(full, abs=1e-12)
    assert full == pytest.approx(brute_force(x, labels, (1, 2, 4, 8)), abs=1e-12)


@pytest.mark.parametrize("window,workers", [(1, 2), (2, 2), (3, 1), (3, 3), (5, 2)])
def test_windowed_search_is_exact_and_keeps_few_running_top_ks(monkeypatch, window, workers):
    n, k, chunk = 1000, 20, 64  # 16 row blocks, the last one ragged
    x = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(3)))
    sims = x @ x.T
    sims.fill_diagonal_(float("-inf"))
    best = torch.topk(sims, k, dim=1).values
    live, most = [0], [0]

    class CountedHeaps(knn._Heaps):
        def __init__(self, *args):
            super().__init__(*args)
            live[0] += 1
            most[0] = max(most[0], live[0])

        def result(self):
            live[0] -= 1
            return super().result()

    monkeypatch.setattr(knn, "_Heaps", CountedHeaps)
    chunks = list(knn.exact_same_source(x, k, chunk, workers=workers, window=window))
    assert [(s, e) for s, e, _ in chunks] == [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    idx = torch.cat([i for _, _, i in chunks])
    assert not (idx == torch.arange(n)[:, None]).any()
    assert (idx.sort(1).values.diff(dim=1) != 0).all()
    torch.testing.assert_close(torch.gather(sims, 1, idx), best, rtol=0, atol=1e-6)
    assert live[0] == 0 and most[0] <= window + workers + 1


def test_window_schedule_offers_every_block_to_both_sides_once():
    for b, w in [(1, 1), (5, 1), (7, 3), (6, 6), (9, 4)]:
        pairs = knn._window_schedule(b, w)
        seen = {}
        for _, i, j, shared in pairs:
            seen[i, j] = seen.get((i, j), 0) + 1
            if shared and i != j:
                seen[j, i] = seen.get((j, i), 0) + 1
        assert seen == {(i, j): 1 for i in range(b) for j in range(b)}, (b, w)
        times = [t for t, *_ in pairs]
        assert times == sorted(times)
        multiply_adds = sum(1 for *_, shared in pairs)  # blocks computed
        if w == b:
            assert multiply_adds == b * (b + 1) // 2


def test_consumer_stopping_early_stops_the_search():
    x = torch.nn.functional.normalize(torch.randn(4000, 8, generator=torch.Generator().manual_seed(0)))
    before = threading.active_count()
    search = knn.exact_same_source(x, 5, 64, workers=2, window=4)
    next(search)
    assert threading.active_count() > before  # the runner and its workers
    search.close()  # stops them after their current blocks and joins them
    assert threading.active_count() == before


def test_torch_tensors_and_numpy_arrays_agree():
    x, labels, _ = clustered(300, 8, 10, seed=5)
    a = evaluate_embeddings(x, labels, nmi=False)
    b = evaluate_embeddings(torch.from_numpy(x), torch.from_numpy(labels), nmi=False)
    assert a == b


@pytest.mark.parametrize("n,k,chunk", [(1000, 7, 128), (999, 50, 96), (300, 299, 64), (40, 3, 16)])
def test_exact_block_search_returns_the_true_top_k(n, k, chunk):
    x = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(n)))
    sims = x @ x.T
    sims.fill_diagonal_(float("-inf"))
    best = torch.topk(sims, k, dim=1).values
    searches = [knn.exact_same_source(x, k, chunk), knn.exact_same_source(x, k, chunk, workers=1),
                knn.exact_streaming(x.numpy(), None, k, chunk)]
    for search in searches:
        chunks = list(search)
        starts = range(0, n, chunk)
        assert [(s, e) for s, e, _ in chunks] == [(s, min(s + chunk, n)) for s in starts]
        idx = torch.cat([i for _, _, i in chunks])
        assert not (idx == torch.arange(n)[:, None]).any()
        assert (idx.sort(1).values.diff(dim=1) != 0).all()  # no neighbour twice
        torch.testing.assert_close(torch.gather(sims, 1, idx), best, rtol=0, atol=1e-6)


def test_ivf_with_every_cell_probed_is_exact():
    x, labels, _ = clustered(2000, 16, 20, seed=6)
    exact = evaluate_embeddings(x, labels, nmi=False)
    approx = evaluate_embeddings(x, labels, nmi=False, index="ivf", nprobe=10_000)
    # other float rounding: near-ties may swap
    assert {k: v for k, v in approx.items() if k != "index_recall"} == pytest.approx(exact, abs=1e-6)
    assert approx["index_recall"] == pytest.approx(1.0, abs=1e-3)
    rough = evaluate_embeddings(x, labels, nmi=False, index="ivf", nprobe=1)
    assert set(rough) == set(exact) | {"index_recall"} and all(0 <= v <= 1 for v in rough.values())
    assert rough["index_recall"] < 0.9  # 1 of 51 cells searched: neighbours are missed


# --- memory -----------------------------------------------------------------------------------


def test_out_of_memory_in_a_worker_retries_streaming_with_a_warning(monkeypatch):
    x, labels, _ = clustered(500, 8, 10, seed=7)
    threads = torch.get_num_threads()
    expected = evaluate_embeddings(x, labels, nmi=False, chunk_size=64)

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(knn, "_candidate_groups", exhausted)  # runs in the worker threads
    with pytest.warns(ResourceWarning, match="out of memory.*retrying with chunk 32, streaming"):
        again = evaluate_embeddings(x, labels, nmi=False, chunk_size=64)
    assert again == pytest.approx(expected, abs=1e-12)
    assert torch.get_num_threads() == threads  # the workers' single-thread setting is undone


def test_memory_bound_too_small_is_a_data_error():
    x, labels, _ = clustered(200, 8, 10, seed=8)
    with pytest.raises(DataError, match="max_memory_mb"):
        evaluate_embeddings(x, labels, max_memory_mb=0.001)


# --- bad input --------------------------------------------------------------------------------

X = on_circle([0, 10, 20, 30])
Y = np.array([0, 0, 1, 1])


@pytest.mark.parametrize("kwargs,message", [
    ({"query_labels": Y[:3]}, "query_labels has 3 entries but query has 4 rows"),
    ({"query": X[:, 0]}, "query must be a 2-D array"),
    ({"query": X[None]}, "query must be a 2-D array"),
    ({"query_labels": Y[:, None]}, "query_labels must be a 1-D array"),
    ({"query_labels": Y.astype(float)}, "query_labels must be integers"),
    ({"query": np.where(np.eye(4, 2) > 0, np.nan, X)}, "query has NaN or infinite values"),
    ({"query": np.where(np.eye(4, 2, -2) > 0, np.inf, X)}, r"query has NaN.*row 2"),
    ({"query": X[:1], "query_labels": Y[:1]}, "needs >= 2"),
    ({"ks": (1, 4)}, "recall@4 asked but each query can retrieve only 3"),
    ({"ks": (0,)}, "ks must be positive integers"),
    ({"ks": ()}, "ks must be positive integers"),
    ({"gallery": X}, "gallery and gallery_labels must be given together"),
    ({"gallery": X, "gallery_labels": Y, "ks": (5,)}, "each query can retrieve only 4"),
    ({"gallery": X[:, :1], "gallery_labels": Y}, "query has dimension 2 but gallery 1"),
    ({"gallery": X, "gallery_labels": Y[:2]}, "gallery_labels has 2 entries but gallery has 4"),
    ({"gallery": X + np.nan, "gallery_labels": Y}, "gallery has NaN"),
    ({"gallery": X[:0], "gallery_labels": Y[:0]}, "each needs >= 1"),
    ({"index": "hnsw"}, "index must be 'exact' or 'ivf'"),
    ({"chunk_size": 0}, "chunk_size must be a positive integer"),
    ({"index": "ivf", "nprobe": 0}, "nprobe must be a positive integer"),
    ({"max_memory_mb": -1}, "max_memory_mb must be positive"),
])
def test_bad_input_is_a_one_line_data_error(kwargs, message):
    args = {"query": X, "query_labels": Y, "ks": (1, 2), "nmi": False, **kwargs}
    with pytest.raises(DataError, match=message) as err:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate_embeddings(**args)
    assert "\n" not in str(err.value)
