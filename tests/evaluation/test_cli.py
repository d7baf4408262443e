"""`slade evaluate`: saved embeddings in, the metrics of `evaluate_embeddings` out."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from slade.cli import app
from slade.errors import DataError
from slade.evaluation.retrieval import evaluate_embeddings


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, 1500)
    x = (rng.standard_normal((20, 16))[labels] + rng.standard_normal((1500, 16))).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    return tmp_path, x, labels


def evaluate(tmp_path, *options):
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                                      "--out", str(out), *options])
    return result, (json.loads(out.read_text()) if out.is_file() else None)


def test_bounded_memory_gives_the_exact_metrics(saved):
    tmp_path, x, labels = saved
    result, metrics = evaluate(tmp_path, "--max-memory-mb", "2", "--no-nmi", "--k", "1,5")
    assert result.exit_code == 0, result.output
    assert "map@r\t" in result.output and "nmi" not in metrics
    assert metrics == pytest.approx(evaluate_embeddings(x, labels, ks=(1, 5), nmi=False), abs=1e-12)


def test_ivf_reports_what_it_loses(saved):
    tmp_path, x, labels = saved
    result, metrics = evaluate(tmp_path, "--index", "ivf", "--nprobe", "1", "--no-nmi")
    assert result.exit_code == 0, result.output
    assert 0 < metrics["index_recall"] < 1
    assert metrics == evaluate_embeddings(x, labels, nmi=False, index="ivf", nprobe=1)


def test_bad_option_is_a_one_line_error(saved):
    tmp_path, _, _ = saved
    result, metrics = evaluate(tmp_path, "--index", "hnsw")
    assert isinstance(result.exception, DataError) and metrics is None
    assert str(result.exception) == "index must be 'exact' or 'ivf', got 'hnsw'"
