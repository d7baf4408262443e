"""A torch dataset of decoded images: uint8 ``(C, H, W)`` tensors, held in memory or read on access.

Unreadable images (missing, empty, truncated, not an image, too small) never end a run while they
stay within ``data.max_bad_fraction`` of their set. A cached set drops them when it is decoded; a
lazy set meets them during training or embedding, lists them, and gives the image of another member
of the same class in their place, so batches keep their shape and their classes. Code that embeds a
lazy set leaves those rows out with :meth:`ImageDataset.unreadable`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from slade.data.images import BadImage, Decoder, decode_all, drop_bad
from slade.data.records import ImageSet
from slade.errors import DataError, TooManyBadImages


class ImageDataset(Dataset):
    """The images of an :class:`ImageSet`, decoded by ``decoder``.

    With ``cache`` every image is decoded once, up front: unreadable images are dropped from the set
    and listed in ``bad``. Without it images are decoded on access, for sets too large to hold in
    memory; an unreadable one is listed in ``bad`` (and in the run's report, see
    :meth:`report_to`) and replaced by the next readable image of its class. Past
    ``max_bad_fraction`` of the set, either way, a :class:`TooManyBadImages` error lists them.
    """

    def __init__(
        self, image_set: ImageSet, decoder: Decoder, cache: bool = True,
        max_bad_fraction: float = 0.0, split: str = "",
    ) -> None:
        self.decoder = decoder
        self.cached = cache
        self.max_bad_fraction = max_bad_fraction
        self.split = split or image_set.name or "images"
        self.bad: list[BadImage] = []
        self._pixels: np.ndarray | list[np.ndarray] | None = None
        self._bad_index: dict[int, BadImage] = {}
        self._report: Path | None = None
        if cache:
            decoded = decode_all(image_set.records, decoder, 1.0, self.split)
            self.bad = decoded.bad
            self._check_fraction(len(image_set))
            image_set = drop_bad(image_set, decoded)
            self._pixels = decoded.images
        self.image_set = image_set
        self.labels = image_set.labels()

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._pixels is not None:
            array = self._pixels[index]
        else:
            array = np.array(self._read(index))  # Pillow's arrays are read-only
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)

    def unreadable(self) -> np.ndarray:
        """Indices of the images met so far that could not be read (a lazy set's stand-ins)."""
        return np.array(sorted(self._bad_index), dtype=np.int64)

    def bad_reason(self, index: int) -> str:
        """Why image ``index``, met unreadable, could not be read."""
        return self._bad_index[index].reason

    def note_unreadable(self, found: Sequence[tuple[int, str]]) -> None:
        """Record images another process met unreadable (``(index, reason)``), as if met here;
        that process appended them to the report already."""
        for index, reason in found:
            if index not in self._bad_index:
                self._mark_bad(index, reason, report=False)

    def report_to(self, path: Path, known: Sequence[BadImage] = ()) -> None:
        """Append each unreadable image met from now on to the CSV report at ``path``.

        ``known``: images an earlier, interrupted run of this set found unreadable; they count
        towards ``max_bad_fraction`` and are not read again.
        """
        self._report = path
        where = {source: i for i, source in enumerate(self.image_set.sources)}
        for bad in known:
            if bad.source in where and where[bad.source] not in self._bad_index:
                self._bad_index[where[bad.source]] = bad
                self.bad.append(bad)

    def _read(self, index: int) -> np.ndarray:
        # The image itself, else the next readable member of its class (cyclically).
        members = np.flatnonzero(self.labels == self.labels[index])
        for member in np.roll(members, -int(np.searchsorted(members, index))):
            candidate = int(member)
            if candidate in self._bad_index:
                continue
            try:
                return self.decoder.decode(self.image_set.records[candidate].source)
            except DataError as exc:
                self._mark_bad(candidate, str(exc))
        source = self.image_set.records[index].source
        raise DataError(f"{source}: unreadable, and so is every other image of its class in {self.split}")

    def _mark_bad(self, index: int, message: str, report: bool = True) -> None:
        source = self.image_set.records[index].source
        bad = BadImage(source, message.removeprefix(source + ": "))
        self._bad_index[index] = bad
        self.bad.append(bad)
        if report and self._report is not None:
            # One short append per image: loader worker processes write to the same file.
            line = io.StringIO()
            writer = csv.writer(line)
            if not self._report.is_file():
                writer.writerow(BAD_IMAGES_HEADER)
            writer.writerow([self.split, bad.source, bad.reason])
            with open(self._report, "a") as f:
                f.write(line.getvalue())
        self._check_fraction(len(self.image_set))

    def _check_fraction(self, total: int) -> None:
        if not self.bad or len(self.bad) <= self.max_bad_fraction * total:
            return
        where = f"; all are listed in {self._report}" if self._report else ""
        first = self.bad[0]
        raise TooManyBadImages(
            f"{first.source}: {first.reason} — {len(self.bad)} of {total} {self.split} images cannot "
            f"be read, more than data.max_bad_fraction={self.max_bad_fraction}{where}",
            [(self.split, b) for b in self.bad],
        )


BAD_IMAGES_HEADER = ["split", "source", "reason"]


def start_bad_image_report(path: Path, parts: dict[str, ImageDataset], write: bool = True) -> None:
    """Write ``path`` (``RUN/bad_images.csv``) for a run that starts or resumes, and attach it.

    Cached sets contribute what they dropped when decoded. Rows that an earlier, interrupted run
    appended for lazy sets are kept, and those sets are told about them. ``write=False`` only
    attaches the sets (the ranks of a distributed run other than 0).
    """
    earlier = read_bad_image_report(path)
    rows: list[tuple[str, BadImage]] = []
    for split, dataset in parts.items():
        if dataset.cached:
            rows += [(split, bad) for bad in dataset.bad]
        else:
            known = [bad for s, bad in earlier if s == split]
            dataset.report_to(path, known)
            rows += [(split, bad) for bad in dataset.bad]
    if write:
        write_bad_image_report(path, rows)


def write_bad_image_report(path: Path, rows: list[tuple[str, BadImage]]) -> None:
    from slade.io import write_text

    if not rows:
        path.unlink(missing_ok=True)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(BAD_IMAGES_HEADER)
    seen = set()
    for split, bad in rows:
        if (split, bad.source) not in seen:
            seen.add((split, bad.source))
            writer.writerow([split, bad.source, bad.reason])
    write_text(path, buffer.getvalue())


def read_bad_image_report(path: Path) -> list[tuple[str, BadImage]]:
    """The rows of a report; a row cut short by a killed process is left out."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [(r[0], BadImage(r[1], r[2])) for r in rows if len(r) == 3 and r != BAD_IMAGES_HEADER]


def fits_in_memory(n_images: int, decoder: Decoder, limit_mb: int) -> bool:
    """Whether ``n_images`` decoded at ``decoder``'s size fit in ``limit_mb`` (square estimate)."""
    return n_images * decoder.resize**2 * decoder.channels <= limit_mb * 2**20


class UnlabeledUnion(Dataset):
    """Several image datasets as one, labels hidden (``-1``): the input of self-supervised training."""

    def __init__(self, *parts: ImageDataset) -> None:
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.labels = np.full(int(self.offsets[-1]), -1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> torch.Tensor:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]
