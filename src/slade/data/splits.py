"""Label bookkeeping and splits that any data set shares: relabelling, the per-class minimum, the
traditional semi-supervised split, the labeled classes a run trains on and a class-disjoint
validation split.

Settings are chosen on validation classes carved out of the labeled ones, never on the test classes
(Musgrave et al., *A Metric Learning Reality Check*, ECCV 2020): with ``data.validation`` set, the
run trains on the remaining labeled classes and evaluates on the validation classes; the test
classes are not read at all. The final numbers come from a run without ``data.validation``, which
trains on every labeled class with the chosen settings and reads the test classes once.

Classes are named by their full name (``Greek/character07``) or by a prefix ending at a ``/``
(``Greek`` names every class of that alphabet; for class-folder trees, a folder).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from slade.data.records import ImageSet
from slade.errors import ConfigError, DataError


def _named(class_names: list[str], pattern: str) -> list[int]:
    return [i for i, c in enumerate(class_names) if c == pattern or c.startswith(pattern.rstrip("/") + "/")]


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


def classes_named(image_set: ImageSet, patterns: list[str], key: str) -> set[int]:
    """The labels of ``image_set`` whose class names match ``patterns``.

    Raises:
        ConfigError: naming ``key`` and the first pattern that matches no class.
    """
    present = set(image_set.class_counts())
    chosen: set[int] = set()
    for pattern in patterns:
        found = present.intersection(_named(image_set.class_names, pattern))
        if not found:
            example = image_set.class_names[min(present)] if present else "none"
            raise ConfigError(f"{key}: {pattern!r} names no class of the {image_set.name or 'labeled'} "
                              f"set ({len(present)} classes, e.g. {example!r})")
        chosen |= found
    return chosen


def select_classes(image_set: ImageSet, patterns: list[str], key: str = "data.labeled_classes") -> ImageSet:
    """Only the classes ``patterns`` name, labels re-indexed 0..C-1."""
    chosen = classes_named(image_set, patterns, key)
    keep = [i for i, r in enumerate(image_set.records) if r.label in chosen]
    return relabel(image_set.subset(keep))


def validation_split(image_set: ImageSet, validation: float | list[str], seed: int,
                     key: str = "data.validation") -> tuple[ImageSet, ImageSet]:
    """Split ``image_set`` by class into training and validation classes.

    Args:
        validation: a fraction of the classes in (0, 1), drawn with ``seed``, or class names /
            prefixes.

    Returns:
        ``(train, validation)``, each with labels re-indexed; records keep their order.

    Raises:
        ConfigError: naming ``key`` and the counts, when either side has fewer than 2 classes or a
            class with a single image (it could be neither a query with a match nor a positive pair).
    """
    counts = image_set.class_counts()
    classes = np.array(sorted(counts))
    if isinstance(validation, float):
        if not 0 < validation < 1:
            raise ConfigError(f"{key}: a fraction of the labeled classes must be in (0, 1), not {validation}")
        rng = np.random.default_rng(seed)
        held = set(rng.permutation(classes)[: round(validation * len(classes))].tolist())
    else:
        held = classes_named(image_set, list(validation), key)
    sides = {"training": [c for c in classes.tolist() if c not in held], "validation": sorted(held)}
    for side, members in sides.items():
        if len(members) < 2:
            raise ConfigError(f"{key}: leaves {len(sides['training'])} training and "
                              f"{len(sides['validation'])} validation classes (of {len(classes)}); "
                              f"the {side} side needs at least 2")
        single = [c for c in members if counts[c] < 2]
        if single:
            raise ConfigError(f"{key}: {side} class {image_set.class_names[single[0]]!r} has "
                              f"{counts[single[0]]} image ({len(single)} such classes); every class "
                              "needs at least 2")
    labels = image_set.labels()
    name = image_set.name or "labeled"
    train = image_set.subset(np.flatnonzero(~np.isin(labels, sides["validation"])), name)
    val = image_set.subset(np.flatnonzero(np.isin(labels, sides["validation"])), f"{name}/validation")
    return relabel(train), relabel(val)
