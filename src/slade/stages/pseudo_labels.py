"""Stage 2: pseudo labels — the teacher embeds the unlabeled pool, faiss k-means clusters it
(``pseudo_labels.method: dbscan``: DBSCAN on the k-reciprocal Jaccard distance instead).

Round 1 pseudo-labels with the teacher, round r > 1 with the student of round r - 1. Writes to the
round's folder (``pseudo_labels``, ``pseudo_labels_round2``...): ``embeddings.npy`` (the teacher's
embeddings of the pool), ``pseudo_labels.csv`` (index, source, pseudo label, distance to the
centroid; -1 and no distance for DBSCAN's outliers) and ``clusters.json`` (cluster-size statistics;
purity and NMI where the pool has hidden labels), and
``done.json`` last (see ``stages/common.py``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from sklearn.cluster import DBSCAN
from sklearn.metrics import normalized_mutual_info_score

from slade import run_layout as layout
from slade.config import PseudoLabelConfig
from slade.context.neighbourhood import jaccard_distance_graph, k_reciprocal_encoding
from slade.engine import distributed
from slade.errors import DataError
from slade.io import atomic_write, read_json, reserve, write_json, write_text
from slade.stages.common import RunContext, mark_done, output_digest, stage_current

log = logging.getLogger("slade")


@dataclass
class PseudoLabels:
    """The pseudo label (cluster id) of each unlabeled image, and its distance to the centroid."""

    labels: np.ndarray
    distances: np.ndarray
    sources: list[str]

    def write(self, path: Path) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["index", "source", "pseudo_label", "distance"])
        rows = zip(self.sources, self.labels, self.distances, strict=True)
        for i, (source, label, dist) in enumerate(rows):
            writer.writerow([i, source, int(label), f"{float(dist):.6f}"])
        write_text(path, buffer.getvalue())

    @classmethod
    def read(cls, path: Path) -> PseudoLabels:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return cls(
            np.array([int(r["pseudo_label"]) for r in rows], dtype=np.int64),
            np.array([float(r["distance"]) for r in rows], dtype=np.float32),
            [r["source"] for r in rows],
        )


def kmeans(embeddings: np.ndarray, k: int, iterations: int, seed: int, redo: int = 1,
           gpu: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means with faiss: ``(labels, squared distances, centroids)``."""
    n, d = embeddings.shape
    if n == 0:
        raise DataError("the unlabeled pool is empty: there is nothing to pseudo-label")
    if k > n:
        raise DataError(f"pseudo_labels.clusters={k} is larger than the unlabeled pool ({n} images)")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    km = faiss.Kmeans(d, k, niter=iterations, seed=seed, nredo=redo, spherical=True,
                      gpu=gpu, verbose=False, min_points_per_centroid=1)
    km.train(x)
    similarity, labels = km.index.search(x, 1)  # spherical k-means searches by inner product
    distances = np.maximum(2.0 - 2.0 * similarity[:, 0], 0.0)  # squared distance of unit vectors
    assert km.centroids is not None  # set by train
    return labels[:, 0].astype(np.int64), distances, km.centroids


