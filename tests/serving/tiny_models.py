"""Tiny models shaped like trained ones, their exports, and images unlike the network input."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from slade.cli import app
from slade.config import DataConfig, ModelConfig
from slade.inference import save_embedder
from slade.models.embedder import create_embedder

MODELS = {
    # slade's CPU network on 28x28 grey characters (the demo's input), and a timm ResNet on RGB.
    "convnet4": (ModelConfig(width=8, embedding_dim=16), DataConfig()),
    "resnet10t": (ModelConfig(backbone="resnet10t", embedding_dim=32),
                  DataConfig(channels=3, image_size=32, dark_background=False)),
}


def make_checkpoint(path, name):
    torch.manual_seed(0)
    model_config, data = MODELS[name]
    model = create_embedder(model_config, data.channels)
    for module in model.modules():  # BatchNorm statistics as after training, not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return save_embedder(path, model, model_config, data)


def export(checkpoint, out, fmt="onnx"):
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(out), "--format", fmt])
    assert result.exit_code == 0, result.output
    return out


def write_images(folder):
    """64 image files unlike the network input: grey and RGB(A), light and dark backgrounds,
    smaller, larger and not square (so the resize, inversion and centre crop all take part)."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(64):
        h, w = rng.integers(16, 60, size=2)
        mode = ("L", "RGB", "RGBA")[i % 3]
        shape = (h, w) if mode == "L" else (h, w, len(mode))
        pixels = rng.integers(0, 80, size=shape) + (160 if i % 2 else 0)  # light or dark background
        ink = (slice(h // 3, 2 * h // 3), slice(w // 4, 3 * w // 4))
        pixels[ink] = 255 - pixels[ink]
        if mode == "RGBA":
            pixels[..., 3] = rng.integers(128, 256, size=(h, w))
        files.append(folder / f"i{i:02d}.png")
        Image.fromarray(pixels.astype(np.uint8)).save(files[-1])
    return files
