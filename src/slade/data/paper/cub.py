"""CUB-200-2011 (Wah et al., 2011): 11,788 photos of 200 bird species, the labeled source of the
birds setting.

Reads the official layout, under ``CUB_200_2011/``:

- ``classes.txt``: ``<class_id> <class_name>``, e.g. ``1 001.Black_footed_Albatross``;
- ``images.txt``: ``<image_id> <image_name>``, the image's path under ``images/``;
- ``image_class_labels.txt``: ``<image_id> <class_id>``;
- ``images/<class folder>/<file>.jpg``.

``train_test_split.txt`` is a classification split and is not read: metric learning splits by class,
classes 1-100 for training (5,864 images) and 101-200 for testing (5,924).
"""

from __future__ import annotations

from pathlib import Path

from slade.data.paper.layout import (
    class_split,
    integer,
    listed_path,
    official_root,
    read_ids,
    read_image_labels,
    require_files,
)
from slade.data.records import ImageSet
from slade.errors import DataError

LAST_TRAIN_CLASS = 100
LAYOUT = "CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/}"


def read_cub(root: str | Path) -> tuple[ImageSet, ImageSet]:
    """Read CUB-200-2011 and split it by class.

    Args:
        root: the ``CUB_200_2011`` folder, or the folder the archive was extracted into.

    Returns:
        ``(train, test)``: classes 1-100 and 101-200, labeled, class names from ``classes.txt``
        (labels index them in class-id order), domain ``"cub"``.

    Raises:
        DataError: naming the file and line of a malformed or repeated row, an image without a
            label, a label naming an unknown image or class, or a missing class folder;
            :class:`~slade.data.paper.layout.MissingFiles` naming the ``images.txt`` line of each
            image not on disk.
    """
    base = official_root(root, "images.txt", "CUB_200_2011", LAYOUT)
    classes = read_ids(base / "classes.txt", "<class_id> <class_name>")
    images = read_ids(base / "images.txt", "<image_id> <image_name>")
    labels = read_image_labels(base, images, classes)
    folder = base / "images"
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (expected images/<class folder>/<file>.jpg)")
    listed: list[tuple[Path, str]] = []
    items: list[tuple[str, int]] = []
    absent: dict[Path, tuple[str, str]] = {}  # missing class folder -> (first image line, class line)
    for image_id, (name, where) in images.items():
        if image_id not in labels:
            raise DataError(f"{where}: image id {image_id} has no line in image_class_labels.txt")
        class_id = labels[image_id][0]
        path = listed_path(folder, name, where)
        if not path.parent.is_dir():
            absent.setdefault(path.parent, (where, classes[class_id][1]))
        listed.append((path, where))
        items.append((str(path), integer(class_id, classes[class_id][1], "class id")))
    if absent:
        missing, (image_line, class_line) = next(iter(absent.items()))
        raise DataError(f"{missing}: class folder missing ({class_line} names the class, {image_line} "
                        f"lists its first image; {len(absent)} class folder(s) missing)")
    require_files(listed)
    names = {integer(k, where, "class id"): name for k, (name, where) in classes.items()}
    return class_split(items, names, LAST_TRAIN_CLASS, "cub", "cub")
