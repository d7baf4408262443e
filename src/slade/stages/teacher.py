"""Stage 1: the teacher, fine-tuned on the labeled set with a ranking loss (METHOD.md, Eq. 1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from slade import run_layout as layout
from slade.config import DataConfig, TeacherConfig
from slade.data.batches import MPerClassBatches, batch_loader
from slade.data.datasets import ImageDataset
from slade.data.transforms import train_transform
from slade.engine import distributed
from slade.engine.stage import TrainingStage
from slade.engine.trainer import fit
from slade.losses import make_loss, make_miner
from slade.models.embedder import EmbeddingNet
from slade.stages.common import RunContext, finish_stage, output_digest, stage_current, stage_metrics


class RankingStage(TrainingStage):
    """Metric learning on labeled images: m-per-class batches, a PML miner and loss."""

    name = layout.TEACHER

    def __init__(self, model: EmbeddingNet, labeled: ImageDataset, config: TeacherConfig,
                 data: DataConfig, seed: int) -> None:
        self.model, self.labeled, self.config, self.seed = model, labeled, config, seed
        num_classes = len(labeled.image_set.class_counts())
        self.loss = make_loss(config.loss, config.loss_args, "teacher.loss",
                              num_classes=num_classes, embedding_size=model.embedding_dim)
        self.miner = make_miner(config.miner, config.miner_args, "teacher.miner")
        self.sampler = MPerClassBatches(labeled.labels, config.m_per_class, config.batch_size, seed)
        self.transform = train_transform(data.augmentation, data.image_size, data.channels)
        self.images_per_step = config.batch_size

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "loss": self.loss}

    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = [{"params": list(self.model.parameters())}]
        if any(True for _ in self.loss.parameters()):
            groups.append({"params": list(self.loss.parameters())})
        return groups

    def batches(self, start: int) -> Iterator[Any]:
        return batch_loader(self.sampler, self.labeled, self.transform, start,
                            self.config.num_workers)

    def loss_terms(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        x, y, _ = batch
        # Under torchrun: the global batch's embeddings, so the miner and loss see what one process would.
        z, y = distributed.gather(self.model(x)), distributed.gather(y)
        pairs = self.miner(z, y) if self.miner is not None else None
        return {"loss": self.loss(z, y, pairs)}


def run_teacher(ctx: RunContext) -> dict:
    """Train the teacher from the stage-0 weights (or from scratch) and evaluate it."""
    out = ctx.stage_dir(layout.TEACHER)
    cfg = ctx.config.teacher
    from_pretrain = cfg.init == "pretrain" and ctx.config.pretrain.enabled
    init = output_digest(ctx.stage_dir(layout.PRETRAIN), layout.MODEL) if from_pretrain else "random"
    fingerprint = ctx.fingerprint("teacher", init=init)
    if stage_current(out, fingerprint):
        return stage_metrics(out)
    model = ctx.load_model(layout.PRETRAIN) if from_pretrain else ctx.new_model()
    torch.manual_seed(ctx.config.seed)  # the loss's own parameters, if any, whatever ran before
    stage = RankingStage(model, ctx.data.labeled, cfg, ctx.config.data, ctx.config.seed)
    result = fit(stage, cfg, out, ctx.device, ctx.evaluator(model), fingerprint, ctx.precision,
                 ctx.config.train.compile, ctx.tracking)
    metrics = {**result.final_metrics, "train_seconds": round(result.seconds, 1),
               "init": "pretrain" if from_pretrain else "random"}
    return finish_stage(ctx, out, model, metrics, fingerprint)
