"""``slade tune``: a 2-trial study of a few steps on the embedded glyphs, killed during its second
trial and resumed; the search space and the objective are checked before anything is written."""

import os
import signal
import subprocess
import sys

import optuna
import pytest
from test_pipeline import TINY

from slade import run_layout as layout
from slade.analysis.plots import read_log
from slade.config import dump_config, load_config, with_settings
from slade.engine.checkpoint import load_checkpoint
from slade.errors import ConfigError
from slade.io import read_json, write_json
from slade.tune import tune

TUNED = [*TINY, "pretrain.enabled=false", "data.validation=0.25", "student.checkpoint_every=2",
         "tune.params.student.lr={low: 1e-4, high: 1e-2, log: true}",
         "tune.params.student.mining=[confident, all_pairs]"]


def config_file(tmp_path, overrides=TUNED):
    path = tmp_path / "tune.yaml"
    path.write_text(dump_config(load_config(None, overrides)))
    return path


def test_killed_tune_resumes_its_trial_and_reuses_the_unchanged_stages(tmp_path):
    path, out = config_file(tmp_path), tmp_path / "tune"
    config = load_config(path)
    tune(config, out, trials=1)
    command = [sys.executable, "-m", "slade", "tune", str(path), "--trials", "2", "--out", str(out)]
    env = {**os.environ, "SLADE_PROGRESS": "0", "SLADE_KILL_AT": "student:4"}  # trial 2, step 4
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    second = out / layout.trial(1)
    assert load_checkpoint(second / layout.STUDENT / layout.CHECKPOINT)["step"] == 2
    storage = f"sqlite:///{out / layout.STUDY}"
    states = [t.state for t in optuna.load_study(study_name="slade", storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]

    reported = []
    best = tune(config, out, trials=2, report=lambda trial, best: reported.append(trial))
    assert [t.number for t in reported] == [1]  # only the killed trial ran again
    trials = optuna.load_study(study_name="slade", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[1].params == reported[0].params
    for trial in trials:
        run_dir = out / layout.trial(trial.number)
        assert read_json(run_dir / layout.DATA_SUMMARY)["evaluated_on"] == "validation"
        assert trial.value == read_json(run_dir / layout.METRICS)["student"]["map@r"]
    # The second trial resumed its student from the step-2 checkpoint: each step trained once.
    steps = [e["step"] for e in read_log(second / layout.STUDENT / layout.LOG) if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]
    # Its teacher and pseudo labels are the first trial's (the same files), its student its own.
    first = out / layout.trial(0)
    for stage, shared in (("teacher", True), ("pseudo_labels", True), ("student", False)):
        name = layout.MODEL if stage != "pseudo_labels" else layout.TABLE
        assert os.path.samefile(first / stage / name, second / stage / name) == shared, stage

    assert best.value == max(t.value for t in trials)
    chosen = load_config(out / layout.BEST_CONFIG)  # a config `slade run` takes
    assert chosen == with_settings(config, best.params)
    assert (chosen.student.lr, chosen.student.mining) == (best.params["student.lr"],
                                                          best.params["student.mining"])


@pytest.mark.parametrize(("spec", "error"), [
    ("student.lrr: {low: 1e-4, high: 1e-2}", r":3: tune.params.student.lrr: student.lrr is not a setting$"),
    ("student.steps: {low: 1.5, high: 40}", r":3: tune.params.student.steps.low: expected int, got 1.5"),
    ("student.lr: {low: 1e-2, high: 1e-4}", r":3: tune.params.student.lr: low must be below high$"),
    ("student.lr: {low: 0, high: 1e-2, log: true}", r":3: tune.params.student.lr: a log range needs low > 0"),
    ("student.lr: {low: 1e-4, high: 1e-2, scale: log}", r":3: tune.params.student.lr: a range is \{low: .., "
                                                        r"high: ..\} with optional log and step, not scale$"),
    ("student.mining: {low: 0, high: 1}", r":3: tune.params.student.mining: a range needs a number setting"),
    ("student.mining: [confident, nope]", r":3: tune.params.student.mining: expected 'confident' \| "),
    ("tune.objective: [a, b]", r":3: tune.params.tune.objective: not a setting a trial can change$"),
])
def test_a_bad_search_space_is_one_line_naming_the_file_line_and_key(tmp_path, spec, error):
    path = tmp_path / "bad.yaml"
    path.write_text(f"tune:\n  params:\n    {spec}\n")
    with pytest.raises(ConfigError, match=rf"^{path}{error}"):
        load_config(path)


@pytest.mark.parametrize(("overrides", "error"), [
    (["data.validation=0"], r"^data.validation: slade tune scores trials on validation classes .* tuning on "
                            r"the test classes is refused$"),
    (["tune.objective=student.recall@16"], r"^tune.objective: 'student.recall@16' is not STAGE.METRIC with "
                                           r"a stage of teacher, student and a metric of map@r, "),
    (["tune.params.student.batch_size=[16, 18]"],
     r"^tune.params.student.batch_size: 18 makes an invalid config \(student.batch_size: must be a multiple"),
])
def test_what_cannot_be_tuned_is_refused_before_anything_is_written(tmp_path, overrides, error):
    config = load_config(config_file(tmp_path), overrides)
    with pytest.raises(ConfigError, match=error):
        tune(config, tmp_path / "tune", trials=2)
    assert not (tmp_path / "tune").exists()


def test_a_tuning_directory_of_another_config_is_refused(tmp_path):
    out = tmp_path / "tune"
    out.mkdir()
    (out / layout.CONFIG).write_text(dump_config(load_config(None, TUNED)))
    with pytest.raises(ConfigError, match=r"made with another config \(differs in student.steps\)"):
        tune(load_config(None, [*TUNED, "student.steps=8"]), out, trials=1)
    assert sorted(p.name for p in out.iterdir()) == [layout.CONFIG]


def test_a_resumed_study_draws_the_values_an_uninterrupted_one_draws(tmp_path, monkeypatch):
    def scored_run(config, run_dir, until=None):  # a stand-in for training: a score from the values
        run_dir.mkdir(parents=True)
        (run_dir / layout.CONFIG).write_text(dump_config(config))
        write_json(run_dir / layout.DATA_SUMMARY, {"evaluated_on": "validation"})
        return {until: {"map@r": config.student.lr * (2 if config.student.mining == "confident" else 1)}}

    monkeypatch.setattr("slade.pipeline.run", scored_run)
    config = load_config(None, TUNED)
    tune(config, tmp_path / "straight", trials=4)
    tune(config, tmp_path / "resumed", trials=2)
    tune(config, tmp_path / "resumed", trials=4)
    studies = [optuna.load_study(study_name="slade", storage=f"sqlite:///{tmp_path / name / layout.STUDY}")
               for name in ("straight", "resumed")]
    assert [t.params for t in studies[0].trials] == [t.params for t in studies[1].trials]
    assert len({t.params["student.lr"] for t in studies[0].trials}) == 4
