"""Embedding images with a trained network: the saved embedder format and the Python API.

>>> embedder = slade.load_embedder("runs/demo/student/model.pt")
>>> vectors = embedder.embed(["a.png", "b.png"])   # (2, d) float32, L2-normalised
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Protocol, overload

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from slade.config import DataConfig, ModelConfig
from slade.data.datasets import ImageDataset
from slade.data.images import Decoder, open_image
from slade.data.transforms import Transform, eval_transform
from slade.engine import distributed
from slade.engine.checkpoint import load_checkpoint, save_checkpoint
from slade.engine.device import resolve_device
from slade.engine.precision import Precision, resolve_precision
from slade.errors import CheckpointError, ConfigError, DataError
from slade.models.embedder import EmbeddingNet, create_embedder

EMBEDDER = "slade.embedder"
# Where a network's first weights came from, not its architecture: a saved model is checked
# against a config without them.
INITIAL_WEIGHTS = ("pretrained", "weights")


def decoder_for(data: DataConfig) -> Decoder:
    return Decoder(data.channels, data.resize or data.image_size, data.dark_background)


def save_embedder(path: str | Path, model: EmbeddingNet, model_config: ModelConfig,
                  data: DataConfig) -> Path:
    """Save the weights with everything needed to embed new images: architecture and input format."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint(path, {
        "format": EMBEDDER,
        "model": asdict(model_config),
        "input": {
            "channels": data.channels,
            "image_size": data.image_size,
            "resize": data.resize or data.image_size,
            "dark_background": data.dark_background,
        },
        "state_dict": state,
    })


