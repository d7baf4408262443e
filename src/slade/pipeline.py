"""``slade run``: every SLADE stage in order, each reading and writing files in the run directory.

    RUN/config.yaml                  the resolved config
    RUN/data.json                    image and class counts per split, dropped classes
    RUN/bad_images.csv               unreadable images that were skipped
    RUN/pretrain/model.pt            stage 0: SwAV weights            (+ checkpoint.pt, log.jsonl)
    RUN/teacher/model.pt             stage 1: the teacher             (+ metrics.json)
    RUN/pseudo_labels/               stage 2: embeddings.npy, pseudo_labels.csv, clusters.json
    RUN/student/model.pt             stage 3: the student             (round r > 1: student_round{r})
    RUN/metrics.json                 {stage: retrieval metrics}

A stage whose output exists is not redone, so rerunning a finished or interrupted run is cheap.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from slade.config import Config, diff_configs, dump_config, load_config
from slade.data.build import build_splits, prepare
from slade.engine.trainer import resolve_device
from slade.errors import ConfigError
from slade.io import write_json, write_text
from slade.stages.common import RunContext

log = logging.getLogger("slade")

STAGES = ("pretrain", "teacher", "student")


def student_name(round_index: int, prefix: str = "student") -> str:
    """``student`` for round 1, ``student_round2``... after (the keys of metrics.json)."""
    return prefix if round_index == 1 else f"{prefix}_round{round_index}"


def _check_run_dir(config: Config, run_dir: Path, force: bool) -> None:
    saved = run_dir / "config.yaml"
    if not saved.exists() or force:
        return
    previous = load_config(saved)
    differing = diff_configs(previous, config)
    if differing:
        raise ConfigError(
            f"{saved}: this run directory was made with another config (differs in "
            f"{', '.join(differing[:8])}{'...' if len(differing) > 8 else ''}); "
            "use another --out, or --force to continue with the new config"
        )


def run(config: Config, run_dir: str | Path, until: str | None = None, force: bool = False) -> dict:
    """Run the pipeline up to and including stage ``until`` (all stages when None).

    Returns:
        ``{stage name: metrics}`` as written to ``RUN/metrics.json``.
    """
    if until is not None and until not in STAGES:
        raise ConfigError(f"--until: unknown stage {until!r} (stages: {', '.join(STAGES)})")
    run_dir = Path(run_dir)
    _check_run_dir(config, run_dir, force)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", dump_config(config))

    splits = build_splits(config.data, config.seed)
    data = prepare(splits, config.data)
    write_json(run_dir / "data.json", data.summary())
    _write_bad_images(run_dir, data)
    ctx = RunContext(config, run_dir, data, resolve_device(config.device))

    metrics: dict[str, dict] = {}
    for stage, result in _stages(ctx, until):
        metrics[stage] = result
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def _stages(ctx: RunContext, until: str | None):
    from slade.stages.teacher import run_teacher

    config = ctx.config
    if config.pretrain.enabled:
        from slade.stages.pretrain import run_pretrain

        yield "pretrain", run_pretrain(ctx)
    if until == "pretrain":
        return
    yield "teacher", run_teacher(ctx)
    if until == "teacher":
        return
    from slade.stages.student import run_student_round

    for r in range(1, config.student.rounds + 1):
        yield student_name(r), run_student_round(ctx, r)


def _write_bad_images(run_dir: Path, data) -> None:
    path = run_dir / "bad_images.csv"
    if not data.bad_images:
        path.unlink(missing_ok=True)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "source", "reason"])
    for split, bad in data.bad_images:
        writer.writerow([split, bad.source, bad.reason])
    write_text(path, buffer.getvalue())
