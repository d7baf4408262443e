"""Figures and thumbnails as PNG bytes and ``data:`` URIs, for self-contained HTML pages."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

#: Print quality for the PNG files; pages embed a lighter copy.
PRINT_DPI = 300
SCREEN_DPI = 110
THUMBNAIL = 48


def figure_png(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail_uri(pixels: np.ndarray, size: int = THUMBNAIL) -> str:
    """A decoded ``(H, W, C)`` uint8 image as a PNG ``data:`` URI, longer side at most ``size``."""
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return png_uri(buffer.getvalue())
