"""How right are the pseudo labels, and does Eq. 7 keep the right pairs? (omniglot-shift, overlap)

The omniglot-tiles carry no labels, but the ``overlap`` pool (``images_background.png``) holds
another rendering of every labeled Omniglot image on this machine (8 alphabets, 4,840 drawings).
This diagnostic recovers those tiles' characters by matching pixels: each Omniglot image, downscaled
to 28x28 (Lanczos) and inverted, against every tile (faiss, exact L2), kept when its nearest tile is
clearly nearer than the second (distance ratio below ``--max-ratio``). The recovered labels are
never used in training; they measure, for a run on the overlap pool:

- the pseudo labels: purity and NMI of the k-means clusters over the recovered tiles, and the
  precision of same-cluster pairs (the share that are one character) and their recall;
- Eq. 7, under a finished student (its network ``model.pt``, its ``W_a`` and Gaussians
  ``basis.pt``, the Gaussians' means as thresholds): the precision of the confident positive pairs
  (same cluster and ``s_ij >= mu+``) against all same-cluster pairs, and the share of the confident
  negative pairs (different clusters and ``s_ij <= mu-``) that are in truth one character, against
  all different-cluster pairs; and how well the basis similarity ranks the true same-cluster pairs
  above the false ones (ROC AUC), beside the embedding's own cosine similarity.

    .venv/bin/python benchmarks/pool_purity.py RUN_DIR [RUN_DIR ...] [--checkpoint STAGE_DIR ...]

``RUN_DIR`` is a ``slade run`` directory made with ``data.pool: overlap``; its ``student`` stage is
judged, and any ``--checkpoint`` student stage directory besides, trained on the same pseudo labels
(e.g. a run of a student stopped right after the basis warm-up: ``--set student.steps=201``).
``--clusters K ...`` re-clusters the teacher's pool embeddings (``pseudo_labels/embeddings.npy``)
into each ``K`` and measures those clusters the same way; ``--dbscan-eps EPS ...`` clusters them by
DBSCAN on the k-reciprocal Jaccard distance instead (domain-adaptive re-identification's pseudo labels).
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import io
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score

from slade import run_layout as layout
from slade.basis.feature_basis import load_basis
from slade.context.neighbourhood import (
    ContextualSimilarity,
    jaccard_distance_graph,
    k_reciprocal_encoding,
    neighbour_jaccard,
)
from slade.data.tiles import _load_sheet
from slade.data.transforms import eval_transform
from slade.inference import load_embedding_net
from slade.stages.common import stage_outputs
from slade.stages.pseudo_labels import kmeans

SHEET = "images_background.png"
ARCHIVES = ("images_background_small1.zip", "images_background_small2.zip")


@dataclass
class TileLabels:
    tiles: np.ndarray   # tile indices of the overlap sheet
    pixels: np.ndarray  # their 28x28 pixels (uint8)
    classes: np.ndarray  # the character of each (int ids)
    names: list[str]    # "Alphabet/characterNN" per class id
    dropped: int        # ambiguous matches left out
    sheet_tiles: int    # tiles on the sheet


def recover_tile_labels(data: Path, max_ratio: float) -> TileLabels:
    """The character of every overlap tile that is another rendering of an omniglot/ image."""
    sheet, count = _load_sheet(str((data / "omniglot-tiles" / SHEET).resolve()))
    tiles = np.ascontiguousarray(sheet[:count].reshape(count, -1), dtype=np.float32)
    images, names = [], []
    seen: set[tuple[str, str, str]] = set()
    for archive in ARCHIVES:  # Greek and Latin are in both archives: counted once
        with zipfile.ZipFile(data / "omniglot" / archive) as z:
            for member in sorted(z.namelist()):
                parts = member.split("/")
                key = tuple(parts[-3:])
                if not member.endswith(".png") or key in seen:
                    continue
                seen.add(key)
                with Image.open(io.BytesIO(z.read(member))) as image:
                    small = image.convert("L").resize((28, 28), Image.LANCZOS)
                images.append(255 - np.asarray(small, dtype=np.float32).reshape(-1))
                names.append(f"{parts[-3]}/{parts[-2]}")
    index = faiss.IndexFlatL2(tiles.shape[1])
    index.add(tiles)
    distances, nearest = index.search(np.stack(images), 2)
    ratio = np.sqrt(distances[:, 0] / np.maximum(distances[:, 1], 1e-12))
    keep = ratio < max_ratio
    if len(np.unique(nearest[keep, 0])) != keep.sum():
        sys.exit("two omniglot images matched one tile: raise the bar (--max-ratio)")
    class_names = sorted(set(names))
    ids = {n: i for i, n in enumerate(class_names)}
    classes = np.array([ids[n] for n in names])
    found = nearest[keep, 0]
    return TileLabels(found, sheet[found], classes[keep], class_names, int((~keep).sum()), count)


def read_pseudo_labels(run: Path) -> dict[int, tuple[int, int]]:
    """Tile index -> (row of the table and of embeddings.npy, pseudo label), overlap sheet only."""
    table = {}
    with open(run / layout.PSEUDO_LABELS / layout.TABLE, newline="") as f:
        for row in csv.DictReader(f):
            sheet, _, tile = row["source"].rpartition("#")
            if not sheet.endswith(SHEET):
                sys.exit(f"{run}: the pool is not the overlap sheet ({sheet}); run with data.pool=overlap")
            table[int(tile)] = (int(row["index"]), int(row["pseudo_label"]))
    return table


def pair_masks(pseudo: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle pair masks: same cluster, same character, and the triangle itself."""
    triangle = np.triu(np.ones((len(pseudo), len(pseudo)), dtype=bool), k=1)
    return pseudo[:, None] == pseudo[None, :], truth[:, None] == truth[None, :], triangle


