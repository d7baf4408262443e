"""In-shop Clothes Retrieval and Fashion200K, from tiny trees in their official layouts."""

import pytest
from layouts import INSHOP_ROWS, write_inshop, write_lines

from slade.data.paper.fashion200k import read_fashion200k
from slade.data.paper.inshop import read_inshop
from slade.data.paper.layout import MissingFiles
from slade.errors import DataError


def test_inshop_train_query_gallery(inshop_root):
    train, query, gallery = read_inshop(inshop_root)
    assert (len(train), len(query), len(gallery)) == (4, 2, 4)
    assert train.class_names == ["id_00000002", "id_00000080"] and train.labels().tolist() == [0, 0, 1, 1]
    # Query and gallery share class names, so equal labels are the same item.
    assert query.class_names == gallery.class_names == ["id_00000001", "id_00000007", "id_00000009"]
    assert query.labels().tolist() == [0, 1] and gallery.labels().tolist() == [0, 0, 1, 2]
    assert query.sources[0].endswith("Img/img/WOMEN/Skirts/id_00000001/02_1_front.jpg")
    assert {s.name for s in (train, query, gallery)} == {"inshop/train", "inshop/query", "inshop/gallery"}


def test_inshop_flat_copy_with_the_list_beside_img(tmp_path, inshop_root):
    (inshop_root / "Eval" / "list_eval_partition.txt").rename(inshop_root / "Img" / "list_eval_partition.txt")
    train, _, _ = read_inshop(inshop_root / "Img")
    assert len(train) == 4


def test_inshop_unknown_status_word(tmp_path):
    rows = INSHOP_ROWS[:3] + [(INSHOP_ROWS[3][0], INSHOP_ROWS[3][1], "val")]
    root = write_inshop(tmp_path / "inshop", rows)
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:6: unknown evaluation status 'val' "
                                        r"\(expected train, query, gallery\)"):
        read_inshop(root)


def test_inshop_malformed_partition(tmp_path):
    root = write_inshop(tmp_path / "inshop", count=11)
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:1: declares 11 images, but 10 are listed"):
        read_inshop(root)
    write_lines(root / "Eval" / "list_eval_partition.txt", ["1", "header", "img/a.jpg id_1"])
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:3: expected <image_name> <item_id> "
                                        r"<evaluation_status>, got 'img/a.jpg id_1'"):
        read_inshop(root)
    write_lines(root / "Eval" / "list_eval_partition.txt", ["many", "header"])
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:1: image count 'many' is not an integer"):
        read_inshop(root)


def test_inshop_missing_image_and_path_escaping_the_root(inshop_root):
    (inshop_root / "Img" / INSHOP_ROWS[8][0]).unlink()
    with pytest.raises(MissingFiles, match=r"list_eval_partition\.txt:11: .*01_4_full\.jpg: file not found"):
        read_inshop(inshop_root)
    write_lines(inshop_root / "Eval" / "list_eval_partition.txt", ["1", "h", "../../etc/passwd id_1 train"])
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:3: path '\.\./\.\./etc/passwd' must be"):
        read_inshop(inshop_root)


def test_fashion200k_pool_from_every_list(fashion_root):
    pool = read_fashion200k(fashion_root)
    assert len(pool) == 3 and not pool.labeled and not pool.has_labels  # a repeat counts once
    assert set(pool.domains) == {"fashion200k"}
    kept = read_fashion200k(fashion_root.parent, keep_labels=True)
    assert kept.class_names == ["women/dresses/casual_and_day_dresses/51727804",
                                "women/tops/blouses/87425317"]
    assert kept.labels().tolist() == [0, 0, 1] and not kept.labeled


def test_fashion200k_missing_image_or_lists(fashion_root):
    write_lines(fashion_root / "labels" / "skirt_train_detect_all.txt",
                ["women/skirts/mini/1/1_0.jpeg\t0.5\tred mini skirt"])
    with pytest.raises(MissingFiles, match=r"skirt_train_detect_all\.txt:1: .*1_0\.jpeg: file not found"):
        read_fashion200k(fashion_root)
    for path in (fashion_root / "labels").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"labels: no \*\.txt lists"):
        read_fashion200k(fashion_root)
