"""Training and mining plots from what the stages wrote: ``log.jsonl``, pseudo labels, the basis.

- :func:`training_figure`: loss terms, periodic Recall@1 / MAP@R, mined pairs per step and the
  momentum Gaussians ``mu+`` / ``mu-`` (Eq. 6) of one stage's log.
- :func:`basis_similarity_figure`: histograms of the basis similarity (Eq. 4) of same-cluster and
  different-cluster pairs of unlabeled images, with the thresholds ``mu+``, ``mu-`` of Eq. 7.
- :func:`cluster_size_figure`: how many pseudo-label clusters have each size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from slade.errors import DataError

# Logged scalars that are bookkeeping, not loss terms.
NOT_LOSSES = {"step", "lr", "images_per_s", "pos_pairs", "neg_pairs", "mu_pos", "var_pos",
              "mu_neg", "var_neg"}
EVAL_KEYS = ("eval/recall@1", "eval/map@r")


def read_log(path: Path) -> list[dict]:
    """The entries of a ``log.jsonl``; a torn last line (a killed run) is left out."""
    lines = path.read_text().splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise DataError(f"{path}:{number}: not a JSON object") from None
    return entries


def _series(entries: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(e["step"], e[key]) for e in entries if key in e and e[key] is not None]
    steps, values = zip(*rows, strict=True) if rows else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def training_figure(entries: list[dict], stage: str) -> Figure | None:
    """One panel per kind of logged quantity present in ``entries``; None when nothing was logged."""
    losses = sorted({k for e in entries for k in e if k not in NOT_LOSSES and not k.startswith("eval/")},
                    key=lambda k: (k != "loss", k))
    panels = []
    if losses:
        panels.append(("loss terms", "loss", losses))
    if any(k in e for e in entries for k in EVAL_KEYS):
        panels.append(("retrieval on the test classes", "value", list(EVAL_KEYS)))
    if any("pos_pairs" in e for e in entries):
        panels.append(("confident pairs mined per step", "pairs", ["pos_pairs", "neg_pairs"]))
    if any("mu_pos" in e for e in entries):
        panels.append(("basis-similarity Gaussians (Eq. 6)", "similarity", ["mu_pos", "mu_neg"]))
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    for ax, (title, ylabel, keys) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels, strict=True):
        for key in keys:
            steps, values = _series(entries, key)
            if not len(steps):
                continue
            label = {"mu_pos": "mu+ (same cluster)", "mu_neg": "mu- (different clusters)",
                     "pos_pairs": "positive", "neg_pairs": "negative"}.get(key, key.removeprefix("eval/"))
            line, = ax.plot(steps, values, marker="o" if len(steps) < 12 else None, ms=3, label=label)
            if key in ("mu_pos", "mu_neg"):
                _, var = _series(entries, "var" + key[2:])
                if len(var) == len(values):
                    sd = np.sqrt(np.maximum(var, 0))
                    ax.fill_between(steps, values - sd, values + sd, color=line.get_color(), alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(stage, fontsize=11)
    fig.tight_layout()
    return fig


def basis_similarity_figure(similarity: np.ndarray, pseudo_labels: np.ndarray, mu_pos: float,
                            mu_neg: float, title: str) -> Figure:
    """Histograms of ``similarity[i, j]`` (i < j) for same- and different-cluster pairs."""
    i, j = np.triu_indices(len(pseudo_labels), k=1)
    values = similarity[i, j]
    same = pseudo_labels[i] == pseudo_labels[j]
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.subplots()
    low = min(float(values.min()) if len(values) else 0.0, mu_pos, mu_neg)
    bins = np.linspace(max(-1.0, low - 0.05), 1.0, 61).tolist()
    for mask, label, colour in ((~same, "different clusters", "#c62828"), (same, "same cluster", "#2e7d32")):
        if mask.any():
            ax.hist(values[mask], bins=bins, density=True, alpha=0.5, color=colour,
                    label=f"{label} ({int(mask.sum())} pairs)")
    for value, label, colour in ((mu_pos, "mu+ = T1", "#2e7d32"), (mu_neg, "mu- = T2", "#c62828")):
        ax.axvline(value, color=colour, linestyle="--", linewidth=1.2, label=f"{label} ({value:.3f})")
    ax.set_xlabel("basis similarity s_ij (Eq. 4)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def cluster_size_figure(pseudo_labels: np.ndarray, title: str) -> Figure:
    """Number of clusters per cluster size (log-spaced bins when sizes span a wide range); the images
    with no pseudo label (-1: DBSCAN's outliers, unreadable images) are counted in the title."""
    unlabeled = int((pseudo_labels < 0).sum())
    sizes = np.bincount(pseudo_labels[pseudo_labels >= 0])
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.subplots()
    top = int(sizes.max())
    bins = (np.arange(-0.5, top + 1.5) if top <= 60
            else np.unique(np.round(np.geomspace(1, top + 1, 40))) - 0.5).tolist()
    ax.hist(sizes, bins=bins, color="#546e7a")
    if top > 60:
        ax.set_xscale("log")
    ax.set_xlabel("cluster size (images)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{title}: {len(sizes)} clusters, median size {np.median(sizes):g}, "
                 f"{int((sizes <= 1).sum())} empty or singleton"
                 + (f", {unlabeled} images unclustered" if unlabeled else ""), fontsize=10)
    fig.tight_layout()
    return fig
