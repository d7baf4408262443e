"""Five kinds of unreadable image (truncated JPEG, empty file, text named .jpg, 1x1 image, corrupt
PNG) are skipped, counted and listed, cached or read lazily; past data.max_bad_fraction the run stops
with the list. CMYK and 16-bit images are converted, not refused."""

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from slade import run_layout as layout
from slade.config import load_config
from slade.data.datasets import ImageDataset
from slade.data.folders import read_class_folders
from slade.data.images import Decoder
from slade.errors import TooManyBadImages
from slade.pipeline import run
from tests.conftest import write_class_tree

BAD = {  # file name -> the reason it is listed with
    "truncated.jpg": "cannot decode image (image file is truncated",
    "empty.png": "empty file",
    "text.jpg": "cannot decode image (not in any image format Pillow reads)",
    "one_pixel.png": "image is 1x1 pixels, too small to use",
    "corrupt.png": "cannot decode image (broken data stream",
}
CONVERTED = ("cmyk.jpg", "sixteen_bit.png")


def write_bad_images(folder, prefix=""):
    rng = np.random.default_rng(0)
    picture = Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8))
    jpeg, png = io.BytesIO(), io.BytesIO()
    picture.save(jpeg, "JPEG")
    picture.save(png, "PNG")
    (folder / f"{prefix}truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / f"{prefix}empty.png").write_bytes(b"")
    (folder / f"{prefix}text.jpg").write_text("not an image, whatever its name says\n")
    Image.new("L", (1, 1), 200).save(folder / f"{prefix}one_pixel.png")
    broken = bytearray(png.getvalue())
    start = broken.index(b"IDAT") + 8
    broken[start : start + 20] = bytes(20)
    (folder / f"{prefix}corrupt.png").write_bytes(bytes(broken))


def write_convertible_images(folder):
    Image.new("CMYK", (30, 28), (0, 50, 100, 0)).save(folder / "cmyk.jpg")
    deep = (np.random.default_rng(1).random((28, 28)) * 65535).astype(np.uint16)
    Image.fromarray(deep).save(folder / "sixteen_bit.png")


@pytest.fixture
def tree(tmp_path):
    root = write_class_tree(tmp_path / "tree", classes=4, per_class=6)
    write_bad_images(root / "c01")
    write_convertible_images(root / "c02")
    return root


def reasons(bad):
    return {b.source.rsplit("/", 1)[-1]: b.reason for b in bad}


def test_cached_set_drops_and_lists_each_kind(tree):
    dataset = ImageDataset(read_class_folders(tree), Decoder(1, 28, True), cache=True,
                           max_bad_fraction=0.2, split="labeled")
    assert len(dataset) == 24 + len(CONVERTED)
    found = reasons(dataset.bad)
    assert found.keys() == BAD.keys()
    assert all(found[name].startswith(reason) for name, reason in BAD.items()), found
    assert {s.rsplit("/", 1)[-1] for s in dataset.image_set.sources} >= set(CONVERTED)
    with pytest.raises(TooManyBadImages, match=r"5 of 31 labeled images cannot be read, more than "
                                               r"data.max_bad_fraction=0.1") as error:
        ImageDataset(read_class_folders(tree), Decoder(1, 28, True), cache=True,
                     max_bad_fraction=0.1, split="labeled")
    assert reasons(b for _, b in error.value.bad).keys() == BAD.keys()


def test_lazy_set_stands_in_a_readable_image_of_the_class_and_reports(tree, tmp_path):
    images = read_class_folders(tree)
    dataset = ImageDataset(images, Decoder(1, 28, True), cache=False, max_bad_fraction=0.2, split="labeled")
    report = tmp_path / layout.BAD_IMAGES
    dataset.report_to(report)
    names = [s.rsplit("/", 1)[-1] for s in images.sources]
    pixels = [dataset[i] for i in range(len(dataset))]  # as training and embedding read them
    bad = dataset.unreadable()
    assert sorted(names[i] for i in bad) == sorted(BAD)
    for i in bad:  # the stand-in is the next readable image of the same class, cyclically
        members = np.flatnonzero(dataset.labels == dataset.labels[i])
        j = next(k for k in np.roll(members, -list(members).index(i)) if k not in bad)
        assert torch.equal(pixels[i], pixels[j])
    rows = list(csv.reader(report.open()))
    assert rows[0] == ["split", "source", "reason"] and len(rows) == 6
    assert {r[1].rsplit("/", 1)[-1] for r in rows[1:]} == BAD.keys()
    assert {r[0] for r in rows[1:]} == {"labeled"}

    strict = ImageDataset(images, Decoder(1, 28, True), cache=False, max_bad_fraction=0.1, split="labeled")
    strict.report_to(tmp_path / "strict.csv")
    with pytest.raises(TooManyBadImages, match=r"4 of 31 labeled images cannot be read, more than "
                                               r"data.max_bad_fraction=0.1; all are listed in .*strict.csv"):
        for i in range(len(strict)):
            strict[i]
    assert len(list(csv.reader((tmp_path / "strict.csv").open()))) == 5


def folder_config(tmp_path, cache, max_bad_fraction):
    labeled = write_class_tree(tmp_path / "labeled", classes=8, per_class=6)
    test = write_class_tree(tmp_path / "test", classes=4, per_class=6, seed=1)
    pool = write_class_tree(tmp_path / "pool", classes=5, per_class=8, seed=2)
    write_bad_images(labeled / "c03")
    write_bad_images(test / "c00")
    write_bad_images(pool / "c04")
    return load_config(None, [
        "data.dataset=folders", f"data.labeled={labeled}", f"data.test={test}", f"data.unlabeled={pool}",
        f"data.cache={cache}", f"data.max_bad_fraction={max_bad_fraction}", "model.width=8",
        "model.embedding_dim=16", "pretrain.enabled=false", "analysis.enabled=false",
        "teacher.steps=3", "teacher.batch_size=16", "student.steps=3", "student.basis_warmup_steps=1",
        "student.batch_size=16", "student.unlabeled_batch_size=8", "pseudo_labels.clusters=4",
        "evaluation.batch_size=64",
    ])


def listed_in(report):
    return {(r["split"], r["source"].rsplit("/", 1)[-1]) for r in csv.DictReader(report.open())}


def test_lazy_run_skips_bad_images_met_in_training_and_embedding(tmp_path):
    out = tmp_path / "run"
    config = folder_config(tmp_path, "never", 0.25)
    metrics = run(config, out)
    assert 0.0 <= metrics["student"]["recall@1"] <= 1.0
    listed = listed_in(out / layout.BAD_IMAGES)
    # Every pool and test image is embedded, so all their bad images are met; labeled ones are met
    # only when a batch draws them.
    assert {("unlabeled", n) for n in BAD} | {("test", n) for n in BAD} <= listed
    assert {split for split, _ in listed} <= {"labeled", "unlabeled", "test"}
    table = list(csv.DictReader((out / layout.PSEUDO_LABELS / layout.TABLE).open()))
    unlabeled = {r["source"].rsplit("/", 1)[-1] for r in table if r["pseudo_label"] == "-1"}
    assert unlabeled == BAD.keys()
    assert metrics["student"]["pseudo_labels"]["unreadable"] == 5
    run(config, out)  # every stage finished: nothing is read again but the test set
    assert listed_in(out / layout.BAD_IMAGES) == listed  # what the first process met is still listed


def test_cached_run_past_the_fraction_stops_with_the_list(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TooManyBadImages, match=r"5 of 53 labeled images cannot be read.*all are listed in "
                                               r".*bad_images.csv"):
        run(folder_config(tmp_path, "always", 0.05), out)
    rows = list(csv.DictReader((out / layout.BAD_IMAGES).open()))
    assert {r["source"].rsplit("/", 1)[-1] for r in rows} == BAD.keys()
