"""Chaos: runs of a short demo killed with SIGKILL at random moments, rerun to the end (issue 16).

An uninterrupted reference run is made first. Kill ``i`` is planned in stage ``i mod 5`` (SwAV,
teacher, pseudo labels with their k-means, student, t-SNE and report), so every stage is hit, at a
moment drawn by progress rather than by the clock (the machine's load moves the clock): in a
training stage, once its ``log.jsonl`` reaches a uniformly drawn step; in the pseudo labels and the
analysis, a uniform fraction of the reference run's time for that stage (scaled by how much slower
this run has been so far) after the stage before it finished. What the run directory holds after the
kill says which stage was really interrupted, and the step its checkpoint holds.
Each killed run is then rerun to its end, and its ``metrics.json`` compared with the reference's
(training times left out): equal, or the benchmark fails.

    .venv/bin/python benchmarks/chaos.py --kills 20 --table benchmarks/results/chaos.md   # recorded
    .venv/bin/python benchmarks/chaos.py --kills 3                                         # a quick look

One torch thread per process (``--threads``): the runs must be bit-for-bit repeatable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from slade import run_layout as layout

ROOT = Path(__file__).resolve().parents[1]
# The demo, made short: every stage, with checkpoints often enough that a kill lands between two.
SHORT = [
    "data.glyph_train_classes=12", "data.glyph_test_classes=6", "data.glyph_images_per_class=6",
    "data.glyph_pool_size=200", "model.width=8", "model.embedding_dim=16",
    "pretrain.steps=24", "pretrain.batch_size=32", "pretrain.prototypes=10", "pretrain.checkpoint_every=4",
    "teacher.steps=40", "teacher.batch_size=16", "teacher.checkpoint_every=5",
    "student.steps=40", "student.basis_warmup_steps=5", "student.batch_size=16",
    "student.unlabeled_batch_size=16", "student.checkpoint_every=5", "pretrain.log_every=1",
    "teacher.log_every=1", "student.log_every=1",
    "pseudo_labels.clusters=8", "evaluation.batch_size=64", "analysis.points=150", "analysis.queries=4",
]
STAGES = [layout.PRETRAIN, layout.TEACHER, layout.PSEUDO_LABELS, layout.STUDENT, layout.ANALYSIS]
TRAINED = {layout.PRETRAIN, layout.TEACHER, layout.STUDENT}


def command(out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "slade", "demo", "--out", str(out),
            *[arg for o in overrides for arg in ("--set", o)]]


def environment(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), SLADE_PROGRESS="0")


def finish(out: Path, overrides: list[str], env: dict) -> dict:
    done = subprocess.run(command(out, overrides), env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{out}: the run failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return json.loads((out / layout.METRICS).read_text())


def without_timing(metrics: dict) -> dict:
    def drop(value):
        return {m: v for m, v in value.items() if m != "train_seconds"} if isinstance(value, dict) else value

    return {key: drop(value) for key, value in metrics.items()}


def stage_ends(out: Path, started: float) -> list[float]:
    """Seconds from the start of the reference run to the end of each of STAGES."""
    ends = [(out / stage / layout.DONE).stat().st_mtime - started for stage in STAGES[:-1]]
    return ends + [(out / layout.REPORT).stat().st_mtime - started]


def steps_of(overrides: list[str], stage: str) -> int:
    return next(int(o.split("=")[1]) for o in overrides if o.startswith(f"{stage}.steps="))


def last_step(log: Path) -> int:
    """The last step a training stage has logged (0 before its first); a line cut short is skipped."""
    if not log.is_file():
        return 0
    for line in reversed(log.read_text().splitlines()):
        try:
            return int(json.loads(line).get("step", 0))
        except json.JSONDecodeError:
            continue
    return 0


def until(process: subprocess.Popen, ready, poll: float = 0.02) -> None:
    """Wait until ``ready()`` or the process ends."""
    while process.poll() is None and not ready():
        time.sleep(poll)


def interrupted(out: Path) -> tuple[str, str]:
    """The first unfinished stage of a killed run, and the step its checkpoint holds ('–' if none)."""
    for stage in STAGES[:-1]:
        if not (out / stage / layout.DONE).is_file():
            checkpoint = out / stage / layout.CHECKPOINT
            if checkpoint.is_file():
                import torch

                return stage, str(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"])
            return stage, "–"
    if not (out / layout.REPORT).is_file():
        return layout.ANALYSIS, "–"
    return "finished before the kill", "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="of the kill moments")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="extra config override, repeatable")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--table", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    overrides = SHORT + args.set
    env = environment(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="slade-chaos-"))
    rng = np.random.default_rng(args.seed)

    reference = root / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    started = time.time()
    expected = without_timing(finish(reference, overrides, env))
    ends = stage_ends(reference, started)
    timeline = ", ".join(f"{s} {e:.1f} s" for s, e in zip(STAGES, ends, strict=True))
    print(f"reference run: {ends[-1]:.1f} s; stages end at {timeline}", flush=True)

    rows, equal = [], 0
    for i in range(args.kills):
        planned = STAGES[i % len(STAGES)]
        out = root / f"kill{i:02d}"
        shutil.rmtree(out, ignore_errors=True)
        begun = time.time()
        process = subprocess.Popen(command(out, overrides), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if planned in TRAINED:
            target = int(rng.integers(1, steps_of(overrides, planned) + 1))
            moment = f"step {target}"
            log = out / planned / layout.LOG
            until(process, lambda log=log, t=target: last_step(log) >= t)
        else:
            before = STAGES[STAGES.index(planned) - 1]
            fraction = float(rng.uniform(0, 1))
            moment = f"{fraction:.0%} of its time"
            done = out / before / layout.DONE
            until(process, done.is_file)
            slower = (time.time() - begun) / ends[STAGES.index(before)]
            try:
                process.wait(timeout=fraction * (ends[STAGES.index(planned)] - ends[STAGES.index(before)])
                             * slower)
            except subprocess.TimeoutExpired:
                pass
        at = time.time() - begun
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        stage, step = interrupted(out)
        begun = time.time()
        same = without_timing(finish(out, overrides, env)) == expected
        equal += same
        rows.append((i, planned, moment, at, stage, step, time.time() - begun, same))
        print(f"kill {i:2d}: planned in {planned} at {moment}, {at:.1f} s; interrupted {stage} "
              f"(checkpoint step {step}); rerun {rows[-1][6]:.1f} s; metrics "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)

    text = ["# Chaos: SIGKILL at random moments, rerun to the end", "",
            f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch thread(s) per "
            f"run. Short demo config (`SHORT` in benchmarks/chaos.py); reference run {ends[-1]:.1f} s, its "
            f"stages ending at {timeline}.", "",
            f"**{equal}/{args.kills} killed runs resumed to a `metrics.json` identical to the "
            "uninterrupted run's** (training times left out).", "",
            "| kill | planned in | at | killed after (s) | stage interrupted | its checkpoint's step | "
            "rerun (s) | metrics |", "|---|---|---|---|---|---|---|---|"]
    for i, planned, moment, at, stage, step, rerun, same in rows:
        text.append(f"| {i} | {planned} | {moment} | {at:.1f} | {stage} | {step} | {rerun:.1f} | "
                    f"{'identical' if same else '**different**'} |")
    out_text = "\n".join(text) + "\n"
    if args.table:
        args.table.write_text(out_text)
    print(out_text)
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)
    if equal != args.kills:
        raise SystemExit(f"{args.kills - equal} killed run(s) did not resume to the reference metrics")


if __name__ == "__main__":
    main()
