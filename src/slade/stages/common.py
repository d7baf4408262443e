"""What every stage shares: the run context, evaluation on the test classes, finished-stage files.

A stage is finished when its ``done.json`` exists: it is written last, after every output, and holds
the stage's *fingerprint* (its settings, the data and model settings, the seed, and the SHA-256 of
each file it read from an earlier stage) with the SHA-256 of the files it wrote. A finished stage
whose fingerprint still matches is reused; one that does not (the config changed under ``--force``,
or an earlier stage was redone) is deleted and run again, and so, through the digests, is every
stage after it. An unfinished stage resumes from its checkpoint when that was made with the same
fingerprint, and starts over otherwise.

Under ``torchrun`` rank 0 alone decides whether a stage is current, cleans its folder and writes its
outputs; the other ranks wait for it (``engine/distributed.py``) and then read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slade.config import Config
from slade.data.build import PreparedData
from slade.data.datasets import ImageDataset
from slade.data.transforms import eval_transform
from slade.engine import distributed
from slade.engine.checkpoint import load_checkpoint
from slade.engine.trainer import CHECKPOINT, TRAINING_STATE, config_fingerprint, fingerprint_differences
from slade.errors import CheckpointError
from slade.inference import embed_dataset, load_embedding_net, save_embedder
from slade.io import read_json, remove_partial_writes, write_json
from slade.models.embedder import EmbeddingNet, create_embedder

log = logging.getLogger("slade")

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
DONE_FILE = "done.json"


@dataclass
class RunContext:
    """The run a stage belongs to: its config, folder, decoded data and device."""

    config: Config
    run_dir: Path
    data: PreparedData
    device: torch.device

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def fingerprint(self, section: str, **inputs: Any) -> dict[str, Any]:
        """What the outputs of the stage configured by ``section`` depend on (see the module doc)."""
        return {
            section: config_fingerprint(getattr(self.config, section)),
            "data": config_fingerprint(self.config.data),
            "model": config_fingerprint(self.config.model),
            "seed": self.config.seed,
            "inputs": inputs,
        }

    def new_model(self) -> EmbeddingNet:
        torch.manual_seed(self.config.seed)
        return create_embedder(self.config.model, self.config.data.channels)

    def load_model(self, stage: str) -> EmbeddingNet:
        model, _ = load_embedding_net(self.stage_dir(stage) / MODEL_FILE, self.config.model)
        return model

    def embed(self, model: EmbeddingNet, images, out: np.ndarray | None = None) -> np.ndarray | None:
        """Embeddings of ``images``. Under ``torchrun`` every rank must call this: each embeds its
        share, and rank 0 gets them all (the other ranks get ``None``)."""
        transform = eval_transform(self.config.data.image_size, self.config.data.channels)
        return embed_dataset(model, images, transform, self.device,
                             self.config.evaluation.batch_size, out=out, across_ranks=True)

    def evaluator(self, model: EmbeddingNet) -> Callable[[], dict[str, float]]:
        """Retrieval metrics of ``model`` on the test classes (query vs rest, or vs gallery).

        Under ``torchrun`` every rank embeds its share; rank 0 scores (the others get ``{}``).
        """
        from slade.evaluation.retrieval import evaluate_embeddings

        def evaluate() -> dict[str, float]:
            data, cfg = self.data, self.config.evaluation
            query = self.embed(model, data.test)
            gallery = None if data.gallery is None else self.embed(model, data.gallery)
            if not distributed.is_main():
                return {}
            query, query_labels = readable(data.test, query)
            if data.gallery is None:
                return evaluate_embeddings(query, query_labels, ks=tuple(cfg.recall_at),
                                           chunk_size=cfg.chunk_size)
            gallery, gallery_labels = readable(data.gallery, gallery)
            return evaluate_embeddings(query, query_labels, gallery, gallery_labels,
                                       ks=tuple(cfg.recall_at), chunk_size=cfg.chunk_size)

        return evaluate


def readable(images: ImageDataset, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and labels of ``images`` without the unreadable images a lazy set met."""
    bad = images.unreadable()
    if not len(bad):
        return embeddings, images.labels
    keep = np.ones(len(images), dtype=bool)
    keep[bad] = False
    return embeddings[keep], images.labels[keep]


def stage_done(stage_dir: Path) -> bool:
    """Whether the stage in ``stage_dir`` finished (its ``done.json`` is written last)."""
    return (stage_dir / DONE_FILE).is_file()


def stage_current(stage_dir: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether the stage finished with ``fingerprint``; if not, clear what cannot be resumed.

    Outputs or a checkpoint made with another fingerprint are deleted (with a warning naming the
    settings that differ), so that the stage starts over; a checkpoint made with this fingerprint
    is kept for the stage to resume from. Temporary files of killed writes are removed. Under
    ``torchrun`` rank 0 does this and every rank gets its answer.
    """
    return distributed.broadcast_flag(_stage_current(stage_dir, fingerprint) if distributed.is_main()
                                      else False)


def _stage_current(stage_dir: Path, fingerprint: dict[str, Any]) -> bool:
    done = stage_dir / DONE_FILE
    if done.is_file():
        try:
            differing = fingerprint_differences(read_json(done)["fingerprint"], fingerprint)
        except (json.JSONDecodeError, KeyError, TypeError):
            differing = [DONE_FILE]
        if not differing:
            return True
        _start_over(stage_dir, differing)
    elif (stage_dir / CHECKPOINT).is_file():
        try:
            saved = load_checkpoint(stage_dir / CHECKPOINT, TRAINING_STATE).get("fingerprint", {})
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; delete it to start the stage over") from None
        differing = fingerprint_differences(saved, fingerprint)
        if differing:
            _start_over(stage_dir, differing)
    if stage_dir.is_dir():
        remove_partial_writes(stage_dir)
    return False


def _start_over(stage_dir: Path, differing: list[str]) -> None:
    log.warning("%s: made with other settings or inputs (%s): starting the stage over",
                stage_dir, ", ".join(differing[:8]))
    for path in stage_dir.iterdir():
        if path.is_file():
            path.unlink()


def mark_done(stage_dir: Path, fingerprint: dict[str, Any], outputs: Iterable[str]) -> None:
    """Write ``done.json``: the stage's fingerprint and the digests of its ``outputs``."""
    write_json(stage_dir / DONE_FILE, {"fingerprint": fingerprint,
                                        "outputs": {name: file_digest(stage_dir / name) for name in outputs}})


def output_digest(stage_dir: Path, name: str) -> str:
    """The SHA-256 of output ``name`` of the finished stage in ``stage_dir``, as it recorded it."""
    if not stage_done(stage_dir):
        raise CheckpointError(f"{stage_dir}: the stage has not finished, so it has no {name}")
    return read_json(stage_dir / DONE_FILE)["outputs"][name]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finish_stage(ctx: RunContext, stage_dir: Path, model: EmbeddingNet, metrics: dict,
                 fingerprint: dict[str, Any]) -> dict:
    """Write the stage's model and metrics, then ``done.json``, which marks the stage as done.

    Under ``torchrun`` rank 0 writes them (and has the metrics); the others wait and read them.
    """
    if distributed.is_main():
        save_embedder(stage_dir / MODEL_FILE, model, ctx.config.model, ctx.config.data)
        write_json(stage_dir / METRICS_FILE, metrics)
        mark_done(stage_dir, fingerprint, [MODEL_FILE])
    distributed.barrier()
    return metrics if distributed.is_main() else stage_metrics(stage_dir)


def stage_metrics(stage_dir: Path) -> dict:
    return read_json(stage_dir / METRICS_FILE)
