"""Embedding images with an exported ONNX model on onnxruntime: PIL and numpy, no torch, no timm.

>>> embedder = load_onnx_embedder("model.onnx")
>>> vectors = embedder.embed(["a.png", "b.png"])   # (2, d) float32, L2-normalised

It reproduces :class:`slade.inference.Embedder`: the same decoder (``slade.data.images``), then
the centre crop and normalisation of ``slade.data.transforms.eval_transform`` in numpy, with the
values the export stored in the model's metadata (:mod:`slade.serving.metadata`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from slade.data.images import Decoder
from slade.errors import CheckpointError, ConfigError, DataError
from slade.serving.metadata import ServingSpec


def preprocess(pixels: Sequence[np.ndarray], spec: ServingSpec) -> np.ndarray:
    """Decoded uint8 ``(H, W, C)`` arrays -> the network's float32 ``(n, C, S, S)`` input.

    The same as torchvision's ``CenterCrop(S)`` (zero padding where smaller, the crop's corner at
    ``round((H - S) / 2)``), ``ToDtype(float32, scale=True)`` and ``Normalize(mean, std)``.
    """
    size = spec.image_size
    batch = np.empty((len(pixels), spec.channels, size, size), np.float32)
    for i, array in enumerate(pixels):
        batch[i] = _center_crop(np.asarray(array, np.uint8), size).transpose(2, 0, 1)
    batch *= np.float32(1 / 255)
    batch -= np.asarray(spec.mean, np.float32)[:, None, None]
    batch /= np.asarray(spec.std, np.float32)[:, None, None]
    return batch


def _center_crop(array: np.ndarray, size: int) -> np.ndarray:
    h, w = array.shape[:2]
    if h < size or w < size:
        top, left = max(size - h, 0) // 2, max(size - w, 0) // 2
        array = np.pad(array, ((top, max(size - h, 0) - top), (left, max(size - w, 0) - left), (0, 0)))
        h, w = array.shape[:2]
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return array[top:top + size, left:left + size]


class OnnxEmbedder:
    """An exported embedder on onnxruntime: images in, unit vectors out."""

    def __init__(self, path: Path, session: ort.InferenceSession, spec: ServingSpec) -> None:
        self.path, self.session, self.spec = path, session, spec
        self.decoder = Decoder(spec.channels, spec.resize, spec.dark_background)
        self.input_name = session.get_inputs()[0].name

    @property
    def dim(self) -> int:
        return self.spec.embedding_dim

    def embed(self, images: Sequence[str | Path | Image.Image], batch_size: int = 256) -> np.ndarray:
        """Embed image paths (or any slade image source) and PIL images: ``(n, d)`` float32."""
        pixels = []
        for i, item in enumerate(images):
            if isinstance(item, Image.Image):
                pixels.append(self.decoder(item))
            elif isinstance(item, (str, Path)):
                pixels.append(self.decoder.decode(str(item)))
            else:
                raise DataError(f"image {i}: expected a path or a PIL image, got {type(item).__name__}")
        return self.embed_pixels(pixels, batch_size)

    def embed_pixels(self, pixels: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Embed decoded uint8 ``(H, W, C)`` arrays (``self.decoder``'s output)."""
        out = np.empty((len(pixels), self.dim), np.float32)
        for start in range(0, len(pixels), batch_size):
            batch = preprocess(pixels[start:start + batch_size], self.spec)
            out[start:start + len(batch)] = self.session.run(None, {self.input_name: batch})[0]
        return out


def load_onnx_embedder(path: str | Path, device: str = "auto", threads: int | None = None) -> OnnxEmbedder:
    """Open a ``slade export`` ONNX file and check its input and output against its metadata.

    Args:
        device: ``auto`` (onnxruntime's CUDA provider where installed, else the CPU), ``cpu`` or
            ``cuda``.
        threads: onnxruntime's intra-op threads (default: its own choice, one per core).

    Raises:
        CheckpointError: missing, unreadable, not from ``slade export``, or shaped unlike its metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=_providers(device))
    except Exception as exc:  # onnxruntime's InvalidProtobuf, InvalidGraph, Fail... share no other base
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable ONNX model ({first[:160]})") from None
    spec = ServingSpec.from_metadata(path, session.get_modelmeta().custom_metadata_map)
    _check_shapes(path, session, spec)
    return OnnxEmbedder(path, session, spec)


def _providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu" or (device == "auto" and "CUDAExecutionProvider" not in available):
        return ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ConfigError("device: cuda asked for, but this onnxruntime has no CUDA provider "
                          "(install onnxruntime-gpu)")
    raise ConfigError(f"device: expected auto, cpu or cuda for an ONNX model, got {device!r}")


def _check_shapes(path: Path, session: ort.InferenceSession, spec: ServingSpec) -> None:
    """One float input ``(batch, C, S, S)`` and one output ``(batch, d)`` as the metadata says."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = ("batch", spec.channels, spec.image_size, spec.image_size)
    described = f"slade.channels={spec.channels}, slade.image_size={spec.image_size}"
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
        shapes = ", ".join(f"{i.name} {i.type} {_shape(i.shape)}" for i in inputs)
        raise CheckpointError(f"{path}: expected one float input {_shape(expected)}, found {shapes}")
    shape = inputs[0].shape
    if isinstance(shape[0], int):
        raise CheckpointError(f"{path}: input {inputs[0].name!r} has a fixed batch size of {shape[0]}; "
                              "export it with a dynamic batch axis (`slade export`)")
    if any(isinstance(got, int) and got != want for got, want in zip(shape[1:], expected[1:], strict=True)):
        raise CheckpointError(f"{path}: input {inputs[0].name!r} is {_shape(shape)} but the metadata "
                              f"({described}) says {_shape(expected)}")
    out_shape = outputs[0].shape if len(outputs) == 1 else []
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != spec.embedding_dim):
        raise CheckpointError(f"{path}: output {_shape(out_shape)} does not match the metadata "
                              f"(slade.embedding_dim={spec.embedding_dim})")


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"
