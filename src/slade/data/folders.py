"""Image sets of your own: a class-per-folder tree, or a CSV list of ``path,label`` rows."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from slade.data.records import ImageRecord, ImageSet
from slade.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _is_image(name: str) -> bool:
    return not _hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def data_root(root: str | Path) -> Path:
    """``root`` resolved, or a :class:`DataError` when it is missing or not a folder."""
    path = Path(root)
    if not path.exists():
        raise DataError(f"{path}: data root not found")
    if not path.is_dir():
        raise DataError(f"{path}: data root is not a folder")
    return path.resolve()


def images_under(folder: Path) -> list[Path]:
    """Every image file below ``folder``, sorted; hidden files and folders left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        found += [Path(dirpath, f) for f in filenames if _is_image(f)]
    return sorted(found)


def make_image_set(
    items: list[tuple[str, str | None]], labeled: bool, domain: str, name: str
) -> ImageSet:
    """An image set from ``(source, class name or None)`` pairs, labels in sorted-name order."""
    class_names = sorted({c for _, c in items if c is not None})
    index = {c: i for i, c in enumerate(class_names)}
    records = [ImageRecord(s, None if c is None else index[c], domain) for s, c in items]
    return ImageSet(records, class_names, labeled, name)


def read_class_folders(
    root: str | Path, labeled: bool = True, domain: str | None = None
) -> ImageSet:
    """Read ``root/<class>/<image>``; images may sit in subfolders of their class folder.

    Images are files with a jpg, jpeg, png, bmp, gif, webp, tif or tiff suffix (any case);
    dotfiles and ``__MACOSX`` are skipped. Images directly in ``root`` belong to no class: an
    unlabeled set keeps them without a label, a labeled set refuses them.

    Args:
        root: the tree's top folder.
        labeled: whether training may use the labels; the class folders still give labels to an
            unlabeled set, for diagnostics only.
        domain: the domain recorded on every image; the name of ``root`` if None.

    Raises:
        DataError: naming the folder or file when ``root`` is missing, holds no images, or a
            labeled tree has an image outside any class folder.
    """
    base = data_root(root)
    items: list[tuple[str, str | None]] = []
    for entry in sorted(base.iterdir()):
        if _hidden(entry.name):
            continue
        if entry.is_dir():
            items += [(str(f), entry.name) for f in images_under(entry)]
        elif _is_image(entry.name):
            if labeled:
                raise DataError(f"{entry}: image outside any class folder of a labeled set")
            items.append((str(entry), None))
    if not items:
        raise DataError(f"{base}: no images found (expected <class>/<image> files)")
    return make_image_set(items, labeled, domain or base.name, base.name)


def _inside(base: Path, value: str, where: str) -> Path:
    """``value`` resolved against ``base``; refuses anything (``..``, symlinks) leading outside."""
    try:
        path = (base / value).resolve()  # an absolute value replaces base
    except ValueError:  # an embedded NUL byte
        raise DataError(f"{where}: path {value!r} is not a valid file name") from None
    if not path.is_relative_to(base):
        raise DataError(f"{where}: path {value!r} escapes the data root {base}")
    return path


def read_csv_list(
    path: str | Path,
    labeled: bool = True,
    domain: str | None = None,
    root: str | Path | None = None,
) -> ImageSet:
    """Read a UTF-8 CSV list with a header naming the columns ``path`` and ``label``.

    Rows keep their order; blank rows are skipped. Labels are class names, indexed in sorted
    order. An unlabeled list may omit ``label`` (or leave cells empty); labels it gives are kept
    for diagnostics.

    Args:
        path: the CSV file.
        labeled: whether training may use the labels; a labeled list needs one on every row.
        domain: the domain recorded on every image; the data root's name if None.
        root: the data root that relative image paths resolve against; the CSV's folder if None.
            No image may lie outside it.

    Raises:
        DataError: naming the CSV (and ``:line`` for a row) when it is missing, empty or not
            UTF-8, lacks a column, has a row with an empty path or label, or lists a path that
            escapes the data root or does not exist.
    """
    csv_path = Path(path)
    base = data_root(root) if root is not None else csv_path.resolve().parent
    items: list[tuple[str, str | None]] = []
    missing: list[str] = []
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [column.strip() for column in next(reader, [])]
            if not header:
                raise DataError(f"{csv_path}: empty file, expected a header naming path,label")
            for column in ("path", "label") if labeled else ("path",):
                if column not in header:
                    raise DataError(
                        f"{csv_path}:1: missing column {column!r} (header: {','.join(header)})"
                    )
            path_at = header.index("path")
            label_at = header.index("label") if "label" in header else None
            for row in reader:
                where = f"{csv_path}:{reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue
                value = row[path_at].strip() if path_at < len(row) else ""
                label = row[label_at].strip() if label_at is not None and label_at < len(row) else ""
                if not value:
                    raise DataError(f"{where}: empty path")
                if labeled and not label:
                    raise DataError(f"{where}: empty label for {value}")
                file = _inside(base, value, where)
                if not file.is_file():
                    missing.append(f"{where}: {value}: file not found")
                items.append((str(file), label or None))
    except FileNotFoundError:
        raise DataError(f"{csv_path}: CSV list not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{csv_path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{csv_path}:{reader.line_num}: {exc}") from None
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read ({exc.strerror or exc})") from None
    if missing:
        raise DataError(f"{missing[0]} ({len(missing)} of {len(items)} listed files are missing)")
    if not items:
        raise DataError(f"{csv_path}: lists no images")
    return make_image_set(items, labeled, domain or base.name, csv_path.stem)
