"""End to end: every stage on a tiny embedded data set, through the command line."""

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from slade import run_layout as layout
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
    # SLADE as published (k-means, the basis and confident pairs), which these tests follow through
    # the pipeline (the contextual student runs in tests/reliability/, the demo's default DBSCAN
    # student in tests/reliability/test_default_student.py).
    "pseudo_labels.method=kmeans", "student.mining=confident", "student.miner=multi_similarity",
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
    metrics = json.loads((out / layout.METRICS).read_text())
    assert list(metrics) == ["pretrain", "teacher", "student"]
    for stage in metrics.values():
        assert METRIC_KEYS <= stage.keys()
        assert all(0.0 <= stage[k] <= 1.0 for k in METRIC_KEYS)
    assert metrics["teacher"]["init"] == "pretrain"
    assert metrics["student"]["pseudo_labels"]["clusters"] == 8
    resolved = yaml.safe_load((out / layout.CONFIG).read_text())
    assert resolved["teacher"]["steps"] == 4 and resolved["data"]["dataset"] == "glyphs"
    for stage in ("pretrain", "teacher", "student"):
        assert (out / stage / layout.MODEL).is_file() and (out / stage / layout.LOG).is_file()
    table = (out / layout.PSEUDO_LABELS / layout.TABLE).read_text().splitlines()
    assert table[0] == "index,source,pseudo_label,distance" and len(table) == 161
    assert np.load(out / layout.PSEUDO_LABELS / layout.EMBEDDINGS).shape == (160, 16)
    data = json.loads((out / layout.DATA_SUMMARY).read_text())
    assert data["labeled"]["images"] == 72 and data["unlabeled"]["domains"] == ["stix-cm"]


def test_student_logs_mined_pairs_and_gaussians(finished_run):
    log = [json.loads(x) for x in (finished_run / layout.STUDENT / layout.LOG).read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert {"basis_ce", "basis_sd", "mu_pos", "mu_neg"} <= steps[0].keys()  # warm-up: basis only
    assert "rank_unlabeled" not in steps[0]
    full = steps[-1]
    assert {"rank_labeled", "rank_unlabeled", "pos_pairs", "neg_pairs"} <= full.keys()


def test_rerun_skips_finished_stages(finished_run):
    before = {p: p.stat().st_mtime_ns for p in finished_run.rglob("model.pt")}
    config = load_config(finished_run / layout.CONFIG)
    again = run(config, finished_run)
    assert again == json.loads((finished_run / layout.METRICS).read_text())
    assert {p: p.stat().st_mtime_ns for p in finished_run.rglob("model.pt")} == before


def test_changed_config_on_existing_run_is_refused(finished_run):
    result = CliRunner().invoke(
        app, ["demo", "--out", str(finished_run), *sum((["--set", o] for o in TINY), []),
              "--set", "teacher.lr=0.5"])
    assert result.exit_code != 0
    assert "made with another config (differs in teacher.lr)" in str(result.exception)


def test_embed_command_and_python_api(finished_run, tmp_path, class_tree):
    import slade

    checkpoint = finished_run / layout.STUDENT / layout.MODEL
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
    round1 = (run_dir / layout.STUDENT / layout.MODEL).read_bytes()
    config = load_config(run_dir / layout.CONFIG, ["student.rounds=2"])
    metrics = run(config, run_dir, force=True)
    assert list(metrics) == ["pretrain", "teacher", "student", "student_round2"]
    assert metrics["student"] == json.loads((finished_run / layout.METRICS).read_text())["student"]
    assert (run_dir / layout.STUDENT / layout.MODEL).read_bytes() == round1  # round 1 not redone
    second = metrics["student_round2"]
    assert METRIC_KEYS <= second.keys() and second["init"] == "student"
    assert second["pseudo_labels"]["clusters"] == 8
    # Round 2's pool embeddings are the round-1 student's, not the teacher's.
    from slade.data.build import build_splits, prepare
    from slade.data.transforms import eval_transform
    from slade.inference import embed_dataset, load_embedding_net

    pool = prepare(build_splits(config.data, config.seed), config.data).unlabeled
    student, _ = load_embedding_net(run_dir / layout.STUDENT / layout.MODEL)
    expected = embed_dataset(student, pool, eval_transform(config.data.image_size, config.data.channels),
                             torch.device("cpu"))
    student_view = np.load(run_dir / layout.pseudo_labels(2) / layout.EMBEDDINGS)
    assert np.allclose(student_view, expected, atol=1e-5)
    assert not np.allclose(student_view, np.load(run_dir / layout.PSEUDO_LABELS / layout.EMBEDDINGS))
    log = [json.loads(x) for x in (run_dir / layout.student(2) / layout.LOG).read_text().splitlines()]
    assert "pos_pairs" in [e for e in log if "loss" in e][-1]
    assert (run_dir / layout.student(2) / layout.MODEL).read_bytes() != round1


def test_student_from_stage_0_weights_by_a_setting(tmp_path):
    from slade.inference import load_embedding_net

    # Every step a basis warm-up step: the network is not trained, so its weights stay the init's.
    config = load_config(None, TINY + ["student.init=pretrain", "student.basis_warmup_steps=6"])
    metrics = run(config, tmp_path / "run")
    assert metrics["student"]["init"] == "pretrain" and metrics["teacher"]["init"] == "pretrain"
    weights = {stage: dict(load_embedding_net(tmp_path / "run" / stage / layout.MODEL)[0]
                           .named_parameters()) for stage in ("pretrain", "teacher", "student")}
    assert all(torch.equal(p, weights["pretrain"][k]) for k, p in weights["student"].items())
    assert not all(torch.equal(p, weights["teacher"][k]) for k, p in weights["student"].items())


def test_until_stops_after_the_stage(tmp_path):
    config = load_config(None, TINY + ["pretrain.enabled=false"])
    metrics = run(config, tmp_path / "run", until="teacher")
    assert list(metrics) == ["teacher"] and metrics["teacher"]["init"] == "random"
    assert not (tmp_path / "run" / layout.STUDENT).exists()


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
    metrics = json.loads((out / layout.METRICS).read_text())
    assert list(metrics) == ["pretrain", "teacher", "student"]
    assert all(METRIC_KEYS <= stage.keys() for stage in metrics.values())
    embeddings = np.load(out / layout.PSEUDO_LABELS / layout.EMBEDDINGS)
    assert embeddings.shape == (160, 16)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)  # every row written
    table = (out / layout.PSEUDO_LABELS / layout.TABLE).read_text().splitlines()
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