def cluster_quality(pseudo: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    same_cluster, same_char, tri = pair_masks(pseudo, truth)
    majority = sum(np.bincount(truth[pseudo == c]).max() for c in np.unique(pseudo))
    pos = same_cluster & tri
    return {
        "purity": majority / len(truth),
        "nmi": normalized_mutual_info_score(truth, pseudo),
        "same_cluster_pair_precision": (pos & same_char).sum() / pos.sum(),
        "same_char_pair_recall": (pos & same_char).sum() / (same_char & tri).sum(),
    }


@torch.no_grad()
def judge(stage_dir: Path, tiles: np.ndarray, pseudo: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Eq. 7's confident pairs under the network, basis and Gaussians of a finished student."""
    done = stage_outputs(stage_dir) or {}
    if layout.BASIS not in done:
        sys.exit(f"{stage_dir}: no {layout.BASIS} in its {layout.DONE} (a student finished before slade "
                 f"wrote it): delete {stage_dir / layout.DONE} and rerun `slade run` to write it")
    model, _ = load_embedding_net(stage_dir / layout.MODEL)
    model.eval()
    basis = load_basis(stage_dir / layout.BASIS)
    transform = eval_transform(28, 1)
    x = transform(torch.from_numpy(np.ascontiguousarray(tiles)).unsqueeze(1))
    z = torch.cat([model(b) for b in x.split(512)])
    s = basis.similarity(z).numpy()
    cosine = (z @ z.T).numpy()  # the embedding's own similarity, for comparison
    same_cluster, same_char, tri = pair_masks(pseudo, truth)
    pos, neg = same_cluster & tri, ~same_cluster & tri
    conf_pos, conf_neg = pos & (s >= float(basis.mu_pos)), neg & (s <= float(basis.mu_neg))
    return {
        "step": read_steps(stage_dir),
        "mu_pos": float(basis.mu_pos),
        "mu_neg": float(basis.mu_neg),
        "pos_precision_all": (pos & same_char).sum() / pos.sum(),
        "pos_precision_confident": (conf_pos & same_char).sum() / max(conf_pos.sum(), 1),
        "pos_kept": conf_pos.sum() / pos.sum(),
        "true_pos_kept": (conf_pos & same_char).sum() / max((pos & same_char).sum(), 1),
        "false_pos_kept": (conf_pos & ~same_char).sum() / max((pos & ~same_char).sum(), 1),
        "neg_wrong_all": (neg & same_char).sum() / neg.sum(),
        "neg_wrong_confident": (conf_neg & same_char).sum() / max(conf_neg.sum(), 1),
        "neg_kept": conf_neg.sum() / neg.sum(),
        # How well each similarity tells the true same-cluster pairs from the false ones.
        "pos_auc_basis": roc_auc_score(same_char[pos], s[pos]),
        "pos_auc_embedding": roc_auc_score(same_char[pos], cosine[pos]),
    }


def read_steps(stage_dir: Path) -> int:
    """The steps the finished student trained (its ``done.json`` fingerprint's)."""
    with open(stage_dir / layout.DONE) as f:
        return int(json.load(f)["fingerprint"][layout.STUDENT]["steps"])


def precision_at_recall(right: np.ndarray, score: np.ndarray, recall: float) -> tuple[float, float]:
    """The threshold that keeps ``recall`` of the right pairs, and the precision of what it keeps."""
    threshold = float(np.quantile(score[right], 1.0 - recall))
    kept = score >= threshold
    return threshold, float(right[kept].mean())


def kept_at(right: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """Precision and recall (of the right pairs) of the pairs with ``score >= threshold``."""
    kept = score >= threshold
    return float(right[kept].mean()) if kept.any() else float("nan"), float(kept[right].mean())


@torch.no_grad()
def augmented_embeddings(model_file: Path, pixels: np.ndarray, views: int, seed: int = 0) -> np.ndarray:
    """The mean over ``views`` training augmentations of each tile's embedding (L2-normalised)."""
    from slade.data.transforms import train_transform

    model, _ = load_embedding_net(model_file)
    model.eval()
    transform = train_transform("strokes", 28, 1)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(1)
    total = torch.zeros(len(x), model.embedding_dim)
    for view in range(views):
        torch.manual_seed(seed * 1000 + view)
        batch = torch.stack([transform(t) for t in x])
        total += torch.cat([model(b) for b in batch.split(512)])
    return torch.nn.functional.normalize(total, dim=1).numpy()


def signal_audit(run: Path, labels: TileLabels, rows: np.ndarray, pseudo: np.ndarray, args) -> list[str]:
    """Every pair-confidence signal on the same-cluster pairs of the recovered tiles."""
    pool = pool_embeddings(run)
    i, j, right = same_cluster_pairs(pseudo, labels.classes)
    pi, pj = rows[i], rows[j]  # pool rows of the pairs
    signals: dict[str, tuple[np.ndarray, float | None]] = {}
    signals["teacher cosine"] = (np.einsum("ij,ij->i", pool[pi], pool[pj]), None)
    for stage in [run / layout.STUDENT, *args.checkpoint]:
        if layout.BASIS in (stage_outputs(stage) or {}):  # a finished student: its network and W_a
            model, _ = load_embedding_net(stage / layout.MODEL)
            model.eval()
            basis = load_basis(stage / layout.BASIS)
            plain = copy.deepcopy(basis)  # the same W_a, read without row normalisation
            plain.normalise = False
            x = eval_transform(28, 1)(torch.from_numpy(np.ascontiguousarray(labels.pixels)).unsqueeze(1))
            with torch.no_grad():
                z = torch.cat([model(b) for b in x.split(512)])
                for name, b in (("basis cosine", basis), ("plain-basis cosine (same W_a)", plain)):
                    r = torch.nn.functional.normalize(b(z), dim=1).numpy()
                    signals[f"{name}, {stage.name} after {read_steps(stage)} steps"] = (
                        np.einsum("ij,ij->i", r[i], r[j]), float(basis.mu_pos))
    seconds = 0.0
    for k in args.context_k:
        context, took = encoding(run, k, args.context_k2)
        seconds += took / len(args.context_k)
        signals[f"k-reciprocal Jaccard, k={k}, k2={args.context_k2}"] = (context.pairs(pi, pj),
                                                                         args.context_threshold)
        signals[f"{k}-NN Jaccard"] = (neighbour_jaccard(pool, k).pairs(pi, pj), None)
    together = np.zeros(len(i))
    runs = [(k, seed) for k in (300, 600, 1000) for seed in range(3)]
    for k, seed in runs:  # co-association: the share of k-means runs that put the pair together
        found, _, _ = kmeans(pool, k, args.iterations, seed=seed)
        together += found[pi] == found[pj]
    signals[f"co-association, {len(runs)} k-means runs (K 300/600/1000)"] = (together / len(runs), None)
    aug = augmented_embeddings(run / layout.TEACHER / layout.MODEL, labels.pixels, args.views)
    signals[f"teacher cosine, mean of {args.views} augmented views"] = (np.einsum("ij,ij->i", aug[i], aug[j]),
                                                                        None)
    lines = [f"{len(i)} same-cluster pairs among the recovered tiles, {right.mean():.3f} of them one "
             f"character; k-reciprocal encoding of the {len(pool)}-image pool: {seconds:.1f} s per k", "",
             "| signal | ROC AUC (right vs wrong) | precision at 80% of right pairs kept (threshold) | "
             "student's threshold | precision / recall there |", "|---|---|---|---|---|"]
    for name, (score, threshold) in signals.items():
        at80, precision = precision_at_recall(right, score, 0.8)
        at = "–" if threshold is None else "{:.3f} / {:.3f}".format(*kept_at(right, score, threshold))
        lines.append(f"| {name} | {roc_auc_score(right, score):.3f} | {precision:.3f} ({at80:.3f}) | "
                     f"{'–' if threshold is None else f'{threshold:.3f}'} | {at} |")
    return lines


def same_cluster_pairs(pseudo: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recovered tiles' same-cluster pairs ``(i, j)``, ``i < j``, and whether each is one character."""
    i, j = np.triu_indices(len(pseudo), 1)
    same = pseudo[i] == pseudo[j]
    i, j = i[same], j[same]
    return i, j, truth[i] == truth[j]


def pool_embeddings(run: Path) -> np.ndarray:
    """The teacher's embeddings of the whole pool (``pseudo_labels/embeddings.npy``)."""
    return np.asarray(np.load(run / layout.PSEUDO_LABELS / layout.EMBEDDINGS), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def encoding(run: Path, k: int, k2: int) -> tuple[ContextualSimilarity, float]:
    """The pool's k-reciprocal encoding, computed once per run and ``(k, k2)`` for every audit, and
    the seconds it took."""
    pool = pool_embeddings(run)
    started = time.perf_counter()
    return k_reciprocal_encoding(pool, k=k, k2=k2), time.perf_counter() - started


def relabel_audit(run: Path, labels: TileLabels, rows: np.ndarray, clusterings: dict[str, np.ndarray],
                  args) -> list[str]:
    """Same-cluster pairs of low contextual similarity read as negatives instead of dropped: how many
    pairs that would be, and how many of them are in truth two characters (the label they would get)."""
    context, _ = encoding(run, args.context_k[0], args.context_k2)
    lines = [f"Same-cluster pairs below a contextual similarity (k={args.context_k[0]}, "
             f"k2={args.context_k2}) as negatives:", "",
             "| pseudo labels | below | share of same-cluster pairs | two characters among them | "
             "wrong same-cluster pairs covered | right ones turned into negatives |",
             "|---|---|---|---|---|---|"]
    for name, pseudo in clusterings.items():
        i, j, right = same_cluster_pairs(pseudo, labels.classes)
        score = context.pairs(rows[i], rows[j])
        for below in args.negatives_below:
            low = score < below
            wrong = 1.0 - right[low].mean() if low.any() else float("nan")
            lines.append(f"| {name} | {below:g} | {low.mean():.3f} | {wrong:.3f} | "
                         f"{low[~right].mean():.3f} | {low[right].mean():.3f} |")
    return lines


def dbscan_audit(run: Path, labels: TileLabels, rows: np.ndarray, args) -> list[str]:
    """The re-identification clustering instead of k-means: DBSCAN on the k-reciprocal Jaccard
    distance (``1 - sim``) of each pool image to its 30 nearest neighbours (Cluster Contrast, SpCL)."""
    from sklearn.cluster import DBSCAN

    context, _ = encoding(run, args.context_k[0], args.context_k2)
    graph = jaccard_distance_graph(pool_embeddings(run), 30, context)
    lines = [f"DBSCAN on the k-reciprocal Jaccard distance (k={args.context_k[0]}, k2={args.context_k2}), "
             "min_samples 4; pair precision over the tiles it clusters, recall over all (an outlier "
             "is a cluster of its own):", "",
             "| eps | clusters | pool outliers | tile outliers | purity | NMI | pair precision | "
             "pair recall |",
             "|---|---|---|---|---|---|---|---|"]
    for eps in args.dbscan_eps:
        found = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(graph)
        tiles = found[rows]
        inside = tiles >= 0
        quality = cluster_quality(tiles[inside], labels.classes[inside])
        alone = tiles.copy()
        alone[~inside] = found.max() + 1 + np.arange((~inside).sum())
        recall = cluster_quality(alone, labels.classes)["same_char_pair_recall"]
        lines.append(f"| {eps} | {found.max() + 1} | {(found < 0).mean():.3f} | {(~inside).mean():.3f} | "
                     f"{quality['purity']:.3f} | {quality['nmi']:.3f} | "
                     f"{quality['same_cluster_pair_precision']:.3f} | {recall:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="slade run directories (overlap pool)")
    parser.add_argument("--checkpoint", nargs="*", type=Path, default=[],
                        help="further finished student stage directories to judge")
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--clusters", nargs="*", type=int, default=[],
                        help="also cluster the teacher's pool embeddings into K clusters (each K)")
    parser.add_argument("--iterations", type=int, default=25, help="k-means iterations")
    parser.add_argument("--max-ratio", type=float, default=0.6,
                        help="keep a match when nearest / second-nearest tile distance is below this")
    parser.add_argument("--alphabets", nargs="*", default=[],
                        help="measure on the recovered tiles of these alphabets only (e.g. the "
                             "labeled training alphabets, to guide a choice without test classes)")
    parser.add_argument("--signals", action="store_true",
                        help="audit every pair-confidence signal on the same-cluster pairs")
    parser.add_argument("--context-k", type=int, nargs="+", default=[20], help="k-reciprocal k (each)")
    parser.add_argument("--context-k2", type=int, default=6, help="k-reciprocal query expansion")
    parser.add_argument("--context-threshold", type=float, default=0.15,
                        help="the contextual student's threshold (student.context_threshold)")
    parser.add_argument("--views", type=int, default=8, help="augmented views per tile")
    parser.add_argument("--dbscan-eps", type=float, nargs="*", default=[],
                        help="also cluster the pool by DBSCAN on the k-reciprocal Jaccard distance "
                        "(each eps)")
    parser.add_argument("--negatives-below", type=float, nargs="*", default=[],
                        help="also count the same-cluster pairs below each contextual similarity, as "
                        "negatives (the run's pseudo labels and each --clusters K)")
    args = parser.parse_args()
    labels = recover_tile_labels(args.data, args.max_ratio)
    if args.alphabets:
        keep = np.isin([labels.names[c].split("/")[0] for c in labels.classes], args.alphabets)
        labels = TileLabels(labels.tiles[keep], labels.pixels[keep], labels.classes[keep], labels.names,
                            labels.dropped, labels.sheet_tiles)
    print(f"recovered {len(labels.tiles)} tiles of {len(labels.names)} characters "
          f"({labels.dropped} ambiguous matches left out) among {labels.sheet_tiles} overlap tiles")
    for run in args.runs:
        table = read_pseudo_labels(run)
        rows, pseudo = np.array([table[t] for t in labels.tiles]).T
        print(f"\n## {run}")
        print(f"pseudo labels ({len(np.unique(list(v[1] for v in table.values())))} clusters):",
              _fmt(cluster_quality(pseudo, labels.classes)))
        clusterings = {"the run's": pseudo}
        teacher = pool_embeddings(run) if args.clusters else None
        for k in args.clusters:
            found, _, _ = kmeans(teacher, k, args.iterations, seed=0)
            clusterings[f"K={k}"] = found[rows]
            print(f"  k-means of the teacher's embeddings, K={k}:",
                  _fmt(cluster_quality(found[rows], labels.classes)))
        if args.negatives_below:
            print("\n".join(relabel_audit(run, labels, rows, clusterings, args)))
        if args.dbscan_eps:
            print("\n".join(dbscan_audit(run, labels, rows, args)))
        if args.signals:
            print("\n".join(signal_audit(run, labels, rows, pseudo, args)))
        for stage in [run / layout.STUDENT, *args.checkpoint]:
            if (stage / layout.DONE).exists():
                result = judge(stage, labels.pixels, pseudo, labels.classes)
                print(f"Eq. 7 under {stage}:", _fmt(result))


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


if __name__ == "__main__":
    main()
