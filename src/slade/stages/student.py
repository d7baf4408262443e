"""Stage 3: the student, trained on labeled and pseudo-labeled images (METHOD.md, Eq. 9).

``L = L_rank(D_l) + lambda1 * L_rank(D_u on confident pairs) + lambda2 * (L_CE + L_SD)``

Every step sees a labeled batch (m per class) and an unlabeled batch (m per pseudo label). The
first ``basis_warmup_steps`` steps train the feature basis alone, so that the two Gaussians separate
before they decide which pseudo pairs are confident.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from slade import run_layout as layout
from slade.basis.feature_basis import (
    FeatureBasis,
    pair_statistics,
    save_basis,
    similarity_distribution_loss,
)
from slade.config import DataConfig, StudentConfig
from slade.context.miner import ContextualPairMiner
from slade.context.neighbourhood import ContextualSimilarity, k_reciprocal_encoding
from slade.data.batches import MPerClassBatches, RandomBatches, batch_loader
from slade.data.datasets import ImageDataset
from slade.data.transforms import train_transform
from slade.engine import distributed
from slade.engine.stage import TrainingStage
from slade.engine.trainer import fit
from slade.errors import ConfigError, DataError
from slade.losses import make_loss, make_miner
from slade.mining import MININGS, MiningInputs, pair_counts, unlabeled_miner
from slade.models.embedder import EmbeddingNet
from slade.stages.common import (
    RunContext,
    finish_stage,
    output_digest,
    stage_current,
    stage_done,
    stage_metrics,
)
from slade.stages.pseudo_labels import PseudoLabels, read_statistics

log = logging.getLogger("slade")

# Warn when this many steps in a row mined no confident pair: the student would train on nothing.
STARVED_STEPS = 50


class StudentStage(TrainingStage):
    """SLADE's student objective, and its ablations (``student.mining``, ``mining.py``)."""

    def __init__(self, model: EmbeddingNet, labeled: ImageDataset, unlabeled: ImageDataset,
                 pseudo_labels: np.ndarray, config: StudentConfig, data: DataConfig, seed: int,
                 name: str = layout.STUDENT, context: ContextualSimilarity | None = None) -> None:
        self.name = name
        self.model, self.config = model, config
        self.labeled, self.unlabeled = labeled, unlabeled
        self.pseudo_labels = torch.as_tensor(pseudo_labels)
        num_classes = len(labeled.image_set.class_counts())
        self.loss = make_loss(config.loss, config.loss_args, "student.loss",
                              num_classes=num_classes, embedding_size=model.embedding_dim)
        self.miner = make_miner(config.miner, config.miner_args, "student.miner")
        size = config.basis_size or num_classes
        if size < num_classes:
            raise ConfigError(f"student.basis_size={size}: needs at least one basis vector per "
                              f"labeled class ({num_classes})")
        # Made whatever the mining, so that checkpoints and the random stream are alike.
        self.basis = FeatureBasis(model.embedding_dim, size, config.basis_scale, config.momentum,
                                  normalise=config.basis_normalise)
        self.mining = MININGS[config.mining]
        self.trains_basis = self.mining.trains_basis
        self.unlabeled_miner = unlabeled_miner(config.mining, config.mine_hard, MiningInputs(
            self.basis, self.miner, context, pseudo_labels, config.context_threshold,
            config.context_negative_below))
        self.labeled_batches = MPerClassBatches(labeled.labels, config.m_per_class,
                                                config.batch_size, seed, stream=2)
        self.unlabeled_batches = _pseudo_label_batches(pseudo_labels, config, seed)
        self.transform = train_transform(data.augmentation, data.image_size, data.channels)
        self.images_per_step = config.batch_size + config.unlabeled_batch_size
        self.warmup = config.basis_warmup_steps if self.trains_basis else 0
        self.last: dict[str, float] = {}
        self.starved = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "loss": self.loss, "basis": self.basis}

    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = [{"params": list(self.model.parameters()), "start_step": self.warmup}]
        if any(True for _ in self.loss.parameters()):
            groups.append({"params": list(self.loss.parameters()), "start_step": self.warmup})
        if self.trains_basis:
            groups.append({"params": list(self.basis.parameters()),
                           "lr_scale": self.config.basis_lr / self.config.lr})
        return groups

    def batches(self, start: int) -> Iterator[Any]:
        labeled = batch_loader(self.labeled_batches, self.labeled, self.transform, start,
                               self.config.num_workers)
        unlabeled = batch_loader(self.unlabeled_batches, self.unlabeled, self.transform, start,
                                 self.config.num_workers)
        return zip(labeled, unlabeled, strict=False)

    def loss_terms(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        (x_l, y_l, _), (x_u, _, idx_u) = batch
        y_u = self.pseudo_labels[idx_u.cpu()].to(y_l.device)
        idx_u = idx_u.to(y_l.device)
        warming_up = step < self.warmup
        with torch.set_grad_enabled(not warming_up):
            z = self.model(torch.cat([x_l, x_u]))
        # Under torchrun: the global batch, so that the losses, the miners, the basis statistics
        # (Eqs. 4-6) and the Gaussians' update are those of one process.
        z_l, z_u = distributed.gather(z[: len(x_l)]), distributed.gather(z[len(x_l):])
        y_l, y_u, idx_u = distributed.gather(y_l), distributed.gather(y_u), distributed.gather(idx_u)
        terms = self._basis_terms(z_l, y_l, z_u, y_u)
        if warming_up:
            terms["loss"] = terms["basis_ce"] + terms["basis_sd"]
            self.last = self.basis.gaussians()
            return terms
        terms["rank_labeled"] = self.loss(z_l, y_l, self.miner(z_l, y_l) if self.miner else None)
        # Eq. 7, its ablations, or ours; the contextual miner looks the batch up by pool index.
        pairs = (self.unlabeled_miner(z_u, idx_u if self.mining.by_index else y_u)
                 if self.unlabeled_miner else None)
        terms["rank_unlabeled"] = self.loss(z_u, y_u, pairs)
        total = terms["rank_labeled"] + self.config.lambda1 * terms["rank_unlabeled"]
        if self.mining.filters and pairs is not None:
            self._watch_starvation(pairs, step)
        if self.trains_basis:
            total = total + self.config.lambda2 * (terms["basis_ce"] + terms["basis_sd"])  # Eq. 9
        terms["loss"] = total
        self.last = pair_counts(pairs) | (self.basis.gaussians() if self.trains_basis else {})
        if isinstance(self.unlabeled_miner, ContextualPairMiner):
            self.last["context_kept"] = self.unlabeled_miner.kept_share()
        return terms

    def _basis_terms(self, z_l: torch.Tensor, y_l: torch.Tensor, z_u: torch.Tensor,
                     y_u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The feature basis's loss terms, and its Gaussians' update; none for the naive student."""
        if not self.trains_basis:
            return {}
        ce = self.basis.classification_loss(z_l, y_l)                            # Eq. 3
        stats = pair_statistics(self.basis.similarity(z_u), y_u)                 # Eqs. 4-5
        sd = similarity_distribution_loss(self.basis.blend(stats) if self.config.sd_gaussians == "momentum"
                                          else stats, self.config.sd_margin, self.config.sd_variance_weight)
        self.basis.update_gaussians(stats)                                       # Eq. 6
        return {"basis_ce": ce, "basis_sd": sd}

    def _watch_starvation(self, pairs: tuple, step: int) -> None:
        if len(pairs[0]) and len(pairs[2]):
            self.starved = 0
            return
        self.starved += 1
        if self.starved == STARVED_STEPS and isinstance(self.unlabeled_miner, ContextualPairMiner):
            sim = self.unlabeled_miner.last_similarity
            log.warning(
                "%s step %d: %d steps in a row without contextual positive and negative pairs "
                "(last: %d positive, %d negative; same-cluster contextual similarity mean %.3f, max "
                "%.3f, student.context_threshold %.3f): the unlabeled term is not training; lower "
                "student.context_threshold or raise student.context_k",
                self.name, step + 1, STARVED_STEPS, len(pairs[0]), len(pairs[2]),
                float(sim.mean()) if sim is not None and sim.numel() else float("nan"),
                float(sim.max()) if sim is not None and sim.numel() else float("nan"),
                self.config.context_threshold)
        elif self.starved == STARVED_STEPS:
            g = self.basis.gaussians()
            log.warning(
                "%s step %d: %d steps in a row without confident positive and negative pairs "
                "(last: %d positive, %d negative; mu+ %.3f, mu- %.3f): the unlabeled term is "
                "not training; check the basis warm-up and pseudo_labels.clusters",
                self.name, step + 1, STARVED_STEPS, len(pairs[0]), len(pairs[2]),
                g["mu_pos"], g["mu_neg"])

    def log_values(self) -> dict[str, float]:
        return dict(self.last)

    def extra_state(self) -> dict[str, int]:
        return {"starved": self.starved}

    def load_extra_state(self, state: dict[str, int]) -> None:
        self.starved = int(state.get("starved", 0))


def _pseudo_label_batches(pseudo_labels: np.ndarray, config: StudentConfig, seed: int):
    # A cluster of one image cannot give a positive pair: such clusters are not sampled, nor are
    # unreadable images (pseudo label -1).
    labeled = pseudo_labels >= 0
    sizes = np.bincount(pseudo_labels[labeled])
    usable = np.flatnonzero(labeled & (sizes[np.maximum(pseudo_labels, 0)] >= 2))
    if config.unlabeled_sampling == "random":  # an ablation: batches blind to the pseudo labels
        return _Subset(RandomBatches(len(usable), config.unlabeled_batch_size, seed, stream=3), usable)
    needed = config.unlabeled_batch_size // config.unlabeled_m_per_class
    if len(np.unique(pseudo_labels[usable])) < needed:
        raise DataError(
            f"only {len(np.unique(pseudo_labels[usable]))} pseudo-label clusters have 2 or more "
            f"images; an unlabeled batch needs {needed}: lower student.unlabeled_batch_size or "
            "raise pseudo_labels.clusters (pseudo_labels.method dbscan: change pseudo_labels.eps)"
        )
    return _Subset(MPerClassBatches(pseudo_labels[usable], config.unlabeled_m_per_class,
                                    config.unlabeled_batch_size, seed, stream=3), usable)


class _Subset:
    """Batches drawn over a subset of a dataset, mapped back to the dataset's indices."""

    def __init__(self, sampler, indices: np.ndarray) -> None:
        self.sampler, self.indices = sampler, indices

    def __call__(self, batch: int):
        b = self.sampler(batch)
        return type(b)(self.indices[b.indices], b.seed)


def run_student_round(ctx: RunContext, round_index: int) -> dict:
    """Train and evaluate the student of round ``round_index`` on its round's pseudo labels."""
    name, labels_dir = layout.student(round_index), ctx.stage_dir(layout.pseudo_labels(round_index))
    out = ctx.stage_dir(name)
    cfg = ctx.config.student
    init = layout.teacher_of(round_index) if cfg.init == "teacher" else layout.PRETRAIN
    if not stage_done(ctx.stage_dir(init)):
        raise ConfigError(f"student.init={cfg.init}: stage {init} has no model in {ctx.run_dir}")
    fingerprint = ctx.fingerprint("student", round=round_index,
                                  init=output_digest(ctx.stage_dir(init), layout.MODEL),
                                  pseudo_labels=output_digest(labels_dir, layout.TABLE))
    if stage_current(out, fingerprint):
        return stage_metrics(out)
    pseudo = PseudoLabels.read(labels_dir / layout.TABLE)
    model = ctx.load_model(init)
    torch.manual_seed(ctx.config.seed + round_index)  # the basis, whatever ran before in this process
    context = None
    if cfg.mining == "contextual":  # neighbourhoods of the teacher's embeddings of the pool
        pool = np.load(labels_dir / layout.EMBEDDINGS)
        context = k_reciprocal_encoding(pool, cfg.context_k, cfg.context_k2)
    stage = StudentStage(model, ctx.data.labeled, ctx.data.unlabeled, pseudo.labels, cfg,
                         ctx.config.data, ctx.config.seed + round_index, name, context)
    result = fit(stage, cfg, out, ctx.device, ctx.evaluator(model), fingerprint, ctx.precision,
                 ctx.config.train.compile, ctx.tracking)
    metrics = {**result.final_metrics, "train_seconds": round(result.seconds, 1), "init": init,
               "pseudo_labels": read_statistics(labels_dir)}
    return finish_stage(ctx, out, model, metrics, fingerprint,
                        extra={layout.BASIS: lambda path: save_basis(path, stage.basis)})
