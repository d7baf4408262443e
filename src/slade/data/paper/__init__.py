"""The paper's three settings, read from each data set's official layout (one module per data set).

| ``data.dataset`` | labeled source (``data.root``) | unlabeled pool (``data.pool_root``) |
|---|---|---|
| ``cub-nabirds`` | CUB-200-2011, classes 1-100 train, 101-200 test | NABirds |
| ``cars-compcars`` | Cars-196, classes 1-98 train, 99-196 test | CompCars web-nature |
| ``inshop-fashion200k`` | In-shop, train items; query vs gallery test | Fashion200K |

``data.pool_labels`` keeps the pool's categories for diagnostics only (cluster purity and NMI of the
pseudo labels); the pool stays ``labeled=False`` and no training stage reads them.
"""

from __future__ import annotations

from slade.config import DataConfig
from slade.data.records import DataSplits
from slade.errors import ConfigError

SETTINGS = ("cub-nabirds", "cars-compcars", "inshop-fashion200k")

# Published (images, classes) per split, ../shared/METHOD.md; None where no count is published.
# NABirds' 555 categories are compared only when data.pool_labels keeps them.
PUBLISHED_COUNTS: dict[str, dict[str, tuple[int, int | None]]] = {
    "cub-nabirds": {"labeled": (5864, 100), "test": (5924, 100), "unlabeled": (48562, 555)},
    "cars-compcars": {"labeled": (8054, 98), "test": (8131, 98), "unlabeled": (136726, None)},
    "inshop-fashion200k": {"labeled": (25882, 3997), "test": (14218, None), "gallery": (12612, None)},
}

_ROOTS = {
    "cub-nabirds": ("the CUB_200_2011 folder", "the nabirds folder"),
    "cars-compcars": ("the Cars-196 folder (cars_annos.mat + car_ims/, or class folders)",
                      "the CompCars folder holding data/image/"),
    "inshop-fashion200k": ("the In-shop folder holding Eval/ and Img/",
                           "the fashion200k folder holding labels/ and women/"),
}


def paper_splits(data: DataConfig) -> DataSplits:
    """The labeled, unlabeled and test sets of the setting ``data.dataset`` names.

    Raises:
        ConfigError: when ``data.root`` or ``data.pool_root`` is not set.
        DataError: from the readers, naming the file and line at fault.
    """
    for key, what in zip(("root", "pool_root"), _ROOTS[data.dataset], strict=True):
        if not getattr(data, key):
            raise ConfigError(f"data.{key}: {data.dataset} needs {what} (--set data.{key}=FOLDER)")
    if data.dataset == "cub-nabirds":
        from slade.data.paper.cub import read_cub
        from slade.data.paper.nabirds import read_nabirds

        labeled, test = read_cub(data.root)
        return DataSplits(labeled, read_nabirds(data.pool_root, data.pool_labels), test)
    if data.dataset == "cars-compcars":
        from slade.data.paper.cars import read_cars
        from slade.data.paper.compcars import read_compcars

        labeled, test = read_cars(data.root)
        return DataSplits(labeled, read_compcars(data.pool_root, data.pool_labels), test)
    from slade.data.paper.fashion200k import read_fashion200k
    from slade.data.paper.inshop import read_inshop

    labeled, query, gallery = read_inshop(data.root)
    return DataSplits(labeled, read_fashion200k(data.pool_root, data.pool_labels), query, gallery)
