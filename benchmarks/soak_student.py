"""Soak test: does the student stage's resident memory stay flat over a long run?

Trains the SLADE student as published (``student.mining=confident``; ``stages/student.py``
through the shared ``engine/trainer.py::fit``, with its periodic checkpoints) on omniglot-shift
for ``--minutes``, sampling the process's resident set size (``VmRSS`` of ``/proc/self/status``)
every ``--every`` steps. The teacher is the untrained
network (``teacher.steps=0``): what is measured is the training loop, not accuracy. Prints RSS after
the first epoch (one pass over the pool's worth of unlabeled images) and at the end, and their ratio;
the target is flat within 5%.

    .venv/bin/python benchmarks/soak_student.py --minutes 60                 # the recorded figure
    .venv/bin/python benchmarks/soak_student.py --minutes 1 --every 25 --set model.width=8  # a quick check
    .venv/bin/python benchmarks/soak_student.py --summarise soak.log     # the verdict of a saved output

Loader worker processes (``student.num_workers``) are not counted: keep the default 0.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from slade import run_layout as layout
from slade.config import load_config
from slade.data.build import build_splits, prepare
from slade.engine.device import resolve_device
from slade.engine.trainer import fit
from slade.stages.common import RunContext
from slade.stages.pseudo_labels import run_pseudo_labels
from slade.stages.student import StudentStage
from slade.stages.teacher import run_teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from omniglot_shift import STUDY_PSEUDO_LABELS  # noqa: E402  the pseudo labels of the recorded soak

ROOT = Path(__file__).resolve().parents[1]


class TimeUp(Exception):
    pass


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=int, default=50, help="sample RSS every this many steps")
    parser.add_argument("--config", default=str(ROOT / "configs" / "omniglot_shift.yaml"))
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    parser.add_argument("--summarise", metavar="LOG", help="only print the verdict of a saved output")
    args = parser.parse_args()
    if args.summarise:
        summarise_log(args.summarise)
        return

    config = load_config(args.config, ["pretrain.enabled=false", "teacher.steps=0", "analysis.enabled=false",
                                       "student.steps=100000000", "student.mining=confident",  # SLADE's
                                       "student.miner=multi_similarity", *STUDY_PSEUDO_LABELS, *args.set])
    out = Path(args.out or tempfile.mkdtemp(prefix="soak-"))
    device = resolve_device(config.device)
    data = prepare(build_splits(config.data, config.seed), config.data)
    ctx = RunContext(config, out, data, device)
    run_teacher(ctx)
    pseudo = run_pseudo_labels(ctx, layout.TEACHER, ctx.stage_dir(layout.PSEUDO_LABELS))
    cfg = config.student
    stage = StudentStage(ctx.load_model(layout.TEACHER), data.labeled, data.unlabeled, pseudo.labels, cfg,
                         config.data, config.seed + 1)
    epoch = -(-len(data.unlabeled) // cfg.unlabeled_batch_size)
    print(f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}; pool {len(data.unlabeled)} images, "
          f"one epoch = {epoch} steps of {cfg.unlabeled_batch_size} unlabeled images; run dir {out}")

    samples: list[tuple[int, float, float]] = []
    started = time.perf_counter()
    original = stage.loss_terms

    def measured(batch, step):
        elapsed = time.perf_counter() - started
        if step % args.every == 0 or step == epoch:
            samples.append((step, elapsed, rss_mb()))
            print(f"step {step:>7}  {elapsed:>8.0f} s  RSS {samples[-1][2]:8.1f} MB", flush=True)
        if elapsed > args.minutes * 60:
            raise TimeUp
        return original(batch, step)

    stage.loss_terms = measured
    try:
        fit(stage, cfg, ctx.stage_dir(layout.STUDENT), device)
    except TimeUp:
        pass
    summarise(samples, epoch)


def summarise(samples: list[tuple[int, float, float]], epoch: int) -> None:
    """Prints the verdict: resident memory after the first epoch against the end.

    Single samples catch whatever temporaries of the step before the allocator has not handed
    back yet (tens of MB up and down), so each fifth of the samples after the epoch is also
    summarised by its floor (min: what stays resident; a leak raises it) and its peak (max).
    """
    after = [s for s in samples if s[0] >= epoch]
    if len(after) < 2:
        print(f"ran {samples[-1][0]} steps: fewer than one epoch and a sample after it; run longer")
        return
    first, end = after[0], after[-1]

    def verdict(ratio: float) -> str:
        return f"ratio {ratio:.3f} ({'flat' if abs(ratio - 1) <= 0.05 else 'NOT flat'} within 5%)"

    print(f"RSS after the first epoch (step {first[0]}): {first[2]:.1f} MB; at the end (step "
          f"{end[0]}, {end[1] / 60:.1f} min): {end[2]:.1f} MB; {verdict(end[2] / first[2])}")
    fifths = [part for part in np.array_split(np.array([s[2] for s in after]), 5) if len(part)]
    print("floor / peak RSS of each fifth of the samples after the epoch (MB): "
          + ", ".join(f"{part.min():.1f} / {part.max():.1f}" for part in fifths))
    print(f"floor, first fifth -> last fifth: {fifths[0].min():.1f} -> {fifths[-1].min():.1f} MB, "
          f"{verdict(fifths[-1].min() / fifths[0].min())}; peak: {fifths[0].max():.1f} -> "
          f"{fifths[-1].max():.1f} MB, {verdict(fifths[-1].max() / fifths[0].max())}")


def summarise_log(path: str) -> None:
    """The verdict of an earlier run, from its printed output."""
    text = Path(path).read_text()
    epoch = int(re.search(r"one epoch = (\d+) steps", text).group(1))
    samples = [(int(a), float(b), float(c)) for a, b, c in
               re.findall(r"^step\s+(\d+)\s+(\d+) s\s+RSS\s+([\d.]+) MB", text, re.MULTILINE)]
    summarise(samples, epoch)


if __name__ == "__main__":
    main()
