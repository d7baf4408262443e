"""Class-folder trees and CSV lists built here, with every kind of bad input."""

from pathlib import Path

import pytest
from PIL import Image

from slade.data.folders import read_class_folders, read_csv_list
from slade.data.images import Decoder, decode_all
from slade.errors import DataError


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "birds"
    image(root / "wren" / "a.jpg")
    image(root / "wren" / "b.JPEG")
    image(root / "finch" / "side" / "c.png")
    image(root / "finch" / "d.PNG")
    image(root / "finch" / ".hidden.png")
    (root / "finch" / "notes.txt").write_text("not an image")
    image(root / ".cache" / "e.png")
    image(root / "__MACOSX" / "f.png")
    (root / "empty_class").mkdir()
    return root


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_class_folders(tree):
    images = read_class_folders(tree)
    assert images.class_names == ["finch", "wren"]
    assert [Path(s).relative_to(tree).as_posix() for s in images.sources] == [
        "finch/d.PNG",
        "finch/side/c.png",
        "wren/a.jpg",
        "wren/b.JPEG",
    ]
    assert images.labels().tolist() == [0, 0, 1, 1]
    assert images.labeled and set(images.domains) == {"birds"} and images.name == "birds"


def test_unlabeled_tree_keeps_labels_for_diagnostics_and_loose_images(tree):
    image(tree / "loose.bmp")
    pool = read_class_folders(tree, labeled=False, domain="web")
    assert not pool.labeled and set(pool.domains) == {"web"}
    assert pool.labels().tolist() == [0, 0, -1, 1, 1]  # finch, loose.bmp, wren


def test_labeled_tree_refuses_an_image_outside_class_folders(tree):
    image(tree / "loose.gif")
    with pytest.raises(DataError, match=r"loose\.gif: image outside any class folder"):
        read_class_folders(tree)


