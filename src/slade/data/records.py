"""Plain typed records that every stage passes around: an image, a set of images, a split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One image.

    Attributes:
        source: where the pixels come from, as understood by :func:`slade.data.images.open_image`:
            a file path, ``zip:<archive>!<member>``, ``tiles:<sheet.png>#<index>`` or
            ``glyph:<font>/<codepoint>/<variant>``.
        label: class index into the owning set's ``class_names``; ``None`` when unknown.
        domain: the source the image was collected from (``"omniglot"``, ``"omniglot-tiles"``...).
    """

    source: str
    label: int | None
    domain: str


@dataclass
class ImageSet:
    """An ordered collection of images from one or more domains.

    ``labeled`` says whether training may use the labels. An unlabeled pool may still carry labels
    (a benchmark's hidden ground truth); they are then used for diagnostics only, such as the
    purity of pseudo-label clusters.
    """

    records: list[ImageRecord]
    class_names: list[str] = field(default_factory=list)
    labeled: bool = True
    name: str = ""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def sources(self) -> list[str]:
        return [r.source for r in self.records]

    @property
    def domains(self) -> list[str]:
        return [r.domain for r in self.records]

    @property
    def has_labels(self) -> bool:
        return bool(self.records) and all(r.label is not None for r in self.records)

    def labels(self) -> np.ndarray:
        """Class indices as int64; -1 where a record has no label."""
        return np.array([-1 if r.label is None else r.label for r in self.records], dtype=np.int64)

    def class_name(self, record: ImageRecord) -> str:
        """The class name of a labeled record of this set."""
        if record.label is None:
            raise ValueError(f"{record.source}: the record has no label")
        return self.class_names[record.label]

    def class_counts(self) -> Counter:
        return Counter(r.label for r in self.records if r.label is not None)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> ImageSet:
        """The records at ``indices``, keeping class names (labels are not renumbered)."""
        return ImageSet(
            [self.records[int(i)] for i in indices],
            list(self.class_names),
            self.labeled,
            self.name if name is None else name,
        )

    def without_labels(self, name: str | None = None) -> ImageSet:
        """The same images marked unlabeled; labels stay for diagnostics only."""
        return ImageSet(list(self.records), list(self.class_names), False, name or self.name)


@dataclass
class DataSplits:
    """What a SLADE run learns from and is tested on.

    Attributes:
        labeled: the labeled training set ``D_l``.
        unlabeled: the unlabeled pool ``D_u`` (``labeled=False``), usually from another source.
        test: test images of classes disjoint from training. Without ``gallery`` every test
            image queries all the others; with it, ``test`` holds the queries.
        gallery: the gallery for query-vs-gallery evaluation (In-shop style), or ``None``.
        evaluated_on: ``test``, or ``validation`` when ``test`` holds validation classes taken
            from the labeled ones (``data.validation``).
    """

    labeled: ImageSet
    unlabeled: ImageSet
    test: ImageSet
    gallery: ImageSet | None = None
    evaluated_on: str = "test"

    def summary(self) -> dict[str, dict[str, int]]:
        parts = {"labeled": self.labeled, "unlabeled": self.unlabeled, "test": self.test}
        if self.gallery is not None:
            parts["gallery"] = self.gallery
        return {
            name: {"images": len(s), "classes": len(s.class_counts())} for name, s in parts.items()
        }
