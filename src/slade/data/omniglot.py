"""Omniglot character images, read straight from the original zip archives or an extracted folder.

Layout: ``[images_background_smallN/]<Alphabet>/characterNN/<id>_<drawer>.png``; each
``<Alphabet>/characterNN`` is one class. Zip members are named ``zip:<archive>!<member>`` so that
they are decoded without extracting the archive.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from slade.data.records import ImageRecord, ImageSet
from slade.errors import DataError

_CHARACTER = re.compile(r"character\d+")

# (class name, file name) -> image source; the key is what identifies an image across archives.
_Entries = dict[tuple[str, str], str]


def _key(parts: Sequence[str]) -> tuple[str, str] | None:
    """``("<Alphabet>/characterNN", "<file>.png")`` for an Omniglot image path, else None."""
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return None
    # Three parts below the alphabet folder's parent, plus an optional top folder.
    if len(parts) not in (3, 4) or not parts[-1].lower().endswith(".png"):
        return None
    alphabet, character, file = parts[-3:]
    if not _CHARACTER.fullmatch(character):
        return None
    return f"{alphabet}/{character}", file


def _scan_zip(path: Path) -> _Entries:
    archive = path.resolve()
    try:
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a zip archive") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    entries: _Entries = {}
    for info in infos:
        key = None if info.is_dir() else _key(info.filename.split("/"))
        if key is not None:
            entries.setdefault(key, f"zip:{archive}!{info.filename}")
    return entries


def _scan_folder(path: Path) -> _Entries:
    folder = path.resolve()
    entries: _Entries = {}
    for file in sorted(folder.rglob("*")):
        key = _key(file.relative_to(folder).parts)
        if key is not None and file.is_file():
            entries.setdefault(key, str(file))
    return entries


def _scan(path: Path) -> _Entries:
    if not path.exists():
        raise DataError(f"{path}: Omniglot archive or folder not found")
    entries = _scan_folder(path) if path.is_dir() else _scan_zip(path)
    if not entries:
        raise DataError(
            f"{path}: not Omniglot: no <Alphabet>/characterNN/<image>.png images inside"
        )
    return entries


def _image_set(entries: _Entries, domain: str, name: str) -> ImageSet:
    class_names = sorted({class_name for class_name, _ in entries})
    index = {class_name: i for i, class_name in enumerate(class_names)}
    records = [ImageRecord(entries[key], index[key[0]], domain) for key in sorted(entries)]
    return ImageSet(records, class_names, labeled=True, name=name)


def read_omniglot(path: str | Path, domain: str = "omniglot") -> ImageSet:
    """Read one Omniglot archive or extracted folder.

    Args:
        path: ``images_background_smallN.zip``, the ``images_background_smallN`` folder, or any
            folder holding ``<Alphabet>/characterNN/*.png``.
        domain: the domain recorded on every image.

    Returns:
        A labeled set; class names are ``"<Alphabet>/characterNN"``, labels index their sorted
        list. ``__MACOSX``, dotfiles and files other than PNG are skipped.

    Raises:
        DataError: naming ``path`` when it is missing, not a zip archive, or holds no Omniglot
            images.
    """
    return read_omniglot_archives([path], domain)


def read_omniglot_archives(paths: Iterable[str | Path], domain: str = "omniglot") -> ImageSet:
    """Read several Omniglot archives or folders as one set.

    An image present in several archives (same alphabet, character and file name, as Greek and
    Latin are in both ``images_background_small1.zip`` and ``images_background_small2.zip``) is
    counted once, from the first archive that holds it.

    Raises:
        DataError: as :func:`read_omniglot`, naming the archive at fault.
    """
    archives = [Path(p) for p in paths]
    if not archives:
        raise ValueError("read_omniglot_archives needs at least one archive")
    entries: _Entries = {}
    for archive in archives:
        for key, source in _scan(archive).items():
            entries.setdefault(key, source)
    return _image_set(entries, domain, "+".join(p.stem for p in archives))
