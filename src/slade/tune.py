"""``slade tune CONFIG --trials N --out DIR``: Optuna's TPE over the config's ``tune.params``.

    DIR/config.yaml      the config tuned (a rerun with another one is refused)
    DIR/study.db         the Optuna study (SQLite): a killed tune resumes from it
    DIR/trial_000/ ...   a run directory per trial
    DIR/best.yaml        the best trial's config so far, for ``slade run``

A trial is ``slade run`` of the config with the trial's values, up to the objective's stage: a
stage's metric (``tune.objective``, default the last student's MAP@R) on the validation classes of
``data.validation``; tuning on the test classes is refused. A trial's run directory starts from
the finished stages of the earlier trial that shares the most upstream settings (hard links, so
nothing is copied); the pipeline's fingerprints then reuse or redo each one. The sampler of trial
``n`` is seeded with ``seed + n``, so a resumed study samples what an uninterrupted one would, and
a trial that was running when the tune was killed is run again with its values in its own run
directory, which resumes. A trial whose training fails (``TrainingError``: a diverging learning
rate) is recorded as failed and the study goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slade import run_layout as layout
from slade.config import Config, dump_config, load_config, with_settings
from slade.engine.run_lock import RunLock
from slade.errors import ConfigError, TrainingError
from slade.fingerprint import config_fingerprint
from slade.io import link_tree, read_json, write_text

log = logging.getLogger("slade")

STUDY_NAME = "slade"
# The config sections whose settings each kind of stage depends on, besides data, model,
# evaluation and seed: those of the stages before it, and its own.
_SECTIONS = ("pretrain", "teacher", "pseudo_labels", "student")


@dataclass
class TrialResult:
    """A trial that ended: its values and score (None: its training failed)."""

    number: int
    run_dir: Path
    params: dict[str, Any]
    value: float | None
    score_name: str = ""  # "student map@r"

    def describe(self) -> str:
        """``trial_001  student.lr=0.00312  student.mining=lenient  -> student map@r 0.4123``."""
        values = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in self.params.items())
        score = "failed" if self.value is None else f"{self.score_name} {self.value:.4f}"
        return f"{self.run_dir.name}  {values}  -> {score}"


def objective(config: Config) -> tuple[str, str]:
    """``(stage, metric)`` that ``tune.objective`` names (the last student's ``map@r`` by default)."""
    from slade.pipeline import stage_names

    stages = [s for s in stage_names(config) if not s.startswith(layout.PSEUDO_LABELS)
              and (s != layout.PRETRAIN or config.pretrain.enabled)]
    metrics = ["map@r", "r_precision", "precision@1", "nmi",
               *(f"recall@{k}" for k in config.evaluation.recall_at)]
    if not config.tune.objective:
        return stages[-1], "map@r"
    stage, _, metric = config.tune.objective.partition(".")
    if stage not in stages or metric not in metrics:
        raise ConfigError(f"tune.objective: {config.tune.objective!r} is not STAGE.METRIC with a stage "
                          f"of {', '.join(stages)} and a metric of {', '.join(metrics)}")
    return stage, metric


def check_tunable(config: Config) -> None:
    """Refuse, before anything is written, what cannot be tuned: no validation classes, nothing to
    search, an objective that is not a stage's metric, a choice or bound the config refuses."""
    validation = config.data.validation
    if not validation:
        raise ConfigError("data.validation: slade tune scores trials on validation classes held out of the "
                          "labeled set: set it (a fraction such as 0.2, or class names); tuning on the "
                          "test classes is refused")
    if not config.tune.params:
        raise ConfigError("tune.params: nothing to tune: give a setting with a range {low: .., high: ..} "
                          "or a list of choices")
    objective(config)
    for setting, spec in config.tune.params.items():
        for value in spec if isinstance(spec, list) else (spec["low"], spec["high"]):
            try:
                with_settings(config, {setting: value})
            except ConfigError as exc:
                raise ConfigError(f"tune.params.{setting}: {value!r} makes an invalid config "
                                  f"({exc})") from None


def tune(config: Config, out: str | Path, trials: int,
         report: Callable[[TrialResult, TrialResult | None], None] | None = None) -> TrialResult | None:
    """Run the study in ``out`` until ``trials`` trials have ended; returns the best trial.

    Args:
        config: the config to tune, with its ``tune`` section.
        out: the tuning directory (``DIR``): created, or resumed when it holds a study.
        trials: how many trials should have ended (completed or failed) when it returns.
        report: called after each trial with it and the best trial so far.
    """
    if trials < 1:
        raise ConfigError("--trials: must be at least 1")
    check_tunable(config)
    try:
        import optuna
    except ImportError:
        raise ConfigError("slade tune needs Optuna: pip install slade[tune]") from None
    from slade.pipeline import check_run_dir

    out = Path(out)
    check_run_dir(config, out, force=False, ignored=("analysis.", "logging."))  # the same study
    with RunLock(out):  # one tune per directory: a trial left running was killed
        write_text(out / layout.CONFIG, dump_config(config))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{(out / layout.STUDY).resolve()}"
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize",
                                    load_if_exists=True)
        study_run = _Study(study, config, out, report)
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study_run.rerun(frozen)
        while study_run.ended() < trials:
            study_run.new_trial()
        return study_run.best()


