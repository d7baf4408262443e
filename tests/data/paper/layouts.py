"""Writers of tiny trees in each data set's official layout (the fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def tiny_image(path: Path, shade: int = 0, mode: str = "RGB") -> Path:
    """An 8x8 image at ``path`` (format from the suffix), its colour depending on ``shade``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade * 40 % 256, 90, 200)).convert(mode).save(path)
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# CUB class ids straddle the 100/101 boundary of the train/test split.
CUB_CLASSES = {99: "099.Ovenbird", 100: "100.Brown_Pelican", 101: "101.White_Pelican",
               102: "102.Western_Wood_Pewee"}


def write_cub(root: Path) -> Path:
    """``CUB_200_2011/`` with classes 99-102, 2 or 3 images each (10 images)."""
    images, labels = [], []
    image_id = 0
    for class_id, name in CUB_CLASSES.items():
        for i in range(3 if class_id % 2 else 2):
            image_id += 1
            file = f"{name}/{name.split('.')[1]}_{i:04d}.jpg"
            tiny_image(root / "images" / file, class_id)
            images.append(f"{image_id} {file}")
            labels.append(f"{image_id} {class_id}")
    write_lines(root / "classes.txt", [f"{k} {v}" for k, v in CUB_CLASSES.items()])
    write_lines(root / "images.txt", images)
    write_lines(root / "image_class_labels.txt", labels)
    write_lines(root / "train_test_split.txt", [f"{i} 1" for i in range(1, image_id + 1)])
    return root


def write_nabirds(root: Path) -> Path:
    """``nabirds/``: a taxonomy 0 -> {1 -> {295, 296}, 2 -> {313}}; 5 images on the leaves."""
    write_lines(root / "classes.txt", ["0 Birds", "1 Ducks, Geese, and Swans", "2 Hawks",
                                       "295 Wood Duck", "296 Mallard (Female/Eclipse male)",
                                       "313 Red-tailed Hawk (Adult)"])
    write_lines(root / "hierarchy.txt", ["1 0", "2 0", "295 1", "296 1", "313 2"])
    images, labels = [], []
    for n, class_id in enumerate([295, 295, 296, 313, 313]):
        uuid = f"{n:08x}21dc4d0cbfe14cae3c85c829"
        file = f"{class_id:04d}/{uuid}.jpg"
        tiny_image(root / "images" / file, n)
        images.append(f"{uuid[:8]}-21dc-4d0c-bfe1-4cae3c85c829 {file}")
        labels.append(f"{uuid[:8]}-21dc-4d0c-bfe1-4cae3c85c829 {class_id}")
    write_lines(root / "images.txt", images)
    write_lines(root / "image_class_labels.txt", labels)
    return root


def write_cars_devkit(root: Path, classes: list[int], class_count: int = 100) -> Path:
    """``cars_annos.mat`` + ``car_ims/``: one image per entry of ``classes`` (class ids 1-based)."""
    from scipy.io import savemat

    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    annotations = np.zeros((1, len(classes)), dtype=dtype)
    for i, class_id in enumerate(classes):
        name = f"car_ims/{i + 1:06d}.jpg"
        tiny_image(root / name, class_id)
        annotations[0, i] = (name, 1, 1, 7, 7, np.uint8(class_id), np.uint8(i % 2))
    names = np.empty((1, class_count), dtype=object)
    names[0, :] = [f"Make{i} Model Sedan 2012" for i in range(1, class_count + 1)]
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": names})
    return root


def write_compcars(root: Path) -> Path:
    """``CompCars/data/image/<make>/<model>/<year>/``: 2 makes, 3 models, 6 images."""
    for n, rel in enumerate(["78/1/2010/a.jpg", "78/1/2011/b.jpg", "78/3/2012/c.jpg",
                             "78/3/unknown/d.jpg", "81/5/2014/e.jpg", "81/5/2014/f.jpg"]):
        tiny_image(root / "data" / "image" / rel, n)
    (root / "data" / "label" / "78").mkdir(parents=True)
    tiny_image(root / "data" / "image" / "78" / "stray.jpg")  # not in the layout: left out
    return root


INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "train"),
    ("img/MEN/Denim/id_00000080/01_2_side.jpg", "id_00000080", "train"),
    ("img/WOMEN/Skirts/id_00000001/02_1_front.jpg", "id_00000001", "query"),
    ("img/WOMEN/Skirts/id_00000001/02_2_side.jpg", "id_00000001", "gallery"),
    ("img/WOMEN/Skirts/id_00000001/02_3_back.jpg", "id_00000001", "gallery"),
    ("img/MEN/Tees/id_00000007/01_1_front.jpg", "id_00000007", "query"),
    ("img/MEN/Tees/id_00000007/01_4_full.jpg", "id_00000007", "gallery"),
    ("img/WOMEN/Tees/id_00000009/01_1_front.jpg", "id_00000009", "gallery"),
]


def write_inshop(root: Path, rows=INSHOP_ROWS, count: int | None = None) -> Path:
    """The official download: ``Eval/list_eval_partition.txt`` and ``Img/img/...``."""
    for n, (name, _, _) in enumerate(rows):
        if not (root / "Img" / name).exists():
            tiny_image(root / "Img" / name, n)
    lines = [str(len(rows) if count is None else count), "image_name item_id evaluation_status"]
    write_lines(root / "Eval" / "list_eval_partition.txt", lines + [f"{a}    {b}    {c}" for a, b, c in rows])
    return root


def write_fashion200k(root: Path) -> Path:
    """``fashion200k/``: two lists, one image listed in both, two products."""
    dress = "women/dresses/casual_and_day_dresses/51727804/51727804_{}.jpeg"
    top = "women/tops/blouses/87425317/87425317_{}.jpeg"
    for n, name in enumerate([dress.format(0), dress.format(1), top.format(0)]):
        tiny_image(root / name, n)
    write_lines(root / "labels" / "dress_train_detect_all.txt",
                [f"{dress.format(0)}\t0.821664\tblack casual dress", f"{dress.format(1)}\t0.79\tblack dress"])
    write_lines(root / "labels" / "top_test_detect_all.txt",
                [f"{top.format(0)}\t0.9\twhite silk blouse", f"{dress.format(0)}\t0.82\tblack casual dress"])
    return root
