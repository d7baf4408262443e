"""The default student, run end to end by the tiny demo of the reliability tests: the contextual
student chosen on omniglot-shift's validation classes (benchmarks/results/student_choice.md)."""

import json

import yaml

from slade import run_layout as layout


def test_the_default_student_is_the_contextual_one_without_a_miner(reference):
    out, metrics = reference
    student = yaml.safe_load((out / layout.CONFIG).read_text())["student"]
    assert (student["mining"], student["miner"], student["context_threshold"]) == ("contextual", "", 0.05)
    steps = [e for e in map(json.loads, (out / layout.STUDENT / layout.LOG).read_text().splitlines())
             if "loss" in e]
    assert all("context_kept" in e and 0.0 <= e["context_kept"] <= 1.0 for e in steps)
    assert "basis_ce" not in steps[0]  # no basis is trained, not even in the warm-up steps
    assert 0.0 <= metrics["student"]["recall@1"] <= 1.0
