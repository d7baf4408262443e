"""Image transforms (torchvision v2) from decoded uint8 ``(C, H, W)`` tensors to network inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

# ImageNet statistics, so timm's pretrained backbones see what they were trained on; grey images use
# their channel mean.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[torch.Tensor], torch.Tensor]


def normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)


def _to_input(channels: int) -> list[v2.Transform]:
    mean, std = normalization(channels)
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def eval_transform(image_size: int, channels: int) -> Transform:
    """Centre crop to ``image_size`` (a no-op when the image already has that size), normalise."""
    return v2.Compose([v2.CenterCrop(image_size), *_to_input(channels)])


def _augmentations(kind: str, image_size: int, scale: tuple[float, float] | None) -> list[v2.Transform]:
    if kind == "strokes":
        # Characters: small pose and stroke-shape changes; no flips (mirrored letters are other
        # letters), no colour changes.
        ops: list[v2.Transform] = [
            v2.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.9, 1.1), shear=8)
        ]
        if scale is not None:
            ops.append(v2.RandomResizedCrop(image_size, scale=scale, ratio=(0.8, 1.25)))
        else:
            ops.append(v2.CenterCrop(image_size))
        return ops
    if kind == "photo":
        return [
            v2.RandomResizedCrop(image_size, scale=scale or (0.2, 1.0)),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.05)], p=0.5),
        ]
    if kind == "none":
        return [v2.CenterCrop(image_size)] if scale is None else [
            v2.RandomResizedCrop(image_size, scale=scale)
        ]
    raise ValueError(f"unknown augmentation {kind!r}")


def train_transform(kind: str, image_size: int, channels: int) -> Transform:
    """The augmentation used by the metric-learning stages."""
    return v2.Compose([*_augmentations(kind, image_size, None), *_to_input(channels)])


class MultiCrop:
    """SwAV's multi-crop: ``large_crops`` views at full size and ``small_crops`` small views.

    Returns a list of tensors, the large crops first.
    """

    def __init__(
        self,
        kind: str,
        channels: int,
        large_size: int,
        large_crops: int,
        large_scale: tuple[float, float],
        small_size: int,
        small_crops: int,
        small_scale: tuple[float, float],
    ) -> None:
        self.large = v2.Compose([*_augmentations(kind, large_size, large_scale), *_to_input(channels)])
        self.small = v2.Compose([*_augmentations(kind, small_size, small_scale), *_to_input(channels)])
        self.large_crops = large_crops
        self.small_crops = small_crops

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [self.large(image) for _ in range(self.large_crops)] + [
            self.small(image) for _ in range(self.small_crops)
        ]
