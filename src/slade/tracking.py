"""Experiment tracking: what the training stages log, also sent to TensorBoard and MLflow.

    RUN/tensorboard/<stage>/   a TensorBoard event file: every scalar of <stage>/log.jsonl (losses,
                               learning rate, images/s, mined pairs, the periodic evaluations) by
                               step, and the stage's training figure of the analysis as an image
    RUN/mlruns/                the MLflow store when ``logging.mlflow_uri`` is empty (``file:``)
    RUN/tracking.json          the MLflow ids of the run and of its stages, so a rerun continues them

A stage's ``log.jsonl`` is the record and the trackers are views of it, so that a resumed or
rolled-back stage shows each step once:

- TensorBoard gets each entry as it is logged. When a stage starts, resumes or rolls back, and when
  the run ends, the stage's event file is written anew from the log (as the engine truncated it to
  the step it went back to); it begins with a purge from step 0, so an open TensorBoard drops what
  it showed before.
- MLflow gets the entries of the steps a checkpoint holds when it is written, which no rollback can
  undo; a stage that resumes first sends what its log holds and its MLflow run lacks (per metric,
  the steps past the last one the run has). One run per run directory, with the flattened config as
  params, each stage's final metrics as ``<stage>/<metric>`` and ``metrics.json``, ``report.html``
  as artifacts; a nested run per stage trained, with its section's settings as params, every
  scalar of its log as metrics and its ``metrics.json``. MLflow names allow no ``@``:
  ``eval/recall@1`` is ``eval/recall_at_1``.

Only rank 0 tracks: it alone writes the run's files. Tracking never changes what is trained.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from slade import run_layout as layout
from slade.config import Config, LoggingConfig, to_dict
from slade.dicts import flatten
from slade.errors import ConfigError
from slade.io import read_json, write_json

log = logging.getLogger("slade")

# Settings that change no stage's result: an MLflow run made with other values is continued.
NOT_RESULTS = ("analysis.", "logging.", "tune.")


def scalars(entry: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log entry, its ``step`` aside: what the trackers record."""
    return {k: float(v) for k, v in entry.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def unseen(entry: dict[str, Any], last: dict[str, int], name=str) -> dict[str, float]:
    """The scalars of ``entry`` (as ``name(key)``) at a step past the last one ``last`` holds for
    each, ``last`` updated: a final evaluation a resumed stage repeats is recorded once."""
    out = {}
    for key, value in scalars(entry).items():
        if entry["step"] > last.get(name(key), -1):
            out[name(key)] = value
            last[name(key)] = entry["step"]
    return out


def mlflow_name(key: str) -> str:
    """A metric name MLflow accepts (no ``@``): ``eval/recall@1`` -> ``eval/recall_at_1``."""
    return key.replace("@", "_at_")


def check(settings: LoggingConfig) -> None:
    """Before anything is written: the trackers asked for are installed and a tracking server answers.

    Raises:
        ConfigError: naming ``logging.tensorboard``, ``logging.mlflow`` or ``logging.mlflow_uri``.
    """
    if settings.tensorboard:
        try:
            import tensorboard  # noqa: F401  (torch's SummaryWriter writes through it)
        except ImportError:
            raise ConfigError("logging.tensorboard: true needs TensorBoard: "
                              "pip install slade[tensorboard]") from None
    if not settings.mlflow:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("logging.mlflow: true needs MLflow: pip install slade[mlflow]") from None
    uri = settings.mlflow_uri
    if uri and "://" in uri and not uri.startswith(("file:", "sqlite:")):  # a server: ask it now
        _probe(uri)


def _probe(uri: str) -> None:
    from mlflow import MlflowClient

    # A quick answer, not MLflow's minutes of retries; training later retries as MLflow does.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update(quick)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises its own and the HTTP client's errors
        raise ConfigError(f"logging.mlflow_uri: no MLflow tracking server answers at {uri} "
                          f"({_reason(exc)})") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _reason(exc: BaseException) -> str:
    """The cause of an MLflow error in a few words (``Connection refused``), not its whole story."""
    message = str(exc)
    cause = re.search(r"\[Errno -?\d+\] ([^\"')]+)", message)
    if cause:
        return cause.group(1).strip()
    return message.splitlines()[0][:160] if message else type(exc).__name__


@contextmanager
def _tolerated(what: str) -> Iterator[None]:
    """A tracking call that must not stop a run whose results stand: a warning instead."""
    try:
        yield
    except Exception as exc:  # MLflow raises its own and the HTTP client's errors
        log.warning("MLflow: cannot %s (%s)", what, _reason(exc))


class Tracker(Protocol):
    """What a tracker does; the stages' entries are ``log.jsonl``'s: ``{"step": n, name: value...}``."""

    def start_stage(self, stage: str, entries: list[dict[str, Any]], resumed: bool) -> None:
        """A stage starts training (``resumed``: from a checkpoint) with ``entries`` in its log."""

    def log(self, stage: str, entry: dict[str, Any]) -> None:
        """An entry the stage logged."""

    def truncate(self, stage: str, step: int) -> None:
        """The stage rolled back to ``step``: the entries past it are void."""

    def commit(self, stage: str, step: int) -> None:
        """A checkpoint holds the steps up to ``step``."""

    def stage_done(self, stage: str, stage_dir: Path, metrics: dict[str, Any]) -> None:
        """The stage finished (or was reused) with ``metrics``."""

    def run_done(self, run_dir: Path, stages: list[str]) -> None:
        """The run finished: its figures and artifacts."""

    def close(self, status: str, checkpointed: bool) -> None:
        """The run ends with ``status`` (``checkpointed``: every entry logged is in a checkpoint)."""


class Tracking:
    """The trackers of one ``slade run`` on a run directory; none when ``logging`` asks for none.

    Used as a context manager by the pipeline: on leaving it the runs are closed as finished,
    killed (a preemption or Ctrl-C) or failed.
    """

    def __init__(self, backends: list[Tracker] | None = None) -> None:
        self.backends = backends or []

    def stage_log(self, stage: str, history: Any, resumed: bool) -> Any:
        """``history`` (the stage's ``log.jsonl``, already truncated to the step it resumes from),
        its entries also sent to the trackers from now on."""
        if not self.backends:
            return history
        from slade.analysis.plots import read_log

        entries = read_log(history.path) if history.path.is_file() else []
        for backend in self.backends:
            backend.start_stage(stage, entries, resumed)
        return TrackedLog(history, stage, self.backends)

    def stage_done(self, stage: str, stage_dir: Path, metrics: dict[str, Any]) -> None:
        """Stage ``stage`` finished (or was reused) with ``metrics``."""
        for backend in self.backends:
            backend.stage_done(stage, stage_dir, metrics)

    def run_done(self, run_dir: Path, stages: list[str]) -> None:
        """The run's last stage (and its analysis) finished: figures and artifacts."""
        for backend in self.backends:
            backend.run_done(run_dir, stages)

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        from slade.engine.preemption import Preempted

        if kind is None:
            status = "FINISHED"
        elif issubclass(kind, (Preempted, KeyboardInterrupt)):
            status = "KILLED"
        else:
            status = "FAILED"
        for backend in self.backends:
            try:
                backend.close(status, checkpointed=kind is not None and issubclass(kind, Preempted))
            except Exception as error:  # the run's own outcome (or error) stands
                log.warning("%s: cannot close the run (%s)", type(backend).__name__, _reason(error))


class TrackedLog:
    """A stage's ``log.jsonl`` (``engine/trainer.py::JsonlLog``) whose entries also go to the trackers."""

    def __init__(self, history: Any, stage: str, backends: list[Tracker]) -> None:
        self.history, self.stage, self.backends = history, stage, backends
        self.path = history.path

    def write(self, entry: dict[str, Any]) -> None:
        self.history.write(entry)
        for backend in self.backends:
            backend.log(self.stage, entry)

    def truncate(self, step: int) -> None:
        self.history.truncate(step)
        for backend in self.backends:
            backend.truncate(self.stage, step)

    def commit(self, step: int) -> None:
        self.history.commit(step)
        for backend in self.backends:
            backend.commit(self.stage, step)


@contextmanager
def open_tracking(config: Config, run_dir: Path, main: bool = True) -> Iterator[Tracking]:
    """The trackers ``config.logging`` asks for, on rank 0 (``main``); none on the others."""
    settings = config.logging
    backends: list[Tracker] = []
    if main and settings.tensorboard:
        backends.append(TensorBoard(run_dir / layout.TENSORBOARD))
    if main and settings.mlflow:
        backends.append(MLflow(config, run_dir))
    with Tracking(backends) as tracking:
        yield tracking


# ---------------------------------------------------------------------------------------------
# TensorBoard


class TensorBoard:
    """One event file per stage in ``root/<stage>/``, kept equal to the stage's log."""

    FIGURE_TAG = "figures/training"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.writers: dict[str, Any] = {}
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.last: dict[str, dict[str, int]] = {}  # stage -> tag -> last step written

    def _rewrite(self, stage: str, entries: list[dict[str, Any]], figure: Path | None = None) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        if stage in self.writers:
            self.writers.pop(stage).close()
        folder = self.root / stage
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        writer = SummaryWriter(str(folder), purge_step=0)  # an open TensorBoard forgets the old file
        self.last[stage] = {}
        for entry in entries:
            self._add(stage, writer, entry)
        if figure is not None:
            import numpy as np
            from PIL import Image

            with Image.open(figure) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(self.FIGURE_TAG, pixels, max((e["step"] for e in entries), default=0),
                             dataformats="HWC")
        return writer

    def _add(self, stage: str, writer: Any, entry: dict[str, Any]) -> None:
        for key, value in unseen(entry, self.last[stage]).items():
            writer.add_scalar(key, value, entry["step"])

    def start_stage(self, stage: str, entries: list[dict[str, Any]], resumed: bool) -> None:
        self.entries[stage] = list(entries)
        self.writers[stage] = self._rewrite(stage, entries)

    def log(self, stage: str, entry: dict[str, Any]) -> None:
        self.entries[stage].append(entry)
        self._add(stage, self.writers[stage], entry)

    def truncate(self, stage: str, step: int) -> None:
        self.entries[stage] = [e for e in self.entries[stage] if e["step"] <= step]
        self.writers[stage] = self._rewrite(stage, self.entries[stage])

    def commit(self, stage: str, step: int) -> None:
        self.writers[stage].flush()

    def stage_done(self, stage: str, stage_dir: Path, metrics: dict[str, Any]) -> None:
        if stage in self.writers:
            self.writers.pop(stage).close()

    def run_done(self, run_dir: Path, stages: list[str]) -> None:
        """Every stage's file again from its log, with the analysis's training figure when there is one."""
        from slade.analysis.plots import read_log

        for stage in stages:
            log_file = run_dir / stage / layout.LOG
            if not log_file.is_file():
                continue
            figure = run_dir / layout.ANALYSIS / layout.training_figure(stage)
            self._rewrite(stage, read_log(log_file), figure if figure.is_file() else None).close()

    def close(self, status: str, checkpointed: bool) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


# ---------------------------------------------------------------------------------------------
# MLflow


class MLflow:
    """The MLflow run of a run directory (continued by every rerun) and a nested run per stage trained."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        from mlflow import MlflowClient

        settings = config.logging
        uri = settings.mlflow_uri or (run_dir / layout.MLFLOW_STORE).resolve().as_uri()
        if urlparse(uri).scheme in ("", "file"):  # MLflow 3 keeps its file store for those who ask
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(settings.mlflow_experiment)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self.client.create_experiment(settings.mlflow_experiment))
        except Exception as exc:  # MLflow raises its own and the HTTP client's errors
            raise ConfigError(f"logging.mlflow_uri: cannot use MLflow at {uri} (experiment "
                              f"{settings.mlflow_experiment!r}: {_reason(exc)})") from None
        self.uri = uri
        self.ids_file = run_dir / layout.TRACKING
        saved = read_json(self.ids_file).get("mlflow", {}) if self.ids_file.is_file() else {}
        params = {k: str(v) for k, v in flatten(to_dict(config)).items()}
        same = saved.get("uri") == uri and saved.get("experiment_id") == experiment_id
        run_id = saved.get("run_id") if same else None
        if run_id is not None and not self._continues(run_id, params):
            run_id = None
        self.ids = {"uri": uri, "experiment_id": experiment_id, "run_id": run_id,
                    "stages": saved.get("stages", {}) if run_id else {}}
        if run_id is None:
            self.ids["run_id"] = self.client.create_run(
                experiment_id, run_name=run_dir.resolve().name,
                tags={"slade.run_dir": str(run_dir.resolve())}).info.run_id
            self._save_ids()
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = self.ids["run_id"]
        present = self.client.get_run(self.run_id).data.params
        self._send(self.run_id, params=[(k, v) for k, v in params.items() if k not in present])
        self.parent_sent = self._last_steps(self.run_id)
        self.config = config
        self.open: dict[str, str] = {}  # stage -> run id, for the stages trained in this process
        self.pending: dict[str, list[tuple[dict[str, Any], int]]] = {}
        self.sent: dict[str, dict[str, int]] = {}
        self.failing = False

    def _continues(self, run_id: str, params: dict[str, str]) -> bool:
        """Whether run ``run_id`` exists and was made with these settings (those that change results)."""
        try:
            run = self.client.get_run(run_id)
        except Exception:  # deleted from the store: a new run
            return False
        if run.info.lifecycle_stage != "active":
            return False
        return all(run.data.params.get(k, v) == v for k, v in params.items() if not k.startswith(NOT_RESULTS))

    def _save_ids(self) -> None:
        write_json(self.ids_file, {"mlflow": self.ids})

    def _last_steps(self, run_id: str) -> dict[str, int]:
        """The last step of each metric of run ``run_id``."""
        metrics = self.client.get_run(run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(run_id, key)) for key in metrics}

    def _send(self, run_id: str, metrics: Sequence[tuple[str, float, int, int]] = (),
              params: Sequence[tuple[str, str]] = (), sent: dict[str, int] | None = None) -> None:
        """Log ``(name, value, timestamp, step)`` metrics and ``(name, value)`` params; ``sent``
        gets the last step of each metric as each request succeeds."""
        from mlflow.entities import Metric, Param

        for i in range(0, len(params), 100):  # MLflow's limits per request
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params[i:i + 100]])
        for i in range(0, len(metrics), 1000):
            chunk = metrics[i:i + 1000]
            self.client.log_batch(run_id, metrics=[Metric(k, v, t, step) for k, v, t, step in chunk])
            if sent is not None:
                sent.update((name, step) for name, _, _, step in chunk)  # in step order

    def start_stage(self, stage: str, entries: list[dict[str, Any]], resumed: bool) -> None:
        try:
            self._start_stage(stage, entries, resumed)
        except Exception as exc:  # no run to log to: stop, a rerun resumes
            raise ConfigError(f"logging.mlflow_uri: MLflow at {self.uri} stopped answering as {stage} "
                              f"started ({_reason(exc)})") from None

    def _start_stage(self, stage: str, entries: list[dict[str, Any]], resumed: bool) -> None:
        run_id = self.ids["stages"].get(stage) if resumed else None
        if run_id is not None and self._continues(run_id, {}):
            self.client.update_run(run_id, status="RUNNING")
            self.sent[stage] = self._last_steps(run_id)
        else:
            run_id = self.client.create_run(
                self.ids["experiment_id"], run_name=stage,
                tags={"mlflow.parentRunId": self.run_id, "slade.stage": stage}).info.run_id
            self.ids["stages"][stage] = run_id
            self._save_ids()
            section = stage.split("_round")[0]
            settings = flatten({section: to_dict(self.config)[section]})
            self._send(run_id, params=[(k, str(v)) for k, v in settings.items()])
            self.sent[stage] = {}
        self.open[stage] = run_id
        now = int(time.time() * 1000)
        self.pending[stage] = [(e, now) for e in entries]  # in the checkpoint resumed from
        self.commit(stage, max((e["step"] for e in entries), default=0))

    def log(self, stage: str, entry: dict[str, Any]) -> None:
        self.pending[stage].append((entry, int(time.time() * 1000)))

    def truncate(self, stage: str, step: int) -> None:
        self.pending[stage] = [(e, t) for e, t in self.pending[stage] if e["step"] <= step]

    def commit(self, stage: str, step: int) -> None:
        """Send the entries of steps up to ``step`` (a checkpoint holds them) that the run lacks."""
        ready = [(e, t) for e, t in self.pending[stage] if e["step"] <= step]
        unsent, metrics = dict(self.sent[stage]), []
        for entry, stamp in ready:
            metrics += [(name, value, stamp, entry["step"])
                        for name, value in unseen(entry, unsent, mlflow_name).items()]
        run_id = self.open[stage]
        try:
            self._send(run_id, metrics, sent=self.sent[stage])
        except Exception as exc:  # a server that stopped answering must not stop the training
            if not self.failing:
                log.warning("MLflow: cannot log %s's metrics (%s); sending them again at the next "
                            "checkpoint", stage, _reason(exc))
            self.failing = True
            return
        self.failing = False
        self.pending[stage] = [(e, t) for e, t in self.pending[stage] if e["step"] > step]

    def stage_done(self, stage: str, stage_dir: Path, metrics: dict[str, Any]) -> None:
        if stage in self.open:
            self.commit(stage, max((e["step"] for e, _ in self.pending[stage]), default=0))
            run_id = self.open.pop(stage)
            with _tolerated(f"finish {stage}'s run"):
                if (stage_dir / layout.STAGE_METRICS).is_file():
                    self.client.log_artifact(run_id, str(stage_dir / layout.STAGE_METRICS))
                self.client.set_terminated(run_id, "FINISHED")
        now, values = int(time.time() * 1000), []
        for key, value in scalars(flatten(metrics)).items():
            name = mlflow_name(f"{stage}/{key}")
            if name not in self.parent_sent:  # a rerun sends what this one could not
                values.append((name, value, now, 0))
                self.parent_sent[name] = 0
        with _tolerated(f"log {stage}'s metrics"):
            self._send(self.run_id, values)

    def run_done(self, run_dir: Path, stages: list[str]) -> None:
        with _tolerated("log the run's artifacts"):
            for name in (layout.METRICS, layout.REPORT):
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))

    def close(self, status: str, checkpointed: bool) -> None:
        for stage, run_id in self.open.items():
            if checkpointed:  # stopped after writing the checkpoint: every entry logged is in it
                self.commit(stage, max((e["step"] for e, _ in self.pending[stage]), default=0))
            self.client.set_terminated(run_id, status)
        self.open.clear()
        self.client.set_terminated(self.run_id, status)
