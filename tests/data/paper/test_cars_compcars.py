"""Cars-196 (devkit and class-folder forms) and CompCars web-nature, from tiny trees."""

from pathlib import Path

import pytest
from layouts import tiny_image, write_cars_devkit

from slade.data.paper.cars import read_cars
from slade.data.paper.compcars import read_compcars
from slade.data.paper.layout import MissingFiles
from slade.errors import DataError


def test_cars_devkit_splits_classes_1_to_98_from_99_to_196(tmp_path):
    root = write_cars_devkit(tmp_path / "cars", [99, 97, 98, 97, 100, 99])
    train, test = read_cars(root)
    assert train.class_names == ["Make97 Model Sedan 2012", "Make98 Model Sedan 2012"]
    assert test.class_names == ["Make99 Model Sedan 2012", "Make100 Model Sedan 2012"]
    assert train.labels().tolist() == [0, 1, 0] and test.labels().tolist() == [0, 1, 0]
    assert [Path(s).name for s in train.sources] == ["000002.jpg", "000003.jpg", "000004.jpg"]
    assert set(train.domains) == {"cars"} and train.labeled and test.labeled


def test_cars_devkit_image_missing_names_the_annotation(tmp_path):
    root = write_cars_devkit(tmp_path / "cars", [97, 99, 99])
    (root / "car_ims" / "000002.jpg").unlink()
    with pytest.raises(MissingFiles, match=r"cars_annos\.mat:annotation 2: .*car_ims/000002\.jpg: "
                                           r"file not found \(1 of 3"):
        read_cars(root)


def test_cars_devkit_bad_file_or_class(tmp_path):
    root = write_cars_devkit(tmp_path / "cars", [97, 120], class_count=100)
    message = r"cars_annos\.mat:annotation 2: class 120 is not in class_names \(1-100\)"
    with pytest.raises(DataError, match=message):
        read_cars(root)
    (root / "cars_annos.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match=r"cars_annos\.mat: not a readable MATLAB file"):
        read_cars(root)
    (root / "cars_annos.mat").unlink()
    with pytest.raises(DataError, match=r"cars_annos\.mat: not found beside car_ims/"):
        read_cars(root)


def test_cars_class_folders_merge_train_and_test_and_split_by_sorted_name(tmp_path):
    root = tmp_path / "car_data"
    names = [f"Make{i:03d} Model 2012" for i in range(1, 100)]  # 99 classes: 98 train, 1 test
    for i, name in enumerate(names):
        tiny_image(root / ("train" if i % 2 else "test") / name / f"{i:05d}.jpg", i)
    tiny_image(root / "train" / names[-1] / "extra.jpg")
    train, test = read_cars(root)
    assert train.class_names == names[:98] and test.class_names == [names[98]]
    assert len(train) == 98 and len(test) == 2 and test.labels().tolist() == [0, 0]


def test_compcars_web_nature_pool(compcars_root):
    pool = read_compcars(compcars_root)
    assert len(pool) == 6 and not pool.labeled and not pool.has_labels
    assert set(pool.domains) == {"compcars"}
    kept = read_compcars(compcars_root / "data", keep_labels=True)
    assert not kept.labeled and kept.class_names == ["78/1", "78/3", "81/5"]
    assert kept.labels().tolist() == [0, 0, 1, 1, 2, 2]


def test_compcars_wrong_root(tmp_path, compcars_root):
    with pytest.raises(DataError, match=r"image not found \(expected data/image/<make>/<model>/<year>/"):
        read_compcars(tmp_path)
    for file in sorted((compcars_root / "data" / "image").rglob("*.jpg")):
        if len(file.relative_to(compcars_root / "data" / "image").parts) == 4:
            file.unlink()
    with pytest.raises(DataError, match=r"data/image: no images found"):
        read_compcars(compcars_root)
