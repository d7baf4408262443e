"""CUB-200-2011 and NABirds read from tiny trees in their official layouts."""

from pathlib import Path

import pytest
from layouts import write_lines

from slade.data.paper.cub import read_cub
from slade.data.paper.layout import MissingFiles
from slade.data.paper.nabirds import read_nabirds
from slade.errors import DataError


def test_cub_splits_classes_1_to_100_from_101_to_200(cub_root):
    train, test = read_cub(cub_root)
    assert train.class_names == ["099.Ovenbird", "100.Brown_Pelican"]
    assert test.class_names == ["101.White_Pelican", "102.Western_Wood_Pewee"]
    assert train.labels().tolist() == [0, 0, 0, 1, 1]
    assert test.labels().tolist() == [0, 0, 0, 1, 1]
    assert Path(train.sources[0]) == cub_root / "images/099.Ovenbird/Ovenbird_0000.jpg"
    assert train.labeled and test.labeled and set(train.domains) == {"cub"}
    assert (train.name, test.name) == ("cub/train", "cub/test")


def test_cub_root_may_be_the_folder_the_archive_was_extracted_into(cub_root):
    train, _ = read_cub(cub_root.parent)
    assert len(train) == 5


def test_cub_tree_with_a_class_folder_missing(cub_root):
    for file in (cub_root / "images" / "101.White_Pelican").iterdir():
        file.unlink()
    (cub_root / "images" / "101.White_Pelican").rmdir()
    message = (r"images/101\.White_Pelican: class folder missing \(.*classes\.txt:3 names the class, "
               r".*images\.txt:6 lists its first image; 1 class folder\(s\) missing\)")
    with pytest.raises(DataError, match=message):
        read_cub(cub_root)


def test_cub_list_naming_a_missing_image(cub_root):
    (cub_root / "images/102.Western_Wood_Pewee/Western_Wood_Pewee_0001.jpg").unlink()
    with pytest.raises(MissingFiles, match=r"images\.txt:10: .*Western_Wood_Pewee_0001\.jpg: file not "
                                           r"found \(1 of 10 listed images are missing\)") as caught:
        read_cub(cub_root)
    assert len(caught.value.missing) == 1


@pytest.mark.parametrize("file, lines, message", [
    ("image_class_labels.txt", ["1 99", "2 7"], r"image_class_labels\.txt:2: class id 7 is not in classes"),
    ("image_class_labels.txt", ["1 99", "1 99"], r"image_class_labels\.txt:2: 1 repeats .*:1"),
    ("image_class_labels.txt", ["1 99"], r"images\.txt:2: image id 2 has no line in image_class_labels"),
    ("images.txt", ["1"], r"images\.txt:1: expected <image_id> <image_name>, got '1'"),
    ("classes.txt", ["99 a", "x y"], r"image_class_labels\.txt:\d+: class id 100 is not in classes"),
])
def test_cub_malformed_lists_name_file_and_line(cub_root, file, lines, message):
    write_lines(cub_root / file, lines)
    with pytest.raises(DataError, match=message):
        read_cub(cub_root)


def test_cub_missing_root_or_list(tmp_path, cub_root):
    with pytest.raises(DataError, match=r"nowhere: data root not found"):
        read_cub(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"images\.txt not found \(expected CUB_200_2011/"):
        read_cub(tmp_path / "CUB_200_2011" / "images")
    (cub_root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"CUB_200_2011/classes\.txt: not found"):
        read_cub(cub_root)


def test_nabirds_is_an_unlabeled_pool_without_labels_by_default(nabirds_root):
    pool = read_nabirds(nabirds_root)
    assert len(pool) == 5 and not pool.labeled and not pool.has_labels
    assert pool.labels().tolist() == [-1] * 5 and set(pool.domains) == {"nabirds"}
    assert Path(pool.sources[3]).relative_to(nabirds_root).parts[:2] == ("images", "0313")


def test_nabirds_keeps_leaf_categories_for_diagnostics_only(nabirds_root):
    pool = read_nabirds(nabirds_root.parent, keep_labels=True)
    assert not pool.labeled and pool.has_labels
    assert pool.class_names == ["Wood Duck", "Mallard (Female/Eclipse male)", "Red-tailed Hawk (Adult)"]
    assert pool.labels().tolist() == [0, 0, 1, 2, 2]


def test_nabirds_list_naming_a_missing_file(nabirds_root):
    lines = (nabirds_root / "images.txt").read_text().splitlines()
    write_lines(nabirds_root / "images.txt", lines + ["ffff0000-0000-0000-0000-000000000000 0295/gone.jpg"])
    with pytest.raises(MissingFiles, match=r"nabirds/images\.txt:6: .*images/0295/gone\.jpg: file not found"):
        read_nabirds(nabirds_root)


def test_nabirds_label_that_is_not_a_leaf_or_unknown(nabirds_root):
    path = nabirds_root / "image_class_labels.txt"
    lines = path.read_text().splitlines()
    write_lines(path, lines[:4] + [lines[4].split()[0] + " 2"])
    with pytest.raises(DataError, match=r"image_class_labels\.txt:5: class 2 is not a leaf category "
                                        r"\(.*hierarchy\.txt:5 names it as a parent\)"):
        read_nabirds(nabirds_root, keep_labels=True)
    read_nabirds(nabirds_root)  # the labels are not read without keep_labels
    write_lines(nabirds_root / "hierarchy.txt", ["1 0", "999 1"])
    with pytest.raises(DataError, match=r"hierarchy\.txt:2: class id 999 is not in classes\.txt"):
        read_nabirds(nabirds_root, keep_labels=True)


def test_images_in_any_colour_mode_are_converted_not_rejected(cub_root):
    """CMYK JPEG, 16-bit grey, RGBA, LA and palette-with-transparency PNGs all decode to RGB."""
    from PIL import Image

    from slade.data.images import Decoder

    ovenbird, pelican = cub_root / "images" / "099.Ovenbird", cub_root / "images" / "100.Brown_Pelican"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(ovenbird / "Ovenbird_0000.jpg")  # red ink
    # The lists name .jpg files; the content, not the suffix, decides how they decode.
    Image.new("I;16", (8, 8), 65535).save(ovenbird / "Ovenbird_0001.jpg", format="PNG")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(ovenbird / "Ovenbird_0002.jpg", format="PNG")
    Image.new("LA", (8, 8), (77, 255)).save(pelican / "Brown_Pelican_0000.jpg", format="PNG")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255])
    palette.save(pelican / "Brown_Pelican_0001.jpg", format="PNG", transparency=0)
    train, _ = read_cub(cub_root)
    modes = [Image.open(s).mode for s in train.sources]
    assert modes[0] == "CMYK" and modes[1].startswith("I") and modes[2:] == ["RGBA", "LA", "P"]
    pixels = [Decoder(channels=3, resize=8).decode(s) for s in train.sources]
    assert all(p.shape == (8, 8, 3) for p in pixels)
    red, white16, transparent, grey, blue = (p[4, 4].tolist() for p in pixels)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert white16 == [255, 255, 255] and transparent == [255, 255, 255]
    assert grey == [77, 77, 77] and blue == [0, 0, 255]
    assert Decoder(channels=1, resize=8).decode(train.sources[1]).tolist() == [[[255]] * 8] * 8
