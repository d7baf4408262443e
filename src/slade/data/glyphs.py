"""The embedded default data set: character glyphs rendered from the fonts inside matplotlib.

It needs no files and no network, so that ``make demo`` runs on any fresh machine, and it mirrors
the Omniglot-shift benchmark: labeled characters from one rendering pipeline, an unlabeled pool
from another, and test classes disjoint from the training classes.

How it is built:

- **Classes are characters.** :data:`CHARACTERS` is a fixed list of Unicode characters (Latin,
  digits, Greek, Cyrillic, IPA, punctuation, currency, arrows, math operators). Every one of them
  is rendered by all twelve DejaVu faces and by STIXGeneral regular and bold. Characters that look
  (nearly) the same as another one at 28x28 are left out, keeping one of each look-alike group:
  homoglyphs across scripts (Latin ``A``, Greek ``Α``, Cyrillic ``А``), shapes that differ only in
  size or height once centred (``o``/``O``, ``c``/``C``, ``p``/``P``, ``-``/``_``, ``.``/``•``),
  and near-twins (``O``/``0``, ``l``/``I``/``1``/``|``, ``x``/``×``, ``Δ``/``∆``, ``Σ``/``∑``).
  Whitespace and combining marks are never classes.
- **Labeled source** (domain ``"dejavu"``): the DejaVu Sans, Sans Mono and Serif faces, each
  regular, bold, oblique/italic and bold oblique/italic. Every image gets its own random size,
  rotation (±15°), shear, shift, stroke thickness and softness, the counterpart of Omniglot's
  20 drawers. Rendered at twice the size, then area-downsampled (anti-aliased).
- **Unlabeled source** (domain ``"stix-cm"``): the STIXGeneral faces and the Computer Modern
  (BaKoMa) faces, rendered on purpose by another pipeline, the counterpart of Omniglot's 1-bit
  scans: a small 1-bit rendering with jagged edges, upsampled without smoothing, thicker strokes,
  uneven ink and background levels and sensor noise. The STIX italic faces and the Computer
  Modern faces cover only part of :data:`CHARACTERS` (Computer Modern uses the TeX encodings,
  translated by ``_CM_CODES``); they render the characters they have. The pool holds characters
  of the training classes, of the test classes and of classes seen nowhere else; its labels are
  kept for diagnostics only.
- **Test classes**: characters held out from training, rendered by the labeled pipeline.

Images are white ink on black, mode ``L``, 28x28. A source string
``glyph:<font file>/<codepoint hex>/<variant>`` names one image: :func:`render_glyph` is a pure
function of it (the variant and a stable hash of font and character seed the random variation;
the font family picks the pipeline), for a given numpy, Pillow and matplotlib.

Font licences (texts in matplotlib's ``mpl-data/fonts/ttf/LICENSE_*`` files and its licence
notice): DejaVu fonts are under the Bitstream Vera Fonts licence (DejaVu changes in the public
domain, Arev glyphs under the Arev Fonts licence); STIX fonts under the SIL Open Font License 1.1;
the Computer Modern fonts are the BaKoMa fonts of Basil K. Malyshev, under the BaKoMa Fonts
Licence (free copying and distribution, free use for rendering). All three allow rendering text
with the fonts and place no condition on the images rendered.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageFilter

from slade.data.records import DataSplits, ImageRecord, ImageSet
from slade.errors import DataError

try:
    from matplotlib.ft2font import LoadFlags

    _NO_HINTING = LoadFlags.NO_HINTING
except ImportError:  # matplotlib < 3.10 takes the flag as an int
    from matplotlib.ft2font import LOAD_NO_HINTING as _NO_HINTING  # type: ignore[attr-defined, no-redef]

LABELED_DOMAIN = "dejavu"
UNLABELED_DOMAIN = "stix-cm"
IMAGE_SIZE = 28

LABELED_FACES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
)
_STIX_FACES = tuple(f"STIXGeneral{style}.ttf" for style in ("", "Bol", "Italic", "BolIta"))
_CM_TEXT_FACES = ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf")

# One string per group; the comments name what was left out and why (the kept look-alike first).
# A mark (accent, hook, bar) makes another class; two marks of one size on the same base do not.
CHARACTERS: tuple[str, ...] = tuple(
    "".join(
        [
            # Latin capitals without I (= l = 1 = |).
            "ABCDEFGHJKLMNOPQRSTUVWXYZ",
            # Small letters whose capital differs in shape, not only in size: no c o s v w x z
            # (= C O S V W X Z), p (= P once centred), u (= U), l (= 1), g (= 9 in sans faces).
            "abdefhijkmnqrty",
            # Digits without 0 (= O).
            "123456789",
            # Greek capitals unlike any Latin or Cyrillic one (Γ = Г, Π = П = ∏, Φ = Ф, Σ = ∑).
            "ΓΔΘΛΞΠΣΦΨΩ",
            # Greek small letters without ο ι κ ν ρ υ χ (= o ı к v p u x), π ψ (= Π Ψ),
            # θ (= Θ in monospaced faces), ϵ (= ∈).
            "αβγδεζηλμξσςτφωϑϖ",
            # Cyrillic capitals unlike Latin and Greek ones; no З (= 3), Ь (= b), Є (= ∈),
            # Ґ (= Г), Ў (= ý), Ћ (= Ђ). Small Cyrillic letters are small capitals (ж = Ж) or
            # Latin twins (а е о р с у х), except ђ.
            "БДЖИЙЛЦЧШЩЪЫЭЮЯЂЉЊЏЃЌђ",
            # Other Latin letters; no Đ (= Ð), ø (= Ø), þ (= Þ), ŋ (= η).
            "ÆæŒœØßÞÐðĦħŁłŦƀƕƛƻǼǾ",
            # At most one accented form of a letter: Š and Ś, or É and È, differ in a few pixels.
            "ÄÇÉÑÖÜŠŽŘĞÝäéñýř",
            # IPA letters; no ɑ ɛ ɣ ɸ ʊ ɩ (Greek twins), ɐ ə (= e a), ʃ (= ∫), ʌ (= ^), ɯ (= ω),
            # ɘ (= Э), ʔ (= ?), ɳ (= η), small capitals (ɢ ɪ ʀ ʙ ʜ ʟ ʏ ɴ).
            "ɔɞɹʞʕɮʤʧɕɓɗɖɦɲʈɽɟʄɧɬʦʝʑɨ",
            # ASCII punctuation; no ' ` (= ,), _ (= -) or | (= l).
            '!"#$%&()*+,-./:;<=>?@[\\]^{}~',
            # Latin-1 signs; no ¡ (= i), · (= .), × (= x), ¼ ¾ (= ½), ¨ ¯ ´ ¸ ª º ² ³ ¹ µ (tiny
            # or twins).
            "¢£¤¥¦§©«¬®°±¶»½¿÷",
            # General punctuation and letterlike signs; no – (= _), • (= .), ‹ › (= < >).
            "—†‡…‰€™№‼⁇",
            # Arrows; no ↲ (= ↵), ⇆ (= ⇄), ⇵ (= ⇅), ↨ (= ↕), ⇪ (= ⇧), ⇜ ⇝ (= ↜ ↝), harpoons.
            "←↑→↓↔↕↖↗↘↙⇐⇑⇒⇓⇔⇕⇖⇗⇘⇙↩↪↦↤↥↧↺↻↯↵↰↱↳↴↶↷↸⇄⇅⇇⇉⇈⇊↞↠↟↡↢↣⇦⇧⇨⇩↚↛↮↜↝⇌↭↹",
            # Math operators and shapes; no ∏ ∑ ∆ (Greek twins), ∪ ∩ ∧ ∨ ⊤ (U n Λ V T), ∼ (= ~),
            # ∝ (= α), ∅ ⊘ (= Ø), ⊖ (= Θ), ∟ (= L), △ ▽ (= Δ ∇), ⋄ (= ◊), ♯ (= #), ♭ (= b),
            # ⊏ ⊐ ⊑ ⊒ (= ⊂ ⊃ ⊆ ⊇), ⊛ (= ⊕ ⊗), box drawing (= Γ L T + ⊢ #).
            "∀∃∄∇∈∉∋∌√∞∠∫∬∭≃≈≔≕≠≡≤≥⊂⊃⊄⊅⊆⊇⊎⊕⊗⊙⊚⊜⊞⊟⊠⊡⊢⊣⊥⌂⌈⌉⌊⌋▷◁◊♮∓",
        ]
    )
)


def _run(chars: str, first: int) -> dict[str, int]:
    return {c: first + i for i, c in enumerate(chars)}


# Computer Modern fonts map TeX positions, not Unicode, and BaKoMa moved TeX positions 0-9 to
# 0xA1-0xAA, 10-32 to 0xAD-0xC3 (of which 0xB7 to 0x2219). These tables give the font code of
# each character a face renders faithfully.
_CM_LATIN = {c: ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}
_CM_TEXT = {
    **_CM_LATIN,
    **{c: ord(c) for c in "0123456789!#%()*+,-./:;=?@[]"},
    **_run("ΓΔΘΛΞΠΣΥΦΨ", 0xA1),
}
_CM_CODES: dict[str, dict[str, int]] = {
    **{face: _CM_TEXT for face in _CM_TEXT_FACES},
    "cmmi10.ttf": {
        **_CM_LATIN,
        **_run("ΓΔΘΛΞΠΣΥΦΨ", 0xA1),
        **_run("αβγδϵζηθι", 0xAE),
        **_run("λμνξπρστυϕχψ", 0xB8),
        **_run("ωεϑϖϱςφ", 0x21),
        "∂": 0x40,
        "ℓ": 0x60,
    },
    "cmsy10.ttf": {
        **_run("→↑↓↔↗↘≃⇐⇒⇑⇓⇔↖↙∝", 0x21),
        **_run("∞∈∋", 0x31),
        **_run("∀∃¬", 0x38),
        **_run("⊤⊥", 0x3E),
        **_run("⊢⊣⌊⌋⌈⌉{}", 0x60),
        **_run("↕⇕\\", 0x6C),
        **_run("√∐∇∫⊔⊓⊑⊒§†‡¶", 0x70),
        **_run("÷⋄±∓⊕⊖", 0xA5),
        **_run("⊘⊙", 0xAE),
        **_run("≡⊆⊇", 0xB4),
        **_run("≥≼≽∼≈⊂⊃≪≫≺≻←", 0xB8),
        "⊎": 0x5D,
        "≤": 0x2219,
    },
}
UNLABELED_FACES = _STIX_FACES + tuple(_CM_CODES)


@dataclass(frozen=True)
class _Style:
    """The random variation of one rendering pipeline; lengths are in pixels of the ink grid."""

    em: float  # font size as a fraction of the image side
    scale: tuple[float, float]
    rotation: float  # degrees, either way
    shear: float  # either way
    shift: float  # either way, along each axis
    supersample: int  # rendering resolution relative to the ink grid
    thickness: tuple[float, float]  # start of the ink ramp, fraction of white: lower is thicker
    softness: tuple[float, float]  # width of the ramp, same unit: 0 gives 1-bit ink
    ink: tuple[int, int]
    background: tuple[int, int]
    noise: float  # standard deviation of additive Gaussian noise, in grey levels
    grid: int  # side of the grid the ink lives on before it is scaled to IMAGE_SIZE


_LABELED_STYLE = _Style(
    em=0.78,
    scale=(0.8, 1.2),
    rotation=15,
    shear=0.3,
    shift=3.0,
    supersample=2,
    thickness=(0.05, 0.4),
    softness=(0.2, 0.5),
    ink=(255, 255),
    background=(0, 0),
    noise=0.0,
    grid=IMAGE_SIZE,
)
# Another pipeline on purpose: 1-bit ink on a coarse grid, upscaled without smoothing, thicker
# strokes, uneven levels and noise, smaller and less slanted glyphs.
_UNLABELED_STYLE = _Style(
    em=0.74,
    scale=(0.9, 1.1),
    rotation=8,
    shear=0.0,
    shift=1.5,
    supersample=2,
    thickness=(0.06, 0.2),
    softness=(0.0, 0.0),
    ink=(170, 255),
    background=(0, 40),
    noise=10.0,
    grid=24,
)

_lock = threading.Lock()  # an FT2Font is not safe to use from several threads at once


@cache
def _font(name: str) -> FT2Font:
    return FT2Font(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name))


def _font_code(font: str, char: str) -> int | None:
    """The code that renders ``char`` in ``font``, or ``None`` when the font lacks it."""
    code = _CM_CODES[font].get(char) if font in _CM_CODES else ord(char)
    if code is None:
        return None
    with _lock:
        return code if _font(font).get_char_index(code) else None


def glyph_source(font: str, char: str, variant: int) -> str:
    """The source string of one rendering of ``char`` (see the module docstring)."""
    return f"glyph:{font}/{ord(char):04X}/{variant}"


def _parse(source: str) -> tuple[str, str, int]:
    font, _, rest = source.removeprefix("glyph:").partition("/")
    code, _, variant = rest.partition("/")
    try:
        char, number = chr(int(code, 16)), int(variant)
    except (ValueError, OverflowError):
        raise DataError(
            f"{source}: a glyph source is glyph:<font file>/<codepoint hex>/<variant>"
        ) from None
    if font not in LABELED_FACES + UNLABELED_FACES:
        raise DataError(
            f"{source}: unknown font {font!r}; the fonts are "
            f"{', '.join(LABELED_FACES + UNLABELED_FACES)}"
        )
    if number < 0:
        raise DataError(f"{source}: the variant must be a non-negative integer")
    return font, char, number


def render_glyph(source: str) -> Image.Image:
    """Render the image named by a ``glyph:<font file>/<codepoint hex>/<variant>`` source.

    Returns:
        A 28x28 image of mode ``L``, white ink on black.

    Raises:
        DataError: naming the source, when it is malformed, names an unknown font, or the font
            has no glyph (or an empty one) for the character.
    """
    font, char, variant = _parse(source)
    code = _font_code(font, char)
    if code is None:
        raise DataError(f"{source}: {font} has no glyph for U+{ord(char):04X}")
    style = _LABELED_STYLE if font in LABELED_FACES else _UNLABELED_STYLE
    # crc32, unlike hash(), is the same in every process.
    rng = np.random.default_rng([variant, zlib.crc32(f"{font}/{ord(char):X}".encode())])
    side = style.grid * style.supersample
    with _lock:
        face = _font(font)
        face.set_size(style.em * side * rng.uniform(*style.scale), 72)  # 72 dpi: 1 pt = 1 pixel
        face.set_text(chr(code), 0.0, _NO_HINTING)  # hinting distorts shapes, and is slow
        face.draw_glyphs_to_bitmap(antialiased=True)
        ink = np.asarray(face.get_image())
    glyph = Image.fromarray(ink)
    box = glyph.getbbox()
    if box is None:
        raise DataError(f"{source}: {font} renders U+{ord(char):04X} without ink")
    glyph = glyph.crop(box)
    canvas = _place(glyph, side, style, rng)
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.6 * style.supersample))
    smooth = np.asarray(canvas.resize((style.grid, style.grid), Image.Resampling.BOX)) / 255
    # A ramp over the smoothed ink sets stroke thickness (where it starts: a smooth dilation or
    # erosion) and edge softness (how wide it is) in one step; a zero width gives 1-bit ink.
    threshold, width = rng.uniform(*style.thickness), rng.uniform(*style.softness)
    ink_map = np.clip((smooth - threshold) / max(width, 1e-3), 0, 1)
    if style.grid != IMAGE_SIZE:  # nearest-neighbour upscaling keeps the coarse grid's jaggies
        index = np.arange(IMAGE_SIZE) * style.grid // IMAGE_SIZE
        ink_map = ink_map[np.ix_(index, index)]
    background, ink_level = rng.uniform(*style.background), rng.uniform(*style.ink)
    pixels = background + ink_map * (ink_level - background)
    pixels += rng.normal(0, style.noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def _place(glyph: Image.Image, side: int, style: _Style, rng: np.random.Generator) -> Image.Image:
    """Rotate, shear and shift ``glyph`` onto a black ``side`` x ``side`` canvas, centred."""
    angle = np.radians(rng.uniform(-style.rotation, style.rotation))
    cos, sin = np.cos(angle), np.sin(angle)
    shear = np.array([[1.0, rng.uniform(-style.shear, style.shear)], [0.0, 1.0]])
    matrix = np.array([[cos, -sin], [sin, cos]]) @ shear
    w, h = glyph.size
    corners = matrix @ (np.array([[0, w, 0, w], [0, 0, h, h]]) - [[w / 2], [h / 2]])
    extent = corners.max(axis=1) - corners.min(axis=1)
    # Shrink what would not fit inside a margin, then shift only within the room that is left.
    room = side - 3 * style.supersample
    shrink = min(1.0, room / extent.max())
    matrix, extent = matrix * shrink, extent * shrink
    shift = rng.uniform(-1, 1, 2) * style.shift * style.supersample
    shift = np.clip(shift, -(room - extent) / 2, (room - extent) / 2)
    # Pillow wants the map from output to input pixels.
    inverse = np.linalg.inv(matrix)
    offset = np.array([w / 2, h / 2]) - inverse @ (side / 2 + shift)
    coefficients = (*inverse[0], offset[0], *inverse[1], offset[1])
    return glyph.transform(
        (side, side), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )


@cache
def _pool_faces(char: str) -> tuple[str, ...]:
    return tuple(face for face in UNLABELED_FACES if _font_code(face, char) is not None)


def _class_name(char: str) -> str:
    return f"U+{ord(char):04X} {char}"


def _rendered_set(
    chars: list[str], per_class: int, name: str, rng: np.random.Generator
) -> ImageSet:
    """``per_class`` labeled-pipeline images of each character, spread evenly over the faces."""
    records = []
    for label, char in enumerate(chars):
        # Rounds of shuffled faces: every face once per round, whatever order, whatever count.
        rounds = np.tile(np.arange(len(LABELED_FACES)), (-(-per_class // len(LABELED_FACES)), 1))
        faces = rng.permuted(rounds, axis=1).ravel()[:per_class]
        variants = rng.integers(0, 2**31, per_class)
        records += [
            ImageRecord(glyph_source(LABELED_FACES[f], char, int(v)), label, LABELED_DOMAIN)
            for f, v in zip(faces, variants, strict=True)
        ]
    return ImageSet(records, [_class_name(c) for c in chars], labeled=True, name=name)


def glyph_splits(
    train_classes: int = 160,
    test_classes: int = 80,
    images_per_class: int = 20,
    pool_size: int = 6000,
    seed: int = 0,
) -> DataSplits:
    """The embedded default data set (see the module docstring): records only, nothing rendered.

    Args:
        train_classes: characters of the labeled set.
        test_classes: other characters, for the test set.
        images_per_class: images of each train and of each test character.
        pool_size: images in the unlabeled pool, of characters drawn uniformly from all of
            :data:`CHARACTERS` (train, test and the rest), each in a random face that has it.
        seed: picks the train, test and pool-only characters, the faces and the variants.

    Returns:
        ``labeled`` (domain ``"dejavu"``), ``test`` (``"dejavu"``, classes disjoint from
        ``labeled``) and ``unlabeled`` (``"stix-cm"``, ``labeled=False``; its labels index all
        of :data:`CHARACTERS` and serve diagnostics only). Class names read ``"U+0041 A"`` and
        are in code-point order within each set.

    Raises:
        DataError: a negative count, or more train and test classes than there are characters.
    """
    counts = {
        "train_classes": train_classes,
        "test_classes": test_classes,
        "images_per_class": images_per_class,
        "pool_size": pool_size,
    }
    for key, value in counts.items():
        if value < 0:
            raise DataError(f"glyph data set: {key} must be non-negative, not {value}")
    if train_classes + test_classes > len(CHARACTERS):
        raise DataError(
            f"glyph data set: {train_classes} train + {test_classes} test classes asked for, "
            f"but there are only {len(CHARACTERS)} characters"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(CHARACTERS))
    train = sorted(CHARACTERS[i] for i in order[:train_classes])
    test = sorted(CHARACTERS[i] for i in order[train_classes : train_classes + test_classes])
    everything = sorted(CHARACTERS)
    pool = []
    for label in rng.integers(0, len(everything), pool_size):
        faces = _pool_faces(everything[label])
        face = faces[rng.integers(len(faces))]
        variant = int(rng.integers(0, 2**31))
        pool.append(
            ImageRecord(
                glyph_source(face, everything[label], variant), int(label), UNLABELED_DOMAIN
            )
        )
    return DataSplits(
        labeled=_rendered_set(train, images_per_class, "glyphs/labeled", rng),
        unlabeled=ImageSet(
            pool, [_class_name(c) for c in everything], labeled=False, name="glyphs/pool"
        ),
        test=_rendered_set(test, images_per_class, "glyphs/test", rng),
    )
