"""Cost of SLADE's student step against a naive pseudo-label student's step on the same batch.

Both students (``student.mining=confident``: feature basis + confident pairs, Eqs. 3-9; and
``student.mining=all_pairs``: every pseudo pair, no basis) are built from the same network weights
and fed the *same* labeled + unlabeled batch. Each timed step is forward, loss, backward and AdamW
update; the two are interleaved round by round so drift of this noisy machine hits both alike.
The naive step is the anchor: the ratio is SLADE's median step time over the naive one's.

    .venv/bin/python benchmarks/student_step.py                    # convnet4, 28x28, 64 + 64 images
    .venv/bin/python benchmarks/student_step.py --set model.backbone=resnet50 --set data.image_size=224
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import numpy as np
import torch

from slade.config import load_config
from slade.data.build import build_splits, prepare
from slade.engine.device import resolve_device
from slade.stages.student import StudentStage


def timed_steps(stage: StudentStage, batch, device, rounds: int) -> list[float]:
    groups = stage.parameter_groups()
    for g in groups:
        g.pop("start_step", None)
        g.pop("lr_scale", None)
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        terms = stage.loss_terms(batch, stage.warmup + 1)  # past the warm-up: the full Eq. 9
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of --steps each")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    config = load_config(None, ["data.glyph_pool_size=2000", *args.set])
    device = resolve_device(config.device)
    data = prepare(build_splits(config.data, config.seed), config.data)
    rng = np.random.default_rng(0)
    pseudo = rng.integers(0, config.pseudo_labels.clusters, len(data.unlabeled))

    from slade.stages.common import new_model

    model = new_model(config).to(device)
    stages = {}
    for mining in ("all_pairs", "confident"):
        cfg = copy.deepcopy(config.student)
        cfg.mining = mining
        stage = StudentStage(copy.deepcopy(model), data.labeled, data.unlabeled, pseudo, cfg,
                             config.data, config.seed)
        for module in stage.modules().values():
            module.to(device).train()
        stages[mining] = stage
    batch = next(iter(stages["confident"].batches(0)))
    batch = tuple(tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in part) for part in batch)

    for stage in stages.values():  # warm-up
        timed_steps(stage, batch, device, 3)
    times: dict[str, list[float]] = {m: [] for m in stages}
    for _ in range(args.rounds):
        for mining, stage in stages.items():
            times[mining] += timed_steps(stage, batch, device, args.steps)
    naive = statistics.median(times["all_pairs"])
    slade = statistics.median(times["confident"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU"
    images = config.student.batch_size + config.student.unlabeled_batch_size
    print(f"device: {name}; {config.model.backbone} at {config.data.image_size}px, {images} images per step, "
          f"{args.rounds * args.steps} steps each, interleaved")
    print(f"naive student step (anchor): {naive * 1e3:.1f} ms (median)")
    print(f"SLADE student step:          {slade * 1e3:.1f} ms (median)   ratio {slade / naive:.3f}x")


if __name__ == "__main__":
    main()
