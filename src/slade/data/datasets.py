"""A torch dataset of decoded images: uint8 ``(C, H, W)`` tensors, held in memory or read on access."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from slade.data.images import BadImage, Decoder, decode_all, drop_bad
from slade.data.records import ImageSet


class ImageDataset(Dataset):
    """The images of an :class:`ImageSet`, decoded by ``decoder``.

    With ``cache`` every image is decoded once, up front: unreadable images are dropped from the set
    and listed in ``bad`` (up to ``max_bad_fraction``, else a ``DataError``). Without it images are
    decoded on access, for sets too large to hold in memory.
    """

    def __init__(
        self, image_set: ImageSet, decoder: Decoder, cache: bool = True,
        max_bad_fraction: float = 0.0,
    ) -> None:
        self.decoder = decoder
        self.bad: list[BadImage] = []
        self._pixels: np.ndarray | list[np.ndarray] | None = None
        if cache:
            decoded = decode_all(image_set.records, decoder, max_bad_fraction, image_set.name or "images")
            image_set = drop_bad(image_set, decoded)
            self._pixels, self.bad = decoded.images, decoded.bad
        self.image_set = image_set
        self.labels = image_set.labels()

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._pixels is not None:
            array = self._pixels[index]
        else:
            array = self.decoder.decode(self.image_set.records[index].source)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def fits_in_memory(n_images: int, decoder: Decoder, limit_mb: int) -> bool:
    """Whether ``n_images`` decoded at ``decoder``'s size fit in ``limit_mb`` (square estimate)."""
    return n_images * decoder.resize**2 * decoder.channels <= limit_mb * 2**20


class UnlabeledUnion(Dataset):
    """Several image datasets as one, labels hidden (``-1``): the input of self-supervised training."""

    def __init__(self, *parts: Dataset) -> None:
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.labels = np.full(int(self.offsets[-1]), -1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> torch.Tensor:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]
