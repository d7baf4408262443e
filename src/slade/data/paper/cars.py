"""Cars-196 (Krause et al., 2013): 16,185 photos of 196 car models, the labeled source of the cars
setting. Classes 1-98 train (8,054 images), 99-196 test (8,131).

Two layouts are read:

- the devkit form: ``cars_annos.mat`` (the annotations of the "all images" download: for each
  image ``relative_im_path``, ``class`` 1-196 and the classification ``test`` flag, not used) and
  ``class_names``, beside ``car_ims/<000001>.jpg``;
- the class-folder form of the field's repackaged copies: ``<class name>/*.jpg`` under the root, its
  ``images/`` folder, or split into ``train/`` and ``test/`` folders (merged: the split is by class).
  Class ids follow the sorted folder names, which need not match the devkit's numbering: prefer the
  devkit form to reproduce published numbers, and let ``slade data check`` compare the counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slade.data.folders import data_root, read_class_folders
from slade.data.paper.layout import class_split, listed_path, require_files
from slade.data.records import ImageSet
from slade.errors import DataError

LAST_TRAIN_CLASS = 98
DEVKIT = "cars_annos.mat"


def read_cars(root: str | Path) -> tuple[ImageSet, ImageSet]:
    """Read Cars-196 in the devkit form when ``root`` holds ``cars_annos.mat``, else in the
    class-folder form, and split it by class.

    Returns:
        ``(train, test)``: classes 1-98 and 99-196, labeled, domain ``"cars"``; labels index each
        side's classes in class-id order.

    Raises:
        DataError: naming ``cars_annos.mat`` (and the annotation number) when it cannot be read or
            lacks a field, or the folder when the class-folder form holds no images;
            :class:`~slade.data.paper.layout.MissingFiles` naming the annotation of each image not
            on disk.
    """
    base = data_root(root)
    if (base / DEVKIT).is_file():
        items, names = _devkit(base / DEVKIT)
    elif (base / "car_ims").is_dir():
        raise DataError(f"{base / DEVKIT}: not found beside car_ims/ (the devkit form needs both)")
    else:
        items, names = _class_folders(base)
    return class_split(items, names, LAST_TRAIN_CLASS, "cars", "cars")


def _devkit(path: Path) -> tuple[list[tuple[str, int]], dict[int, str]]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), squeeze_me=True)
    except Exception as exc:  # scipy raises many kinds (MatReadError, IndexError...) on a damaged file
        raise DataError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    for key in ("annotations", "class_names"):
        if key not in mat:
            raise DataError(f"{path}: no {key!r} variable (expected the devkit's cars_annos.mat)")
    annotations = np.atleast_1d(mat["annotations"])
    fields = annotations.dtype.names or ()
    for key in ("relative_im_path", "class"):
        if key not in fields:
            raise DataError(f"{path}: annotations lack the field {key!r} (fields: {', '.join(fields)})")
    names = {i + 1: str(name) for i, name in enumerate(np.atleast_1d(mat["class_names"]))}
    listed: list[tuple[Path, str]] = []
    items: list[tuple[str, int]] = []
    for number, annotation in enumerate(annotations, 1):
        where = f"{path}:annotation {number}"
        try:
            class_id = int(annotation["class"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: class {annotation['class']!r} is not an integer") from None
        if class_id not in names:
            raise DataError(f"{where}: class {class_id} is not in class_names (1-{len(names)})")
        file = listed_path(path.parent, str(annotation["relative_im_path"]), where)
        listed.append((file, where))
        items.append((str(file), class_id))
    require_files(listed)
    return items, names


def _class_folders(base: Path) -> tuple[list[tuple[str, int]], dict[int, str]]:
    folder = base / "images" if (base / "images").is_dir() else base
    parts = [folder / "train", folder / "test"]
    if not all(p.is_dir() for p in parts):
        parts = [folder]
    items: list[tuple[str, str]] = []
    for part in parts:
        image_set = read_class_folders(part)
        items += [(r.source, image_set.class_name(r)) for r in image_set.records]
    ids = {name: i for i, name in enumerate(sorted({c for _, c in items}), 1)}
    return [(source, ids[name]) for source, name in items], {i: name for name, i in ids.items()}
