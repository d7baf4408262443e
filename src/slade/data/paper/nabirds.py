"""NABirds (Van Horn et al., 2015): 48,562 photos of North American birds in 555 categories, the
unlabeled pool of the birds setting.

Reads the official layout, under ``nabirds/``:

- ``images.txt``: ``<image_id> <image_path>``, the path under ``images/`` (ids are UUIDs);
- ``images/<class folder>/<file>.jpg``;

and, only when labels are kept for diagnostics:

- ``image_class_labels.txt``: ``<image_id> <class_id>``;
- ``classes.txt``: ``<class_id> <class_name>`` for every node of the taxonomy;
- ``hierarchy.txt``: ``<child_class_id> <parent_class_id>``; images carry leaf categories (a class
  that is no node's parent), the 555 categories that cluster purity is measured against.
"""

from __future__ import annotations

from pathlib import Path

from slade.data.paper.layout import (
    listed_path,
    official_root,
    read_ids,
    read_image_labels,
    read_rows,
    require_files,
)
from slade.data.records import ImageRecord, ImageSet
from slade.errors import DataError

LAYOUT = "nabirds/{images.txt, image_class_labels.txt, classes.txt, hierarchy.txt, images/}"


def read_nabirds(root: str | Path, keep_labels: bool = False) -> ImageSet:
    """Read NABirds as an unlabeled pool.

    Args:
        root: the ``nabirds`` folder, or the folder the archive was extracted into.
        keep_labels: keep each image's category for diagnostics (cluster purity and NMI of the
            pseudo labels); the set stays ``labeled=False``, so no training stage uses them.

    Returns:
        Every image of ``images.txt`` in list order, domain ``"nabirds"``; with ``keep_labels``,
        labels index the categories used, in class-id order, named from ``classes.txt``.

    Raises:
        DataError: naming the file and line of a malformed or repeated row, a label naming an
            unknown image or class, or a category that is not a leaf of ``hierarchy.txt``;
            :class:`~slade.data.paper.layout.MissingFiles` naming the ``images.txt`` line of each
            image not on disk.
    """
    base = official_root(root, "images.txt", "nabirds", LAYOUT)
    images = read_ids(base / "images.txt", "<image_id> <image_path>")
    folder = base / "images"
    listed = [(listed_path(folder, name, where), where) for name, where in images.values()]
    require_files(listed)
    sources = [str(path) for path, _ in listed]
    if not keep_labels:
        records = [ImageRecord(s, None, "nabirds") for s in sources]
        return ImageSet(records, [], labeled=False, name="nabirds")
    classes = read_ids(base / "classes.txt", "<class_id> <class_name>")
    labels = _leaf_labels(base, images, classes)
    used = sorted({labels[i] for i in images}, key=lambda c: (len(c), c))  # numeric id order
    index = {class_id: i for i, class_id in enumerate(used)}
    records = [ImageRecord(s, index[labels[i]], "nabirds") for s, i in zip(sources, images, strict=True)]
    return ImageSet(records, [classes[c][0] for c in used], labeled=False, name="nabirds")


def _leaf_labels(
    base: Path, images: dict[str, tuple[str, str]], classes: dict[str, tuple[str, str]]
) -> dict[str, str]:
    """``{image_id: class_id}``, every image labeled with a known leaf category."""
    parents: dict[str, str] = {}
    for row in read_rows(base / "hierarchy.txt", 2, "<child_class_id> <parent_class_id>"):
        for class_id in row.fields[:2]:
            if class_id not in classes:
                raise DataError(f"{row.where}: class id {class_id} is not in classes.txt")
        parents.setdefault(row.fields[1], row.where)
    labels = read_image_labels(base, images, classes)
    for class_id, where in labels.values():
        if class_id in parents:
            raise DataError(f"{where}: class {class_id} is not a leaf category "
                            f"({parents[class_id]} names it as a parent)")
    for image_id, (_, where) in images.items():
        if image_id not in labels:
            raise DataError(f"{where}: image id {image_id} has no line in image_class_labels.txt")
    return {image_id: class_id for image_id, (class_id, _) in labels.items()}
