"""What every stage shares: the run context, evaluation on the test classes, finished-stage files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slade.config import Config
from slade.data.build import PreparedData
from slade.data.transforms import eval_transform
from slade.inference import embed_dataset, load_embedding_net, save_embedder
from slade.io import read_json, write_json
from slade.models.embedder import EmbeddingNet, create_embedder

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"


@dataclass
class RunContext:
    """The run a stage belongs to: its config, folder, decoded data and device."""

    config: Config
    run_dir: Path
    data: PreparedData
    device: torch.device

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def new_model(self) -> EmbeddingNet:
        torch.manual_seed(self.config.seed)
        return create_embedder(self.config.model, self.config.data.channels)

    def load_model(self, stage: str) -> EmbeddingNet:
        model, _ = load_embedding_net(self.stage_dir(stage) / MODEL_FILE, self.config.model)
        return model

    def embed(self, model: EmbeddingNet, images, out: np.ndarray | None = None) -> np.ndarray:
        transform = eval_transform(self.config.data.image_size, self.config.data.channels)
        return embed_dataset(model, images, transform, self.device,
                             self.config.evaluation.batch_size, out=out)

    def evaluator(self, model: EmbeddingNet) -> Callable[[], dict[str, float]]:
        """Retrieval metrics of ``model`` on the test classes (query vs rest, or vs gallery)."""
        from slade.evaluation.retrieval import evaluate_embeddings

        def evaluate() -> dict[str, float]:
            data, cfg = self.data, self.config.evaluation
            query = self.embed(model, data.test)
            if data.gallery is None:
                return evaluate_embeddings(query, data.test.labels, ks=tuple(cfg.recall_at),
                                           chunk_size=cfg.chunk_size)
            gallery = self.embed(model, data.gallery)
            return evaluate_embeddings(query, data.test.labels, gallery, data.gallery.labels,
                                       ks=tuple(cfg.recall_at), chunk_size=cfg.chunk_size)

        return evaluate


def stage_done(stage_dir: Path) -> bool:
    """A stage is finished when its model and metrics exist (both are written atomically)."""
    return (stage_dir / MODEL_FILE).is_file() and (stage_dir / METRICS_FILE).is_file()


def finish_stage(ctx: RunContext, stage_dir: Path, model: EmbeddingNet, metrics: dict) -> dict:
    """Write the stage's model, then its metrics: the metrics file marks the stage as done."""
    save_embedder(stage_dir / MODEL_FILE, model, ctx.config.model, ctx.config.data)
    write_json(stage_dir / METRICS_FILE, metrics)
    return metrics


def stage_metrics(stage_dir: Path) -> dict:
    return read_json(stage_dir / METRICS_FILE)
