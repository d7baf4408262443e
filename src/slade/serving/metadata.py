"""What an exported embedder carries besides its graph: the input it expects and where it came from.

Stored as string key/value pairs: an ONNX model's ``metadata_props``, a TorchScript file's
``slade.json`` extra file. Every ``slade.*`` key below is written; a reader needs all of them to
reproduce :mod:`slade.inference`'s input pipeline without torch:

1. decode (``slade.data.images.Decoder``): convert to ``channels`` (1: grey ``L``, 3: ``RGB``;
   transparency composited onto white), resize so the shorter side is ``resize`` (box filter when
   shrinking, bilinear when enlarging), and with ``dark_background`` invert a grey image whose
   border median is above 127;
2. centre-crop to ``image_size`` x ``image_size`` (zero padding where the image is smaller);
3. scale to [0, 1] (divide by 255), subtract ``mean`` and divide by ``std`` per channel;
4. the network's input is float32 ``(batch, channels, image_size, image_size)`` with any batch
   size; its output is ``(batch, embedding_dim)``, already L2-normalised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slade.errors import CheckpointError

FORMAT = "slade.exported-embedder"
# Bumped when the meaning of a key or of the preprocessing changes.
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


@dataclass(frozen=True)
class ServingSpec:
    """The input pipeline and output of an exported embedder."""

    backbone: str
    embedding_dim: int
    channels: int
    image_size: int
    resize: int
    dark_background: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # The ModelConfig of the checkpoint it was exported from, for the record.
    model: dict[str, Any]

    def to_metadata(self) -> dict[str, str]:
        return {
            "slade.format": FORMAT,
            "slade.format_version": str(FORMAT_VERSION),
            "slade.backbone": self.backbone,
            "slade.embedding_dim": str(self.embedding_dim),
            "slade.channels": str(self.channels),
            "slade.image_size": str(self.image_size),
            "slade.resize": str(self.resize),
            "slade.dark_background": json.dumps(self.dark_background),
            "slade.mean": json.dumps(list(self.mean)),
            "slade.std": json.dumps(list(self.std)),
            "slade.model": json.dumps(self.model, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, path: str | Path, props: dict[str, str]) -> ServingSpec:
        """Read the spec back, refusing a model without slade metadata or with a bad value.

        Raises:
            CheckpointError: naming ``path`` and the missing or invalid key.
        """
        if props.get("slade.format") != FORMAT:
            raise CheckpointError(f"{path}: not a slade export (no 'slade.format' metadata: a model from "
                                  "another tool?); make one with `slade export MODEL.pt`")

        def read(key: str, parse):
            if key not in props:
                raise CheckpointError(f"{path}: metadata key {key!r} is missing")
            try:
                return parse(props[key])
            except (ValueError, TypeError) as exc:
                raise CheckpointError(
                    f"{path}: metadata key {key!r} = {props[key]!r} is invalid ({exc})") from None

        version = read("slade.format_version", int)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: metadata key 'slade.format_version' is {version}; this slade "
                                  f"reads up to {FORMAT_VERSION}: upgrade slade")
        spec = cls(
            backbone=read("slade.backbone", str),
            embedding_dim=read("slade.embedding_dim", _positive),
            channels=read("slade.channels", _channels),
            image_size=read("slade.image_size", _positive),
            resize=read("slade.resize", _positive),
            dark_background=read("slade.dark_background", _boolean),
            mean=read("slade.mean", _floats),
            std=read("slade.std", _floats),
            model=read("slade.model", _object),
        )
        for key in ("mean", "std"):
            if len(getattr(spec, key)) != spec.channels:
                raise CheckpointError(f"{path}: metadata key 'slade.{key}' has {len(getattr(spec, key))} "
                                      f"values for {spec.channels} channels")
        if not all(s > 0 for s in spec.std):
            raise CheckpointError(f"{path}: metadata key 'slade.std' must be positive, got {list(spec.std)}")
        return spec


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _channels(text: str) -> int:
    if int(text) not in (1, 3):
        raise ValueError("must be 1 or 3")
    return int(text)


def _boolean(text: str) -> bool:
    value = json.loads(text)
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _floats(text: str) -> tuple[float, ...]:
    values = json.loads(text)
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError("must be a list of numbers")
    return tuple(float(v) for v in values)


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value