def test_until_pseudo_labels_stops_after_stage_2_and_the_rest_reuses_it(tmp_path):
    from slade.stages.common import stage_done

    config = load_config(None, TINY + ["pretrain.enabled=false"])
    out = tmp_path / "run"
    metrics = run(config, out, until="pseudo_labels")
    assert list(metrics) == ["teacher"]  # the pseudo labels evaluate no model: no entry of their own
    assert stage_done(out / layout.PSEUDO_LABELS) and not (out / layout.STUDENT).exists()
    labels = (out / layout.PSEUDO_LABELS / layout.DONE).stat().st_mtime_ns
    metrics = run(config, out)
    assert list(metrics) == ["teacher", "student"] and metrics["student"]["pseudo_labels"]["clusters"] == 8
    assert (out / layout.PSEUDO_LABELS / layout.DONE).stat().st_mtime_ns == labels  # not redone


def test_until_names_a_stage_of_the_run():
    from slade.errors import ConfigError
    from slade.pipeline import stage_names

    config = load_config(None, TINY + ["student.rounds=2"])
    assert stage_names(config) == ["pretrain", "teacher", "pseudo_labels", "student",
                                   "pseudo_labels_round2", "student_round2"]
    with pytest.raises(ConfigError, match=r"--until: unknown stage 'student_round3' \(stages: pretrain, "
                                          r"teacher, pseudo_labels, student, pseudo_labels_round2"):
        run(config, "unused", until="student_round3")


def test_readme_stage_table_lists_the_pipeline_stages():
    import re
    from pathlib import Path

    from slade.pipeline import stage_names

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = re.findall(r"^\| (\d) `(\w+)` \|", readme, flags=re.MULTILINE)
    assert [name for _, name in table] == stage_names(load_config(None, TINY))
    assert [int(number) for number, _ in table] == [0, 1, 2, 3]