def load_embedding_net(path: str | Path, expected: ModelConfig | None = None) -> tuple[EmbeddingNet, dict]:
    """Build the network a saved embedder describes and load its weights.

    Raises:
        CheckpointError: corrupt or unsafe file, or weights that do not fit the declared (or the
            ``expected``) architecture.
    """
    state = load_checkpoint(path, EMBEDDER)
    try:
        model_config = ModelConfig(**{k: v for k, v in state["model"].items()})
        channels = int(state["input"]["channels"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: incomplete embedder checkpoint ({exc})") from None
    if expected is not None:
        differing = [k for k, v in asdict(expected).items() if k not in INITIAL_WEIGHTS
                     and asdict(model_config).get(k) != v]
        if differing:
            detail = ", ".join(f"{k}={getattr(model_config, k)!r} vs {getattr(expected, k)!r}"
                               for k in differing)
            raise CheckpointError(f"{path}: was trained with another architecture ({detail})")
    model = create_embedder(_without_pretrained(model_config), channels)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {model_config.backbone} ({first[:160]})") from None
    return model, state["input"]


def _without_pretrained(config: ModelConfig) -> ModelConfig:
    # The saved weights replace the initial ones: never go to the hub or the weights file again.
    return ModelConfig(**{**asdict(config), "pretrained": False, "weights": ""})


class _Views(Dataset):
    def __init__(self, images: Images, transform: Transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


class Images(Protocol):
    """What is embedded: a sized, indexable collection of uint8 ``(C, H, W)`` tensors."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> torch.Tensor: ...


@overload
def embed_dataset(
    model: EmbeddingNet, images: Images, transform: Transform, device: torch.device,
    batch_size: int = ..., num_workers: int = ..., out: np.ndarray | None = ...,
    *, across_ranks: Literal[False] = ..., precision: Precision | None = ...,
) -> np.ndarray: ...


@overload
def embed_dataset(
    model: EmbeddingNet, images: Images, transform: Transform, device: torch.device,
    batch_size: int = ..., num_workers: int = ..., out: np.ndarray | None = ...,
    *, across_ranks: bool, precision: Precision | None = ...,
) -> np.ndarray | None: ...


@torch.no_grad()
def embed_dataset(
    model: EmbeddingNet, images: Images, transform: Transform, device: torch.device,
    batch_size: int = 256, num_workers: int = 0, out: np.ndarray | None = None,
    *, across_ranks: bool = False, precision: Precision | None = None,
) -> np.ndarray | None:
    """Embed every image of ``images`` (uint8 tensors) into ``out`` (allocated when not given).

    ``out`` may be a ``np.memmap``, so that embeddings of a large pool stream to disk.
    ``precision`` (``train.precision``; None: ``auto``) sets the autocast dtype and the layout; the
    embeddings are float32 whatever it is.

    With ``across_ranks`` under ``torchrun``, every rank must call this: each embeds its
    contiguous share of the images, and rank 0 receives every row into ``out`` (one batch per
    rank at a time, so nothing is held twice) and returns it; the other ranks return ``None``.
    Unreadable images a lazily read set meets on any rank are then known to every rank.
    """
    precision = precision or resolve_precision("auto", device)
    if across_ranks and distributed.active():
        return _embed_across_ranks(model, images, transform, device, batch_size, num_workers, out,
                                   precision)
    if out is None:
        out = np.empty((len(images), model.embedding_dim), dtype=np.float32)
    position = 0
    for z in _embedded_batches(model, images, transform, device, batch_size, num_workers, precision):
        out[position : position + len(z)] = z.float().cpu().numpy()
        position += len(z)
    return out


def _embedded_batches(model, images, transform, device, batch_size, num_workers, precision):
    was_training = model.training
    model.eval()
    loader = DataLoader(_Views(images, transform), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    try:
        for x in loader:
            x = x.to(device, non_blocking=True)
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device):
                yield model(x)
    finally:
        model.train(was_training)


def _embed_across_ranks(model, images, transform, device, batch_size, num_workers, out, precision):
    world, me, n, d = distributed.world_size(), distributed.rank(), len(images), model.embedding_dim
    share = -(-n // world)

    def span(rank: int) -> tuple[int, int]:
        return min(n, rank * share), min(n, (rank + 1) * share)

    start, stop = span(me)
    if me == 0 and out is None:
        out = np.empty((n, d), dtype=np.float32)
    mine = _embedded_batches(model, Subset(images, range(start, stop)), transform, device,
                             batch_size, num_workers, precision)
    comm = distributed.comm_device()
    for step in range(-(-share // batch_size)):  # the same number of gathers on every rank
        piece = torch.zeros(batch_size, d, device=comm)
        z = next(mine, None)
        if z is not None:
            piece[: len(z)] = z.float()
        parts = distributed.all_gather(piece, "gathering embeddings")
        if me == 0:
            for rank, part in enumerate(parts):
                first, last = span(rank)
                a = first + step * batch_size
                b = min(last, a + batch_size)
                if b > a:
                    out[a:b] = part[: b - a].cpu().numpy()
    mine.close()  # puts the model back in its training mode
    if isinstance(images, ImageDataset):
        met = [(int(i), images.bad_reason(int(i))) for i in images.unreadable() if start <= i < stop]
        for found in distributed.all_gather_object(met, "sharing unreadable images"):
            images.note_unreadable(found)
    return out if me == 0 else None


class Embedder:
    """A trained embedding network with its input pipeline: images in, unit vectors out."""

    def __init__(self, model: EmbeddingNet, decoder: Decoder, image_size: int, device: torch.device):
        self.model = model.to(device).eval()
        self.decoder = decoder
        self.transform = eval_transform(image_size, decoder.channels)
        self.device = device

    @property
    def dim(self) -> int:
        return self.model.embedding_dim

    def embed(self, images: Sequence[str | Path | Image.Image], batch_size: int = 256) -> np.ndarray:
        """Embed image paths (or any slade image source) and PIL images: ``(n, d)`` float32."""
        return embed_dataset(self.model, _Decoded(list(images), self.decoder), self.transform,
                             self.device, batch_size)

    def embed_pixels(self, pixels: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Embed decoded uint8 ``(H, W, C)`` arrays (``self.decoder``'s output)."""
        tensors = [torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1) for a in pixels]
        return embed_dataset(self.model, tensors, self.transform, self.device, batch_size)


class _Decoded(Dataset):
    def __init__(self, images: list[Any], decoder: Decoder) -> None:
        self.images, self.decoder = images, decoder

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.images[i]
        if isinstance(item, Image.Image):
            array = self.decoder(item)
        elif isinstance(item, (str, Path)):
            array = self.decoder.decode(str(item))
        else:
            raise DataError(f"image {i}: expected a path or a PIL image, got {type(item).__name__}")
        return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)


def load_embedder(checkpoint: str | Path, device: str = "auto") -> Embedder:
    """Load a saved embedder (``model.pt`` of any stage) for embedding new images."""
    model, spec = load_embedding_net(checkpoint)
    try:
        decoder = Decoder(int(spec["channels"]), int(spec["resize"]), bool(spec["dark_background"]))
        image_size = int(spec["image_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint}: incomplete input description ({exc})") from None
    try:
        target = resolve_device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: {exc}") from None
    return Embedder(model, decoder, image_size, target)


__all__ = ["Embedder", "load_embedder", "save_embedder", "embed_dataset", "open_image"]
