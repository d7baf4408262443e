"""Omniglot readers on the real archives and on tiny archives and folders built here."""

import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slade.data.images import Decoder, decode_all
from slade.data.omniglot import read_omniglot, read_omniglot_archives
from slade.errors import DataError

# Resolved: sources name the resolved files, and ../shared may be a symlink.
OMNIGLOT = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot").resolve()
SMALL1 = OMNIGLOT / "images_background_small1.zip"
SMALL2 = OMNIGLOT / "images_background_small2.zip"


def png_bytes(value: int = 255) -> bytes:
    out = BytesIO()
    Image.new("L", (105, 105), value).save(out, "PNG")
    return out.getvalue()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


TINY = {
    "small/Alpha/character01/0001_01.png": png_bytes(),
    "small/Alpha/character01/0001_02.png": png_bytes(),
    "small/Alpha/character02/0002_01.png": png_bytes(),
    "small/Beta/character01/0003_01.png": png_bytes(),
    # Everything below is not an Omniglot image and must be skipped.
    "small/Beta/character01/notes.txt": b"not an image",
    "small/Beta/character01/.0003_02.png": png_bytes(),
    "__MACOSX/small/Beta/character01/._0003_01.png": b"resource fork",
    "small/Beta/thumbs/0003_03.png": png_bytes(),
    "small/readme.png": png_bytes(),
}


def test_small1_archive_read_in_place():
    images = read_omniglot(SMALL1)
    assert (len(images), len(images.class_names)) == (2720, 136)
    assert images.class_names == sorted(images.class_names)
    assert images.class_names[0] == "Balinese/character01"
    first = images.records[0]
    assert first.source == (
        f"zip:{SMALL1}!images_background_small1/Balinese/character01/0108_01.png"
    )
    assert (first.label, first.domain, images.labeled) == (0, "omniglot", True)
    assert set(images.class_counts().values()) == {20}


def test_both_archives_count_greek_and_latin_once():
    images = read_omniglot_archives([SMALL1, SMALL2], domain="chars")
    assert (len(images), len(images.class_names)) == (4840, 242)
    alphabets = {name.split("/")[0] for name in images.class_names}
    assert len(alphabets) == 8
    assert set(images.class_counts().values()) == {20}
    assert set(images.domains) == {"chars"}
    greek = [r.source for r in images.records if "/Greek/" in r.source]
    assert len(greek) == 24 * 20 and all("small1.zip!" in s for s in greek)
    labels = images.labels()
    assert [images.class_names[i] for i in labels] == [
        s.split("!")[1].split("/", 1)[1].rsplit("/", 1)[0] for s in images.sources
    ]


def test_tiny_zip_skips_what_is_not_an_omniglot_png(tmp_path):
    images = read_omniglot(make_zip(tmp_path / "tiny.zip", TINY))
    assert images.class_names == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    assert images.labels().tolist() == [0, 0, 1, 2]
    assert all(s.startswith(f"zip:{tmp_path / 'tiny.zip'}!small/") for s in images.sources)


@pytest.mark.parametrize("top", ["small", ""])
def test_extracted_folder_matches_the_zip(tmp_path, top):
    for name, data in TINY.items():
        file = tmp_path / "tree" / name.replace("small/", top + "/" if top else "", 1)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
    folder = tmp_path / "tree" / top if top else tmp_path / "tree"
    images = read_omniglot(folder)
    from_zip = read_omniglot(make_zip(tmp_path / "tiny.zip", TINY))
    assert images.class_names == from_zip.class_names
    assert images.labels().tolist() == from_zip.labels().tolist()
    assert all(Path(s).is_file() and Path(s).is_absolute() for s in images.sources)


def test_zip_that_is_not_omniglot(tmp_path):
    archive = make_zip(tmp_path / "photos.zip", {"photos/cat.png": png_bytes(), "a.txt": b"x"})
    with pytest.raises(DataError, match=r"photos\.zip: not Omniglot"):
        read_omniglot(archive)


def test_one_bad_archive_is_named_among_several(tmp_path):
    bad = make_zip(tmp_path / "bad.zip", {"notes/readme.txt": b"x"})
    with pytest.raises(DataError, match=r"bad\.zip"):
        read_omniglot_archives([make_zip(tmp_path / "tiny.zip", TINY), bad])


@pytest.mark.parametrize(
    ("content", "message"), [(b"", "not a zip archive"), (b"PK junk", "not a zip archive")]
)
def test_empty_or_corrupt_archive(tmp_path, content, message):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(content)
    with pytest.raises(DataError, match=rf"broken\.zip: {message}"):
        read_omniglot(archive)


def test_missing_archive(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.zip: Omniglot archive or folder not found"):
        read_omniglot(tmp_path / "nowhere.zip")


def test_unreadable_members_are_reported_when_decoding(tmp_path):
    members = dict(TINY)
    members["small/Alpha/character01/0001_02.png"] = b""
    members["small/Alpha/character02/0002_01.png"] = b"\x89PNG garbage"
    images = read_omniglot(make_zip(tmp_path / "tiny.zip", members))
    decoded = decode_all(images.records, Decoder(), max_bad_fraction=0.5)
    assert decoded.kept.tolist() == [0, 3]
    assert [b.reason for b in decoded.bad][0] == "empty file"
    assert decoded.bad[1].reason.startswith("cannot decode image")
    with pytest.raises(DataError, match="0001_02.png: empty file"):
        decode_all(images.records, Decoder(), max_bad_fraction=0.0)


def test_real_image_decodes_to_bright_ink_on_dark():
    source = read_omniglot(SMALL1).records[0].source
    pixels = Decoder(channels=1, resize=28, dark_background=True).decode(source)
    assert pixels.shape == (28, 28, 1) and pixels.dtype == np.uint8
    assert pixels.mean() < 64 and pixels.max() > 200
