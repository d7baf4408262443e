"""In-shop Clothes Retrieval (DeepFashion, Liu et al., 2016): 52,712 photos of 7,982 clothing items,
the labeled source of the clothes setting, with its own query / gallery evaluation.

Reads the official layout, under ``In-shop Clothes Retrieval Benchmark/`` (or a copy with both
files at the top):

- ``Eval/list_eval_partition.txt``: the image count, a header line, then
  ``<image_name> <item_id> <evaluation_status>`` with status ``train`` (3,997 items, 25,882
  images), ``query`` (14,218) or ``gallery`` (12,612);
- ``Img/img/<GENDER>/<category>/<item_id>/<file>.jpg``, named ``img/...`` by the list.
"""

from __future__ import annotations

from pathlib import Path

from slade.data.folders import data_root
from slade.data.paper.layout import integer, listed_path, read_rows, require_files
from slade.data.records import ImageRecord, ImageSet
from slade.errors import DataError

STATUSES = ("train", "query", "gallery")
PARTITION = "list_eval_partition.txt"


def read_inshop(root: str | Path) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Read In-shop's train, query and gallery partition.

    Args:
        root: the folder holding ``Eval/`` and ``Img/``, or ``list_eval_partition.txt`` and
            ``img/``.

    Returns:
        ``(train, query, gallery)``, labeled by item id, domain ``"inshop"``. Query and gallery
        share one list of class names, so equal labels mean the same item.

    Raises:
        DataError: naming the file and line of a malformed row or an unknown status word, or a
            count on the first line that the rows do not match;
            :class:`~slade.data.paper.layout.MissingFiles` naming the line of each image not on
            disk.
    """
    base = data_root(root)
    lists = [base / PARTITION, base / "Eval" / PARTITION]
    partition = next((p for p in lists if p.is_file()), None)
    if partition is None:
        raise DataError(f"{lists[1]}: not found (nor {lists[0]})")
    image_base = next((b for b in (base, base / "Img") if (b / "img").is_dir()), None)
    if image_base is None:
        raise DataError(f"{base / 'Img' / 'img'}: folder not found (nor {base / 'img'})")
    rows = read_rows(partition, 1, "a line")
    if len(rows) < 2:
        raise DataError(f"{partition}: expected the image count, a header line, then the images")
    declared = integer(rows[0].fields[0], rows[0].where, "image count")
    entries = rows[2:]  # the count, then the header `image_name item_id evaluation_status`
    listed: list[tuple[Path, str]] = []
    items: dict[str, list[tuple[str, str]]] = {status: [] for status in STATUSES}
    for row in entries:
        fields = row.fields[0].split()
        if len(fields) != 3:
            raise DataError(f"{row.where}: expected <image_name> <item_id> <evaluation_status>, "
                            f"got {' '.join(fields)!r}")
        name, item, status = fields
        if status not in items:
            raise DataError(f"{row.where}: unknown evaluation status {status!r} "
                            f"(expected {', '.join(STATUSES)})")
        path = listed_path(image_base, name, row.where)
        listed.append((path, row.where))
        items[status].append((str(path), item))
    if declared != len(entries):
        raise DataError(f"{partition}:1: declares {declared} images, but {len(entries)} are listed")
    require_files(listed)
    train = _labeled(items["train"], sorted({i for _, i in items["train"]}), "inshop/train")
    test_items = sorted({i for _, i in items["query"] + items["gallery"]})
    return (train, _labeled(items["query"], test_items, "inshop/query"),
            _labeled(items["gallery"], test_items, "inshop/gallery"))


def _labeled(items: list[tuple[str, str]], class_names: list[str], name: str) -> ImageSet:
    index = {c: i for i, c in enumerate(class_names)}
    return ImageSet([ImageRecord(s, index[c], "inshop") for s, c in items], class_names, True, name)
