"""The ``omniglot-shift`` benchmark protocol: which images are labeled, unlabeled and test.

It follows ``../shared/data/README.md``: labeled and test classes from the
Omniglot archives, the unlabeled pool from an omniglot-tiles sheet rendered by another pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from slade.data.omniglot import read_omniglot_archives
from slade.data.records import DataSplits, ImageSet
from slade.data.splits import relabel
from slade.data.tiles import read_tile_sheet
from slade.errors import DataError

LABELED_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek", "Latin", "Japanese_(katakana)")
# The validation classes for choosing settings (`data.validation`), taken from the labeled ones: an
# alphabet, as the test classes are other alphabets; the largest, so that choices rest on 940 queries.
VALIDATION_ALPHABETS = ("Japanese_(katakana)",)
# The few-labels preset (configs/omniglot_shift_few.yaml): two labeled alphabets.
FEW_LABELED_ALPHABETS = ("Balinese", "Early_Aramaic")
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
    keep = [i for i, r in enumerate(characters.records)
            if characters.class_name(r).split("/")[0] in alphabets]
    return relabel(characters.subset(keep, name))
