"""Retrieval metrics of embeddings: Recall@K, MAP@R, R-Precision, Precision@1 and NMI.

Values equal pytorch-metric-learning's ``AccuracyCalculator`` (defaults, ``avg_of_avgs=False``),
whose definitions of MAP@R and R-Precision follow Musgrave et al., "A Metric Learning Reality
Check" (ECCV 2020), while the neighbour search is faster and runs in bounded memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from slade.errors import DataError
from slade.evaluation import knn

_OOM_ERRORS = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
_MB = 2**20


def evaluate_embeddings(
    query,
    query_labels,
    gallery=None,
    gallery_labels=None,
    ks=(1, 2, 4, 8),
    *,
    nmi: bool = True,
    chunk_size: int = 4096,
    max_memory_mb: float | None = None,
    index: str = "exact",
    nprobe: int = 32,
) -> dict[str, float]:
    """Retrieval metrics of ``query`` searched against ``gallery`` (or against the other queries).

    Similarity is the cosine: embeddings are L2-normalised here (all-zero rows stay zero, so
    their similarity to everything is 0) and compared by inner product in float32.

    Without a gallery, each query retrieves from all the other queries (its own position is
    removed by index, so duplicates of it still count). With a gallery (In-shop style), each
    query retrieves from the gallery. For a query with label y, R is the number of items with
    label y it can retrieve (same-label queries other than itself, or same-label gallery items).

    * ``recall@K``: fraction of queries with at least one same-label item among the top K (the
      metric-learning field's Recall@K, not the information-retrieval one).
    * ``precision@1``: fraction of queries whose nearest item has their label (= ``recall@1``).
    * ``r_precision``: mean over queries of (same-label items among the top R) / R.
    * ``map@r``: mean over queries of (1/R) sum_{i<=R} P(i) [item i has the query's label],
      where P(i) is the precision among the top i (Musgrave et al., 2020).
    * ``nmi``: faiss k-means of the normalised query embeddings (one cluster per query label,
      20 iterations, faiss's default seed, as in pytorch-metric-learning) scored against the
      labels with scikit-learn's ``normalized_mutual_info_score``.
    * ``index_recall`` (``index="ivf"`` only): what the approximation loses, the fraction of
      the exact k nearest neighbours that the index found, on up to 1,000 queries drawn with a
      fixed seed and searched exactly as well.

    Queries with R = 0 (a label no other item has) cannot retrieve anything relevant. As in
    pytorch-metric-learning, they are left out of every retrieval metric (numerator and
    denominator) but kept for NMI; if no query has R > 0 the retrieval metrics are NaN (with a
    warning). Ties between equal similarities are broken arbitrarily (with several worker
    threads not always the same way from run to run; ``torch.set_num_threads(1)`` fixes it).

    Search: the top k = max(max(ks), largest R) neighbours of every query, exact by default.
    Without a gallery, the similarity matrix is cut into chunk x chunk blocks and, as it is
    symmetric, each block above the diagonal is computed once (float32 matmul) and offered to
    the running top k of both its rows and its columns: half the multiply-adds of a plain search.
    Items are grouped by label first so that likely neighbours meet early (the result does not
    depend on the order). ``torch.get_num_threads()`` worker threads, each on one thread, work
    on blocks that share no rows. With a gallery, chunks of queries stream through
    ``faiss.knn``. No n x n matrix is formed, and the metrics are summed chunk by chunk.

    Memory (beyond the normalised and label-sorted copies of the embeddings): without a gallery,
    12 bytes per query and neighbour for the running top k plus about 6 chunk^2 bytes per
    worker; with a gallery, O(chunk * k). With ``max_memory_mb`` too small for the running top k
    of all queries, only a window of row blocks keeps one at a time: blocks further apart than
    the window are computed once for each side (5/8 of a plain search's multiply-adds when half
    the queries fit). An out-of-memory error restarts the search streaming with half the chunk,
    with a ``ResourceWarning``.

    Args:
        query: ``(n, d)`` embeddings, numpy array or torch tensor.
        query_labels: ``(n,)`` integer labels.
        gallery: ``(m, d)`` embeddings to search, or ``None`` to search the other queries.
        gallery_labels: ``(m,)`` integer labels, given exactly when ``gallery`` is.
        ks: the K of Recall@K, each at most the number of items a query can retrieve.
        nmi: also compute NMI (the ``nmi`` key is absent otherwise).
        chunk_size: queries per block of the exact search (rounded up to a multiple of 16).
        max_memory_mb: if given, the search's working memory (beyond the embeddings) is kept
            under it: without a gallery, the window of row blocks with a running top k is as
            wide as fits (if not even two fit, queries stream through ``faiss.knn``: twice the
            multiply-adds of the symmetric search); the chunk is shrunk as needed.
        index: ``"exact"`` (default) or ``"ivf"``: a faiss ``IndexIVFFlat`` over the gallery,
            approximate: neighbours in unprobed cells are missed, and on clustered embeddings
            the metrics then come out *higher* than exact ones (the probed cells hold mostly
            the query's class); check ``index_recall``.
        nprobe: cells searched per query with ``index="ivf"``.

    Returns:
        ``{"recall@K": ..., "precision@1": ..., "r_precision": ..., "map@r": ..., "nmi": ...}``.

    Raises:
        DataError: (one line) on mismatched lengths or dimensions, non-2-D embeddings, NaN or
            infinite values, non-integer labels, fewer than 2 items to search (1 query and no
            gallery), a K larger than what a query can retrieve, or a bad option.
    """
    q = _embeddings(query, "query")
    ql = _labels(query_labels, "query_labels", len(q), "query")
    same_source = gallery is None
    if same_source != (gallery_labels is None):
        raise DataError("gallery and gallery_labels must be given together")
    if same_source:
        if len(q) < 2:
            raise DataError(f"query has {len(q)} item(s); searching the other queries needs >= 2")
        g, gl, n_retrievable = None, ql, len(q) - 1
    else:
        g = _embeddings(gallery, "gallery")
        gl = _labels(gallery_labels, "gallery_labels", len(g), "gallery")
        if len(q) < 1 or len(g) < 1:
            raise DataError(f"query has {len(q)} and gallery {len(g)} item(s); each needs >= 1")
        if g.shape[1] != q.shape[1]:
            raise DataError(f"query has dimension {q.shape[1]} but gallery {g.shape[1]}")
        n_retrievable = len(g)
    ks = _ks(ks, n_retrievable)
    if index not in ("exact", "ivf"):
        raise DataError(f"index must be 'exact' or 'ivf', got {index!r}")
    if not (isinstance(nprobe, int) and nprobe >= 1):
        raise DataError(f"nprobe must be a positive integer, got {nprobe!r}")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise DataError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if max_memory_mb is not None and not max_memory_mb > 0:
        raise DataError(f"max_memory_mb must be positive, got {max_memory_mb!r}")

    q = _normalised(q)
    g = None if g is None else _normalised(g)
    relevant = _relevant_counts(ql, gl, same_source)
    k = max(max(ks), int(relevant.max()))
    if index == "ivf":
        sample, approximate = _recall_sample(len(q)), dict[int, np.ndarray]()
        found = _keeping(knn.approximate(q, g, k, chunk_size, nprobe), sample, approximate)
        metrics = _score(((slice(s, e), idx) for s, e, idx in found), ql, gl, relevant, ks)
        metrics["index_recall"] = _index_recall(q, g, sample, approximate, k)
    else:
        chunk, window, symmetric = _plan(len(q), k, same_source, chunk_size, max_memory_mb)
        metrics = _search_and_score(q, g, ql, gl, relevant, ks, k, chunk, window, symmetric)
    if nmi:
        metrics["nmi"] = _nmi(q, ql)
    return metrics


def _recall_sample(n: int, size: int = 1000) -> np.ndarray:
    """Sorted positions of the queries whose approximate neighbours are checked exactly."""
    return np.sort(np.random.default_rng(0).choice(n, min(n, size), replace=False))


def _keeping(found, sample: np.ndarray, kept: dict):
    """Passes the chunks through, keeping the neighbours of the ``sample`` queries in ``kept``."""
    for s, e, idx in found:
        for position in sample[(sample >= s) & (sample < e)]:
            kept[int(position)] = idx[position - s].numpy()
        yield s, e, idx


def _index_recall(q, g, sample: np.ndarray, approximate: dict, k: int) -> float:
    """Mean fraction of each sampled query's exact top k found by the approximate search."""
    same_source = g is None
    _, exact = faiss.knn(q[sample], q if same_source else g, k + same_source,
                         faiss.METRIC_INNER_PRODUCT)
    if same_source:
        exact = knn.drop_self(torch.from_numpy(exact), torch.from_numpy(sample), k).numpy()
    found = [np.isin(exact[i], approximate[int(p)]).mean() for i, p in enumerate(sample)]
    return float(np.mean(found))


def _embeddings(x, name: str) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.shape[1] < 1:
        raise DataError(f"{name} has dimension 0")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"{name} has NaN or infinite values (first in row {int(np.argmax(bad))})")
    return x


def _labels(y, name: str, n: int, of: str) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name} must be a 1-D array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name} must be integers, got dtype {y.dtype}")
    if len(y) != n:
        raise DataError(f"{name} has {len(y)} entries but {of} has {n} rows")
    return y.astype(np.int64)


def _ks(ks, n_retrievable: int) -> tuple[int, ...]:
    ks = tuple(ks) if np.iterable(ks) else (ks,)
    if not ks or not all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in ks
    ):
        raise DataError(f"ks must be positive integers, got {ks!r}")
    if max(ks) > n_retrievable:
        raise DataError(f"recall@{max(ks)} asked but each query can retrieve only {n_retrievable}")
    return tuple(int(k) for k in ks)


