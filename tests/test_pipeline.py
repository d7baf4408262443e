"""End to end: every stage on a tiny embedded data set, through the command line."""

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from slade.cli import app
from slade.config import load_config
from slade.data.build import build_splits
from slade.pipeline import run

TINY = [
    "data.glyph_train_classes=12", "data.glyph_test_classes=6", "data.glyph_images_per_class=6",
    "data.glyph_pool_size=160", "model.width=8", "model.embedding_dim=16",
    "pretrain.steps=3", "pretrain.batch_size=32", "pretrain.prototypes=10",
    "pretrain.freeze_prototypes_steps=1", "pretrain.small_crops=2",
    "teacher.steps=4", "teacher.batch_size=16",
    "student.steps=6", "student.basis_warmup_steps=2", "student.batch_size=16",
    "student.unlabeled_batch_size=16", "student.log_every=1", "pseudo_labels.clusters=8",
    "evaluation.batch_size=64",
    # The visual analysis that ends `slade run` is tested in tests/analysis/.
    "analysis.enabled=false",
]
METRIC_KEYS = {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision",
               "precision@1", "nmi"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *sum((["--set", o] for o in TINY), [])])
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_config_metrics_and_every_stage(finished_run):
    out = finished_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["pretrain", "teacher", "student"]
    for stage in metrics.values():
        assert METRIC_KEYS <= stage.keys()
        assert all(0.0 <= stage[k] <= 1.0 for k in METRIC_KEYS)
    assert metrics["teacher"]["init"] == "pretrain"
    assert metrics["student"]["pseudo_labels"]["clusters"] == 8
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["teacher"]["steps"] == 4 and resolved["data"]["dataset"] == "glyphs"
    for stage in ("pretrain", "teacher", "student"):
        assert (out / stage / "model.pt").is_file() and (out / stage / "log.jsonl").is_file()
    table = (out / "pseudo_labels" / "pseudo_labels.csv").read_text().splitlines()
    assert table[0] == "index,source,pseudo_label,distance" and len(table) == 161
    assert np.load(out / "pseudo_labels" / "embeddings.npy").shape == (160, 16)
    data = json.loads((out / "data.json").read_text())
    assert data["labeled"]["images"] == 72 and data["unlabeled"]["domains"] == ["stix-cm"]


