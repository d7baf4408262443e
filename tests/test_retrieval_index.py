"""`slade index` and `slade query`: a faiss index of a gallery, searched with new images."""

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from slade.cli import app
from slade.config import DataConfig, ModelConfig
from slade.errors import DataError
from slade.inference import load_embedder, save_embedder
from slade.models.embedder import create_embedder
from slade.retrieval_index import RetrievalIndex, build_index


@pytest.fixture
def checkpoint(tmp_path):
    """An untrained tiny embedder: retrieval must agree with its own brute-force search."""
    torch.manual_seed(0)
    config = ModelConfig(width=8, embedding_dim=16)
    return save_embedder(tmp_path / "model.pt", create_embedder(config, 1), config, DataConfig())


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_index_and_query_agree_with_brute_force_cosine_search(checkpoint, class_tree, tmp_path):
    result = invoke("index", checkpoint, class_tree, "--out", tmp_path / "idx")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["images"] == 48 and manifest["dim"] == 16 and manifest["skipped"] == []
    images = json.loads((tmp_path / "idx" / "images.json").read_text())
    assert len(images) == 48 and images[0].endswith("c00/i00.png")

    query = class_tree / "c03" / "i02.png"
    result = invoke("query", tmp_path / "idx", query, "-k", 5, "--out", tmp_path / "hits.json")
    assert result.exit_code == 0, result.output
    hits = json.loads((tmp_path / "hits.json").read_text())
    vectors = load_embedder(checkpoint).embed(images)
    similarity = vectors @ load_embedder(checkpoint).embed([str(query)])[0]
    expected = np.argsort(-similarity)[:5]
    assert [h["image"] for h in hits] == [images[i] for i in expected]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and hits[0]["image"] == str(query)
    assert [h["similarity"] for h in hits] == pytest.approx(similarity[expected].tolist(), abs=1e-5)


def test_query_prints_a_table_or_writes_csv(checkpoint, class_tree, tmp_path):
    build_index(checkpoint, [class_tree], tmp_path / "idx")
    result = CliRunner().invoke(app, ["query", str(tmp_path / "idx"), str(class_tree / "c01"), "-k", "2"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:-1] for line in result.output.splitlines() if line.startswith("│")]
    assert len(rows) == 12  # 6 queries x 2 neighbours
    assert [r[1].strip() for r in rows[:2]] == ["1", "2"]
    assert rows[0][0].strip() == rows[0][3].strip() == str(class_tree / "c01" / "i00.png")
    invoke("query", tmp_path / "idx", class_tree / "c01" / "i00.png", "-k", 3, "--out", tmp_path / "n.csv")
    rows = list(csv.DictReader((tmp_path / "n.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and rows[0]["similarity"] == "1.0"
    bad = invoke("query", tmp_path / "idx", class_tree / "c01" / "i00.png", "--out", tmp_path / "n.txt")
    assert isinstance(bad.exception, DataError) and "give a .json or .csv file" in str(bad.exception)


def test_undecodable_gallery_images_stop_the_build_unless_skipped(checkpoint, class_tree, tmp_path):
    (class_tree / "c02" / "broken.png").write_bytes(b"not a png")
    result = invoke("index", checkpoint, class_tree, "--out", tmp_path / "idx")
    assert isinstance(result.exception, DataError)
    message = str(result.exception)
    assert message.startswith(f"{class_tree / 'c02' / 'broken.png'}: cannot decode image")
    assert "1 of 49 gallery images cannot be decoded" in message and "--skip-bad" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "tree"]  # nothing half-written

    result = invoke("index", checkpoint, class_tree, "--out", tmp_path / "idx", "--skip-bad")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["images"] == 48 and manifest["skipped"][0]["image"].endswith("broken.png")
    with pytest.raises(DataError, match=r"broken.png: cannot decode image .*\(query image\)"):
        RetrievalIndex.load(tmp_path / "idx").search([class_tree / "c02" / "broken.png"])


def test_rebuilding_replaces_an_index_but_never_another_folder(checkpoint, class_tree, tmp_path):
    build_index(checkpoint, [class_tree], tmp_path / "idx")
    build_index(checkpoint, [class_tree / "c00"], tmp_path / "idx")
    assert len(RetrievalIndex.load(tmp_path / "idx").images) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "model.pt", "tree"]
    with pytest.raises(DataError, match="exists and is not a slade index"):
        build_index(checkpoint, [class_tree], class_tree)
    with pytest.raises(DataError, match="not a slade index"):
        RetrievalIndex.load(class_tree)
