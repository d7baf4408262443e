"""omniglot-tiles sheets: tile counting on the real sheets, tiny sheets built here, bad input."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slade.data.images import Decoder, open_image
from slade.data.tiles import _load_sheet, open_tile, read_tile_sheet
from slade.errors import DataError

# Resolved: sources name the resolved files, and ../shared may be a symlink.
TILES = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot-tiles").resolve()


def make_sheet(path: Path, inked: int, rows: int, width: int = 560, mode: str = "RGBA") -> Path:
    """A sheet whose first ``inked`` tiles have red value ``index % 250 + 1`` (green and blue
    differ, to check the red channel is the one read); the rest stay black."""
    pixels = np.zeros((rows * 28, width, 4), np.uint8)
    pixels[..., 3] = 255
    for t in range(inked):
        r, c = divmod(t, 20)
        tile = pixels[r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28]
        tile[4:24, 4:24, 0] = t % 250 + 1
        tile[4:24, 4:24, 1] = 7
    Image.fromarray(pixels, "RGBA").convert(mode).save(path)
    return path


@pytest.mark.parametrize(
    ("name", "count"), [("images_background.png", 19_280), ("images_evaluation.png", 13_180)]
)
def test_real_sheet_tile_counts(name, count):
    pool = read_tile_sheet(TILES / name)
    assert len(pool) == count
    assert not pool.labeled and not pool.has_labels and pool.class_names == []
    assert set(pool.domains) == {"omniglot-tiles"}
    assert pool.sources[-1] == f"tiles:{TILES / name}#{count - 1}"


def test_real_tile_is_bright_ink_on_dark():
    source = read_tile_sheet(TILES / "images_evaluation.png").sources[123]
    tile = open_tile(source)
    assert (tile.mode, tile.size) == ("L", (28, 28))
    pixels = Decoder(channels=1, resize=28, dark_background=True).decode(source)
    assert pixels.shape == (28, 28, 1)
    assert pixels.mean() < 64 and pixels.max() > 200


def test_trailing_empty_tiles_on_the_last_row_are_not_counted(tmp_path):
    sheet = make_sheet(tmp_path / "sheet.png", inked=25, rows=2)
    pool = read_tile_sheet(sheet, domain="tiles-test")
    assert len(pool) == 25 and set(pool.domains) == {"tiles-test"}
    assert len(read_tile_sheet(make_sheet(tmp_path / "full.png", inked=40, rows=2))) == 40
    assert len(read_tile_sheet(make_sheet(tmp_path / "pad.png", inked=20, rows=2))) == 20


def test_tiles_are_sliced_from_the_red_channel(tmp_path):
    pool = read_tile_sheet(make_sheet(tmp_path / "sheet.png", inked=25, rows=2))
    for t in (0, 19, 20, 24):
        tile = np.asarray(open_image(pool.sources[t]))
        assert tile.shape == (28, 28)
        assert tile[10, 10] == t + 1 and tile[0, 0] == 0 and tile.sum() == 400 * (t + 1)


def test_grey_sheet_is_accepted(tmp_path):
    assert len(read_tile_sheet(make_sheet(tmp_path / "grey.png", inked=3, rows=1, mode="L"))) == 3


def test_sheet_is_decoded_once(tmp_path):
    pool = read_tile_sheet(make_sheet(tmp_path / "sheet.png", inked=25, rows=2))
    misses = _load_sheet.cache_info().misses
    for source in pool.sources:
        open_tile(source)
    assert _load_sheet.cache_info().misses == misses


def test_returned_tiles_do_not_alias_the_cache(tmp_path):
    source = read_tile_sheet(make_sheet(tmp_path / "sheet.png", inked=3, rows=1)).sources[1]
    open_tile(source).paste(255, (0, 0, 28, 28))
    assert np.asarray(open_tile(source))[0, 0] == 0


def test_count_keeps_the_first_tiles(tmp_path):
    sheet = make_sheet(tmp_path / "sheet.png", inked=25, rows=2)
    assert read_tile_sheet(sheet, count=5).sources == read_tile_sheet(sheet).sources[:5]
    with pytest.raises(DataError, match=r"sheet\.png: 26 tiles asked for, the sheet holds 25"):
        read_tile_sheet(sheet, count=26)


def test_index_out_of_range_names_the_source(tmp_path):
    sheet = make_sheet(tmp_path / "sheet.png", inked=25, rows=2)
    source = f"tiles:{sheet.resolve()}#25"
    with pytest.raises(DataError, match=rf"^{source}: tile index out of range"):
        open_tile(source)


@pytest.mark.parametrize("source", ["tiles:/x/sheet.png", "tiles:/x/sheet.png#-1", "sheet.png#1"])
def test_malformed_source(source):
    with pytest.raises(DataError, match="a tile source is tiles:<sheet.png>#<index>"):
        open_tile(source)


def test_not_a_sheet(tmp_path):
    narrow = make_sheet(tmp_path / "narrow.png", inked=1, rows=1, width=280)
    with pytest.raises(DataError, match=r"narrow\.png: 280x28 pixels is not a sheet"):
        read_tile_sheet(narrow)
    with pytest.raises(DataError, match=rf"^tiles:{narrow}#0: 280x28 pixels is not a sheet"):
        open_tile(f"tiles:{narrow}#0")
    text = tmp_path / "text.png"
    text.write_text("not a png")
    with pytest.raises(DataError, match=r"text\.png: cannot decode tile sheet"):
        read_tile_sheet(text)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        read_tile_sheet(tmp_path / "empty.png")
    with pytest.raises(DataError, match=r"missing\.png: tile sheet not found"):
        read_tile_sheet(tmp_path / "missing.png")
