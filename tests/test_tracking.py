"""Experiment tracking: TensorBoard and MLflow hold what the stages log, read back with their own readers."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from engine.test_trainer import CPU, make_stage, nan_at
from PIL import Image
from test_pipeline import TINY

from slade import run_layout as layout
from slade.analysis.plots import read_log
from slade.config import load_config, to_dict
from slade.dicts import flatten
from slade.errors import ConfigError
from slade.pipeline import run
from slade.tracking import mlflow_name, open_tracking, scalars

LOGGING = ["logging.tensorboard=true", "logging.mlflow=true"]
STAGES = ("pretrain", "teacher", "student")


def logged(log_file):
    """``{key: [(step, value), ...]}`` of every scalar in a ``log.jsonl``."""
    series = {}
    for entry in read_log(log_file):
        for key, value in scalars(entry).items():
            series.setdefault(key, []).append((entry["step"], value))
    return series


def tensorboard(folder):
    """``({tag: [(step, value), ...]}, {tag: [step, ...]})``: the scalars and images TensorBoard reads."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    return ({t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags["scalars"]},
            {t: [e.step for e in events.Images(t)] for t in tags["images"]})


def mlflow_runs(run_dir):
    """An ``MlflowClient`` of the run's store and its ids (``RUN/tracking.json``)."""
    from mlflow import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the default store is MLflow's file store
    ids = json.loads((run_dir / layout.TRACKING).read_text())["mlflow"]
    return MlflowClient(ids["uri"]), ids


def mlflow_series(client, run_id):
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in client.get_run(run_id).data.metrics}


def assert_same_series(recorded, expected):
    assert sorted(recorded) == sorted(expected)
    for key, values in expected.items():
        assert [s for s, _ in recorded[key]] == [s for s, _ in values], key  # each step once, in order
        assert [v for _, v in recorded[key]] == pytest.approx([v for _, v in values], rel=1e-6), key


def without_timing(metrics):
    return {stage: {k: v for k, v in m.items() if k != "train_seconds"} for stage, m in metrics.items()}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "run"
    config = load_config(None, TINY + LOGGING)
    return out, config, run(config, out)


