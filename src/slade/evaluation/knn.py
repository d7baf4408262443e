"""Top-k neighbours by inner product: exact in bounded memory, or approximate through faiss.

Every search yields ``(start, stop, indices)`` for consecutive chunks of queries, where
``indices`` (``(stop - start, k)`` int64, best first) holds the gallery positions of the k most
similar items. In same-source mode (no gallery) the gallery is the query set and each query's own
position is removed by index. Callers L2-normalise first, so the inner product is the cosine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np
import torch

#: Rows per group of the candidate filter of :func:`exact_same_source`; chunks are multiples.
GROUP = 16

_NEG_INF = float("-inf")

Chunks = Iterator[tuple[int, int, torch.Tensor]]


@contextmanager
def _faiss_serial():
    """Runs faiss calls of this thread on one OpenMP thread."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


class _Heaps:
    """The k best (similarity, index) pairs seen so far for each of a block of rows.

    faiss min-heaps (C++) over numpy arrays; ``thr`` is a live view of every heap's root, the
    row's current k-th best similarity (``-FLT_MAX`` until k items were offered).
    """

    def __init__(self, n_rows: int, k: int) -> None:
        self.val = np.empty((n_rows, k), np.float32)
        self.ids = np.empty((n_rows, k), np.int64)
        self.heaps = faiss.float_minheap_array_t()
        self.heaps.nh, self.heaps.k = n_rows, k
        self.heaps.val, self.heaps.ids = faiss.swig_ptr(self.val), faiss.swig_ptr(self.ids)
        self.heaps.heapify()
        self.thr = torch.from_numpy(self.val)[:, 0]

    def add_dense(self, sims: torch.Tensor, offset: int) -> None:
        """Offers a contiguous block: one row per heap, columns are items ``offset + j``."""
        with _faiss_serial():
            self.heaps.addn(sims.shape[1], faiss.swig_ptr(sims.numpy()), offset)

    def add(self, heap_rows: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor) -> None:
        """Offers ``vals[i, :]`` (items ``ids[i, :]``) to heap ``heap_rows[i]``; rows may repeat.

        Each heap keeps an offered value only if it beats the root, so offers can be generous.
        """
        if heap_rows.numel():
            rows, vals, ids = (a.contiguous().numpy() for a in (heap_rows, vals, ids))
            with _faiss_serial():  # one thread: entries may share a heap
                self.heaps.addn_query_subset_with_ids(
                    len(rows),
                    faiss.swig_ptr(rows),
                    vals.shape[1],
                    faiss.swig_ptr(vals),
                    faiss.swig_ptr(ids),
                    vals.shape[1],
                )

    def result(self) -> torch.Tensor:
        """The indices of the k best, best first."""
        self.heaps.reorder()
        return torch.from_numpy(self.ids)


