"""Contextual similarity over the unlabeled pool: k-reciprocal neighbourhoods (not in SLADE).

Two images of one class share most of their nearest neighbours in the pool even where their own
cosine similarity is low, and two images that a cluster joined by mistake share few. The contextual
similarity of ``i`` and ``j`` is the weighted Jaccard overlap of their neighbourhood encodings, as in
k-reciprocal re-ranking (Zhong et al., CVPR 2017) and STML (Kim et al., CVPR 2022):

1. ``R(i)``: the k-reciprocal neighbours of ``i`` (``j`` among ``i``'s ``k`` nearest and ``i``
   among ``j``'s), expanded by the half-size sets ``R(c, k/2)`` of its members ``c`` that share
   more than two thirds of their own with ``R(i)``;
2. the encoding ``V_i``: weights ``exp(-||f_i - f_j||^2)`` over ``R(i)``, summing to 1, averaged
   over ``i``'s ``k2`` nearest neighbours (local query expansion);
3. ``sim(i, j) = sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk)``, in ``[0, 1]``.

Nearest neighbours come from faiss (exact inner product on the L2-normalised embeddings); the sets
are sparse matrices (scipy), so the whole pool is encoded in a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from slade.errors import ConfigError


def nearest_neighbours(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each row (itself among them), by inner product: ``(similarity, index)``."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    similarity, neighbours = index.search(x, k)
    return similarity, neighbours


def _within_pool(size: int, n: int, key: str) -> None:
    if size >= n:
        raise ConfigError(f"{key}={size}: a neighbourhood larger than the pool ({n} images); "
                          f"it must be below {n}")


def _membership(neighbours: np.ndarray, n: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
    return sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, neighbours.ravel())), shape=(n, n))


def _reciprocal(neighbours: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    a = _membership(neighbours[:, : k + 1], n)
    return a.multiply(a.T).tocsr()


@dataclass
class ContextualSimilarity:
    """The k-reciprocal encodings ``V`` of a pool (rows of a sparse matrix, each summing to 1)."""

    encodings: sp.csr_matrix

    def __len__(self) -> int:
        return self.encodings.shape[0]

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """``sim(i[t], j[t])`` for every ``t``: weighted Jaccard overlap of the encodings."""
        v = self.encodings
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        out = np.zeros(len(i), dtype=np.float32)
        for start in range(0, len(i), 4096):
            a, b = v[i[start:start + 4096]], v[j[start:start + 4096]]
            shared = a.minimum(b).sum(axis=1).A1
            out[start:start + 4096] = shared / np.maximum(a.sum(axis=1).A1 + b.sum(axis=1).A1 - shared, 1e-12)
        return out

    def matrix(self, indices: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The square matrix of ``sim`` among ``indices`` (a batch), as a float tensor."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        i, j = np.triu_indices(len(idx), 1)
        out = np.eye(len(idx), dtype=np.float32)
        out[i, j] = out[j, i] = self.pairs(idx[i], idx[j])
        return torch.from_numpy(out)


def k_reciprocal_encoding(embeddings: np.ndarray, k: int = 20, k2: int = 6,
                          key: str = "student.context_k") -> ContextualSimilarity:
    """Encode every row of ``embeddings`` (L2-normalised) by its expanded k-reciprocal set.

    Raises:
        ConfigError: naming ``key`` when ``k`` (or ``k2``) is not smaller than the pool.
    """
    n = len(embeddings)
    if k < 1 or k2 < 1:
        raise ConfigError(f"{key}: neighbourhood sizes must be at least 1 (k={k}, k2={k2})")
    _within_pool(max(k, k2), n, key)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    _, neighbours = nearest_neighbours(x, k + 1)
    reciprocal = _reciprocal(neighbours, k, n)
    half = _reciprocal(neighbours, max(1, round(k / 2)), n)
    # For each member c of R(i): share of R(c, k/2) inside R(i); over 2/3 adds R(c, k/2) to R(i).
    overlap = (reciprocal @ half.T).multiply(reciprocal)  # [i, c] = |R(i) & R(c, k/2)|, c in R(i)
    overlap = overlap.tocoo()
    size = np.asarray(half.sum(axis=1)).ravel()
    good = overlap.data > (2.0 / 3.0) * size[overlap.col]
    expand = sp.csr_matrix((np.ones(good.sum(), dtype=np.float32), (overlap.row[good], overlap.col[good])),
                           shape=(n, n))
    members = ((reciprocal + expand @ half) > 0).tocoo()
    distance = 2.0 - 2.0 * np.einsum("ij,ij->i", x[members.row], x[members.col])
    weights = sp.csr_matrix((np.exp(-distance).astype(np.float32), (members.row, members.col)), shape=(n, n))
    weights = sp.diags(1.0 / np.maximum(np.asarray(weights.sum(axis=1)).ravel(), 1e-12)) @ weights
    if k2 > 1:  # local query expansion over the k2 nearest neighbours (the row itself included)
        weights = (_membership(neighbours[:, :k2], n) @ weights) / k2
    return ContextualSimilarity(weights.tocsr().astype(np.float32))


def neighbour_jaccard(embeddings: np.ndarray, k: int = 20,
                      key: str = "student.context_k") -> ContextualSimilarity:
    """The plain reading: Jaccard overlap of the two images' ``k``-nearest-neighbour sets.

    Raises:
        ConfigError: naming ``key`` when ``k`` is not smaller than the pool.
    """
    n = len(embeddings)
    _within_pool(k, n, key)
    _, neighbours = nearest_neighbours(embeddings, k)
    return ContextualSimilarity(_membership(neighbours, n) / k)


def jaccard_distance_graph(embeddings: np.ndarray, neighbours: int, similarity: ContextualSimilarity,
                           key: str = "pseudo_labels.neighbours") -> sp.csr_matrix:
    """The k-reciprocal Jaccard distance ``1 - sim`` of each row to its ``neighbours`` nearest rows,
    as a symmetric sparse matrix (the other pairs absent: farther than any ``eps``), for DBSCAN."""
    n = len(embeddings)
    _within_pool(neighbours, n, key)
    _, nearest = nearest_neighbours(embeddings, neighbours + 1)
    i, j = np.repeat(np.arange(n), neighbours), nearest[:, 1:].ravel()
    distance = np.maximum(1.0 - similarity.pairs(i, j), 1e-6)  # a stored zero would read as no edge
    graph = sp.csr_matrix((distance, (i, j)), shape=(n, n))
    return graph.maximum(graph.T).tocsr()
