"""Fashion200K (Han et al., 2017): about 200,000 product photos from online shops, the unlabeled pool
of the clothes setting.

Reads the official layout:

- ``labels/*.txt`` (``dress_train_detect_all.txt``, ``top_test_detect_all.txt``, ...): one image a
  line, ``<image path> <detection score> <description>`` separated by tabs, the path relative to
  the root; train and test lists alike feed the pool, an image listed twice counts once;
- ``women/<category>/<subcategory>/<product_id>/<product_id>_<n>.jpeg``.

With labels kept for diagnostics, an image's category is its product folder.
"""

from __future__ import annotations

from pathlib import Path

from slade.data.folders import make_image_set
from slade.data.paper.layout import listed_path, official_root, read_rows, require_files
from slade.data.records import ImageSet
from slade.errors import DataError

LAYOUT = "fashion200k/{labels/*.txt, women/...}"


def read_fashion200k(root: str | Path, keep_labels: bool = False) -> ImageSet:
    """Read the images of every Fashion200K list as an unlabeled pool.

    Args:
        root: the ``fashion200k`` folder, or the folder it was extracted into.
        keep_labels: keep each image's product for diagnostics (cluster purity and NMI); the set
            stays ``labeled=False``, so no training stage uses them.

    Returns:
        The images in list order (lists in sorted name order), domain ``"fashion200k"``.

    Raises:
        DataError: naming the folder when ``labels/`` holds no list, or the list and line of a
            path leaving the root; :class:`~slade.data.paper.layout.MissingFiles` naming the list
            line of each image not on disk.
    """
    base = official_root(root, "labels", "fashion200k", LAYOUT)
    lists = sorted((base / "labels").glob("*.txt"))
    if not lists:
        raise DataError(f"{base / 'labels'}: no *.txt lists (expected {LAYOUT})")
    listed: dict[Path, str] = {}
    for path in lists:
        for row in read_rows(path, 1, "<image path> <score> <description>"):
            image = listed_path(base, row.fields[0].split()[0], row.where)
            listed.setdefault(image, row.where)
    require_files(listed.items())
    items = [(str(p), str(p.parent.relative_to(base)) if keep_labels else None) for p in listed]
    return make_image_set(items, False, "fashion200k", "fashion200k")