def _candidate_groups(sims: torch.Tensor, row_thr: torch.Tensor, col_thr: torch.Tensor):
    """Groups of GROUP rows x 1 column of a block that may beat a row's or column's threshold.

    One pass takes the maximum of each group; a group is kept when it beats the column's
    threshold or the lowest threshold of its rows. Once the thresholds have risen, only a few
    percent of the groups are kept.

    Args:
        sims: ``(r, c)`` contiguous block, ``r`` a multiple of GROUP.
        row_thr: ``(r,)`` threshold of each row.
        col_thr: ``(c,)`` threshold of each column.

    Yields:
        ``(rows, cols, vals)`` for at most ``r`` kept groups at a time: ``(m, GROUP)`` row
        numbers, ``(m,)`` column numbers and ``(m, GROUP)`` similarities.
    """
    n_rows, n_cols = sims.shape
    grouped = sims.view(n_rows // GROUP, GROUP, n_cols)
    bound = torch.minimum(row_thr.reshape(-1, GROUP).amin(1)[:, None], col_thr[None, :])
    kept = torch.nonzero(grouped.amax(1) > bound)
    for part in kept.split(n_rows):  # bounds the temporaries below to O(r * GROUP)
        group, cols = part.unbind(1)
        rows = group[:, None] * GROUP + torch.arange(GROUP)
        yield rows, cols, grouped[group, :, cols]


def exact_same_source(x: torch.Tensor, k: int, chunk: int, workers: int | None = None) -> Chunks:
    """Exact top k of every row of ``x`` among the other rows, using the symmetry of ``x x^T``.

    Each block ``(i, j)``, ``j > i``, of the Gram matrix is computed once (float32 matmul) and
    offered both to the rows of block i and, along its columns, to the rows of block j: half the
    multiply-adds of a plain search. The diagonal blocks (own position masked) go first, so every
    row starts with a threshold. ``workers`` threads (default: torch's thread count), each
    single-threaded, process blocks that share no row block, so no two touch the same heaps.
    Memory: the running top k of every row (``12 n k`` bytes) and one block per worker.

    Args:
        x: ``(n, d)`` float32, L2-normalised.
        k: neighbours per row, at most ``n - 1``.
        chunk: rows per block, a multiple of GROUP.
        workers: threads; ``None`` uses ``torch.get_num_threads()``.

    Yields:
        ``(start, stop, indices)`` per row block, in order, once all blocks are done.
    """
    n = len(x)
    starts = list(range(0, n, chunk))
    blocks = [(s, min(s + chunk, n)) for s in starts]
    heaps = [_Heaps(e - s, k) for s, e in blocks]

    def work(i: int, j: int, buf: torch.Tensor) -> None:
        (s, e), (t, f) = blocks[i], blocks[j]
        sims = torch.mm(x[s:e], x[t:f].T, out=buf[: (e - s) * (f - t)].view(e - s, f - t))
        if i == j:
            heaps[i].add_dense(sims.fill_diagonal_(_NEG_INF), s)
            return
        # i < j, so block i is full and e - s is a multiple of GROUP
        for rows, cols, vals in _candidate_groups(sims, heaps[i].thr, heaps[j].thr):
            heaps[j].add(cols, vals, rows + s)  # along columns: GROUP values per column
            col_ids = torch.repeat_interleave(cols + t, GROUP)[:, None]
            heaps[i].add(rows.view(-1), vals.view(-1, 1), col_ids)  # along rows: one per entry

    pairs = [(i, i) for i in range(len(blocks))]
    pairs += [(i, j) for i in range(len(blocks)) for j in range(i + 1, len(blocks))]
    _run_disjoint(pairs, work, chunk * chunk, workers or torch.get_num_threads())
    for (s, e), heap in zip(blocks, heaps, strict=True):
        yield s, e, heap.result()


def _run_disjoint(pairs, work, buf_size: int, workers: int) -> None:
    """Runs ``work(i, j, buffer)`` for every pair on ``workers`` single-threaded threads, never
    two pairs that share a block at the same time; in list order as far as that allows."""
    pending, busy, errors = list(pairs), set(), []
    cond = threading.Condition()

    def next_pair():
        with cond:
            while pending and not errors:
                pair = next((p for p in pending if p[0] not in busy and p[1] not in busy), None)
                if pair is not None:
                    pending.remove(pair)
                    busy.update(pair)
                    return pair
                cond.wait()
            return None

    def run() -> None:
        torch.set_num_threads(1)  # this thread's torch and MKL; the workers run side by side
        buf = torch.empty(buf_size)
        while (pair := next_pair()) is not None:
            try:
                work(*pair, buf)
            except Exception as exc:
                errors.append(exc)
            finally:
                with cond:
                    busy.difference_update(pair)
                    cond.notify_all()

    torch_threads = torch.get_num_threads()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(max(1, workers))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException:  # e.g. KeyboardInterrupt: let the workers stop after their block
        with cond:
            pending.clear()
        raise
    finally:
        torch.set_num_threads(torch_threads)
    if errors:
        raise errors[0]


def exact_streaming(
    queries: np.ndarray, gallery: np.ndarray | None, k: int, chunk: int
) -> Chunks:
    """Exact top k through ``faiss.knn`` (inner product), one chunk of queries at a time.

    Memory ``O(chunk * k)`` beyond faiss's fixed work space. In same-source mode
    (``gallery=None``) it searches k + 1 and drops each query's own position.
    """
    same_source = gallery is None
    gallery = queries if same_source else gallery
    for s in range(0, len(queries), chunk):
        e = min(s + chunk, len(queries))
        _, idx = faiss.knn(queries[s:e], gallery, k + same_source, faiss.METRIC_INNER_PRODUCT)
        idx = torch.from_numpy(idx)
        yield s, e, _drop_self(idx, s, k) if same_source else idx


def _drop_self(idx: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """Removes each row's own position from k + 1 neighbours (the last one if it is absent)."""
    is_self = idx == torch.arange(start, start + len(idx))[:, None]
    is_self[~is_self.any(1), -1] = True
    return idx[~is_self].view(len(idx), k)


def approximate(
    queries: np.ndarray, gallery: np.ndarray | None, k: int, chunk: int, nprobe: int
) -> Chunks:
    """Approximate top k through a faiss ``IndexIVFFlat`` (inner product) over the gallery.

    ``nlist = 4 sqrt(n)`` cells (at least 39 training points each) and ``nprobe`` cells searched
    per query. Neighbours missing because the probed cells hold too few items come back as -1.
    """
    same_source = gallery is None
    gallery = queries if same_source else gallery
    n_g, d = gallery.shape
    nlist = max(1, min(int(4 * np.sqrt(n_g)), n_g // 39))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(gallery)
    index.add(gallery)
    index.nprobe = min(nprobe, nlist)
    for s in range(0, len(queries), chunk):
        e = min(s + chunk, len(queries))
        _, idx = index.search(queries[s:e], k + same_source)
        idx = torch.from_numpy(idx)
        yield s, e, _drop_self(idx, s, k) if same_source else idx
