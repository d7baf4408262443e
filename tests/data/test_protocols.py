"""omniglot-shift on the real data, the data root, and the label bookkeeping utilities."""

from pathlib import Path

import numpy as np
import pytest

from slade.data.images import Decoder
from slade.data.protocols import (
    enforce_min_per_class,
    omniglot_shift,
    relabel,
    resolve_data_root,
    traditional_split,
)
from slade.data.records import ImageRecord, ImageSet
from slade.errors import DataError

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO.parent / "shared" / "data").resolve()  # sources name resolved files; ../shared may be a link


def image_set(labels: list[int | None], class_names: list[str], name: str = "toy") -> ImageSet:
    records = [ImageRecord(f"img{i}.png", label, "toy") for i, label in enumerate(labels)]
    return ImageSet(records, class_names, labeled=True, name=name)


@pytest.fixture(scope="module")
def disjoint():
    return omniglot_shift(DATA, "disjoint")


def test_data_root_from_argument_environment_or_default(monkeypatch, tmp_path):
    assert resolve_data_root(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("SLADE_DATA_ROOT", str(tmp_path))
    assert resolve_data_root("") == tmp_path.resolve()
    assert resolve_data_root(None) == tmp_path.resolve()
    monkeypatch.delenv("SLADE_DATA_ROOT")
    monkeypatch.chdir(REPO)
    assert resolve_data_root(None) == DATA


def test_missing_data_root_says_how_to_set_it(monkeypatch, tmp_path):
    with pytest.raises(DataError, match=r"nowhere: data root not found.*SLADE_DATA_ROOT"):
        resolve_data_root(tmp_path / "nowhere")
    monkeypatch.delenv("SLADE_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"shared/data: data root not found \(from the default"):
        resolve_data_root(None)


def test_omniglot_shift_disjoint(disjoint):
    assert disjoint.summary() == {
        "labeled": {"images": 2860, "classes": 143},
        "unlabeled": {"images": 13180, "classes": 0},
        "test": {"images": 1980, "classes": 99},
    }
    assert disjoint.gallery is None
    labeled, test, pool = disjoint.labeled, disjoint.test, disjoint.unlabeled
    assert {c.split("/")[0] for c in labeled.class_names} == {
        "Balinese",
        "Early_Aramaic",
        "Greek",
        "Latin",
        "Japanese_(katakana)",
    }
    assert {c.split("/")[0] for c in test.class_names} == {"Korean", "Sanskrit", "Tagalog"}
    for part in (labeled, test):
        assert part.labeled and set(part.domains) == {"omniglot"}
        assert part.class_names == sorted(part.class_names)
        assert sorted(set(part.labels().tolist())) == list(range(len(part.class_names)))
        assert set(part.class_counts().values()) == {20}
    assert not set(labeled.sources) & set(test.sources)
    assert not pool.labeled and not pool.has_labels and set(pool.domains) == {"omniglot-tiles"}
    assert pool.sources[0].startswith(f"tiles:{DATA / 'omniglot-tiles' / 'images_evaluation.png'}#")


def test_omniglot_shift_overlap_pool():
    splits = omniglot_shift(DATA, "overlap")
    assert len(splits.unlabeled) == 19_280
    assert "images_background.png#" in splits.unlabeled.sources[0]
    assert (len(splits.labeled), len(splits.test)) == (2860, 1980)


def test_both_sources_decode_to_the_same_shape_and_polarity(disjoint):
    decoder = Decoder(channels=1, resize=28, dark_background=True)
    omniglot, tile = disjoint.labeled.sources[0], disjoint.unlabeled.sources[7]
    for source in (omniglot, disjoint.test.sources[-1], tile):
        pixels = decoder.decode(source)
        assert pixels.shape == (28, 28, 1)
        assert pixels.mean() < 64 and pixels.max() > 200, source  # bright ink on a dark background


def test_omniglot_shift_bad_root_or_pool(tmp_path):
    (tmp_path / "omniglot").mkdir()
    with pytest.raises(DataError, match=r"images_background_small1\.zip: .*not found"):
        omniglot_shift(tmp_path, "disjoint")
    with pytest.raises(ValueError, match="pool"):
        omniglot_shift(DATA, "everything")


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


def test_traditional_split(disjoint):
    labeled, pool = traditional_split(disjoint.labeled, labeled_fraction=0.1, seed=0)
    assert len(labeled) + len(pool) == 2860 and len(labeled) == 143 * 2
    assert set(labeled.sources) | set(pool.sources) == set(disjoint.labeled.sources)
    assert set(labeled.class_counts().values()) == {2}
    assert labeled.labeled and not pool.labeled and pool.has_labels
    assert labeled.class_names == pool.class_names == disjoint.labeled.class_names
    again, _ = traditional_split(disjoint.labeled, labeled_fraction=0.1, seed=0)
    other, _ = traditional_split(disjoint.labeled, labeled_fraction=0.1, seed=1)
    assert again.sources == labeled.sources and other.sources != labeled.sources
    half, _ = traditional_split(disjoint.labeled, labeled_fraction=0.5, seed=0)
    assert set(half.class_counts().values()) == {10}


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
