"""The demo's default student, run end to end on the tiny data: DBSCAN pseudo labels on the
k-reciprocal Jaccard distance and every pair of the clustered images, no miner, no basis (chosen on
omniglot-shift's validation classes, benchmarks/results/student_choice.md); and the contextual
student, which the reliability tests' tiny demo follows through every fault."""

import json

import numpy as np
import yaml
from tiny_demo import TINY_SIZES

from slade import run_layout as layout
from slade.cli import DEMO_CONFIG
from slade.config import load_config
from slade.pipeline import run


def test_the_demo_default_student_trains_every_pair_of_its_dbscan_clusters(tmp_path):
    out = tmp_path / "run"
    metrics = run(load_config(DEMO_CONFIG, TINY_SIZES), out)
    config = yaml.safe_load((out / layout.CONFIG).read_text())
    assert (config["pseudo_labels"]["method"], config["pseudo_labels"]["eps"],
            config["pseudo_labels"]["context_k"]) == ("dbscan", 0.5, 20)
    assert (config["student"]["mining"], config["student"]["miner"]) == ("all_pairs", "")
    stats = json.loads((out / layout.PSEUDO_LABELS / layout.CLUSTERS).read_text())
    labels = np.loadtxt(out / layout.PSEUDO_LABELS / layout.TABLE, delimiter=",", skiprows=1,
                        usecols=2, dtype=np.int64)
    assert stats["clusters"] == labels.max() + 1 >= 2 and stats["outliers"] == (labels < 0).sum()
    assert stats["images"] + stats["outliers"] == 160
    steps = [e for e in map(json.loads, (out / layout.STUDENT / layout.LOG).read_text().splitlines())
             if "loss" in e]
    assert len(steps) == 8 and all(e["rank_unlabeled"] > 0 for e in steps)  # the pseudo pairs train
    # every pair of the batch: nothing mined (no pair counts), no filter, no basis
    assert not {"pos_pairs", "context_kept", "basis_ce"} & steps[0].keys()
    assert 0.0 <= metrics["student"]["recall@1"] <= 1.0


def test_the_reliability_tests_follow_the_contextual_student_without_a_miner(reference):
    out, metrics = reference
    student = yaml.safe_load((out / layout.CONFIG).read_text())["student"]
    assert (student["mining"], student["miner"], student["context_threshold"]) == ("contextual", "", 0.05)
    steps = [e for e in map(json.loads, (out / layout.STUDENT / layout.LOG).read_text().splitlines())
             if "loss" in e]
    assert all("context_kept" in e and 0.0 <= e["context_kept"] <= 1.0 for e in steps)
    assert "basis_ce" not in steps[0]  # no basis is trained, not even in the warm-up steps
    assert 0.0 <= metrics["student"]["recall@1"] <= 1.0
