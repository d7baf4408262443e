"""``slade run``: every SLADE stage in order, each reading and writing files in the run directory.

    pretrain        stage 0: SwAV weights              RUN/pretrain/model.pt
    teacher         stage 1: the teacher               RUN/teacher/model.pt
    pseudo_labels   stage 2: k-means of the pool       RUN/pseudo_labels/pseudo_labels.csv
    student         stage 3: the student               RUN/student/model.pt, basis.pt
    (round r > 1: pseudo_labels_round{r}, student_round{r}, each pseudo-labeled by the last student)
    the analysis    t-SNE maps, domain gap, report     RUN/analysis/, RUN/report.html

``run_layout.py`` names every file; ``RUN/metrics.json`` holds each stage's retrieval metrics (the
pseudo labels' statistics are in their student's) and the analysis's ``"gap"``.

A finished stage (its ``done.json``, written last) is not redone and an interrupted one resumes
from its checkpoint, so rerunning a finished or killed run is cheap; a stage made with other
settings or from redone inputs is run again (``stages/common.py``, ``docs/reliability.md``).

Under ``torchrun --nproc_per_node N -m slade run ...`` every process runs the pipeline, training on
its slice of each global batch (``engine/distributed.py``); rank 0 alone writes the run's files.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from slade import run_layout as layout
from slade import tracking
from slade.config import Config, diff_configs, dump_config, load_config
from slade.data.build import build_splits, prepare
from slade.data.datasets import start_bad_image_report, write_bad_image_report
from slade.engine import distributed
from slade.engine.device import resolve_device
from slade.engine.precision import resolve_precision
from slade.engine.run_lock import RunLock
from slade.errors import ConfigError, SladeError, TooManyBadImages
from slade.io import read_json, remove_partial_writes, write_json, write_text
from slade.models.weights import require_weights_file
from slade.stages.common import RunContext

log = logging.getLogger("slade")


def stage_names(config: Config) -> list[str]:
    """The stages ``--until`` may name, in order (``pretrain`` even when disabled: it is skipped)."""
    return layout.stages(config.student.rounds)


def check_run_dir(config: Config, run_dir: Path, force: bool,
                  ignored: tuple[str, ...] = tracking.NOT_RESULTS) -> None:
    """Refuse a run directory made with another config, but for the ``ignored`` settings."""
    saved = run_dir / layout.CONFIG
    if not saved.exists() or force:
        return
    previous = load_config(saved)
    # The analysis settings change no stage's result (the analysis is redone when they differ), nor
    # do the tracking and tuning settings.
    differing = [k for k in diff_configs(previous, config) if not k.startswith(ignored)]
    if differing:
        raise ConfigError(
            f"{saved}: this run directory was made with another config (differs in "
            f"{', '.join(differing[:8])}{'...' if len(differing) > 8 else ''}); "
            "use another --out, or --force to continue with the new config"
        )


def run(config: Config, run_dir: str | Path, until: str | None = None, force: bool = False) -> dict:
    """Run the pipeline up to and including stage ``until`` (all stages when None).

    Returns:
        ``{stage name: metrics}`` as written to ``RUN/metrics.json`` (stages that evaluate no
        model, the pseudo labels, have no entry).
    """
    if until is not None and until not in stage_names(config):
        raise ConfigError(f"--until: unknown stage {until!r} (stages: {', '.join(stage_names(config))})")
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    resolve_precision(config.train.precision, device)  # fp16 without CUDA stops here, before any work
    if config.model.weights:
        require_weights_file(config.model.weights)  # and so does a missing weights file
    tracking.check(config.logging)  # a missing package or a silent server: before anything is written
    device = distributed.setup(device)  # joins torchrun's processes
    main = distributed.is_main()  # the only process that writes files, and holds the lock
    with RunLock(run_dir) if main else contextlib.nullcontext():
        return _run(config, run_dir, until, force, device, main)


def _run(config: Config, run_dir: Path, until: str | None, force: bool, device, main: bool) -> dict:
    if main:
        check_run_dir(config, run_dir, force)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(run_dir)  # of a killed run; stage folders are cleaned as each stage starts
        write_text(run_dir / layout.CONFIG, dump_config(config))

    bad_images = run_dir / layout.BAD_IMAGES
    splits = build_splits(config.data, config.seed)
    try:
        data = prepare(splits, config.data)
    except TooManyBadImages as exc:
        if main:
            write_bad_image_report(bad_images, exc.bad)
        raise TooManyBadImages(f"{exc}; all are listed in {bad_images}", exc.bad) from None
    if main:
        write_json(run_dir / layout.DATA_SUMMARY, data.summary())
        start_bad_image_report(bad_images, data.parts)
    distributed.barrier()
    if not main:  # lazy sets append what they meet to rank 0's report
        start_bad_image_report(bad_images, data.parts, write=False)
    with tracking.open_tracking(config, run_dir, main) as tracker:
        metrics = _run_stages(RunContext(config, run_dir, data, device, tracker), until, main)
    distributed.finish()  # under torchrun: every process waits for the analysis, then leaves
    return metrics


def _run_stages(ctx: RunContext, until: str | None, main: bool) -> dict:
    """Every stage up to ``until``, then (for a whole run) the analysis; their metrics."""
    config, run_dir = ctx.config, ctx.run_dir
    metrics: dict[str, dict] = {}
    for name, stage in _stages(config):
        result = stage(ctx)
        if result is not None:
            metrics[name] = result
            if main:
                write_metrics(run_dir, metrics)
            ctx.tracking.stage_done(name, ctx.stage_dir(name), result)
        if name == until:
            break
    if until is None and config.analysis.enabled and main:
        from slade.analysis.analyse import analyse_run, analysis_is_current

        try:  # the stages' results stand whether or not the data suits the analysis
            metrics["gap"] = analysis_is_current(run_dir, config) or analyse_run(run_dir)
        except SladeError as exc:
            log.warning("no visual analysis of %s: %s", run_dir, exc)
        write_metrics(run_dir, metrics)
    ctx.tracking.run_done(run_dir, stage_names(config))
    return metrics


def _stages(config: Config) -> Iterator[tuple[str, Callable[[RunContext], dict | None]]]:
    """``(name, run)`` of each stage in order; ``run(ctx)`` returns its metrics (or None)."""
    from slade.stages.pretrain import run_pretrain
    from slade.stages.pseudo_labels import run_pseudo_label_round
    from slade.stages.student import run_student_round
    from slade.stages.teacher import run_teacher

    yield layout.PRETRAIN, run_pretrain if config.pretrain.enabled else _skipped
    yield layout.TEACHER, run_teacher
    for r in range(1, config.student.rounds + 1):
        yield layout.pseudo_labels(r), partial(run_pseudo_label_round, round_index=r)
        yield layout.student(r), partial(run_student_round, round_index=r)


def _skipped(ctx: RunContext) -> None:
    return None


def write_metrics(run_dir: Path, metrics: dict) -> None:
    """``RUN/metrics.json``; the pipeline (and ``slade tsne`` through :func:`record_gap`) alone
    writes it."""
    write_json(Path(run_dir) / layout.METRICS, metrics)


def record_gap(run_dir: Path, gap: dict) -> None:
    """Replace the ``"gap"`` of ``RUN/metrics.json`` with a new analysis's (``slade tsne``)."""
    path = Path(run_dir) / layout.METRICS
    stages = {k: v for k, v in (read_json(path) if path.is_file() else {}).items() if k != "gap"}
    write_metrics(run_dir, {**stages, "gap": gap})
