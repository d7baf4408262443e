"""From an image source string to pixels: opening, colour-mode and polarity normalisation, decoding.

Sources are plain strings so that records, pseudo-label tables and reports can name images:

- a file path;
- ``zip:<archive path>!<member>``: a member of a zip archive, read without extracting it;
- ``tiles:<sheet.png>#<index>``: one 28x28 tile of an omniglot-tiles sheet;
- ``glyph:<font file>/<codepoint hex>/<variant>``: a character rendered from a font inside matplotlib.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from slade.data.records import ImageRecord, ImageSet
from slade.errors import DataError

# Bound Pillow's decompression-bomb guard: refuse absurd images instead of allocating them.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000

_zip_lock = threading.Lock()


@lru_cache(maxsize=16)
def _zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"{path}: archive not found") from None
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a zip archive") from None


def _read_bytes(source: str) -> bytes:
    if source.startswith("zip:"):
        archive, sep, member = source[4:].partition("!")
        if not sep:
            raise DataError(f"{source}: a zip source is zip:<archive>!<member>")
        with _zip_lock:  # ZipFile is not safe to read from several threads at once
            try:
                return _zip(archive).read(member)
            except KeyError:
                raise DataError(f"{source}: no such member in {archive}") from None
    with open(source, "rb") as f:
        return f.read()


def open_image(source: str) -> Image.Image:
    """Open the image named by ``source`` (see the module docstring for the forms).

    Raises:
        DataError: naming the source, when it is missing, empty or cannot be decoded.
    """
    if source.startswith("tiles:"):
        from slade.data.tiles import open_tile

        return open_tile(source)
    if source.startswith("glyph:"):
        from slade.data.glyphs import render_glyph

        return render_glyph(source)
    try:
        data = _read_bytes(source)
    except FileNotFoundError:
        raise DataError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{source}: is a directory, not an image") from None
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{source}: empty file")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise DataError(f"{source}: cannot decode image (not in any image format Pillow reads)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{source}: cannot decode image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{source}: image too large ({exc})") from None
    return image


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode (1, P, CMYK, I;16, RGBA, LA...) to ``L`` or ``RGB``.

    Transparent pixels are composited onto white, as a viewer would show them.
    """
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit, 32-bit and float greys: scale to 8 bits instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        full = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 255.0)
        image = Image.fromarray(np.clip(array * (255.0 / full), 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


@dataclass(frozen=True)
class Decoder:
    """Turns an opened image into the uint8 ``(H, W, C)`` array every stage works on.

    Attributes:
        channels: 1 (grey) or 3 (RGB).
        resize: the shorter side after resizing (aspect ratio kept).
        dark_background: invert grey images whose background is light, so that ink is bright.
    """

    channels: int = 1
    resize: int = 28
    dark_background: bool = False

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = to_mode(image, self.channels)
        w, h = image.size
        if w < 2 or h < 2:
            raise ValueError(f"image is {w}x{h} pixels, too small to use")
        scale = self.resize / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR)
        if self.dark_background and self.channels == 1 and _light_background(image):
            image = ImageOps.invert(image)
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array

    def decode(self, source: str) -> np.ndarray:
        image = open_image(source)
        try:
            return self(image)
        except (ValueError, OSError) as exc:
            raise DataError(f"{source}: {exc}") from None


def _light_background(image: Image.Image) -> bool:
    # The border is background in character and glyph images; its median says light or dark.
    a = np.asarray(image)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return float(np.median(border)) > 127


@dataclass
class BadImage:
    source: str
    reason: str


@dataclass
class DecodedSet:
    """Decoded pixels of an image set, with what could not be decoded.

    ``images`` is ``(n, H, W, C)`` uint8 when every image has the same size, else a list of arrays.
    ``kept`` indexes the records of the input set that were decoded.
    """

    images: np.ndarray | list[np.ndarray]
    kept: np.ndarray
    bad: list[BadImage] = field(default_factory=list)


def decode_all(
    records: Sequence[ImageRecord], decoder: Decoder, max_bad_fraction: float, what: str = "images"
) -> DecodedSet:
    """Decode every record, skipping unreadable ones up to ``max_bad_fraction`` of the set.

    Raises:
        DataError: when more than ``max_bad_fraction`` of the images cannot be decoded; the message
            gives the count and the first bad file.
    """
    arrays: list[np.ndarray] = []
    kept: list[int] = []
    bad: list[BadImage] = []
    for i, record in enumerate(records):
        try:
            arrays.append(decoder.decode(record.source))
            kept.append(i)
        except DataError as exc:
            bad.append(BadImage(record.source, str(exc).removeprefix(record.source + ": ")))
    if records and len(bad) > max_bad_fraction * len(records):
        raise DataError(
            f"{bad[0].source}: {bad[0].reason} — {len(bad)} of {len(records)} {what} cannot be "
            f"read, more than data.max_bad_fraction={max_bad_fraction}"
        )
    shapes = {a.shape for a in arrays}
    images: np.ndarray | list[np.ndarray] = np.stack(arrays) if len(shapes) == 1 else arrays
    if not arrays:
        images = np.zeros((0, decoder.resize, decoder.resize, decoder.channels), np.uint8)
    return DecodedSet(images, np.asarray(kept, dtype=np.int64), bad)


def drop_bad(image_set: ImageSet, decoded: DecodedSet) -> ImageSet:
    """The records of ``image_set`` that ``decoded`` could read."""
    if len(decoded.kept) == len(image_set):
        return image_set
    return image_set.subset(decoded.kept)
