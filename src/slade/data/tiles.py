"""omniglot-tiles sheets: 28x28 tiles packed 20 per row into one RGBA PNG, white ink on black.

Tile ``t`` sits at row ``t // 20``, column ``t % 20``; its pixels are the sheet's red channel. A
tile's source string is ``tiles:<sheet.png>#<index>``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from slade.data.records import ImageRecord, ImageSet
from slade.errors import DataError

TILE_SIZE = 28
TILES_PER_ROW = 20


# Two sheets exist; each decodes to at most ~15 MB of tiles, so keeping both is cheap and every
# tile afterwards is a slice instead of a 60 MB PNG decode.
@lru_cache(maxsize=2)
def _load_sheet(path: str) -> tuple[np.ndarray, int]:
    """All tiles of the sheet at ``path`` as read-only ``(rows * 20, 28, 28)`` uint8, and how many
    are in use.

    Raises:
        ValueError: saying why ``path`` is not a readable sheet (callers add the name).
    """
    try:
        if Path(path).stat().st_size == 0:
            raise ValueError("empty file")
        with Image.open(path) as image:
            if image.getbands()[0] not in ("R", "L"):
                raise ValueError(f"a {image.mode} image, not an RGBA tile sheet")
            red = np.asarray(image.getchannel(0))
    except FileNotFoundError:
        raise ValueError("tile sheet not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode tile sheet ({exc})") from None
    height, width = red.shape
    if width != TILE_SIZE * TILES_PER_ROW or height == 0 or height % TILE_SIZE:
        raise ValueError(
            f"{width}x{height} pixels is not a sheet of {TILE_SIZE}x{TILE_SIZE} tiles, "
            f"{TILES_PER_ROW} per row"
        )
    rows = height // TILE_SIZE
    tiles = (
        red.reshape(rows, TILE_SIZE, TILES_PER_ROW, TILE_SIZE)
        .swapaxes(1, 2)
        .reshape(rows * TILES_PER_ROW, TILE_SIZE, TILE_SIZE)
    )
    tiles.flags.writeable = False  # shared by every caller through the cache
    # The last row is padded with black tiles when the tile count is not a multiple of 20.
    inked = np.flatnonzero(tiles[-TILES_PER_ROW:].reshape(TILES_PER_ROW, -1).max(axis=1))
    last_row = int(inked[-1]) + 1 if inked.size else 0
    return tiles, (rows - 1) * TILES_PER_ROW + last_row


def read_tile_sheet(
    path: str | Path, domain: str = "omniglot-tiles", count: int | None = None
) -> ImageSet:
    """List the tiles of one sheet (decoding it once) as an unlabeled set.

    Args:
        path: the sheet, e.g. ``omniglot-tiles/images_evaluation.png``.
        domain: the domain recorded on every tile.
        count: keep only the first ``count`` tiles (the sheets are in random order); all if None.

    Raises:
        DataError: naming the sheet when it is missing, not a tile sheet, or holds fewer than
            ``count`` tiles.
    """
    sheet = str(Path(path).resolve())
    try:
        _, available = _load_sheet(sheet)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    if count is None:
        count = available
    elif not 0 <= count <= available:
        raise DataError(f"{path}: {count} tiles asked for, the sheet holds {available}")
    records = [ImageRecord(f"tiles:{sheet}#{i}", None, domain) for i in range(count)]
    return ImageSet(records, [], labeled=False, name=Path(path).stem)


def open_tile(source: str) -> Image.Image:
    """The tile named by ``tiles:<sheet.png>#<index>`` as a 28x28 ``L`` image.

    Raises:
        DataError: naming ``source`` when it is malformed, its sheet is unreadable or its index
            is out of range.
    """
    sheet, sep, index = source.removeprefix("tiles:").rpartition("#")
    if not source.startswith("tiles:") or not sep or not index.isdigit():
        raise DataError(f"{source}: a tile source is tiles:<sheet.png>#<index>")
    try:
        tiles, count = _load_sheet(sheet)
    except ValueError as exc:
        raise DataError(f"{source}: {exc}") from None
    if int(index) >= count:
        raise DataError(f"{source}: tile index out of range, the sheet holds {count} tiles")
    return Image.fromarray(tiles[int(index)].copy())
