"""Label bookkeeping, the traditional split, class selection and the validation split."""

import numpy as np
import pytest

from slade.data.records import ImageRecord, ImageSet
from slade.data.splits import (
    enforce_min_per_class,
    relabel,
    select_classes,
    traditional_split,
    validation_split,
)
from slade.errors import ConfigError, DataError


def image_set(labels: list[int | None], class_names: list[str], name: str = "toy") -> ImageSet:
    records = [ImageRecord(f"img{i}.png", label, "toy") for i, label in enumerate(labels)]
    return ImageSet(records, class_names, labeled=True, name=name)


def test_relabel_drops_empty_classes_and_sorts_names():
    toy = image_set([2, 0, 2, None], ["zeta", "unused", "alpha"])
    out = relabel(toy)
    assert out.class_names == ["alpha", "zeta"]
    assert out.labels().tolist() == [0, 1, 0, -1]
    assert [r.source for r in out.records] == [r.source for r in toy.records]


def test_class_with_one_image_is_dropped_or_refused():
    toy = image_set([0, 0, 1, 2, 2, 2], ["a", "b", "c"])
    kept, dropped = enforce_min_per_class(toy, 2, "drop")
    assert dropped == ["b"] and kept.class_names == ["a", "c"]
    assert kept.labels().tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(DataError, match=r"toy: class 'b' has 1 image\(s\), fewer than .*=2"):
        enforce_min_per_class(toy, 2, "error")
    kept, dropped = enforce_min_per_class(toy, 3, "drop")
    assert dropped == ["a", "b"] and kept.class_names == ["c"] and len(kept) == 3
    assert enforce_min_per_class(toy, 1, "error")[1] == []


def test_traditional_split_keeps_two_per_class_where_it_can():
    toy = image_set([0] * 30 + [1] * 3 + [2], ["a", "b", "c"])
    labeled, pool = traditional_split(toy, labeled_fraction=0.1, seed=3)
    assert labeled.class_counts() == {0: 3, 1: 2, 2: 1}
    assert pool.class_counts() == {0: 27, 1: 1}
    assert np.all(np.diff([int(s[3:-4]) for s in labeled.sources]) > 0)  # original order kept


def test_traditional_split_refuses_unlabeled_images_and_bad_fractions():
    with pytest.raises(DataError, match="toy: a traditional split needs every label"):
        traditional_split(image_set([0, None], ["a"]))
    with pytest.raises(ValueError, match="labeled_fraction"):
        traditional_split(image_set([0, 0], ["a"]), labeled_fraction=0)


def alphabets(per_class: int = 3) -> ImageSet:
    names = [f"{a}/character{c:02d}" for a in ("Greek", "Latin", "Tagalog") for c in range(1, 5)]
    labels = [label for label in range(len(names)) for _ in range(per_class)]
    return image_set(labels, names)


def test_validation_split_by_name_is_class_disjoint_and_keeps_every_image():
    full = alphabets()
    train, val = validation_split(full, ["Latin", "Greek/character02"], seed=0)
    assert val.class_names == ["Greek/character02"] + [f"Latin/character{c:02d}" for c in range(1, 5)]
    assert set(train.class_names).isdisjoint(val.class_names)
    assert len(train.class_names) == 7 and len(train) + len(val) == len(full) == 36
    assert sorted(train.sources + val.sources) == sorted(full.sources)
    assert set(val.labels().tolist()) == set(range(5)) and set(train.labels().tolist()) == set(range(7))
    # Each image keeps its class.
    by_source = {r.source: full.class_names[r.label] for r in full.records}
    assert all(by_source[r.source] == val.class_names[r.label] for r in val.records)


def test_validation_split_by_fraction_follows_the_seed():
    full = alphabets()
    train, val = validation_split(full, 0.25, seed=3)
    assert len(val.class_names) == 3 and len(train.class_names) == 9
    assert validation_split(full, 0.25, seed=3)[1].class_names == val.class_names
    others = {tuple(validation_split(full, 0.25, seed=s)[1].class_names) for s in range(6)}
    assert len(others) > 1


def test_validation_split_refuses_too_few_classes_or_single_images():
    full = alphabets()
    with pytest.raises(ConfigError, match=r"data.validation: leaves 11 training and 1 validation classes "
                                          r"\(of 12\); the validation side needs at least 2"):
        validation_split(full, ["Greek/character01"], seed=0)
    with pytest.raises(ConfigError, match="leaves 0 training and 12 validation classes"):
        validation_split(full, ["Greek", "Latin", "Tagalog"], seed=0)
    with pytest.raises(ConfigError, match=r"data.validation: 'Korean' names no class .*12 classes"):
        validation_split(full, ["Korean"], seed=0)
    with pytest.raises(ConfigError, match=r"data.validation: .* must be in \(0, 1\)"):
        validation_split(full, 1.0, seed=0)
    lonely = image_set([0, 0, 1, 2, 2, 3, 3], ["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match=r"data.validation: training class 'b' has 1 image \(1 such"):
        validation_split(lonely, ["c", "d"], seed=0)
    with pytest.raises(ConfigError, match=r"data.validation: validation class 'b' has 1 image"):
        validation_split(lonely, ["a", "b"], seed=0)


def test_select_classes_by_prefix():
    chosen = select_classes(alphabets(), ["Tagalog", "Greek/character04"])
    assert chosen.class_names == ["Greek/character04"] + [f"Tagalog/character{c:02d}" for c in range(1, 5)]
    assert len(chosen) == 15 and set(chosen.labels().tolist()) == set(range(5))
    # A prefix matches whole path components only.
    with pytest.raises(ConfigError, match="data.labeled_classes: 'Gre' names no class"):
        select_classes(alphabets(), ["Gre"])
