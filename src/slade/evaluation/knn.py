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
            # faiss's stub leaves out addn's j0 (the id of the first column), which C++ has.
            self.heaps.addn(sims.shape[1], faiss.swig_ptr(sims.numpy()), offset)  # type: ignore[call-arg]

    def add(self, heap_rows: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor) -> None:
        """Offers ``vals[i, :]`` (items ``ids[i, :]``) to heap ``heap_rows[i]``; rows may repeat.

        Each heap keeps an offered value only if it beats the root, so offers can be generous.
        """
        if heap_rows.numel():
            rows, values, items = (a.contiguous().numpy() for a in (heap_rows, vals, ids))
            with _faiss_serial():  # one thread: entries may share a heap
                self.heaps.addn_query_subset_with_ids(
                    len(rows),
                    faiss.swig_ptr(rows),
                    values.shape[1],
                    faiss.swig_ptr(values),
                    faiss.swig_ptr(items),
                    values.shape[1],
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


def exact_same_source(
    x: torch.Tensor, k: int, chunk: int, workers: int | None = None, window: int | None = None
) -> Chunks:
    """Exact top k of every row of ``x`` among the other rows, using the symmetry of ``x x^T``.

    Each block ``(i, j)``, ``i < j < i + window``, of the Gram matrix is computed once (float32
    matmul) and offered both to the rows of block i and, along its columns, to the rows of block
    j. Blocks further apart than ``window`` are computed twice, once for each side's rows, so
    that only ``window`` row blocks need a running top k at any time: row block i is finished,
    yielded and freed once its row of blocks is done. With ``window=None`` (every block shares)
    this costs half the multiply-adds of a plain search; with ``window = blocks / 2``, 5/8.
    A row block's diagonal block (own position masked) goes first, so its rows start with a
    threshold. ``workers`` threads (default: torch's thread count), each single-threaded,
    process blocks that share no row block, so no two touch the same heaps.
    Memory: ``12 k`` bytes per row of the live row blocks (``window`` of them, plus one per
    worker running ahead), and one block per worker.

    Args:
        x: ``(n, d)`` float32, L2-normalised.
        k: neighbours per row, at most ``n - 1``.
        chunk: rows per block, a multiple of GROUP.
        workers: threads; ``None`` uses ``torch.get_num_threads()``.
        window: row blocks whose running top k live at once (at least 1); ``None``: all.

    Yields:
        ``(start, stop, indices)`` per row block, in order, as soon as it and those before it
        are done.
    """
    search = _SymmetricSearch(x, k, chunk, window)
    errors: list[BaseException] = []
    stop = threading.Event()
    workers = workers or torch.get_num_threads()

    def run() -> None:
        try:
            _run_disjoint(search.pairs, search.work, chunk * chunk, workers, stop, lookahead=workers)
        except BaseException as exc:  # handed to the consumer below
            errors.append(exc)
        finally:
            with search.lock:
                search.lock.notify_all()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        for i, (s, e) in enumerate(search.blocks):
            with search.lock:
                while i not in search.finished and not errors and runner.is_alive():
                    search.lock.wait(1.0)
                if i not in search.finished:
                    raise errors[0] if errors else RuntimeError(f"row block {i} was not searched")
                idx = search.finished.pop(i)
            yield s, e, idx
    finally:  # also when the consumer stops early or is interrupted
        stop.set()
        runner.join()


class _SymmetricSearch:
    """The state the workers of :func:`exact_same_source` share: the row blocks' running top k.

    ``touches[i]`` counts the block pairs still to offer to row block i; when it reaches 0 the
    block's heaps are turned into its result, moved to ``finished``, and ``lock`` is notified.
    """

    def __init__(self, x: torch.Tensor, k: int, chunk: int, window: int | None) -> None:
        n = len(x)
        self.x, self.k = x, k
        self.blocks = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        b = len(self.blocks)
        self.pairs = _window_schedule(b, b if window is None else max(1, min(window, b)))
        self.touches = [0] * b
        for _, i, j, shared in self.pairs:
            self.touches[i] += 1
            self.touches[j] += shared and i != j
        self.heaps: dict[int, _Heaps] = {}
        self.finished: dict[int, torch.Tensor] = {}
        self.lock = threading.Condition()

    def heap(self, i: int) -> _Heaps:
        with self.lock:
            if i not in self.heaps:
                self.heaps[i] = _Heaps(self.blocks[i][1] - self.blocks[i][0], self.k)
            return self.heaps[i]

    def touched(self, i: int) -> None:
        with self.lock:
            self.touches[i] -= 1
            if self.touches[i] == 0:
                self.finished[i] = self.heaps.pop(i).result()
                self.lock.notify_all()

    def work(self, i: int, j: int, shared: bool, buf: torch.Tensor) -> None:
        """Offer block ``(i, j)`` of the Gram matrix to row block i and, if shared, to block j."""
        (s, e), (t, f) = self.blocks[i], self.blocks[j]
        sims = torch.mm(self.x[s:e], self.x[t:f].T, out=buf[: (e - s) * (f - t)].view(e - s, f - t))
        rows_heap = self.heap(i)
        if i == j:
            rows_heap.add_dense(sims.fill_diagonal_(_NEG_INF), s)
        elif (e - s) % GROUP:  # the ragged last row block, one-sided: offer it all
            rows_heap.add_dense(sims, t)
        else:  # shared pairs have i < j, so block i is full either way
            cols_heap = self.heap(j) if shared else None
            col_thr = cols_heap.thr if cols_heap is not None else torch.full((f - t,), float("inf"))
            for rows, cols, vals in _candidate_groups(sims, rows_heap.thr, col_thr):
                if cols_heap is not None:
                    cols_heap.add(cols, vals, rows + s)  # along columns: GROUP values per column
                col_ids = torch.repeat_interleave(cols + t, GROUP)[:, None]
                rows_heap.add(rows.view(-1), vals.view(-1, 1), col_ids)  # along rows
        self.touched(i)
        if shared and i != j:
            self.touched(j)


def _window_schedule(b: int, w: int) -> list[tuple[int, int, int, bool]]:
    """``(time, i, j, shared)`` block pairs of :func:`exact_same_source`; at time i, row block
    i is finished.

    Diagonal blocks come first for the first ``w`` row blocks and then as each enters the
    window; the rest of row block i's pairs follow: shared with the ``w - 1`` blocks after it,
    one-sided (for i's rows only) with every block ``w`` or more away on either side.
    """
    pairs = [(0, i, i, True) for i in range(min(w, b))]
    for i in range(b):
        if i and i + w - 1 < b:
            pairs.append((i, i + w - 1, i + w - 1, True))
        pairs += [(i, i, j, True) for j in range(i + 1, min(i + w, b))]
        pairs += [(i, i, j, False) for j in range(b) if abs(j - i) >= w]
    return pairs


def _run_disjoint(pairs, work, buf_size: int, workers: int, stop: threading.Event,
                  lookahead: int) -> None:
    """Runs ``work(i, j, shared, buffer)`` for every ``(time, i, j, shared)`` pair on ``workers``
    single-threaded threads, never two pairs that write the same row block's heaps at the same
    time (a shared pair writes both blocks', a one-sided pair only block i's); in list order as
    far as that allows, never more than ``lookahead`` times ahead of the earliest pending pair
    (which bounds the live heaps). Setting ``stop`` lets the workers stop after their block."""
    pending, busy, errors = list(pairs), set[int](), list[BaseException]()
    cond = threading.Condition()

    def writes(pair) -> set[int]:
        _, i, j, shared = pair
        return {i, j} if shared else {i}

    def next_pair():
        with cond:
            while pending and not errors and not stop.is_set():
                limit = pending[0][0] + lookahead
                pair = next((p for p in pending if p[0] > limit or not writes(p) & busy), None)
                pair = None if pair is None or pair[0] > limit else pair
                if pair is not None:
                    pending.remove(pair)
                    busy.update(writes(pair))
                    return pair
                cond.wait(1.0)
            return None

    def run() -> None:
        torch.set_num_threads(1)  # this thread's torch and MKL; the workers run side by side
        buf = torch.empty(buf_size)
        while (pair := next_pair()) is not None:
            try:
                work(*pair[1:], buf)
            except Exception as exc:
                errors.append(exc)
            finally:
                with cond:
                    busy.difference_update(writes(pair))
                    cond.notify_all()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(max(1, workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
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
    searched = queries if gallery is None else gallery
    for s in range(0, len(queries), chunk):
        e = min(s + chunk, len(queries))
        _, found = faiss.knn(queries[s:e], searched, k + same_source, faiss.METRIC_INNER_PRODUCT)
        idx = torch.from_numpy(found)
        yield s, e, drop_self(idx, torch.arange(s, e), k) if same_source else idx


def drop_self(idx: torch.Tensor, positions: torch.Tensor, k: int) -> torch.Tensor:
    """Removes each row's own position (``positions[i]`` for row i) from its k + 1 neighbours
    (the last one if it is absent)."""
    is_self = idx == positions[:, None]
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
    searched = queries if gallery is None else gallery
    n_g, d = searched.shape
    nlist = max(1, min(int(4 * np.sqrt(n_g)), n_g // 39))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(searched)
    index.add(searched)
    index.nprobe = min(nprobe, nlist)
    for s in range(0, len(queries), chunk):
        e = min(s + chunk, len(queries))
        _, found = index.search(queries[s:e], k + same_source)
        idx = torch.from_numpy(found)
        yield s, e, drop_self(idx, torch.arange(s, e), k) if same_source else idx