def _normalised(x: np.ndarray) -> np.ndarray:
    return torch.nn.functional.normalize(torch.from_numpy(x), dim=1).numpy()


def _relevant_counts(ql: np.ndarray, gl: np.ndarray, same_source: bool) -> np.ndarray:
    """R per query: the items with its label that it can retrieve."""
    classes, counts = np.unique(gl, return_counts=True)
    pos = np.clip(np.searchsorted(classes, ql), 0, len(classes) - 1)
    relevant = np.where(classes[pos] == ql, counts[pos], 0)
    return relevant - 1 if same_source else relevant


def _plan(n: int, k: int, same_source: bool, chunk_size: int, max_memory_mb: float | None):
    """Chunk (a multiple of knn.GROUP), window (row blocks with a live running top k; ``None``:
    all) and search mode (symmetric or streaming) that fit the memory bound."""
    chunk = -(-chunk_size // knn.GROUP) * knn.GROUP
    if max_memory_mb is None:
        return chunk, None, same_source
    budget = max_memory_mb * _MB
    if same_source:
        workers = torch.get_num_threads()
        blocks = -(-n // chunk)
        while True:
            heap_bytes = 12 * chunk * k
            window = int((budget - _work_bytes(chunk, k, True)) // heap_bytes) - workers - 1
            if window >= blocks:
                return chunk, None, True
            if window >= 2:
                return chunk, window, True
            if chunk <= 4 * knn.GROUP:
                break
            chunk = max(knn.GROUP, chunk // 2 // knn.GROUP * knn.GROUP)
            blocks = -(-n // chunk)
        chunk = -(-chunk_size // knn.GROUP) * knn.GROUP  # too little for two: stream instead
    while chunk > knn.GROUP and _work_bytes(chunk, k, False) > budget:
        chunk = max(knn.GROUP, chunk // 2 // knn.GROUP * knn.GROUP)
    if _work_bytes(chunk, k, False) > budget:
        need = _work_bytes(chunk, k, False) / _MB
        raise DataError(f"max_memory_mb={max_memory_mb} is too small: the search needs "
                        f"about {need:.1f} MB")
    return chunk, None, False


def _work_bytes(chunk: int, k: int, symmetric: bool) -> int:
    """Estimated working memory for a chunk, beyond the running top k of the symmetric search:
    block products and their filters per worker (or faiss's 4096 x 1024 block), neighbour
    lists and metric temporaries."""
    if symmetric:
        block = 6 * chunk**2 * torch.get_num_threads()
    else:
        block = 4 * 1024 * min(chunk, 4096)
    return block + 52 * chunk * k


def _search_and_score(q, g, ql, gl, relevant, ks, k, chunk, window, symmetric):
    """Exact search and metrics; on out-of-memory, retries streaming with half the chunk."""
    while True:
        try:
            if symmetric:
                # Blocks of same-label items: likely neighbours meet early, which raises each
                # query's threshold sooner. Exact in any order.
                order = torch.from_numpy(np.argsort(ql, kind="stable"))
                found = knn.exact_same_source(torch.from_numpy(q)[order], k, chunk, window=window)
                neighbours: Iterator[tuple[slice | torch.Tensor, torch.Tensor]] = (
                    (order[s:e], order[idx]) for s, e, idx in found)
            else:
                found = knn.exact_streaming(q, g, k, chunk)
                neighbours = ((slice(s, e), idx) for s, e, idx in found)
            return _score(neighbours, ql, gl, relevant, ks)
        except _OOM_ERRORS:
            if chunk <= knn.GROUP and not symmetric:
                raise
            smaller = max(knn.GROUP, chunk // 2 // knn.GROUP * knn.GROUP)
            warnings.warn(
                f"out of memory in the neighbour search (chunk {chunk}); "
                f"retrying with chunk {smaller}, streaming",
                ResourceWarning,
                stacklevel=3,
            )
            chunk, symmetric = smaller, False


def _score(neighbours, ql, gl, relevant, ks) -> dict[str, float]:
    """Sums the per-query metrics chunk by chunk (memory O(chunk * k)).

    Args:
        neighbours: ``(rows, indices)`` pairs: query positions (a slice or an index tensor)
            and their gallery neighbours, best first (-1: none found).
    """
    ql, gl, relevant = (torch.from_numpy(a) for a in (ql, gl, relevant))
    sums = dict.fromkeys([f"recall@{k}" for k in ks] + ["precision@1", "r_precision", "map@r"], 0.0)
    n_scored = int((relevant > 0).sum())
    if n_scored == 0:
        warnings.warn("no query has a same-label item to retrieve; retrieval metrics are NaN",
                      stacklevel=3)
        return dict.fromkeys(sums, float("nan"))
    for rows, idx in neighbours:
        r = relevant[rows]
        keep = r > 0
        idx, r = idx[keep], r[keep, None].double()
        hits = (gl[idx.clamp(min=0)] == ql[rows][keep, None]) & (idx >= 0)
        rank = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
        in_r = hits & (rank <= r)
        for k in ks:
            sums[f"recall@{k}"] += hits[:, :k].any(1).sum().item()
        sums["precision@1"] += hits[:, 0].sum().item()
        sums["r_precision"] += (in_r.sum(1, keepdim=True) / r).sum().item()
        precision_at_i = in_r.cumsum(1) / rank
        sums["map@r"] += ((precision_at_i * in_r).sum(1, keepdim=True) / r).sum().item()
    return {name: total / n_scored for name, total in sums.items()}


def _nmi(x: np.ndarray, labels: np.ndarray) -> float:
    """NMI of a faiss k-means of ``x`` (the call pytorch-metric-learning's FaissKMeans makes)."""
    n_clusters = len(np.unique(labels))
    kmeans = faiss.Kmeans(x.shape[1], n_clusters, niter=20, gpu=False,
                          min_points_per_centroid=1)  # only silences faiss's small-set warning
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return float(normalized_mutual_info_score(labels, assignment[:, 0]))
