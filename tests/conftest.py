"""Shared fixtures: tiny image trees written by the tests themselves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def write_class_tree(root, classes: int, per_class: int, size: int = 28, seed: int = 0):
    """``root/cNN/iNN.png``: each class a bright bar at its own angle, jittered per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    for c in range(classes):
        folder = root / f"c{c:02d}"
        folder.mkdir(parents=True)
        angle = np.pi * c / classes
        for i in range(per_class):
            a = angle + rng.normal(0, 0.05)
            dist = np.abs(xx * np.sin(a) - yy * np.cos(a))
            img = np.clip(255 * (1.5 - dist) + rng.normal(0, 10, (size, size)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"i{i:02d}.png")
    return root


@pytest.fixture
def class_tree(tmp_path):
    return write_class_tree(tmp_path / "tree", classes=8, per_class=6)
