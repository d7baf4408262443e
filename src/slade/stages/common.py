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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch

from slade import run_layout as layout
from slade.config import Config
from slade.data.build import PreparedData
from slade.data.datasets import ImageDataset
from slade.data.transforms import eval_transform
from slade.engine import distributed
from slade.engine.checkpoint import TRAINING_STATE, load_checkpoint
from slade.engine.precision import Precision, resolve_precision
from slade.errors import CheckpointError
from slade.fingerprint import config_fingerprint, fingerprint_differences
from slade.inference import Images, embed_dataset, load_embedding_net, save_embedder
from slade.io import read_json, remove_partial_writes, write_json
from slade.models.embedder import EmbeddingNet, create_embedder
from slade.tracking import Tracking

log = logging.getLogger("slade")


def new_model(config: Config) -> EmbeddingNet:
    """The network a run starts from (seeded by ``config.seed``): random, or ImageNet weights."""
    torch.manual_seed(config.seed)
    return create_embedder(config.model, config.data.channels)


def load_model(path: Path, config: Config) -> EmbeddingNet:
    """A stage's saved ``model.pt``, checked against the run's model settings."""
    model, _ = load_embedding_net(path, config.model)
    return model


@overload
def embed_images(config: Config, device: torch.device, model: EmbeddingNet, images: Images,
                 out: np.ndarray | None = ..., across_ranks: Literal[False] = ...) -> np.ndarray: ...


@overload
def embed_images(config: Config, device: torch.device, model: EmbeddingNet, images: Images,
                 out: np.ndarray | None, across_ranks: bool) -> np.ndarray | None: ...


def embed_images(config: Config, device: torch.device, model: EmbeddingNet, images: Images,
                 out: np.ndarray | None = None, across_ranks: bool = False) -> np.ndarray | None:
    """Embeddings of ``images`` at the run's image size, evaluation batch size and precision (see
    ``inference.embed_dataset`` for ``out`` and ``across_ranks``)."""
    transform = eval_transform(config.data.image_size, config.data.channels)
    return embed_dataset(model.to(device), images, transform, device, config.evaluation.batch_size,
                         out=out, across_ranks=across_ranks,
                         precision=resolve_precision(config.train.precision, device))


@dataclass
class RunContext:
    """The run a stage belongs to: its config, folder, decoded data, device and trackers."""

    config: Config
    run_dir: Path
    data: PreparedData
    device: torch.device
    tracking: Tracking = field(default_factory=Tracking)  # where the training logs also go

    def stage_dir(self, name: str) -> Path:
        """The folder of stage ``name`` (``run_layout.py``)."""
        return self.run_dir / name

    def fingerprint(self, section: str, **inputs: Any) -> dict[str, Any]:
        """What the outputs of the stage configured by ``section`` depend on (see the module doc)."""
        fingerprint = {
            section: config_fingerprint(getattr(self.config, section)),
            "data": config_fingerprint(self.config.data),
            "model": config_fingerprint(self.config.model),
            "train": config_fingerprint(self.config.train),  # the precision; compile changes nothing
            "seed": self.config.seed,
            "inputs": inputs,
        }
        if self.config.model.weights:  # the file's content, not only its name
            fingerprint["weights"] = file_digest(Path(self.config.model.weights))
        return fingerprint

    @property
    def precision(self) -> Precision:
        """``train.precision`` on the run's device."""
        return resolve_precision(self.config.train.precision, self.device)

    def new_model(self) -> EmbeddingNet:
        return new_model(self.config)

    def load_model(self, stage: str) -> EmbeddingNet:
        return load_model(self.stage_dir(stage) / layout.MODEL, self.config)

    def embed(self, model: EmbeddingNet, images: Images, out: np.ndarray | None = None) -> np.ndarray | None:
        """Embeddings of ``images``. Under ``torchrun`` every rank must call this: each embeds its
        share, and rank 0 gets them all (the other ranks get ``None``)."""
        return embed_images(self.config, self.device, model, images, out, across_ranks=True)

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
            assert query is not None  # rank 0 receives every row
            query, query_labels = readable(data.test, query)
            if data.gallery is None:
                return evaluate_embeddings(query, query_labels, ks=tuple(cfg.recall_at),
                                           chunk_size=cfg.chunk_size)
            assert gallery is not None
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
    return (stage_dir / layout.DONE).is_file()


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
    done = stage_dir / layout.DONE
    checkpoint = stage_dir / layout.CHECKPOINT
    if done.is_file():
        try:
            differing = fingerprint_differences(read_json(done)["fingerprint"], fingerprint)
        except (json.JSONDecodeError, KeyError, TypeError):
            differing = [layout.DONE]
        if not differing:
            return True
        _start_over(stage_dir, differing)
    elif checkpoint.is_file():
        try:
            saved = load_checkpoint(checkpoint, TRAINING_STATE).get("fingerprint", {})
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
    digests = {name: file_digest(stage_dir / name) for name in outputs}
    write_json(stage_dir / layout.DONE, {"fingerprint": fingerprint, "outputs": digests})


def stage_outputs(stage_dir: Path) -> dict[str, str] | None:
    """``{file name: SHA-256}`` of what the finished stage in ``stage_dir`` wrote (None: unfinished)."""
    return read_json(stage_dir / layout.DONE)["outputs"] if stage_done(stage_dir) else None


def output_digest(stage_dir: Path, name: str) -> str:
    """The SHA-256 of output ``name`` of the finished stage in ``stage_dir``, as it recorded it."""
    outputs = stage_outputs(stage_dir)
    if outputs is None:
        raise CheckpointError(f"{stage_dir}: the stage has not finished, so it has no {name}")
    return outputs[name]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finish_stage(ctx: RunContext, stage_dir: Path, model: EmbeddingNet, metrics: dict,
                 fingerprint: dict[str, Any], extra: dict[str, Callable[[Path], Any]] | None = None) -> dict:
    """Write the stage's model, its ``extra`` outputs (``{file name: write(path)}``) and metrics,
    then ``done.json``, which marks the stage as done and lists the model and the extras.

    Under ``torchrun`` rank 0 writes them (and has the metrics); the others wait and read them.
    """
    extra = extra or {}
    if distributed.is_main():
        save_embedder(stage_dir / layout.MODEL, model, ctx.config.model, ctx.config.data)
        for name, write in extra.items():
            write(stage_dir / name)
        write_json(stage_dir / layout.STAGE_METRICS, metrics)
        mark_done(stage_dir, fingerprint, [layout.MODEL, *extra])
    distributed.barrier()
    return metrics if distributed.is_main() else stage_metrics(stage_dir)


def stage_metrics(stage_dir: Path) -> dict:
    return read_json(stage_dir / layout.STAGE_METRICS)