def test_student_writes_its_basis_as_a_file_of_its_own(finished_run):
    from slade.basis.feature_basis import load_basis
    from slade.engine.checkpoint import load_checkpoint

    student = finished_run / layout.STUDENT
    done = json.loads((student / layout.DONE).read_text())
    assert sorted(done["outputs"]) == [layout.BASIS, layout.MODEL]
    basis = load_basis(student / layout.BASIS)
    trained = load_checkpoint(student / layout.CHECKPOINT)["modules"]["basis"]  # the final state
    assert basis.state_dict().keys() == trained.keys()
    assert all(torch.equal(basis.state_dict()[k], v) for k, v in trained.items())
    assert basis.weight.shape == (12, 16) and basis.scale == 16.0 and basis.momentum == 0.99
    assert bool(basis.initialized)


def test_a_run_made_before_the_basis_file_is_reused_and_can_be_finished_again(finished_run, tmp_path):
    """A student finished by 9d7a007 has no basis.pt: its stages stay current; deleting its
    done.json (as the analysis's note says) finishes it again from its last checkpoint."""
    import shutil

    from slade.basis.feature_basis import load_basis

    out = tmp_path / "old"
    shutil.copytree(finished_run, out)
    student = out / layout.STUDENT
    done = json.loads((student / layout.DONE).read_text())
    (student / layout.BASIS).unlink()
    del done["outputs"][layout.BASIS]
    (student / layout.DONE).write_text(json.dumps(done))
    before = {p: p.stat().st_mtime_ns for p in out.rglob(layout.DONE)}
    metrics = json.loads((out / layout.METRICS).read_text())

    config = load_config(out / layout.CONFIG)
    assert run(config, out) == metrics
    assert {p: p.stat().st_mtime_ns for p in out.rglob(layout.DONE)} == before  # nothing redone

    from slade.inference import load_embedding_net

    def weights():
        return load_embedding_net(student / layout.MODEL)[0].state_dict()

    model = weights()
    (student / layout.DONE).unlink()
    again = run(config, out)
    assert {k: v for k, v in again["student"].items() if k != "train_seconds"} == \
        {k: v for k, v in metrics["student"].items() if k != "train_seconds"}
    assert all(torch.equal(v, model[k]) for k, v in weights().items())
    assert layout.BASIS in json.loads((student / layout.DONE).read_text())["outputs"]
    assert load_basis(student / layout.BASIS).weight.shape == (12, 16)
    log = [json.loads(x) for x in (student / layout.LOG).read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4, 5, 6]  # no step trained again


def test_dbscan_pseudo_labels_redo_stage_2_and_the_student_trains_on_clustered_images(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    teacher = (run_dir / layout.TEACHER / layout.MODEL).read_bytes()
    dbscan = ["pseudo_labels.method=dbscan", "pseudo_labels.eps=0.5", "pseudo_labels.neighbours=10",
              "pseudo_labels.context_k=10", "pseudo_labels.context_k2=3"]
    metrics = run(load_config(run_dir / layout.CONFIG, dbscan), run_dir, force=True)
    assert (run_dir / layout.TEACHER / layout.MODEL).read_bytes() == teacher  # stages 0-1 reused
    stats = json.loads((run_dir / layout.PSEUDO_LABELS / layout.CLUSTERS).read_text())
    assert stats == metrics["student"]["pseudo_labels"]
    labels = np.loadtxt(run_dir / layout.PSEUDO_LABELS / layout.TABLE, delimiter=",", skiprows=1,
                        usecols=2, dtype=np.int64)
    assert stats["clusters"] == labels.max() + 1 and stats["outliers"] == (labels < 0).sum()
    assert stats["images"] + stats["outliers"] == 160 and stats["outliers"] > 0  # some left out
    assert METRIC_KEYS <= metrics["student"].keys()
    log = [json.loads(x) for x in (run_dir / layout.STUDENT / layout.LOG).read_text().splitlines()]
    assert [e for e in log if "loss" in e][-1]["pos_pairs"] > 0
