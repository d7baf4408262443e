"""The embedding network f(x) = normalise(linear(pool(backbone(x)))) and its factory."""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from slade.config import ModelConfig
from slade.errors import SladeError
from slade.models.convnet import CONVNETS
from slade.models.weights import create_pretrained, load_weights


class Pool(nn.Module):
    """Global pooling of a feature map: average, max, or their sum (``avgmax``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return x.mean((2, 3))
        if self.kind == "max":
            return x.amax((2, 3))
        return x.mean((2, 3)) + x.amax((2, 3))


class EmbeddingNet(nn.Module):
    """Backbone -> pooling -> linear to ``embedding_dim`` -> L2 normalisation.

    Follows timm's interface: ``forward_features`` gives the pooled backbone features (what SwAV's
    projection head reads), ``forward_head`` maps them to the normalised embedding.
    """

    def __init__(self, backbone: nn.Module, num_features: int, embedding_dim: int, pooling: str):
        super().__init__()
        self.backbone = backbone
        self.pool = Pool(pooling)
        self.num_features = num_features
        self.embedding_dim = embedding_dim
        self.head = nn.Linear(num_features, embedding_dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def create_backbone(config: ModelConfig, in_chans: int) -> tuple[nn.Module, int]:
    """A feature-map backbone by name: a slade CPU network or any timm model, with its pretrained
    weights (``model.pretrained``, from the hub) or a local file's (``model.weights``)."""
    net: nn.Module
    if config.backbone in CONVNETS:
        if config.pretrained:
            raise SladeError(f"model.pretrained: no pretrained weights exist for {config.backbone}")
        net = CONVNETS[config.backbone](in_chans, config.width)
    elif not timm.is_model(config.backbone):
        raise SladeError(
            f"model.backbone: unknown backbone {config.backbone!r} (a slade network: "
            f"{', '.join(CONVNETS)}, or a timm model name such as resnet50)"
        )
    else:
        timm_args: dict[str, Any] = {"num_classes": 0, "global_pool": "", "in_chans": in_chans}
        net = (create_pretrained(config.backbone, **timm_args) if config.pretrained
               else timm.create_model(config.backbone, **timm_args))
    if config.weights:
        load_weights(net, config.weights, config.backbone, in_chans)
    # An int attribute of every timm model and slade convnet, which nn.Module's stub cannot know.
    return net, int(net.num_features)  # type: ignore[arg-type]


def create_embedder(config: ModelConfig, in_chans: int) -> EmbeddingNet:
    """The embedding network described by ``config`` for ``in_chans``-channel images."""
    backbone, num_features = create_backbone(config, in_chans)
    return EmbeddingNet(backbone, num_features, config.embedding_dim, config.pooling)
