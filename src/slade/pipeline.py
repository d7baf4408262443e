"""``slade run``: every SLADE stage in order, each reading and writing files in the run directory.

    RUN/config.yaml                  the resolved config
    RUN/data.json                    image and class counts per split, dropped classes
    RUN/bad_images.csv               unreadable images that were skipped (split, source, reason)
    RUN/pretrain/model.pt            stage 0: SwAV weights            (+ checkpoint.pt, log.jsonl)
    RUN/teacher/model.pt             stage 1: the teacher             (+ metrics.json)
    RUN/pseudo_labels/               stage 2: embeddings.npy, pseudo_labels.csv, clusters.json
    RUN/student/model.pt             stage 3: the student             (round r > 1: student_round{r})
    RUN/metrics.json                 {stage: retrieval metrics, "gap": {embedding: domain gap}}
    RUN/analysis/, RUN/report.html   t-SNE maps, training plots, the run report (slade.analysis)

A finished stage (its ``done.json``, written last) is not redone and an interrupted one resumes
from its checkpoint, so rerunning a finished or killed run is cheap; a stage made with other
settings or from redone inputs is run again (``stages/common.py``, ``docs/reliability.md``).

Under ``torchrun --nproc_per_node N -m slade run ...`` every process runs the pipeline, training on
its slice of each global batch (``engine/distributed.py``); rank 0 alone writes the run's files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from slade.config import Config, diff_configs, dump_config, load_config
from slade.data.build import build_splits, prepare
from slade.data.datasets import start_bad_image_report, write_bad_image_report
from slade.engine import distributed
from slade.engine.trainer import resolve_device
from slade.errors import ConfigError, SladeError, TooManyBadImages
from slade.io import remove_partial_writes, write_json, write_text
from slade.stages.common import RunContext

log = logging.getLogger("slade")

STAGES = ("pretrain", "teacher", "student")
BAD_IMAGES = "bad_images.csv"


def student_name(round_index: int, prefix: str = "student") -> str:
    """``student`` for round 1, ``student_round2``... after (the keys of metrics.json)."""
    return prefix if round_index == 1 else f"{prefix}_round{round_index}"


def _check_run_dir(config: Config, run_dir: Path, force: bool) -> None:
    saved = run_dir / "config.yaml"
    if not saved.exists() or force:
        return
    previous = load_config(saved)
    # The analysis settings change no stage's result: the analysis is redone when they differ.
    differing = [k for k in diff_configs(previous, config) if not k.startswith("analysis.")]
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
    device = distributed.setup(resolve_device(config.device))  # joins torchrun's processes, if any
    main = distributed.is_main()  # the only process that writes files
    if main:
        _check_run_dir(config, run_dir, force)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(run_dir)  # of a killed run; stage folders are cleaned as each stage starts
        write_text(run_dir / "config.yaml", dump_config(config))

    splits = build_splits(config.data, config.seed)
    try:
        data = prepare(splits, config.data)
    except TooManyBadImages as exc:
        if main:
            write_bad_image_report(run_dir / BAD_IMAGES, exc.bad)
        raise TooManyBadImages(f"{exc}; all are listed in {run_dir / BAD_IMAGES}", exc.bad) from None
    if main:
        write_json(run_dir / "data.json", data.summary())
        start_bad_image_report(run_dir / BAD_IMAGES, data.parts)
    distributed.barrier()
    if not main:  # lazy sets append what they meet to rank 0's report
        start_bad_image_report(run_dir / BAD_IMAGES, data.parts, write=False)
    ctx = RunContext(config, run_dir, data, device)

    metrics: dict[str, dict] = {}
    for stage, result in _stages(ctx, until):
        metrics[stage] = result
        if main:
            write_json(run_dir / "metrics.json", metrics)
    if until is None and config.analysis.enabled and main:
        from slade.analysis.analyse import analyse_run, analysis_is_current

        try:  # the stages' results stand whether or not the data suits the analysis
            metrics["gap"] = analysis_is_current(run_dir, config) or analyse_run(run_dir)
        except SladeError as exc:
            log.warning("no visual analysis of %s: %s", run_dir, exc)
        write_json(run_dir / "metrics.json", metrics)
    distributed.finish()  # under torchrun: every process waits for the analysis, then leaves
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

