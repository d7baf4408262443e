"""Ranking losses and miners from pytorch-metric-learning, by name.

``contrastive`` is the paper's Eq. 1 (PML's ``ContrastiveLoss`` on Euclidean distances of normalised
embeddings, margins ``pos_margin`` / ``neg_margin``); ``multi_similarity`` is the loss the paper
reports alongside it. Any other PML loss or miner is taken by its class name
(``TripletMarginLoss``, ``ProxyAnchorLoss``, ``BatchHardMiner``...).
"""

from __future__ import annotations

import inspect
from typing import Any

from pytorch_metric_learning import losses, miners
from torch import nn

from slade.errors import ConfigError

ALIASES = {
    "contrastive": "ContrastiveLoss",
    "multi_similarity": "MultiSimilarityLoss",
    "triplet": "TripletMarginLoss",
}
MINER_ALIASES = {
    "multi_similarity": "MultiSimilarityMiner",
    "pair_margin": "PairMarginMiner",
    "triplet_margin": "TripletMarginMiner",
}


def _lookup(module, name: str, aliases: dict[str, str], key: str, base: type) -> type:
    cls = getattr(module, aliases.get(name, name), None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        known = sorted(n for n, c in vars(module).items()
                       if isinstance(c, type) and issubclass(c, base) and not n.startswith("Base"))
        raise ConfigError(
            f"{key}: pytorch-metric-learning has no {name!r} (aliases: {', '.join(aliases)}; "
            f"classes: {', '.join(known)})"
        )
    return cls


def _construct(cls: type, args: dict[str, Any], context: dict[str, Any], key: str) -> Any:
    params = inspect.signature(cls).parameters
    # Proxy and classification losses need the class count and embedding size: supply them.
    kwargs = {k: v for k, v in context.items() if k in params and k not in args}
    try:
        return cls(**kwargs, **args)
    except TypeError as exc:
        raise ConfigError(f"{key}_args: {cls.__name__}: {exc}") from None


def make_loss(name: str, args: dict[str, Any], key: str, **context: Any) -> nn.Module:
    """A PML loss by alias or class name.

    Args:
        name: ``contrastive``, ``multi_similarity``, ``triplet`` or a PML loss class name.
        args: keyword arguments for the loss.
        key: the config key, for error messages (``teacher.loss``).
        context: values to pass where the loss asks for them (``num_classes``,
            ``embedding_size``).
    """
    return _construct(_lookup(losses, name, ALIASES, key, losses.BaseMetricLossFunction),
                      args, context, key)


def make_miner(name: str, args: dict[str, Any], key: str) -> nn.Module | None:
    """A PML miner by alias or class name; ``""`` means no miner."""
    if not name:
        return None
    return _construct(_lookup(miners, name, MINER_ALIASES, key, miners.BaseMiner), args, {}, key)
