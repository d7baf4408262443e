"""Graceful stop: how long `slade demo` takes to exit after SIGTERM, against one training step plus
one checkpoint write of the demo's model (issue 16).

Each trial starts the demo (SwAV off, so the teacher starts at once), waits until the teacher's
``log.jsonl`` reaches a step, sends SIGTERM and times the exit. In the same trial it measures the
teacher's median step time (from the logged ``images_per_s`` and the batch size) and the time of one
``save_checkpoint`` of the checkpoint the stop wrote. The target: stop time <= step + write, plus the
interpreter's own exit, measured apart in the same trial: from the moment a process that imported
what the pipeline imports (``slade.cli``, ``slade.pipeline``) says it is done to its end.

    .venv/bin/python benchmarks/graceful_stop.py --trials 5 --table benchmarks/results/graceful_stop.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from chaos import last_step  # benchmarks/chaos.py: the last step a stage has logged

from slade import run_layout as layout
from slade.cli import DEMO_CONFIG
from slade.config import load_config
from slade.engine.checkpoint import save_checkpoint
from slade.engine.preemption import PREEMPTED_EXIT

OVERRIDES = ["pretrain.enabled=false", "teacher.log_every=1", "analysis.enabled=false"]


def trial(out: Path, at_step: int, env: dict) -> dict:
    command = [sys.executable, "-m", "slade", "demo", "--out", str(out),
               *[arg for o in OVERRIDES for arg in ("--set", o)]]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = out / layout.TEACHER / layout.LOG
    while process.poll() is None and last_step(log) < at_step:
        time.sleep(0.005)
    sent = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    stderr, said = "", float("nan")
    for line in process.stderr:  # the one line of a stopped run: "stopped: teacher: ... (exit 75)"
        stderr += line
        if line.startswith("stopped:"):
            said = time.perf_counter() - sent
    process.wait()
    stop = time.perf_counter() - sent
    if process.returncode != PREEMPTED_EXIT:
        raise SystemExit(f"expected exit {PREEMPTED_EXIT}, got {process.returncode}:\n{stderr[-2000:]}")
    batch = load_config(DEMO_CONFIG, OVERRIDES).teacher.batch_size
    rates = [e["images_per_s"] for e in map(json.loads, log.read_text().splitlines()) if "images_per_s" in e]
    step = batch / float(np.median(rates))
    state = torch.load(out / layout.TEACHER / layout.CHECKPOINT, map_location="cpu", weights_only=True)
    began = time.perf_counter()
    save_checkpoint(out / "again.pt", state)
    write = time.perf_counter() - began
    return {"stop": stop, "said": said, "step": step, "write": write, "stopped_at": state["step"]}


def exit_time(env: dict) -> float:
    """Seconds from a process's last line to its end, after the CLI's imports and its gc.freeze()."""
    code = "import gc, slade.cli, slade.pipeline; gc.freeze(); print('done', flush=True)"
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    began = time.perf_counter()
    process.wait()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--at-step", type=int, default=30, help="send SIGTERM once the teacher logs it")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", type=Path)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               SLADE_PROGRESS="0")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.trials):
            rows.append(trial(Path(tmp) / f"run{i}", args.at_step, env) | {"python": exit_time(env)})
            r = rows[-1]
            print(f"trial {i}: stopped after step {r['stopped_at']} in {r['stop']:.3f} s; step "
                  f"{r['step']:.3f} s, checkpoint write {r['write']:.3f} s, interpreter exit "
                  f"{r['python']:.3f} s", flush=True)
    within = sum(r["stop"] <= r["step"] + r["write"] + r["python"] for r in rows)
    text = ["# Graceful stop: SIGTERM to exit, `slade demo` teacher", "",
            f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch thread(s); "
            f"demo config with `{' '.join(OVERRIDES)}`; SIGTERM once the teacher has logged step "
            f"{args.at_step}.", "",
            "| trial | stopped after step | SIGTERM to the `stopped:` line (s) | SIGTERM to exit (s) | "
            "one step (s) | one checkpoint write (s) | interpreter exit (s) | stop / (step + write + exit) |",
            "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        text.append(f"| {i} | {r['stopped_at']} | {r['said']:.3f} | {r['stop']:.3f} | {r['step']:.3f} | "
                    f"{r['write']:.3f} | "
                    f"{r['python']:.3f} | {r['stop'] / (r['step'] + r['write'] + r['python']):.2f} |")
    text += ["", f"{within}/{len(rows)} trials stopped within one step + one checkpoint write + the "
             "interpreter's own exit.", ""]
    if args.table:
        args.table.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
