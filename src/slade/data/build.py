"""From the ``data`` section of a config to decoded, validated training and test sets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from slade.config import DataConfig
from slade.data.datasets import ImageDataset, fits_in_memory
from slade.data.images import BadImage, Decoder
from slade.data.records import DataSplits, ImageSet
from slade.data.splits import select_classes, traditional_split, validation_split
from slade.errors import ConfigError, DataError


def build_splits(data: DataConfig, seed: int) -> DataSplits:
    """The labeled, unlabeled and test sets the config names (records only, nothing decoded)."""
    if data.dataset == "glyphs":
        from slade.data.glyphs import glyph_splits

        splits = glyph_splits(
            train_classes=data.glyph_train_classes,
            test_classes=data.glyph_test_classes,
            images_per_class=data.glyph_images_per_class,
            pool_size=data.glyph_pool_size,
            seed=seed,
        )
    elif data.dataset == "omniglot-shift":
        from slade.data.omniglot_shift import omniglot_shift

        splits = omniglot_shift(data.root or None, data.pool)
    elif data.dataset in ("cub-nabirds", "cars-compcars", "inshop-fashion200k"):
        from slade.data.paper import paper_splits

        splits = paper_splits(data)
    else:
        splits = _folder_splits(data)
    if data.labeled_classes:
        splits = DataSplits(select_classes(splits.labeled, data.labeled_classes), splits.unlabeled,
                            splits.test, splits.gallery)
    if data.validation:  # the validation classes take the test classes' place; those are not read
        labeled, validation = validation_split(splits.labeled, data.validation, seed)
        splits = DataSplits(labeled, splits.unlabeled, validation, None, evaluated_on="validation")
    if data.setting == "traditional":

        labeled, unlabeled = traditional_split(splits.labeled, data.labeled_fraction, seed)
        splits = DataSplits(labeled, unlabeled, splits.test, splits.gallery, splits.evaluated_on)
    return splits


def _read_any(path: str, labeled: bool, name: str) -> ImageSet:
    from slade.data.folders import read_class_folders, read_csv_list

    p = Path(path)
    if p.suffix.lower() == ".csv":
        image_set = read_csv_list(p, labeled=labeled, domain=name)
    else:
        image_set = read_class_folders(p, labeled=labeled, domain=name)
    image_set.name = name
    return image_set


def _folder_splits(data: DataConfig) -> DataSplits:
    for key in ("labeled", "test"):
        if not getattr(data, key):
            raise ConfigError(f"data.{key}: the folders dataset needs a class-folder tree or CSV")
    labeled = _read_any(data.labeled, True, "labeled")
    test = _read_any(data.test, True, "test")
    if data.unlabeled:
        unlabeled = _read_any(data.unlabeled, False, "unlabeled")
    elif data.setting == "traditional":
        unlabeled = ImageSet([], [], labeled=False, name="unlabeled")
    else:
        raise ConfigError("data.unlabeled: give the unlabeled pool, or set data.setting: traditional")
    gallery = _read_any(data.gallery, True, "gallery") if data.gallery else None
    if gallery is not None:
        gallery = _same_class_indices(gallery, test)
    return DataSplits(labeled, unlabeled, test, gallery)


def _same_class_indices(gallery: ImageSet, queries: ImageSet) -> ImageSet:
    """Renumber the gallery's classes by the queries' class names, so a query's label means the same
    class in both; gallery classes no query has get indices of their own."""
    names = list(queries.class_names)
    index = {name: i for i, name in enumerate(names)}
    for name in gallery.class_names:
        if name not in index:
            index[name] = len(names)
            names.append(name)
    records = [dataclasses.replace(r, label=None if r.label is None else index[gallery.class_names[r.label]])
               for r in gallery.records]
    return ImageSet(records, names, gallery.labeled, gallery.name)


@dataclass
class PreparedData:
    """Decoded sets ready for training and evaluation, and what was left out on the way."""

    labeled: ImageDataset
    unlabeled: ImageDataset
    test: ImageDataset
    gallery: ImageDataset | None
    dropped_classes: dict[str, list[str]] = field(default_factory=dict)
    # `validation` when `test` holds validation classes (data.validation), else `test`.
    evaluated_on: str = "test"

    @property
    def parts(self) -> dict[str, ImageDataset]:
        parts = {"labeled": self.labeled, "unlabeled": self.unlabeled, "test": self.test}
        if self.gallery is not None:
            parts["gallery"] = self.gallery
        return parts

    @property
    def bad_images(self) -> list[tuple[str, BadImage]]:
        return [(name, bad) for name, ds in self.parts.items() for bad in ds.bad]

    def summary(self) -> dict:
        parts = self.parts
        return {
            name: {
                "images": len(ds),
                "classes": len(ds.image_set.class_counts()),
                "domains": sorted(set(ds.image_set.domains)),
                "unreadable_skipped": len(ds.bad),
            }
            for name, ds in parts.items()
        } | {"dropped_classes": self.dropped_classes, "evaluated_on": self.evaluated_on}


def prepare(splits: DataSplits, data: DataConfig) -> PreparedData:
    """Decode every set and enforce the per-class minimum on labeled sets.

    Raises:
        DataError: an empty labeled or test set, too many unreadable images, or (with
            ``small_classes: error``) a class too small to form a positive pair.
    """
    from slade.data.splits import enforce_min_per_class

    decoder = Decoder(data.channels, data.resize or data.image_size, data.dark_background)
    dropped: dict[str, list[str]] = {}

    def load(image_set: ImageSet, name: str, min_per_class: bool) -> ImageDataset:
        if min_per_class:
            image_set, gone = enforce_min_per_class(image_set, data.min_images_per_class,
                                                    data.small_classes)
            if gone:
                dropped[name] = gone
        image_set.name = image_set.name or name
        cache = data.cache == "always" or (
            data.cache == "auto" and fits_in_memory(len(image_set), decoder, data.cache_limit_mb)
        )
        dataset = ImageDataset(image_set, decoder, cache, data.max_bad_fraction, name)
        if min_per_class and dataset.bad:  # a dropped image can leave a class too small
            image_set, gone = enforce_min_per_class(dataset.image_set, data.min_images_per_class,
                                                    data.small_classes)
            if gone:
                dropped.setdefault(name, []).extend(gone)
                bad = dataset.bad
                dataset = ImageDataset(image_set, decoder, cache, data.max_bad_fraction, name)
                dataset.bad = bad + dataset.bad  # still listed in RUN/bad_images.csv
        return dataset

    labeled = load(splits.labeled, "labeled", True)
    test = load(splits.test, "test", splits.gallery is None)
    for name, ds in (("labeled", labeled), ("test", test)):
        if len(ds) == 0:
            raise DataError(f"the {name} set is empty after dropping unusable images and classes")
    unlabeled = load(splits.unlabeled, "unlabeled", False)
    gallery = load(splits.gallery, "gallery", False) if splits.gallery is not None else None
    return PreparedData(labeled, unlabeled, test, gallery, dropped, splits.evaluated_on)