def test_every_logged_scalar_reaches_tensorboard_and_mlflow_once(tracked_run):
    out, config, metrics = tracked_run
    client, ids = mlflow_runs(out)
    assert ids["uri"] == (out / layout.MLFLOW_STORE).resolve().as_uri()  # the default: in the run
    assert list(ids["stages"]) == list(STAGES)
    for stage in STAGES:
        expected = logged(out / stage / layout.LOG)
        assert {"loss", "lr", "eval/map@r", "eval/recall@1"} <= expected.keys()
        assert_same_series(tensorboard(out / layout.TENSORBOARD / stage)[0], expected)
        run_id = ids["stages"][stage]
        assert_same_series(mlflow_series(client, run_id), {mlflow_name(k): v for k, v in expected.items()})
        nested = client.get_run(run_id)
        assert nested.data.tags["mlflow.parentRunId"] == ids["run_id"] and nested.info.status == "FINISHED"
        assert nested.data.params == {k: str(v) for k, v in flatten({stage: to_dict(config)[stage]}).items()}
        assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
    assert {"pos_pairs", "mu_pos", "rank_unlabeled"} <= logged(out / "student" / layout.LOG).keys()

    parent = client.get_run(ids["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {k: str(v) for k, v in flatten(to_dict(config)).items()}
    assert parent.data.metrics["student/map_at_r"] == metrics["student"]["map@r"]
    assert parent.data.metrics["teacher/recall_at_1"] == metrics["teacher"]["recall@1"]
    assert parent.data.metrics["student/pseudo_labels.clusters"] == 8
    assert [a.path for a in client.list_artifacts(ids["run_id"])] == ["metrics.json"]


def test_tracking_changes_no_result(tracked_run, tmp_path):
    from slade.inference import load_embedding_net

    out, config, metrics = tracked_run
    plain = load_config(None, TINY)
    assert without_timing(run(plain, tmp_path / "plain")) == without_timing(metrics)
    for stage in STAGES:
        tracked = load_embedding_net(out / stage / layout.MODEL)[0].state_dict()
        untracked = load_embedding_net(tmp_path / "plain" / stage / layout.MODEL)[0].state_dict()
        assert all(torch.equal(v, untracked[k]) for k, v in tracked.items()), stage


def test_rerun_continues_the_runs_and_adds_the_figures_and_report(tracked_run):
    """(The last test of the shared run: it adds files to it.)"""
    out = tracked_run[0]
    client, ids = mlflow_runs(out)
    before = mlflow_series(client, ids["run_id"])
    # What the analysis writes (tested in tests/analysis/): a training figure and the report.
    figure = np.zeros((30, 40, 3), np.uint8)
    figure[:, :20] = 255
    (out / layout.ANALYSIS).mkdir()
    Image.fromarray(figure).save(out / layout.ANALYSIS / layout.training_figure("teacher"))
    (out / layout.REPORT).write_text("<html>report</html>")

    config = load_config(out / layout.CONFIG)
    run(config, out)  # every stage reused
    client, again = mlflow_runs(out)
    assert again == ids
    assert mlflow_series(client, ids["run_id"]) == before  # nothing logged twice
    assert client.get_run(ids["run_id"]).info.status == "FINISHED"
    assert sorted(a.path for a in client.list_artifacts(ids["run_id"])) == ["metrics.json", "report.html"]
    scalars_read, images = tensorboard(out / layout.TENSORBOARD / "teacher")
    assert images == {"figures/training": [config.teacher.steps]}
    assert_same_series(scalars_read, logged(out / "teacher" / layout.LOG))
    assert len(list((out / layout.TENSORBOARD / "teacher").iterdir())) == 1


def test_rollback_records_the_steps_trained_again_once(class_tree, tmp_path):
    """A NaN at step 5 rolls back to the checkpoint of step 3: steps 4-6 are trained again on other
    batches, and both trackers hold the second values, once."""
    stage, cfg = make_stage(class_tree)  # checkpoint_every 3, log_every 1
    nan_at(stage, 4)
    config = load_config(None, LOGGING)
    run_dir = tmp_path / "run"
    with open_tracking(config, run_dir) as tracking:
        from slade.engine.trainer import fit

        fit(stage, cfg, run_dir / "teacher", CPU, tracking=tracking)
    expected = logged(run_dir / "teacher" / layout.LOG)
    assert [s for s, _ in expected["loss"]] == [1, 2, 3, 4, 5, 6]
    assert_same_series(tensorboard(run_dir / layout.TENSORBOARD / "teacher")[0], expected)
    client, ids = mlflow_runs(run_dir)
    assert_same_series(mlflow_series(client, ids["stages"]["teacher"]), expected)


def test_unreachable_mlflow_server_stops_the_run_before_anything_is_written(tmp_path):
    config = load_config(None, TINY + ["logging.mlflow=true", "logging.mlflow_uri=http://127.0.0.1:1"])
    with pytest.raises(ConfigError, match=r"^logging.mlflow_uri: no MLflow tracking server answers at "
                                          r"http://127.0.0.1:1 \(Connection refused\)$"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unreachable_mlflow_server_is_one_line_on_the_command_line(tmp_path, monkeypatch, capsys):
    from slade.cli import main

    monkeypatch.setattr(sys, "argv", ["slade", "demo", "--out", str(tmp_path / "run"), "--set",
                                      "logging.mlflow=true", "--set", "logging.mlflow_uri=http://127.0.0.1:1"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    expected = ("error: logging.mlflow_uri: no MLflow tracking server answers at http://127.0.0.1:1 "
                "(Connection refused)")
    assert capsys.readouterr().err.strip().splitlines() == [expected]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tracker", ["mlflow", "tensorboard"])
def test_a_tracker_that_is_not_installed_names_its_extra(tracker, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, tracker, None)  # import fails as if not installed
    config = load_config(None, TINY + [f"logging.{tracker}=true"])
    needs = rf"^logging.{tracker}: true needs .*: pip install slade\[{tracker}\]$"
    with pytest.raises(ConfigError, match=needs):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_server_that_stops_answering_gets_what_it_missed_at_the_next_checkpoint(class_tree, tmp_path,
                                                                                   caplog):
    stage, cfg = make_stage(class_tree)  # checkpoint_every 3, log_every 1
    run_dir = tmp_path / "run"
    with open_tracking(load_config(None, ["logging.mlflow=true"]), run_dir) as tracking:
        mlflow, = tracking.backends
        log_batch, calls = mlflow.client.log_batch, []

        def flaky(run_id, metrics=(), **kwargs):  # the commit at step 3 is refused
            calls.append(len(metrics))
            if len(calls) == 2 and metrics:
                raise ConnectionError("[Errno 111] Connection refused")
            return log_batch(run_id, metrics=metrics, **kwargs)

        mlflow.client.log_batch = flaky
        from slade.engine.trainer import fit

        fit(stage, cfg, run_dir / "teacher", CPU, tracking=tracking)
    assert "MLflow: cannot log teacher's metrics (Connection refused); sending them again" in caplog.text
    client, ids = mlflow_runs(run_dir)
    expected = logged(run_dir / "teacher" / layout.LOG)
    assert_same_series(mlflow_series(client, ids["stages"]["teacher"]), expected)