def dbscan(embeddings: np.ndarray, cfg: PseudoLabelConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """DBSCAN on the k-reciprocal Jaccard distance (Cluster Contrast, SpCL):
    ``(labels, squared distances to the cluster's mean direction, clusters)``; outliers get -1 and NaN.

    Raises:
        DataError: when no cluster is found (every image an outlier at ``pseudo_labels.eps``).
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    context = k_reciprocal_encoding(x, cfg.context_k, cfg.context_k2, key="pseudo_labels.context_k")
    graph = jaccard_distance_graph(x, cfg.neighbours, context)
    labels = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, metric="precomputed").fit_predict(graph)
    k = int(labels.max()) + 1
    if k == 0:
        raise DataError(f"pseudo_labels.eps={cfg.eps}: DBSCAN found no cluster in the {len(x)} pool "
                        "images (every one an outlier): raise pseudo_labels.eps or lower "
                        "pseudo_labels.min_samples")
    inside = labels >= 0
    centroids = np.zeros((k, x.shape[1]), dtype=np.float32)
    np.add.at(centroids, labels[inside], x[inside])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    distances = np.full(len(x), np.nan, dtype=np.float32)
    distances[inside] = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", x[inside], centroids[labels[inside]]), 0)
    return labels.astype(np.int64), distances, k


def cluster_statistics(labels: np.ndarray, k: int, hidden: np.ndarray | None) -> dict:
    """Cluster sizes, and purity / NMI against hidden labels where the pool has them; the outliers
    (-1, DBSCAN's) are counted and left out of the rest."""
    outliers = labels < 0
    labels = labels[~outliers]
    hidden = hidden[~outliers] if hidden is not None else None
    sizes = np.bincount(labels, minlength=k)
    stats = {
        "clusters": k,
        "outliers": int(outliers.sum()),
        "images": int(len(labels)),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "empty": int((sizes == 0).sum()),
        "singletons": int((sizes == 1).sum()),
    }
    if hidden is not None and len(hidden) and (hidden >= 0).all():
        majority = sum(np.bincount(hidden[labels == c]).max() for c in np.unique(labels))
        stats["purity"] = float(majority / len(labels))
        stats["nmi"] = float(normalized_mutual_info_score(hidden, labels))
    return stats


def run_pseudo_label_round(ctx: RunContext, round_index: int) -> None:
    """Stage 2 of round ``round_index``; it evaluates no model, so it adds nothing to metrics.json
    (its statistics are its student's ``pseudo_labels``)."""
    run_pseudo_labels(ctx, layout.teacher_of(round_index), ctx.stage_dir(layout.pseudo_labels(round_index)))


def run_pseudo_labels(ctx: RunContext, teacher: str, out: Path) -> PseudoLabels:
    """Embed the pool with the model of stage ``teacher`` and cluster it (skipped when done).

    Every file is written atomically and ``done.json`` last, so a killed run redoes the stage.
    Unreadable images of a lazily read pool get pseudo label -1 and no distance. Under ``torchrun``
    every rank embeds its share of the pool, rank 0 clusters, and the other ranks read its table.
    """
    pool = ctx.data.unlabeled
    sources = hashlib.sha256("\n".join(pool.image_set.sources).encode()).hexdigest()
    teacher_model = output_digest(ctx.stage_dir(teacher), layout.MODEL)
    fingerprint = ctx.fingerprint("pseudo_labels", teacher=teacher_model, pool=sources)
    if stage_current(out, fingerprint):
        return PseudoLabels.read(out / layout.TABLE)
    _make_pseudo_labels(ctx, teacher, out, fingerprint)
    distributed.barrier()
    return PseudoLabels.read(out / layout.TABLE)


def _make_pseudo_labels(ctx: RunContext, teacher: str, out: Path, fingerprint: dict) -> None:
    pool = ctx.data.unlabeled
    cfg = ctx.config.pseudo_labels
    if len(pool) < 2:
        raise DataError(f"the unlabeled pool has {len(pool)} image(s): SLADE needs a pool to cluster")
    if distributed.is_main():
        log.info("%s: %s, %s", out.name, ctx.device, ctx.precision.describe())
    model = ctx.load_model(teacher).to(ctx.device)

    # Stream the embeddings to disk: a large pool never has to fit in memory twice. Under
    # torchrun every rank embeds its share and rank 0 writes them all and clusters.
    def write_embeddings(path: Path) -> None:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                          shape=(len(pool), model.embedding_dim))
        reserve(path, array.offset + array.nbytes)  # a full disk fails now, not with SIGBUS later
        ctx.embed(model, pool, out=array)
        array.flush()

    if not distributed.is_main():
        ctx.embed(model, pool)
        return
    atomic_write(out / layout.EMBEDDINGS, write_embeddings)
    embeddings = np.load(out / layout.EMBEDDINGS, mmap_mode="r")
    good = np.setdiff1d(np.arange(len(pool)), pool.unreadable())
    if cfg.method == "dbscan":
        found, found_distances, k = dbscan(embeddings[good], cfg)
    else:
        gpu = ctx.device.type == "cuda" and faiss.get_num_gpus() > 0
        found, found_distances, _ = kmeans(embeddings[good], cfg.clusters, cfg.iterations, ctx.config.seed,
                                           cfg.redo, gpu=gpu)
        k = cfg.clusters
    labels = np.full(len(pool), -1, dtype=np.int64)
    distances = np.full(len(pool), np.nan, dtype=np.float32)
    labels[good], distances[good] = found, found_distances
    hidden = pool.labels[good] if pool.image_set.has_labels else None
    stats = cluster_statistics(found, k, hidden) | {"teacher": teacher, "unreadable": len(pool) - len(good)}
    PseudoLabels(labels, distances, pool.image_set.sources).write(out / layout.TABLE)
    write_json(out / layout.CLUSTERS, stats)
    mark_done(out, fingerprint, [layout.TABLE])


def read_statistics(out: Path) -> dict:
    return read_json(out / layout.CLUSTERS)