def test_student_logs_mined_pairs_and_gaussians(finished_run):
    log = [json.loads(x) for x in (finished_run / "student" / "log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert {"basis_ce", "basis_sd", "mu_pos", "mu_neg"} <= steps[0].keys()  # warm-up: basis only
    assert "rank_unlabeled" not in steps[0]
    full = steps[-1]
    assert {"rank_labeled", "rank_unlabeled", "pos_pairs", "neg_pairs"} <= full.keys()


def test_rerun_skips_finished_stages(finished_run):
    before = {p: p.stat().st_mtime_ns for p in finished_run.rglob("model.pt")}
    config = load_config(finished_run / "config.yaml")
    again = run(config, finished_run)
    assert again == json.loads((finished_run / "metrics.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in finished_run.rglob("model.pt")} == before


def test_changed_config_on_existing_run_is_refused(finished_run):
    result = CliRunner().invoke(
        app, ["demo", "--out", str(finished_run), *sum((["--set", o] for o in TINY), []),
              "--set", "teacher.lr=0.5"])
    assert result.exit_code != 0
    assert "made with another config (differs in teacher.lr)" in str(result.exception)


def test_embed_command_and_python_api(finished_run, tmp_path, class_tree):
    import slade

    checkpoint = finished_run / "student" / "model.pt"
    result = CliRunner().invoke(app, ["embed", str(checkpoint), str(class_tree),
                                      "--out", str(tmp_path / "e.npy")])
    assert result.exit_code == 0, result.output
    vectors = np.load(tmp_path / "e.npy")
    assert vectors.shape == (48, 16) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    files = (tmp_path / "e.txt").read_text().splitlines()
    from PIL import Image
    api = slade.load_embedder(checkpoint).embed([files[0], Image.open(files[1])])
    assert np.allclose(api, vectors[:2], atol=1e-5)


def test_second_round_pseudo_labels_with_the_student_and_trains_from_it(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    round1 = (run_dir / "student" / "model.pt").read_bytes()
    config = load_config(run_dir / "config.yaml", ["student.rounds=2"])
    metrics = run(config, run_dir, force=True)
    assert list(metrics) == ["pretrain", "teacher", "student", "student_round2"]
    assert metrics["student"] == json.loads((finished_run / "metrics.json").read_text())["student"]
    assert (run_dir / "student" / "model.pt").read_bytes() == round1  # round 1 not redone
    second = metrics["student_round2"]
    assert METRIC_KEYS <= second.keys() and second["init"] == "student"
    assert second["pseudo_labels"]["clusters"] == 8
    # Round 2's pool embeddings are the round-1 student's, not the teacher's.
    from slade.data.build import build_splits, prepare
    from slade.data.transforms import eval_transform
    from slade.inference import embed_dataset, load_embedding_net

    pool = prepare(build_splits(config.data, config.seed), config.data).unlabeled
    student, _ = load_embedding_net(run_dir / "student" / "model.pt")
    expected = embed_dataset(student, pool, eval_transform(config.data.image_size, config.data.channels),
                             torch.device("cpu"))
    student_view = np.load(run_dir / "pseudo_labels_round2" / "embeddings.npy")
    assert np.allclose(student_view, expected, atol=1e-5)
    assert not np.allclose(student_view, np.load(run_dir / "pseudo_labels" / "embeddings.npy"))
    log = [json.loads(x) for x in (run_dir / "student_round2" / "log.jsonl").read_text().splitlines()]
    assert "pos_pairs" in [e for e in log if "loss" in e][-1]
    assert (run_dir / "student_round2" / "model.pt").read_bytes() != round1


def test_student_from_stage_0_weights_by_a_setting(tmp_path):
    from slade.inference import load_embedding_net

    # Every step a basis warm-up step: the network is not trained, so its weights stay the init's.
    config = load_config(None, TINY + ["student.init=pretrain", "student.basis_warmup_steps=6"])
    metrics = run(config, tmp_path / "run")
    assert metrics["student"]["init"] == "pretrain" and metrics["teacher"]["init"] == "pretrain"
    weights = {stage: dict(load_embedding_net(tmp_path / "run" / stage / "model.pt")[0]
                           .named_parameters()) for stage in ("pretrain", "teacher", "student")}
    assert all(torch.equal(p, weights["pretrain"][k]) for k, p in weights["student"].items())
    assert not all(torch.equal(p, weights["teacher"][k]) for k, p in weights["student"].items())


def test_until_stops_after_the_stage(tmp_path):
    config = load_config(None, TINY + ["pretrain.enabled=false"])
    metrics = run(config, tmp_path / "run", until="teacher")
    assert list(metrics) == ["teacher"] and metrics["teacher"]["init"] == "random"
    assert not (tmp_path / "run" / "student").exists()


def test_two_processes_under_torchrun_share_embedding_and_write_one_run(tmp_path):
    # Every rank embeds its share of the pool and of the test set; rank 0 writes them all.
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "slade", "demo", "--out", str(out), *sum((["--set", o] for o in TINY), [])]
    env = {**os.environ, "SLADE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "SLADE_DIST_TIMEOUT": "120"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["pretrain", "teacher", "student"]
    assert all(METRIC_KEYS <= stage.keys() for stage in metrics.values())
    embeddings = np.load(out / "pseudo_labels" / "embeddings.npy")
    assert embeddings.shape == (160, 16)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)  # every row written
    table = (out / "pseudo_labels" / "pseudo_labels.csv").read_text().splitlines()
    assert len(table) == 161


def test_validation_classes_replace_the_test_classes(tmp_path):
    """With data.validation the run trains on the other labeled classes and scores the held-out
    ones; the test classes are neither trained on nor scored."""
    out = tmp_path / "val"
    config = load_config(None, [*TINY, "pretrain.enabled=false", "data.validation=0.25"])
    metrics = run(config, out, until="teacher")
    data = json.loads((out / "data.json").read_text())
    assert data["evaluated_on"] == "validation"
    assert (data["labeled"]["classes"], data["test"]["classes"]) == (9, 3)
    assert data["test"]["images"] == 3 * 6
    assert 0.0 <= metrics["teacher"]["recall@1"] <= 1.0
    # The validation images are labeled ones; no test image is among them.
    plain = build_splits(load_config(None, TINY).data, config.seed)
    validation = build_splits(config.data, config.seed).test
    assert set(validation.sources) <= set(plain.labeled.sources)
    assert set(validation.sources).isdisjoint(plain.test.sources)
