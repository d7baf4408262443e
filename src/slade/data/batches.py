"""Batches for training: which images each step sees, and the loader that turns them into tensors.

Every batch is a pure function of ``(seed, batch number)``. A run resumed at step ``s`` therefore
sees exactly the batches an uninterrupted run would, whatever the number of loader workers, and a
distributed run gives each rank its own contiguous slice of the same global batch: each image's
augmentation is seeded by the batch's seed and the image's place in the global batch, so the
ranks' slices together are exactly the batch a single process would make.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from slade.data.datasets import ImageDataset, UnlabeledUnion
from slade.data.transforms import MultiCrop, Transform
from slade.engine import distributed
from slade.errors import DataError


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


@dataclass(frozen=True)
class Batch:
    """The indices of one step's images and the seed of their augmentations."""

    indices: np.ndarray
    seed: int


class MPerClassBatches:
    """Batches of ``batch_size // m`` classes with ``m`` images each, as PML's ``MPerClassSampler``.

    Classes are drawn without replacement within a batch; a class with fewer than ``m`` images is
    sampled with replacement, as PML does. Written here rather than taken from PML because PML's
    sampler draws from NumPy's global random state, which makes exact resume and per-rank
    sharding impossible.
    """

    def __init__(self, labels: np.ndarray, m: int, batch_size: int, seed: int, stream: int = 0):
        labels = np.asarray(labels)
        if batch_size % m:
            raise DataError(f"batch size {batch_size} is not a multiple of m_per_class={m}")
        classes, inverse = np.unique(labels, return_inverse=True)
        self.members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        self.classes_per_batch = batch_size // m
        if self.classes_per_batch > len(classes):
            raise DataError(
                f"a batch of {batch_size} with m_per_class={m} needs {self.classes_per_batch} "
                f"classes, but there are only {len(classes)}"
            )
        self.m, self.batch_size, self.seed, self.stream = m, batch_size, seed, stream

    def __call__(self, batch: int) -> Batch:
        rng = _rng(self.seed, self.stream, 0, batch)
        chosen = rng.choice(len(self.members), self.classes_per_batch, replace=False)
        parts = [
            rng.choice(self.members[c], self.m, replace=len(self.members[c]) < self.m) for c in chosen
        ]
        return Batch(np.concatenate(parts), int(rng.integers(2**31)))


class RandomBatches:
    """Uniform batches: epochs of a random permutation, cut into ``batch_size`` pieces."""

    def __init__(self, n: int, batch_size: int, seed: int, stream: int = 0):
        if n < batch_size:
            raise DataError(f"a batch of {batch_size} needs at least {batch_size} images, got {n}")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.per_epoch = n // batch_size

    def __call__(self, batch: int) -> Batch:
        epoch, position = divmod(batch, self.per_epoch)
        order = _rng(self.seed, self.stream, 1, epoch).permutation(self.n)
        indices = order[position * self.batch_size : (position + 1) * self.batch_size]
        return Batch(indices, int(_rng(self.seed, self.stream, 0, batch).integers(2**31)))


class _Stream(IterableDataset):
    """Batch number ``start``, ``start + 1``, ... of a sampler, as transformed tensors.

    With several loader workers each worker makes every ``num_workers``-th batch; the loader's
    in-order collection restores the sequence.
    """

    def __init__(self, sampler, images: ImageDataset | UnlabeledUnion, transform: Transform | MultiCrop,
                 start: int):
        self.sampler, self.images, self.transform, self.start = sampler, images, transform, start
        self.part = (distributed.rank(), distributed.world_size())  # loader workers are not ranks

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batch = self.start + worker
        while True:
            yield self._make(self.sampler(batch))
            batch += workers

    def _make(self, b: Batch) -> tuple:
        part = distributed.shard(len(b.indices), self.part)  # this rank's slice (all in one process)
        positions = range(len(b.indices))[part]
        chosen = b.indices[part]
        views = []
        for position, i in zip(positions, chosen, strict=True):
            # One seed per image and place in the global batch: torchvision's random transforms draw
            # from torch's global CPU generator. (b.seed < 2**31, so the seeds never collide.)
            torch.default_generator.manual_seed((b.seed << 20) + position)
            views.append(self.transform(self.images[int(i)]))
        labels = torch.as_tensor(self.images.labels[chosen])
        indices = torch.as_tensor(chosen)
        if isinstance(views[0], list):  # multi-crop: a list of crops per image
            return [torch.stack(v) for v in zip(*views, strict=False)], labels, indices
        return torch.stack(cast(list[torch.Tensor], views)), labels, indices  # a tensor per image


def batch_loader(
    sampler, images: ImageDataset | UnlabeledUnion, transform: Transform | MultiCrop, start: int = 0,
    num_workers: int = 0, pin_memory: bool | None = None,
) -> Iterator[tuple]:
    """An endless iterator of ``(inputs, labels, indices)`` from batch number ``start`` on.

    Loader workers pin their batches' memory when CUDA is present (``pin_memory=None``), so the
    copy to the GPU can overlap the step.
    """
    stream = _Stream(sampler, images, transform, start)
    if num_workers == 0:
        return iter(stream)
    loader = DataLoader(
        stream, batch_size=None, num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=True, prefetch_factor=4,
    )
    return iter(loader)
