"""omniglot-shift on the real data and the data root."""

from pathlib import Path

import pytest

from slade.data.images import Decoder
from slade.data.omniglot_shift import omniglot_shift, resolve_data_root
from slade.data.splits import traditional_split
from slade.errors import DataError

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO.parent / "shared" / "data").resolve()  # sources name resolved files; ../shared may be a link


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


def test_validation_alphabet_is_held_out_of_the_labeled_classes():
    from typer.testing import CliRunner

    from slade.cli import app
    from slade.data.omniglot_shift import VALIDATION_ALPHABETS

    result = CliRunner().invoke(app, [
        "data", "check", str(REPO / "configs" / "omniglot_shift.yaml"), "--no-decode",
        "--set", f"data.root={DATA}", "--set", f"data.validation=[{VALIDATION_ALPHABETS[0]}]"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert lines[1][:3] == ["labeled", "1920", "96"] and lines[3][:3] == ["validation", "940", "47"]
    few = CliRunner().invoke(app, [
        "data", "check", str(REPO / "configs" / "omniglot_shift_few.yaml"), "--no-decode",
        "--set", f"data.root={DATA}"])
    assert few.exit_code == 0, few.output
    assert few.output.splitlines()[1].split()[:3] == ["labeled", "920", "46"]
    assert few.output.splitlines()[3].split()[:3] == ["test", "1980", "99"]
