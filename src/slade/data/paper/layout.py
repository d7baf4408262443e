"""What the readers of the official layouts share: line-numbered lists, listed images that must be on
disk, and the split of a labeled data set into train and test classes by class id."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from slade.data.folders import data_root
from slade.data.records import ImageRecord, ImageSet
from slade.errors import DataError


class MissingFiles(DataError):
    """Listed images absent from disk: the message names the first (``file:line``), ``missing``
    holds every one, for ``slade data check`` to list."""

    def __init__(self, missing: list[str], listed: int) -> None:
        self.missing = missing
        super().__init__(f"{missing[0]} ({len(missing)} of {listed} listed images are missing)")


@dataclass(frozen=True)
class Row:
    """One non-blank line of a list file: ``where`` is ``file:line``."""

    where: str
    fields: list[str]


def official_root(root: str | Path, marker: str, folder: str, layout: str) -> Path:
    """The data set's top folder: ``root`` when it holds ``marker``, else ``root/folder`` when that
    does (``root`` is then the folder the archive was extracted into).

    Raises:
        DataError: naming ``root`` and the layout expected when neither holds ``marker``.
    """
    base = data_root(root)
    for candidate in (base, base / folder):
        if (candidate / marker).exists():
            return candidate
    raise DataError(f"{base}: {marker} not found (expected {layout})")


def read_rows(path: Path, fields: int, form: str) -> list[Row]:
    """The non-blank lines of a list file, split on whitespace into at least ``fields`` fields, the
    last of which keeps the rest of the line.

    Args:
        path: the list file.
        fields: how many fields each line needs.
        form: what a line looks like (``"<image_id> <image_name>"``), for error messages.

    Raises:
        DataError: naming the file (and ``:line``) when it is missing, unreadable or a line has
            too few fields.
    """
    try:
        # surrogateescape: a stray byte in a description cannot stop the reader, and file names
        # map back to the same bytes on disk.
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    rows = []
    for number, line in enumerate(text.split("\n"), 1):  # numbered as editors number them
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(None, fields - 1)]
        if len(parts) < fields:
            raise DataError(f"{path}:{number}: expected {form}, got {line.strip()!r}")
        rows.append(Row(f"{path}:{number}", parts))
    return rows


def integer(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {what} {value!r} is not an integer") from None


def read_ids(path: Path, form: str) -> dict[str, tuple[str, str]]:
    """``{id: (value, where)}`` from a list of ``<id> <value>`` lines; a repeated id is refused."""
    table: dict[str, tuple[str, str]] = {}
    for row in read_rows(path, 2, form):
        key = row.fields[0]
        if key in table:
            raise DataError(f"{row.where}: {key} repeats {table[key][1]}")
        table[key] = (row.fields[1], row.where)
    return table


def read_image_labels(base: Path, images: dict, classes: dict) -> dict[str, tuple[str, str]]:
    """``image_class_labels.txt`` (CUB, NABirds): ``{image_id: (class_id, where)}``, every id known."""
    labels = read_ids(base / "image_class_labels.txt", "<image_id> <class_id>")
    for image_id, (class_id, where) in labels.items():
        if image_id not in images:
            raise DataError(f"{where}: image id {image_id} is not in images.txt")
        if class_id not in classes:
            raise DataError(f"{where}: class id {class_id} is not in classes.txt")
    return labels


def listed_path(base: Path, name: str, where: str) -> Path:
    """``base / name`` for a relative path named by a list; a path leaving ``base`` is refused."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise DataError(f"{where}: path {name!r} must be relative to {base}, without '..'")
    return base / relative


def require_files(listed: Iterable[tuple[Path, str]]) -> None:
    """Check that every ``(path, where)`` exists.

    Raises:
        MissingFiles: naming the first missing file and the list line that names it.
    """
    listed = list(listed)
    missing = [f"{where}: {path}: file not found" for path, where in listed if not path.is_file()]
    if missing:
        raise MissingFiles(missing, len(listed))


def class_split(
    items: list[tuple[str, int]], class_names: dict[int, str], last_train_class: int, domain: str,
    name: str,
) -> tuple[ImageSet, ImageSet]:
    """Split ``(source, class id)`` pairs into train (ids up to ``last_train_class``) and test
    classes, labels indexing each side's classes in id order."""

    def side(keep: set[int], part: str) -> ImageSet:
        ids = sorted(keep)
        index = {class_id: i for i, class_id in enumerate(ids)}
        records = [ImageRecord(s, index[c], domain) for s, c in items if c in index]
        return ImageSet(records, [class_names[i] for i in ids], labeled=True, name=f"{name}/{part}")

    used = {c for _, c in items}
    return (side({c for c in used if c <= last_train_class}, "train"),
            side({c for c in used if c > last_train_class}, "test"))
