"""Cost of SLADE's student step against a naive pseudo-label student's step on the same batch.

The students (``student.mining=confident``: feature basis + confident pairs, Eqs. 3-9;
``student.mining=all_pairs``: every pseudo pair, no basis, with and without the miner; and
``student.mining=contextual``: pseudo pairs filtered by their k-reciprocal neighbourhoods) are built
from the same network weights and fed the *same* labeled + unlabeled batch. Each timed step is
forward, loss, backward and AdamW update; the students are interleaved round by round so drift of
this noisy machine hits them alike.
The naive (mined) step is the anchor: each ratio is a student's median step time over its.

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
from slade.data.transforms import eval_transform
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
    # The contextual student's neighbourhoods, of the untrained network's embeddings of the pool.
    from slade.context.neighbourhood import k_reciprocal_encoding

    transform = eval_transform(config.data.image_size, config.data.channels)
    with torch.no_grad():
        model.eval()
        x = torch.stack([transform(data.unlabeled[i]) for i in range(len(data.unlabeled))])
        pool = torch.cat([model(b.to(device)) for b in x.split(256)]).cpu().numpy()
        model.train()
    context = k_reciprocal_encoding(pool, config.student.context_k, config.student.context_k2)
    stages = {}
    for name, mining, miner in (("all_pairs", "all_pairs", "multi_similarity"),
                                ("all_pairs, no miner", "all_pairs", ""),
                                ("confident", "confident", "multi_similarity"),
                                ("contextual", "contextual", "")):
        cfg = copy.deepcopy(config.student)
        cfg.mining, cfg.miner = mining, miner
        stage = StudentStage(copy.deepcopy(model), data.labeled, data.unlabeled, pseudo, cfg,
                             config.data, config.seed, context=context)
        for module in stage.modules().values():
            module.to(device).train()
        stages[name] = stage
    batch = next(iter(stages["confident"].batches(0)))
    batch = tuple(tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in part) for part in batch)

    for stage in stages.values():  # warm-up
        timed_steps(stage, batch, device, 3)
    times: dict[str, list[float]] = {m: [] for m in stages}
    for _ in range(args.rounds):
        for mining, stage in stages.items():
            times[mining] += timed_steps(stage, batch, device, args.steps)
    naive = statistics.median(times["all_pairs"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU"
    images = config.student.batch_size + config.student.unlabeled_batch_size
    print(f"device: {name}; {config.model.backbone} at {config.data.image_size}px, {images} images per step, "
          f"{args.rounds * args.steps} steps each, interleaved")
    print(f"naive student step (anchor): {naive * 1e3:.1f} ms (median)")
    labels = {"all_pairs, no miner": "naive student, no miner", "confident": "SLADE student",
              "contextual": "contextual student"}
    for name, label in labels.items():
        median = statistics.median(times[name])
        print(f"{label + ' step:':<34} {median * 1e3:.1f} ms (median)   ratio {median / naive:.3f}x")
    ratio = statistics.median(times["contextual"]) / statistics.median(times["all_pairs, no miner"])
    print(f"contextual / naive without miner: {ratio:.3f}x")


if __name__ == "__main__":
    main()
