"""Benchmark protocols (which images are labeled, unlabeled, test) and label bookkeeping.

``omniglot-shift`` follows ``../shared/data/README.md``: labeled and test classes from the
Omniglot archives, the unlabeled pool from an omniglot-tiles sheet rendered by another pipeline.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from slade.data.omniglot import read_omniglot_archives
from slade.data.records import DataSplits, ImageSet
from slade.data.tiles import read_tile_sheet
from slade.errors import DataError

LABELED_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek", "Latin", "Japanese_(katakana)")
TEST_ALPHABETS = ("Korean", "Sanskrit", "Tagalog")
OMNIGLOT_ARCHIVES = (
    "omniglot/images_background_small1.zip",
    "omniglot/images_background_small2.zip",
)
# `disjoint`: 20 alphabets seen nowhere else; `overlap`: the 30 background alphabets, which
# include other renderings of the labeled and test alphabets.
POOL_SHEETS = {
    "disjoint": "omniglot-tiles/images_evaluation.png",
    "overlap": "omniglot-tiles/images_background.png",
}


def resolve_data_root(root: str | Path | None = None) -> Path:
    """The folder holding the shared data: ``root``, else ``$SLADE_DATA_ROOT``, else
    ``../shared/data`` relative to the current working directory.

    Raises:
        DataError: naming the folder when it does not exist, and how to point at another.
    """
    if root:
        path, origin = Path(root), "data.root"
    elif os.environ.get("SLADE_DATA_ROOT"):
        path, origin = Path(os.environ["SLADE_DATA_ROOT"]), "$SLADE_DATA_ROOT"
    else:
        path, origin = Path("..", "shared", "data"), "the default ../shared/data"
    if not path.is_dir():
        raise DataError(
            f"{path.absolute()}: data root not found (from {origin}); set data.root "
            "(--set data.root=FOLDER) or $SLADE_DATA_ROOT to the folder holding omniglot/ "
            "and omniglot-tiles/"
        )
    return path.resolve()


def omniglot_shift(
    root: str | Path | None = None, pool: Literal["disjoint", "overlap"] = "disjoint"
) -> DataSplits:
    """The ``omniglot-shift`` benchmark.

    Reads ``omniglot/images_background_small{1,2}.zip`` and one sheet of ``omniglot-tiles/``
    under the data root (see :func:`resolve_data_root`).

    Returns:
        labeled: Balinese, Early_Aramaic, Greek, Latin, Japanese_(katakana) (143 classes, 2,860
        images); test: Korean, Sanskrit, Tagalog (99 classes, 1,980 images); unlabeled:
        ``images_evaluation.png`` (``disjoint``, 13,180 tiles) or ``images_background.png``
        (``overlap``, 19,280 tiles). Labels are re-indexed 0..C-1 within each set.

    Raises:
        DataError: naming the missing or unreadable archive, sheet or alphabet.
    """
    if pool not in POOL_SHEETS:
        raise ValueError(f"pool must be one of {sorted(POOL_SHEETS)}, not {pool!r}")
    base = resolve_data_root(root)
    characters = read_omniglot_archives([base / archive for archive in OMNIGLOT_ARCHIVES])
    unlabeled = read_tile_sheet(base / POOL_SHEETS[pool])
    unlabeled.name = f"omniglot-shift/{pool}-pool"
    return DataSplits(
        labeled=_alphabets(characters, LABELED_ALPHABETS, "omniglot-shift/labeled", base),
        unlabeled=unlabeled,
        test=_alphabets(characters, TEST_ALPHABETS, "omniglot-shift/test", base),
    )


def _alphabets(characters: ImageSet, alphabets: tuple[str, ...], name: str, base: Path) -> ImageSet:
    alphabet_of = [c.split("/")[0] for c in characters.class_names]
    absent = sorted(set(alphabets) - set(alphabet_of))
    if absent:
        raise DataError(f"{base / 'omniglot'}: alphabet {absent[0]} not found in the archives")
    keep = [i for i, r in enumerate(characters.records) if alphabet_of[r.label] in alphabets]
    return relabel(characters.subset(keep, name))


def relabel(image_set: ImageSet) -> ImageSet:
    """The same records with labels re-indexed 0..C-1 in sorted class-name order.

    Classes without an image are dropped from ``class_names``; records without a label keep none.
    """
    used = sorted({r.label for r in image_set.records if r.label is not None})
    class_names = sorted({image_set.class_names[label] for label in used})
    index = {c: i for i, c in enumerate(class_names)}
    new = {label: index[image_set.class_names[label]] for label in used}
    records = [r if r.label is None else replace(r, label=new[r.label]) for r in image_set.records]
    return ImageSet(records, class_names, image_set.labeled, image_set.name)


def enforce_min_per_class(
    image_set: ImageSet, min_images: int = 2, policy: Literal["drop", "error"] = "drop"
) -> tuple[ImageSet, list[str]]:
    """Remove (or refuse) classes too small to form positive pairs.

    Returns:
        The set without classes of fewer than ``min_images`` images, labels re-indexed, and the
        sorted names of the classes dropped.

    Raises:
        DataError: with ``policy="error"``, naming the set, the first small class and its count.
    """
    if policy not in ("drop", "error"):
        raise ValueError(f"policy must be 'drop' or 'error', not {policy!r}")
    counts = image_set.class_counts()
    small_labels = {label for label, n in counts.items() if n < min_images}
    small = sorted((image_set.class_names[label], counts[label]) for label in small_labels)
    if not small:
        return relabel(image_set), []
    if policy == "error":
        class_name, n = small[0]
        more = f" (and {len(small) - 1} more classes)" if len(small) > 1 else ""
        raise DataError(
            f"{image_set.name or 'image set'}: class {class_name!r} has {n} image(s), fewer than "
            f"min_images_per_class={min_images}{more}"
        )
    keep = [i for i, r in enumerate(image_set.records) if r.label not in small_labels]
    return relabel(image_set.subset(keep)), [class_name for class_name, _ in small]


def traditional_split(
    image_set: ImageSet, labeled_fraction: float = 0.1, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """The traditional semi-supervised setting: part of one labeled set stays labeled, the rest
    becomes the unlabeled pool.

    Sampling is per class: each class keeps ``round(labeled_fraction * n)`` labeled images but at
    least 2 (or all it has, when fewer), so that it still forms positive pairs.

    Returns:
        ``(labeled, pool)``, records in their original order, sharing ``class_names``; the pool
        is ``labeled=False`` and keeps its labels for diagnostics. The same seed gives the same
        split.

    Raises:
        DataError: naming the set when some image has no label.
    """
    if not 0 < labeled_fraction <= 1:
        raise ValueError(f"labeled_fraction must be in (0, 1], not {labeled_fraction}")
    labels = image_set.labels()
    if (labels < 0).any():
        raise DataError(f"{image_set.name or 'image set'}: a traditional split needs every label")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        k = max(min(2, len(members)), round(labeled_fraction * len(members)))
        chosen.append(rng.permutation(members)[:k])
    is_labeled = np.zeros(len(labels), dtype=bool)
    if chosen:
        is_labeled[np.concatenate(chosen)] = True
    name = image_set.name or "set"
    labeled = image_set.subset(np.flatnonzero(is_labeled), f"{name}/labeled")
    pool = image_set.subset(np.flatnonzero(~is_labeled)).without_labels(f"{name}/pool")
    return labeled, pool
