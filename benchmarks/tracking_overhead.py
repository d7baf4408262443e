"""Cost of experiment tracking: teacher steps with logging off, to TensorBoard, to MLflow, to both.

Each variant trains the same teacher (same weights, same batches) through ``engine/trainer.py::fit``
for ``--steps`` steps, logging every step (``log_every: 1``, the worst case: the default logs every
20th) with a checkpoint, and so an MLflow commit, every ``--checkpoint-every`` steps; TensorBoard
and MLflow write to a temporary run directory (MLflow's default ``file:`` store). A step's time is
taken from the start of the first step to the start of the last, so each includes its share of
logging, checkpoints and commits, and the variants are interleaved round by round (the order
rotating) so drift of this noisy machine hits them alike. Tracking off is the anchor: each ratio
is a variant's median step time over its. The time spent inside the trackers' calls per step is
measured too (less noisy than the difference of two step times, but blind to TensorBoard's writer
thread), and opening the runs (once per stage) is reported apart.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tracking_overhead.py
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from slade.config import load_config, with_settings
from slade.data.build import build_splits, prepare
from slade.engine.device import resolve_device
from slade.engine.trainer import fit
from slade.stages.common import new_model
from slade.stages.teacher import RankingStage
from slade.tracking import open_tracking

VARIANTS = {"off": [], "tensorboard": ["logging.tensorboard"], "mlflow": ["logging.mlflow"],
            "both": ["logging.tensorboard", "logging.mlflow"]}


def timed_fit(config, model, data, device, run_dir: Path) -> tuple[float, float, float]:
    """``(seconds per step, seconds in the trackers' calls per step, seconds from the call to the
    first step)`` of one teacher ``fit``."""
    stage = RankingStage(copy.deepcopy(model), data.labeled, config.teacher, config.data, config.seed)
    starts, original = [], stage.loss_terms

    def loss_terms(batch, step):
        starts.append(time.perf_counter())
        return original(batch, step)

    stage.loss_terms = loss_terms
    called = time.perf_counter()
    inside = [0.0]
    with open_tracking(config, run_dir) as tracking:
        for backend in tracking.backends:
            backend.log, backend.commit = _timed(backend.log, inside), _timed(backend.commit, inside)
        fit(stage, config.teacher, run_dir / "teacher", device, tracking=tracking)
    steps = len(starts)
    return (starts[-1] - starts[0]) / (steps - 1), inside[0] / steps, starts[0] - called


def _timed(call, total: list[float]):
    def timed(*args):
        t = time.perf_counter()
        call(*args)
        total[0] += time.perf_counter() - t

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, each variant once")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    args = parser.parse_args()
    base = load_config(None, ["data.glyph_pool_size=2000", *args.set])
    base = with_settings(base, {"teacher.steps": args.steps, "teacher.log_every": 1, "teacher.eval_every": 0,
                                "teacher.checkpoint_every": args.checkpoint_every})
    configs = {name: with_settings(base, {key: True for key in keys}) for name, keys in VARIANTS.items()}
    device = resolve_device(base.device)
    data = prepare(build_splits(base.data, base.seed), base.data)
    model = new_model(base)
    names = list(VARIANTS)
    step_times: dict[str, list[float]] = {name: [] for name in names}
    startup: dict[str, list[float]] = {name: [] for name in names}
    calls: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:  # warm-up: imports, first writers
            timed_fit(configs[name], model, data, device, Path(tmp) / f"warmup_{name}")
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                per_step, in_calls, first = timed_fit(configs[name], model, data, device,
                                                      Path(tmp) / f"{r}_{name}")
                step_times[name].append(per_step)
                calls[name].append(in_calls)
                startup[name].append(first)
    anchor = statistics.median(step_times["off"])
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU"
    print(f"device: {device_name}; {base.model.backbone} at {base.data.image_size}px, "
          f"{base.teacher.batch_size} images per teacher step; {args.rounds} rounds of {args.steps} steps "
          f"per variant, interleaved; every step logged, a checkpoint every {args.checkpoint_every}")
    print(f"teacher step, tracking off (anchor): {anchor * 1e3:.1f} ms (median)")
    for name in names[1:]:
        median = statistics.median(step_times[name])
        opening = statistics.median(startup[name]) - statistics.median(startup["off"])
        label = f"teacher step, {name}:"
        print(f"{label:<34} {median * 1e3:.1f} ms (median)   ratio {median / anchor:.3f}x")
        in_calls = statistics.median(calls[name])
        print(f"{'':<36}in the trackers' calls: {in_calls * 1e3:.2f} ms per step = "
              f"{in_calls / anchor:.2%} of the anchor step; opening the runs: {opening:+.2f} s per stage")


if __name__ == "__main__":
    main()
