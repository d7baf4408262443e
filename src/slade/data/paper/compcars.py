"""CompCars (Yang et al., 2015), web-nature data: 136,726 photos of whole cars from the web, the
unlabeled pool of the cars setting.

Reads ``data/image/<make_id>/<model_id>/<released_year>/<file>.jpg`` of the official layout (the
``label/``, ``misc/``, ``part/`` and ``train_test_split/`` folders are not needed). With labels kept
for diagnostics, an image's category is its ``<make_id>/<model_id>``.
"""

from __future__ import annotations

from pathlib import Path

from slade.data.folders import images_under, make_image_set
from slade.data.paper.layout import official_root
from slade.data.records import ImageSet
from slade.errors import DataError

LAYOUT = "data/image/<make>/<model>/<year>/<image>.jpg"


def read_compcars(root: str | Path, keep_labels: bool = False) -> ImageSet:
    """Read the web-nature images of CompCars as an unlabeled pool.

    Args:
        root: the CompCars folder (holding ``data/``) or its ``data`` folder.
        keep_labels: keep each image's car model for diagnostics (cluster purity and NMI); the set
            stays ``labeled=False``, so no training stage uses them.

    Returns:
        The images in sorted path order, domain ``"compcars"``; images at other depths under
        ``image/`` are not part of the layout and are left out.

    Raises:
        DataError: naming the folder when ``image/`` is missing or holds no image in the layout.
    """
    image_dir = official_root(root, "image", "data", LAYOUT) / "image"
    items = []
    for path in images_under(image_dir):
        parts = path.relative_to(image_dir).parts
        if len(parts) == 4:
            items.append((str(path), f"{parts[0]}/{parts[1]}" if keep_labels else None))
    if not items:
        raise DataError(f"{image_dir}: no images found (expected {LAYOUT})")
    return make_image_set(items, False, "compcars", "compcars")
