"""Training and mining plots from hand-written logs, pseudo labels and similarities."""

import json

import numpy as np
import pytest

from slade import run_layout as layout
from slade.analysis.plots import basis_similarity_figure, cluster_size_figure, read_log, training_figure
from slade.errors import DataError

STUDENT_LOG = [
    {"step": 1, "loss": 3.0, "basis_ce": 2.0, "basis_sd": 1.0, "mu_pos": 0.5, "var_pos": 0.04,
     "mu_neg": 0.2, "var_neg": 0.01, "lr": 1e-3, "images_per_s": 100.0},
    {"step": 2, "loss": 2.5, "basis_ce": 1.5, "basis_sd": 0.8, "rank_labeled": 0.3, "rank_unlabeled": 0.2,
     "pos_pairs": 12.0, "neg_pairs": 40.0, "mu_pos": 0.6, "var_pos": 0.03, "mu_neg": 0.1,
     "var_neg": 0.01, "lr": 1e-3, "images_per_s": 90.0},
    {"step": 2, "eval/recall@1": 0.4, "eval/map@r": 0.1},
]


def panel_titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_student_log_gives_losses_retrieval_pairs_and_gaussians():
    fig = training_figure(STUDENT_LOG, "student")
    assert panel_titles(fig) == ["loss terms", "retrieval on the test classes",
                                 "confident pairs mined per step", "basis-similarity Gaussians (Eq. 6)"]
    losses = {line.get_label(): line.get_ydata().tolist() for line in fig.axes[0].lines}
    assert losses == {"loss": [3.0, 2.5], "basis_ce": [2.0, 1.5], "basis_sd": [1.0, 0.8],
                      "rank_labeled": [0.3], "rank_unlabeled": [0.2]}
    assert fig.axes[2].lines[0].get_ydata().tolist() == [12.0]


def test_teacher_log_gives_two_panels_and_an_empty_log_none():
    teacher = [{"step": 20, "loss": 1.0, "lr": 1e-3}, {"step": 20, "eval/recall@1": 0.5}]
    assert panel_titles(training_figure(teacher, "teacher")) == ["loss terms",
                                                                 "retrieval on the test classes"]
    assert training_figure([], "pretrain") is None


def test_read_log_drops_a_torn_last_line_only(tmp_path):
    path = tmp_path / layout.LOG
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    assert read_log(path) == [{"step": 1, "loss": 1.0}]
    path.write_text('{"step": 2, "lo\n' + json.dumps({"step": 3}) + "\n")
    with pytest.raises(DataError, match="log.jsonl:1: not a JSON object"):
        read_log(path)


def test_basis_histograms_split_pairs_by_pseudo_label_and_mark_the_thresholds():
    similarity = np.array([[1.0, 0.9, 0.1, 0.2],
                           [0.9, 1.0, 0.3, 0.0],
                           [0.1, 0.3, 1.0, 0.8],
                           [0.2, 0.0, 0.8, 1.0]])
    fig = basis_similarity_figure(similarity, np.array([0, 0, 1, 1]), 0.85, 0.15, "student")
    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert labels == {"mu+ = T1 (0.850)", "mu- = T2 (0.150)", "different clusters (4 pairs)",
                      "same cluster (2 pairs)"}
    different, same = fig.axes[0].containers  # density histograms: each integrates to one
    assert sum(p.get_height() * p.get_width() for p in same) == pytest.approx(1.0)
    same_bins = [p.get_x() for p in same if p.get_height() > 0]
    assert len(same_bins) == 2 and 0.75 < min(same_bins) < max(same_bins) < 0.9  # 0.8 and 0.9


def test_cluster_sizes():
    fig = cluster_size_figure(np.array([0, 0, 1, 1, 1, 2, 4]), "pseudo_labels")
    # sizes 2, 3, 1, 0, 1: five clusters
    assert fig.axes[0].get_title() == "pseudo_labels: 5 clusters, median size 1, 3 empty or singleton"
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [1, 2, 1, 1]  # sizes 0, 1, 2, 3


def test_cluster_sizes_count_the_images_without_pseudo_label_apart():
    fig = cluster_size_figure(np.array([-1, 0, 0, 1, 1, 1, -1]), "pseudo_labels")  # DBSCAN's outliers
    assert fig.axes[0].get_title() == ("pseudo_labels: 2 clusters, median size 2.5, 0 empty or singleton, "
                                       "2 images unclustered")