class _Study:
    def __init__(self, study, config: Config, out: Path, report) -> None:
        self.study, self.config, self.out, self.report = study, config, out, report
        self.stage, self.metric = objective(config)
        self.score_name = f"{self.stage} {self.metric}"

    def ended(self) -> int:
        """Trials completed, or failed in training (not those killed while their values were drawn)."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        return sum(t.state == TrialState.COMPLETE or self._ran(t) for t in trials)

    def _ran(self, trial) -> bool:
        return (self.out / _run_dir(trial) / layout.CONFIG).is_file()

    def new_trial(self) -> None:
        from optuna.samplers import TPESampler

        number = len(self.study.trials)
        self.study.sampler = TPESampler(seed=self.config.seed + number)  # the same, resumed or not
        trial = self.study.ask()
        trial.set_user_attr("run_dir", layout.trial(trial.number))
        params = {name: _suggest(trial, name, spec) for name, spec in self.config.tune.params.items()}
        self._run(trial.number, params, _run_dir(trial))

    def rerun(self, frozen) -> None:
        """A trial that was running when the tune was killed: again, in its run directory."""
        from optuna.trial import TrialState

        if set(frozen.params) != set(self.config.tune.params):  # killed while its values were drawn
            self.study.tell(frozen.number, state=TrialState.FAIL)
            return
        log.info("trial %d was running when the tune stopped: resuming it", frozen.number)
        self._run(frozen.number, dict(frozen.params), _run_dir(frozen))

    def _run(self, number: int, params: dict[str, Any], run_dir_name: str) -> None:
        from optuna.trial import TrialState

        from slade.pipeline import run

        run_dir = self.out / run_dir_name
        config = self._trial_config(params)
        _seed_from_earlier(run_dir, config, [d for d in self._trial_dirs() if d != run_dir])
        try:
            metrics = run(config, run_dir, until=self.stage)
        except TrainingError as exc:  # these values do not train: a failed trial, the study goes on
            log.warning("trial %d failed: %s", number, exc)
            self.study.tell(number, state=TrialState.FAIL)
            self._report(TrialResult(number, run_dir, params, None, self.score_name))
            return
        if read_json(run_dir / layout.DATA_SUMMARY).get("evaluated_on") != "validation":
            raise ConfigError(f"{run_dir}: the trial was not scored on validation classes")
        value = float(metrics[self.stage][self.metric])
        self.study.tell(number, value)
        best = self.best()
        if best is not None and best.number == number:
            self._write_best(best)
        self._report(TrialResult(number, run_dir, params, value, self.score_name))

    def _trial_config(self, params: dict[str, Any]) -> Config:
        config = with_settings(self.config, params)
        if config.logging.mlflow and not config.logging.mlflow_uri:  # every trial in one store
            config.logging.mlflow_uri = (self.out / layout.MLFLOW_STORE).resolve().as_uri()
        return config

    def _trial_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.out.glob(f"{layout.TRIALS}/{layout.CONFIG}"))

    def best(self) -> TrialResult | None:
        from optuna.trial import TrialState

        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return None
        trial = max(done, key=lambda t: (t.value, -t.number))
        return TrialResult(trial.number, self.out / _run_dir(trial), dict(trial.params), trial.value,
                           self.score_name)

    def _write_best(self, best: TrialResult) -> None:
        config = with_settings(self.config, best.params)
        header = (f"# slade tune: the best of the trials in {self.out} so far: {best.run_dir.name}, "
                  f"{self.stage} {self.metric} = {best.value:.4f} on the validation classes.\n"
                  "# To train on every labeled class: slade run best.yaml --out RUN "
                  "--set data.validation=0\n")
        write_text(self.out / layout.BEST_CONFIG, header + dump_config(config))

    def _report(self, result: TrialResult) -> None:
        if self.report is not None:
            self.report(result, self.best())


def _run_dir(trial) -> str:
    """The run directory's name of a trial (a trial resumed keeps its own)."""
    return trial.user_attrs.get("run_dir", layout.trial(trial.number))


def _suggest(trial, setting: str, spec: dict[str, Any] | list) -> Any:
    if isinstance(spec, list):
        return trial.suggest_categorical(setting, spec)
    low, high, log_scale = spec["low"], spec["high"], spec["log"]
    if isinstance(low, int):
        return trial.suggest_int(setting, low, high, step=spec.get("step", 1), log=log_scale)
    return trial.suggest_float(setting, low, high, step=spec.get("step"), log=log_scale)


def _upstream(config: Config, stage: str) -> dict[str, Any]:
    """The settings the result of ``stage`` depends on (bookkeeping aside)."""
    section = stage.split("_round")[0]
    sections = list(_SECTIONS[:_SECTIONS.index(section) + 1])
    if stage != section:  # a later round's pseudo labels come from the previous student
        sections.append("student")
    return {name: config_fingerprint(getattr(config, name))
            for name in [*sections, "data", "model", "evaluation"]} | {"seed": config.seed}


def _seed_from_earlier(run_dir: Path, config: Config, earlier: list[Path]) -> None:
    """Start ``run_dir`` from the finished stages of the earlier trial sharing the longest run of
    upstream settings with ``config`` (hard links; the pipeline checks them all again)."""
    from slade.pipeline import stage_names

    best: list[str] = []
    for source in earlier:
        previous = load_config(source / layout.CONFIG)
        shared = []
        for stage in stage_names(config):
            if stage == layout.PRETRAIN and not config.pretrain.enabled:
                continue
            finished = (source / stage / layout.DONE).is_file()
            if not finished or _upstream(previous, stage) != _upstream(config, stage):
                break
            shared.append(stage)
        if len(shared) > len(best):
            best, best_source = shared, source
    for stage in best:
        if not (run_dir / stage).exists():
            link_tree(best_source / stage, run_dir / stage)
            log.info("%s: %s from %s", run_dir.name, stage, best_source.name)

