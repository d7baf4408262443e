"""Cost of experiment tracking: teacher steps with logging off, to TensorBoard, to MLflow, to both.

Each variant trains the same teacher (same weights, same batches) through ``engine/trainer.py::fit``
for ``--steps`` steps, logging every step (``log_every: 1``, the worst case: the default logs every
20th) with a checkpoint, and so an MLflow commit, every ``--checkpoint-every`` steps; TensorBoard
and MLflow write to a temporary run directory (MLflow's default ``file:`` store). A step's cost is
taken from the start of the first step to the start of the last, so it includes its share of
logging, checkpoints and commits; opening the runs (once per stage) is reported apart. The
variants are interleaved round by round (the order rotating), and each ratio is the median over
rounds of a variant's step over the same round's step without tracking (the anchor), in wall time
and in this process's CPU time (all its threads, TensorBoard's writer included; on this shared
machine wall time also counts what other processes take). The time spent inside the trackers'
calls is measured too.

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


def timed_fit(config, model, data, device, run_dir: Path) -> dict[str, float]:
    """Per step of one teacher ``fit``: ``wall`` and ``cpu`` seconds, ``calls`` (seconds inside the
    trackers' calls); and ``opening``, seconds from the call to the first step."""
    stage = RankingStage(copy.deepcopy(model), data.labeled, config.teacher, config.data, config.seed)
    wall, cpu, original = [], [], stage.loss_terms

    def loss_terms(batch, step):
        wall.append(time.perf_counter())
        cpu.append(time.process_time())
        return original(batch, step)

    stage.loss_terms = loss_terms
    called, inside = time.perf_counter(), [0.0]
    with open_tracking(config, run_dir) as tracking:
        for backend in tracking.backends:
            backend.log, backend.commit = _timed(backend.log, inside), _timed(backend.commit, inside)
        fit(stage, config.teacher, run_dir / "teacher", device, tracking=tracking)
    steps = len(wall) - 1
    return {"wall": (wall[-1] - wall[0]) / steps, "cpu": (cpu[-1] - cpu[0]) / steps,
            "calls": inside[0] / len(wall), "opening": wall[0] - called}


def _timed(call, total: list[float]):
    def timed(*args):
        t = time.perf_counter()
        call(*args)
        total[0] += time.perf_counter() - t

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds, each variant once")
    parser.add_argument("--steps", type=int, default=21)
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
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:  # warm-up: imports, first writers
            timed_fit(configs[name], model, data, device, Path(tmp) / f"warmup_{name}")
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            rounds.append({name: timed_fit(configs[name], model, data, device, Path(tmp) / f"{r}_{name}")
                           for name in order})

    def median(name: str, key: str) -> float:
        return statistics.median(row[name][key] for row in rounds)

    def ratio(name: str, key: str) -> tuple[float, float, float]:
        values = sorted(row[name][key] / row["off"][key] for row in rounds)
        return statistics.median(values), values[0], values[-1]

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU"
    print(f"device: {device_name}; {base.model.backbone} at {base.data.image_size}px, "
          f"{base.teacher.batch_size} images per teacher step; {args.rounds} rounds of {args.steps} steps "
          f"per variant, interleaved; every step logged, a checkpoint every {args.checkpoint_every}")
    print(f"teacher step, tracking off (anchor): {median('off', 'wall') * 1e3:.1f} ms wall, "
          f"{median('off', 'cpu') * 1e3:.1f} ms CPU (medians)")
    for name in names[1:]:
        (wall, wall_lo, wall_hi), (cpu, cpu_lo, cpu_hi) = ratio(name, "wall"), ratio(name, "cpu")
        calls = statistics.median(row[name]["calls"] / row["off"]["cpu"] for row in rounds)
        opening = median(name, "opening") - median("off", "opening")
        print(f"{name + ':':<13} ratio {wall:.3f}x wall (rounds {wall_lo:.3f}-{wall_hi:.3f}), "
              f"{cpu:.3f}x CPU (rounds {cpu_lo:.3f}-{cpu_hi:.3f}); in the trackers' calls "
              f"{median(name, 'calls') * 1e3:.2f} ms per step = {calls:.2%} of the anchor's CPU step; "
              f"opening the runs {opening:+.2f} s per stage")


if __name__ == "__main__":
    main()