def test_missing_or_empty_tree(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: data root not found"):
        read_class_folders(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"file\.txt: data root is not a folder"):
        read_class_folders(tmp_path / "file.txt")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no images found"):
        read_class_folders(tmp_path / "empty")


def test_empty_and_unreadable_images_are_reported_when_decoding(tree):
    (tree / "wren" / "a.jpg").write_bytes(b"")
    (tree / "wren" / "b.JPEG").write_bytes(b"not a jpeg")
    images = read_class_folders(tree)
    decoded = decode_all(images.records, Decoder(channels=3, resize=8), max_bad_fraction=0.5)
    assert decoded.kept.tolist() == [0, 1] and decoded.images.shape == (2, 8, 8, 3)
    assert [b.reason.split(" (")[0] for b in decoded.bad] == ["empty file", "cannot decode image"]


def test_csv_list(tree):
    listing = write_csv(
        tree / "train.csv",
        "\ufeffpath, label\nwren/b.JPEG,wren\n\nfinch/d.PNG,finch\n"
        f"{tree / 'wren' / 'a.jpg'},wren\n",
    )
    images = read_csv_list(listing)
    assert images.sources == [str(tree / p) for p in ("wren/b.JPEG", "finch/d.PNG", "wren/a.jpg")]
    assert images.class_names == ["finch", "wren"] and images.labels().tolist() == [1, 0, 1]
    assert images.labeled and set(images.domains) == {"birds"} and images.name == "train"


def test_csv_list_against_another_root(tree, tmp_path):
    listing = write_csv(tmp_path / "lists" / "pool.csv", "path\nwren/a.jpg\nfinch/side/c.png\n")
    pool = read_csv_list(listing, labeled=False, root=tree, domain="web")
    assert pool.sources == [str(tree / "wren/a.jpg"), str(tree / "finch/side/c.png")]
    assert not pool.labeled and not pool.has_labels and pool.class_names == []
    with pytest.raises(DataError, match=r"missing: data root not found"):
        read_csv_list(listing, labeled=False, root=tmp_path / "missing")


def test_unlabeled_csv_keeps_given_labels_for_diagnostics(tree):
    listing = write_csv(tree / "pool.csv", "label,path\nwren,wren/a.jpg\n,finch/d.PNG\n")
    pool = read_csv_list(listing, labeled=False)
    assert not pool.labeled and pool.class_names == ["wren"]
    assert pool.labels().tolist() == [0, -1]


@pytest.mark.parametrize(
    ("header", "labeled", "column"),
    [("file,label", True, "path"), ("path,class", True, "label"), ("name", False, "path")],
)
def test_csv_missing_column(tree, header, labeled, column):
    listing = write_csv(tree / "list.csv", f"{header}\nwren/a.jpg,wren\n")
    with pytest.raises(DataError, match=rf"list\.csv:1: missing column '{column}'"):
        read_csv_list(listing, labeled=labeled)


def test_csv_empty_path_and_label_name_the_line(tree):
    listing = write_csv(tree / "list.csv", "path,label\nwren/a.jpg,wren\n,wren\n")
    with pytest.raises(DataError, match=r"list\.csv:3: empty path"):
        read_csv_list(listing)
    listing = write_csv(tree / "list.csv", "path,label\nwren/a.jpg,wren\nwren/b.JPEG\n")
    with pytest.raises(DataError, match=r"list\.csv:3: empty label for wren/b\.JPEG"):
        read_csv_list(listing)


@pytest.mark.parametrize("escape", ["../../etc/passwd", "/etc/passwd", "wren/../../outside.png"])
def test_csv_path_escaping_the_root(tree, escape):
    image(tree.parent / "outside.png")
    listing = write_csv(tree / "list.csv", f"path,label\nwren/a.jpg,wren\n{escape},x\n")
    with pytest.raises(DataError, match=rf"list\.csv:3: path '{escape}' escapes the data root"):
        read_csv_list(listing)


def test_csv_path_with_a_nul_byte(tree):
    listing = write_csv(tree / "list.csv", "path,label\nwren/a\0.jpg,wren\n")
    with pytest.raises(DataError, match=r"list\.csv:2: path .* is not a valid file name"):
        read_csv_list(listing)


def test_csv_symlink_escaping_the_root(tree):
    (tree / "wren" / "link.png").symlink_to(image(tree.parent / "outside.png"))
    listing = write_csv(tree / "list.csv", "path,label\nwren/link.png,wren\n")
    with pytest.raises(DataError, match=r"list\.csv:2: path 'wren/link\.png' escapes"):
        read_csv_list(listing)


def test_csv_missing_files_name_the_first_line(tree):
    listing = write_csv(
        tree / "list.csv", "path,label\nwren/a.jpg,wren\nwren/gone.jpg,wren\nfinch/gone.png,finch\n"
    )
    with pytest.raises(
        DataError, match=r"list\.csv:3: wren/gone\.jpg: file not found \(2 of 3 listed files"
    ):
        read_csv_list(listing)


def test_csv_empty_missing_or_not_text(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        read_csv_list(write_csv(tmp_path / "empty.csv", ""))
    with pytest.raises(DataError, match=r"header\.csv: lists no images"):
        read_csv_list(write_csv(tmp_path / "header.csv", "path,label\n"))
    with pytest.raises(DataError, match=r"gone\.csv: CSV list not found"):
        read_csv_list(tmp_path / "gone.csv")
    (tmp_path / "binary.csv").write_bytes(b"path,label\n\xff\xfe\x00,x\n")
    with pytest.raises(DataError, match=r"binary\.csv: not UTF-8 text"):
        read_csv_list(tmp_path / "binary.csv")


def test_gallery_labels_follow_the_query_class_names(tmp_path):
    from slade.config import DataConfig
    from slade.data.build import build_splits

    def tree(root, classes):
        for c in classes:
            (root / c).mkdir(parents=True)
            for i in range(2):
                Image.new("L", (8, 8), 40 * i).save(root / c / f"{i}.png")
        return root

    tree(tmp_path / "train", ["x", "y"])
    tree(tmp_path / "query", ["a", "b"])
    tree(tmp_path / "gallery", ["b", "c"])  # read alone, b would be class 0
    data = DataConfig(dataset="folders", labeled=str(tmp_path / "train"), test=str(tmp_path / "query"),
                      gallery=str(tmp_path / "gallery"), setting="traditional")
    splits = build_splits(data, seed=0)
    query, gallery = splits.test, splits.gallery
    names = {Path(r.source).parent.name: r.label for r in query.records}
    assert names == {"a": 0, "b": 1}
    by_folder = {Path(r.source).parent.name: r.label for r in gallery.records}
    assert by_folder == {"b": 1, "c": 2}
    assert gallery.class_names[:2] == query.class_names
