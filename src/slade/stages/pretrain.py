"""Stage 0: SwAV self-supervised training on the labeled and unlabeled images, labels ignored.

The backbone starts from ImageNet weights where ``model.pretrained`` is set and they can be loaded,
else from random initialisation (METHOD.md, stage 0). The embedding head is not trained here; the
teacher trains it from these backbone weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from slade import run_layout as layout
from slade.config import DataConfig, PretrainConfig
from slade.data.batches import RandomBatches, batch_loader
from slade.data.datasets import UnlabeledUnion
from slade.data.transforms import MultiCrop
from slade.engine import distributed
from slade.engine.stage import TrainingStage
from slade.engine.trainer import fit
from slade.models.embedder import EmbeddingNet
from slade.ssl.swav import ProjectionQueue, SwAVLoss, SwAVProjectionHead, SwAVPrototypes
from slade.stages.common import RunContext, finish_stage, stage_current, stage_metrics


class SwAVStage(TrainingStage):
    """Multi-crop swapped prediction over the union of the labeled and unlabeled images."""

    name = layout.PRETRAIN

    def __init__(self, model: EmbeddingNet, images: UnlabeledUnion, config: PretrainConfig,
                 data: DataConfig, seed: int) -> None:
        self.model, self.images, self.config = model, images, config
        self.head = SwAVProjectionHead(model.num_features, config.projection_hidden_dim,
                                       config.projection_dim)
        self.prototypes = SwAVPrototypes(config.projection_dim, config.prototypes,
                                         config.freeze_prototypes_steps)
        self.criterion = SwAVLoss(config.temperature, config.sinkhorn_epsilon,
                                  config.sinkhorn_iterations)
        # Under torchrun each rank queues its own slice's projections and Sinkhorn sums over every
        # rank's batch and queue, so a rank keeps its share of the (global) queue length.
        self.queues = nn.ModuleList(
            ProjectionQueue(config.queue_length // distributed.world_size(), config.projection_dim)
            for _ in range(config.large_crops if config.queue_length else 0)
        )
        self.sampler = RandomBatches(len(images), config.batch_size, seed, stream=4)
        self.transform = MultiCrop(
            data.augmentation, data.channels, data.image_size, config.large_crops,
            config.large_crop_scale, config.small_crop_size, config.small_crops,
            config.small_crop_scale,
        )
        self.images_per_step = config.batch_size

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "head": self.head, "prototypes": self.prototypes,
                "queues": self.queues}

    def parameter_groups(self) -> list[dict[str, Any]]:
        params = [*self.model.backbone.parameters(), *self.head.parameters(),
                  *self.prototypes.parameters()]
        return [{"params": params}]

    def batches(self, start: int) -> Iterator[Any]:
        return batch_loader(self.sampler, self.images, self.transform, start,
                            self.config.num_workers)

    def loss_terms(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        crops, _, _ = batch
        n_large = self.config.large_crops
        # One forward per resolution: crops of a size share a batch.
        z = [self.head(self.model.forward_features(torch.cat(group)))
             for group in (crops[:n_large], crops[n_large:]) if group]
        scores = self.prototypes(torch.cat(z)).chunk(len(crops))
        queue_scores = None
        if self.queues and step >= self.config.queue_start_step:
            with torch.no_grad():
                queue_scores = [self.prototypes(q.projections) for q in self.queues]
        if self.queues:
            for queue, projections in zip(self.queues, z[0].chunk(n_large), strict=False):
                cast(ProjectionQueue, queue).enqueue(projections)  # a ModuleList yields Modules
        loss = self.criterion(list(scores[:n_large]), list(scores[n_large:]), queue_scores)
        return {"loss": loss}

    def after_backward(self, step: int) -> None:
        self.prototypes.cancel_gradients(step)


def run_pretrain(ctx: RunContext) -> dict:
    """Train the backbone with SwAV and evaluate the resulting (initial) embedding."""
    out = ctx.stage_dir(layout.PRETRAIN)
    fingerprint = ctx.fingerprint("pretrain")
    if stage_current(out, fingerprint):
        return stage_metrics(out)
    model = ctx.new_model()
    images = UnlabeledUnion(ctx.data.labeled, ctx.data.unlabeled)
    stage = SwAVStage(model, images, ctx.config.pretrain, ctx.config.data, ctx.config.seed)
    result = fit(stage, ctx.config.pretrain, out, ctx.device, ctx.evaluator(model), fingerprint,
                 ctx.precision, ctx.config.train.compile, ctx.tracking)
    metrics = {**result.final_metrics, "train_seconds": round(result.seconds, 1)}
    return finish_stage(ctx, out, model, metrics, fingerprint)
