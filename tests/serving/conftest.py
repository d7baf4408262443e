"""Tiny models exported once per session (the ONNX exporter takes seconds), and test images."""

from __future__ import annotations

import pytest
from tiny_models import MODELS, export, make_checkpoint, write_images


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """``{name: (model.pt, model.onnx)}``, each exported with `slade export`."""
    folder = tmp_path_factory.mktemp("models")
    made = {}
    for name in MODELS:
        checkpoint = make_checkpoint(folder / f"{name}.pt", name)
        made[name] = (checkpoint, export(checkpoint, folder / f"{name}.onnx"))
    return made


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))
