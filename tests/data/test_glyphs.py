"""The embedded glyph data set: the character list, the splits, rendering and bad sources."""

import unicodedata

import numpy as np
import pytest

from slade.data.glyphs import (
    CHARACTERS,
    LABELED_DOMAIN,
    LABELED_FACES,
    UNLABELED_DOMAIN,
    UNLABELED_FACES,
    _font_code,
    glyph_source,
    glyph_splits,
    render_glyph,
)
from slade.data.images import Decoder, open_image
from slade.errors import DataError

SMALL = {"train_classes": 30, "test_classes": 20, "images_per_class": 4, "pool_size": 300}


def pixels(source: str) -> np.ndarray:
    return np.asarray(render_glyph(source))


def test_character_list_is_large_distinct_and_printable():
    assert len(CHARACTERS) >= 300
    assert len(set(CHARACTERS)) == len(CHARACTERS)
    assert all(len(c) == 1 for c in CHARACTERS)
    # No whitespace, combining marks, controls or format characters.
    assert not [c for c in CHARACTERS if unicodedata.category(c)[0] in "ZMC"]


@pytest.mark.parametrize("face", [*LABELED_FACES, "STIXGeneral.ttf", "STIXGeneralBol.ttf"])
def test_every_character_is_in_every_class_defining_face(face):
    assert [c for c in CHARACTERS if _font_code(face, c) is None] == []


def test_every_pool_face_renders_some_characters():
    for face in UNLABELED_FACES:
        assert sum(_font_code(face, c) is not None for c in CHARACTERS) >= 50, face


def test_counts_domains_and_disjoint_classes():
    splits = glyph_splits(**SMALL)
    labeled, test, pool = splits.labeled, splits.test, splits.unlabeled
    assert (len(labeled), len(test), len(pool)) == (30 * 4, 20 * 4, 300)
    assert (len(labeled.class_names), len(test.class_names)) == (30, 20)
    assert labeled.class_counts() == {label: 4 for label in range(30)}
    assert test.class_counts() == {label: 4 for label in range(20)}
    assert not set(labeled.class_names) & set(test.class_names)
    assert labeled.labeled and test.labeled and not pool.labeled and pool.has_labels
    assert set(labeled.domains) == set(test.domains) == {LABELED_DOMAIN}
    assert set(pool.domains) == {UNLABELED_DOMAIN}
    assert splits.gallery is None
    assert labeled.class_names == sorted(labeled.class_names)
    assert labeled.class_names[0].startswith("U+") and len(labeled.class_names[0].split()) == 2
    faces = {s.split(":")[1].split("/")[0] for s in labeled.sources + test.sources}
    assert faces == set(LABELED_FACES)
    assert {s.split(":")[1].split("/")[0] for s in pool.sources} <= set(UNLABELED_FACES)


def test_default_splits():
    splits = glyph_splits()
    assert splits.summary() == {
        "labeled": {"images": 3200, "classes": 160},
        "unlabeled": {"images": 6000, "classes": len(CHARACTERS)},
        "test": {"images": 1600, "classes": 80},
    }


def test_pool_holds_train_test_and_other_characters_under_its_hidden_labels():
    splits = glyph_splits(**SMALL)
    pool = splits.unlabeled
    names = {pool.class_names[label] for label in pool.labels()}
    assert names & set(splits.labeled.class_names)
    assert names & set(splits.test.class_names)
    assert names - set(splits.labeled.class_names) - set(splits.test.class_names)
    # The hidden label names the character the source renders.
    for record in pool.records[:50]:
        code = record.source.split("/")[1]
        assert pool.class_names[record.label].startswith(f"U+{code} ")


def test_same_seed_same_sources_and_pixels_other_seed_other_split():
    a, b = glyph_splits(seed=3, **SMALL), glyph_splits(seed=3, **SMALL)
    for part in ("labeled", "test", "unlabeled"):
        assert getattr(a, part).sources == getattr(b, part).sources
        assert getattr(a, part).labels().tolist() == getattr(b, part).labels().tolist()
    for source in a.labeled.sources[:10] + a.unlabeled.sources[:10]:
        assert np.array_equal(pixels(source), pixels(source))
    c = glyph_splits(seed=4, **SMALL)
    assert c.labeled.class_names != a.labeled.class_names
    assert c.unlabeled.sources != a.unlabeled.sources


def test_variants_differ():
    images = [pixels(glyph_source("DejaVuSans.ttf", "Ж", v)) for v in range(5)]
    assert len({image.tobytes() for image in images}) == 5


@pytest.mark.parametrize("face", ["DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "cmmi10.ttf"])
def test_images_are_28x28_grey_white_ink_on_black(face):
    for v, char in enumerate("Aλ"):
        image = open_image(glyph_source(face, char, v))  # the dispatch in images.py
        assert (image.mode, image.size) == ("L", (28, 28))
        a = np.asarray(image)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        assert np.median(border) < 60 and a.max() > 150
        decoded = Decoder(channels=1, resize=28, dark_background=True)(image)
        assert np.array_equal(decoded[..., 0], a)  # not inverted: already bright on dark


def test_the_two_sources_are_rendered_differently():
    # Labeled: clean black background, anti-aliased edges. Pool: noisy background, 1-bit ink
    # upscaled from a coarse grid (so its grey levels cluster around two values).
    for v in range(5):
        clean = pixels(glyph_source("DejaVuSans.ttf", "A", v))
        noisy = pixels(glyph_source("STIXGeneral.ttf", "A", v))
        assert clean[0].max() == 0 and len(np.unique(clean)) > 10
        assert noisy[0].std() > 3


def test_ink_stays_inside_the_image():
    # Wide, tall and large glyphs are shrunk to fit: no ink on the outermost pixels.
    for v, char in enumerate("—⇔∭‰Щ¶@ǼĞ"):
        for face in ("DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-BoldItalic.ttf"):
            a = pixels(glyph_source(face, char, v))
            assert max(a[0].max(), a[-1].max(), a[:, 0].max(), a[:, -1].max()) == 0, (face, char)


@pytest.mark.parametrize(
    "source",
    [
        "glyph:",
        "glyph:DejaVuSans.ttf",
        "glyph:DejaVuSans.ttf/41",
        "glyph:DejaVuSans.ttf/zz/0",
        "glyph:DejaVuSans.ttf/41/x",
        "glyph:DejaVuSans.ttf/41/-1",
        "glyph:DejaVuSans.ttf/110000/0",  # beyond Unicode
        "glyph:Arial.ttf/41/0",
        "glyph:../../../etc/passwd/41/0",
        "glyph:LastResortHE-Regular.ttf/41/0",  # in matplotlib, not one of ours
        "glyph:cmr10.ttf/03B1/0",  # Computer Modern has no Unicode α
        "glyph:DejaVuSans.ttf/10FFFD/0",  # no glyph
        "glyph:DejaVuSans.ttf/0020/0",  # a space has no ink
    ],
)
def test_bad_sources_raise_data_error_naming_them(source):
    with pytest.raises(DataError) as error:
        render_glyph(source)
    assert source in str(error.value)


def test_too_many_classes_or_negative_counts_are_data_errors():
    with pytest.raises(DataError, match=f"only {len(CHARACTERS)} characters"):
        glyph_splits(train_classes=len(CHARACTERS), test_classes=1)
    with pytest.raises(DataError, match="pool_size"):
        glyph_splits(pool_size=-1)
    everything = glyph_splits(len(CHARACTERS) - 5, 5, images_per_class=1, pool_size=0)
    assert len(everything.labeled.class_names) + len(everything.test.class_names) == len(CHARACTERS)
