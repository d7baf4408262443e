"""``slade data check``: validate a data root before a long run.

Reads the splits a config names, counts images and classes per split, compares them with the
published counts where they exist (the paper's settings, :data:`slade.data.paper.PUBLISHED_COUNTS`),
and decodes every image as a run would, listing those that are missing or unreadable.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from slade.config import DataConfig
from slade.data.build import build_splits
from slade.data.images import BadImage, Decoder
from slade.data.paper import PUBLISHED_COUNTS
from slade.data.paper.layout import MissingFiles
from slade.data.records import ImageSet
from slade.errors import DataError

# Problems listed in full up to this many; beyond it, the first ones and a count.
SHOWN = 20


@dataclass
class SplitCheck:
    """One split's counts, the published ones (``None``: nothing to compare) and unreadable images."""

    name: str
    images: int
    classes: int
    published_images: int | None = None
    published_classes: int | None = None
    unreadable: list[BadImage] = field(default_factory=list)

    @property
    def mismatches(self) -> list[str]:
        found = []
        if self.published_images is not None and self.images != self.published_images:
            found.append(f"{self.name}: {self.images} images, published {self.published_images}")
        if self.published_classes is not None and self.classes != self.published_classes:
            found.append(f"{self.name}: {self.classes} classes, published {self.published_classes}")
        return found


@dataclass
class DataCheck:
    """What ``slade data check`` found; ``ok`` is its verdict."""

    dataset: str
    splits: list[SplitCheck] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    max_bad_fraction: float = 0.0

    def too_many_unreadable(self, split: SplitCheck) -> bool:
        return len(split.unreadable) > self.max_bad_fraction * split.images

    @property
    def ok(self) -> bool:
        return not self.missing and not any(
            s.mismatches or self.too_many_unreadable(s) for s in self.splits
        )

    def lines(self) -> list[str]:
        """The report, one line each: counts per split, then every problem."""
        out = [f"{'split':<10} {'images':>8} {'classes':>8}   published (images / classes)"]
        for s in self.splits:
            published = " / ".join("-" if v is None else str(v)
                                   for v in (s.published_images, s.published_classes))
            out.append(f"{s.name:<10} {s.images:>8} {s.classes:>8}   {published}")
        problems = [m for s in self.splits for m in s.mismatches]
        problems += [f"missing: {m}" for m in self.missing]
        for s in self.splits:
            verdict = ("more than data.max_bad_fraction" if self.too_many_unreadable(s)
                       else "a run skips them, within data.max_bad_fraction")
            problems += [f"unreadable ({s.name}, {verdict}): {b.source}: {b.reason}"
                         for b in s.unreadable]
        shown = problems[:SHOWN] + ([f"... and {len(problems) - SHOWN} more"]
                                    if len(problems) > SHOWN else [])
        return out + shown + [f"{self.dataset}: {'ok' if self.ok else 'FAILED'}"]


def published_counts(data: DataConfig) -> dict[str, tuple[int | None, int | None]]:
    """``{split: (images, classes)}`` to compare with, empty where nothing is published."""
    if data.setting != "shift" or data.dataset not in PUBLISHED_COUNTS:
        return {}
    counts: dict[str, tuple[int | None, int | None]] = dict(PUBLISHED_COUNTS[data.dataset])
    if "unlabeled" in counts and not data.pool_labels:
        counts["unlabeled"] = (counts["unlabeled"][0], None)
    return counts


def _unreadable(image_set: ImageSet, decoder: Decoder, workers: int) -> list[BadImage]:
    def try_decode(source: str) -> BadImage | None:
        try:
            decoder.decode(source)
        except DataError as exc:
            return BadImage(source, str(exc).removeprefix(source + ": "))
        return None

    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        return [b for b in pool.map(try_decode, image_set.sources, chunksize=64) if b is not None]


def check_data(data: DataConfig, seed: int = 0, decode: bool = True, workers: int = 0) -> DataCheck:
    """Check the data a config names.

    Args:
        data: the config's ``data`` section.
        seed: the config's seed (the glyph data and the traditional split depend on it).
        decode: decode every image as a run would; without it only the lists are checked.
        workers: decoding threads; 0 means one per CPU core.

    Raises:
        DataError: from the readers, for a problem other than missing files (a malformed list, a
            missing class folder...), naming the file and line.
    """
    report = DataCheck(data.dataset, max_bad_fraction=data.max_bad_fraction)
    try:
        splits = build_splits(data, seed)
    except MissingFiles as exc:
        report.missing = exc.missing
        return report
    published = published_counts(data)
    decoder = Decoder(data.channels, data.resize or data.image_size, data.dark_background)
    if splits.evaluated_on == "validation":  # the labeled set is split: no published count applies
        published = {k: v for k, v in published.items() if k == "unlabeled"}
    parts = {"labeled": splits.labeled, "unlabeled": splits.unlabeled, splits.evaluated_on: splits.test}
    if splits.gallery is not None:
        parts["gallery"] = splits.gallery
    for name, image_set in parts.items():
        images, classes = published.get(name, (None, None))
        split = SplitCheck(name, len(image_set), len(image_set.class_counts()), images, classes)
        if decode:
            split.unreadable = _unreadable(image_set, decoder, workers or os.cpu_count() or 1)
        report.splits.append(split)
    return report
