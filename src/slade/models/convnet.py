"""Small convolutional backbones for CPU work on 28x28 to 64x64 images."""

from __future__ import annotations

from torch import nn


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """A stack of 3x3 conv-BN-ReLU blocks; ``pools`` of them halve the resolution.

    ``forward`` returns the feature map ``(B, num_features, h, w)``, like a timm backbone with
    ``global_pool=""``.
    """

    def __init__(self, in_chans: int, widths: list[int], pools: list[bool]) -> None:
        super().__init__()
        blocks, cin = [], in_chans
        for cout, pool in zip(widths, pools, strict=False):
            blocks.append(_block(cin, cout, pool))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin

    def forward(self, x):
        return self.blocks(x)


def convnet4(in_chans: int, width: int = 64) -> ConvNet:
    """Four blocks, each pooling: 28x28 -> 1x1 (the classic few-shot Conv-4, wider at the end)."""
    return ConvNet(in_chans, [width, width, 2 * width, 2 * width], [True, True, True, True])


def convnet6(in_chans: int, width: int = 64) -> ConvNet:
    """Six blocks, four pooling: more depth at the same cost per pixel, for 28x28 to 64x64."""
    widths = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    return ConvNet(in_chans, widths, [False, True, False, True, True, True])


CONVNETS = {"convnet4": convnet4, "convnet6": convnet6}
