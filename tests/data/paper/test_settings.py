"""The paper's settings end to end on tiny trees: configs, build_splits, `slade data check`, and the
pool's diagnostic labels kept away from training."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from layouts import write_cars_devkit, write_lines
from typer.testing import CliRunner

from slade.cli import app
from slade.config import DataConfig, load_config
from slade.data.build import build_splits, prepare
from slade.data.paper import PUBLISHED_COUNTS
from slade.errors import ConfigError, DataError

CONFIGS = Path(__file__).parents[3] / "configs"


@pytest.fixture
def roots(tmp_path, cub_root, nabirds_root, compcars_root, inshop_root, fashion_root):
    return {
        "cub-nabirds": (cub_root, nabirds_root),
        "cars-compcars": (write_cars_devkit(tmp_path / "cars", [97, 97, 98, 98, 99, 99, 100]), compcars_root),
        "inshop-fashion200k": (inshop_root, fashion_root),
    }


@pytest.mark.parametrize("name, dataset, recall", [
    ("cub_nabirds", "cub-nabirds", [1, 2, 4, 8]),
    ("cars_compcars", "cars-compcars", [1, 2, 4, 8]),
    ("inshop_fashion200k", "inshop-fashion200k", [1, 10, 20, 30, 40, 50]),
])
def test_paper_configs_carry_the_papers_choices(name, dataset, recall):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.data.dataset == dataset and config.evaluation.recall_at == recall
    assert (config.model.backbone, config.model.pretrained) == ("resnet50", True)
    assert (config.data.image_size, config.data.channels, config.data.augmentation) == (224, 3, "photo")
    assert (config.student.batch_size, config.student.unlabeled_batch_size) == (32, 32)
    assert config.student.momentum == 0.99 and config.student.lambda1 == 1.0
    # SLADE as published, not the library's default student: k-means, Eq. 7, the MS miner
    assert (config.pseudo_labels.method, config.student.mining, config.student.miner) == (
        "kmeans", "confident", "multi_similarity")


@pytest.mark.parametrize("dataset, expected", [
    ("cub-nabirds", {"labeled": (5, 2), "unlabeled": (5, 0), "test": (5, 2)}),
    ("cars-compcars", {"labeled": (4, 2), "unlabeled": (6, 0), "test": (3, 2)}),
    ("inshop-fashion200k", {"labeled": (4, 2), "unlabeled": (3, 0), "test": (2, 2), "gallery": (4, 3)}),
])
def test_build_splits_for_each_setting(roots, dataset, expected):
    root, pool_root = roots[dataset]
    splits = build_splits(DataConfig(dataset=dataset, root=str(root), pool_root=str(pool_root)), seed=0)
    assert {k: (v["images"], v["classes"]) for k, v in splits.summary().items()} == expected
    assert splits.labeled.labeled and not splits.unlabeled.labeled and not splits.unlabeled.has_labels


def test_missing_roots_are_config_errors(roots):
    with pytest.raises(ConfigError, match=r"data\.root: cub-nabirds needs the CUB_200_2011 folder"):
        build_splits(DataConfig(dataset="cub-nabirds"), seed=0)
    cub, _ = roots["cub-nabirds"]
    with pytest.raises(ConfigError, match=r"data\.pool_root: cub-nabirds needs the nabirds folder"):
        build_splits(DataConfig(dataset="cub-nabirds", root=str(cub)), seed=0)


def test_traditional_setting_keeps_the_gallery(roots):
    root, pool_root = roots["inshop-fashion200k"]
    data = DataConfig(dataset="inshop-fashion200k", root=str(root), pool_root=str(pool_root),
                      setting="traditional", labeled_fraction=0.5)
    splits = build_splits(data, seed=0)
    assert len(splits.gallery) == 4 and len(splits.labeled) + len(splits.unlabeled) == 4


def test_pool_labels_serve_diagnostics_and_never_reach_the_student(roots):
    """The pool's categories reach the data (for purity / NMI) but the student's loss ignores them."""
    from slade.models.embedder import create_embedder
    from slade.stages.student import StudentStage

    cub, nabirds = roots["cub-nabirds"]
    config = load_config(None, [
        "data.dataset=cub-nabirds", f"data.root={cub}", f"data.pool_root={nabirds}", "data.pool_labels=true",
        "data.channels=3", "data.dark_background=false", "data.image_size=16", "model.width=8",
        "model.embedding_dim=8", "student.batch_size=4", "student.m_per_class=2",
        "student.unlabeled_batch_size=4", "student.unlabeled_m_per_class=2", "student.basis_warmup_steps=0",
        "student.mining=confident", "student.miner=multi_similarity",  # the paper's student, its basis
    ])
    data = prepare(build_splits(config.data, config.seed), config.data)
    assert not data.unlabeled.image_set.labeled and data.unlabeled.image_set.has_labels
    assert data.unlabeled.labels.tolist() == [0, 0, 1, 2, 2]
    torch.manual_seed(0)
    model = create_embedder(config.model, 3)
    stage = StudentStage(model, data.labeled, data.unlabeled, np.array([0, 1, 0, 1, 1]), config.student,
                         config.data, seed=0)
    labeled, (x_u, y_u, i_u) = next(stage.batches(0))
    assert (y_u >= 0).all()  # the diagnostic labels ride along in the batch ...
    seen = copy.deepcopy(stage).loss_terms((labeled, (x_u, y_u, i_u)), step=1)
    blind = copy.deepcopy(stage).loss_terms((labeled, (x_u, torch.full_like(y_u, -1), i_u)), step=1)
    assert seen.keys() == blind.keys()  # ... and change nothing the student computes
    assert all(torch.equal(seen[k], blind[k]) for k in seen)


def run_check(config_path, *overrides, flags=()):
    args = ["data", "check", str(config_path), *flags]
    for item in overrides:
        args += ["--set", item]
    return CliRunner().invoke(app, args)


def test_data_check_reports_counts_against_published_ones(roots):
    cub, nabirds = roots["cub-nabirds"]
    result = run_check(CONFIGS / "cub_nabirds.yaml", f"data.root={cub}", f"data.pool_root={nabirds}")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["labeled", "5", "2", "5864", "/", "100"]
    assert lines[2].split() == ["unlabeled", "5", "0", "48562", "/", "-"]  # categories not kept
    assert "labeled: 5 images, published 5864" in result.output
    assert "test: 2 classes, published 100" in result.output
    assert lines[-1] == "cub-nabirds: FAILED"


def test_data_check_passes_when_counts_match(roots, monkeypatch):
    cub, nabirds = roots["cub-nabirds"]
    monkeypatch.setitem(PUBLISHED_COUNTS, "cub-nabirds",
                        {"labeled": (5, 2), "test": (5, 2), "unlabeled": (5, 3)})
    overrides = [f"data.root={cub}", f"data.pool_root={nabirds}", "data.pool_labels=true"]
    result = run_check(CONFIGS / "cub_nabirds.yaml", *overrides)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "cub-nabirds: ok"


def test_data_check_lists_unreadable_and_missing_images(roots, monkeypatch):
    cub, nabirds = roots["cub-nabirds"]
    monkeypatch.setitem(PUBLISHED_COUNTS, "cub-nabirds", {"labeled": (5, 2), "test": (5, 2)})
    broken = cub / "images/101.White_Pelican/White_Pelican_0001.jpg"
    broken.write_bytes(b"not a jpeg")
    overrides = [f"data.root={cub}", f"data.pool_root={nabirds}"]
    result = run_check(CONFIGS / "cub_nabirds.yaml", *overrides)
    assert result.exit_code == 1
    assert (f"unreadable (test, more than data.max_bad_fraction): {broken}: cannot decode image"
            in result.output)
    ok = run_check(CONFIGS / "cub_nabirds.yaml", *overrides, "data.max_bad_fraction=0.5")
    assert ok.exit_code == 0 and "a run skips them" in ok.output
    assert run_check(CONFIGS / "cub_nabirds.yaml", *overrides, flags=["--no-decode"]).exit_code == 0
    for name in ("White_Pelican_0000.jpg", "White_Pelican_0002.jpg"):
        (broken.parent / name).unlink()
    result = run_check(CONFIGS / "cub_nabirds.yaml", *overrides)
    assert result.exit_code == 1
    missing = [line for line in result.output.splitlines() if line.startswith("missing: ")]
    assert len(missing) == 2 and "images.txt:6: " in missing[0] and "images.txt:8: " in missing[1]


def test_data_check_works_for_any_dataset(tmp_path, class_tree):
    config = write_lines(tmp_path / "folders.yaml", [
        "data:", "  dataset: folders", f"  labeled: {class_tree}", f"  test: {class_tree}",
        f"  unlabeled: {class_tree}"])
    result = run_check(config)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split() == ["labeled", "48", "8", "-", "/", "-"]


def test_data_check_stops_on_a_reader_error_naming_file_and_line(roots):
    root, pool_root = roots["inshop-fashion200k"]
    partition = root / "Eval" / "list_eval_partition.txt"
    partition.write_text(partition.read_text().replace("query", "probe", 1))
    config = CONFIGS / "inshop_fashion200k.yaml"
    result = run_check(config, f"data.root={root}", f"data.pool_root={pool_root}")
    assert isinstance(result.exception, DataError)
    assert "list_eval_partition.txt:7: unknown evaluation status 'probe'" in str(result.exception)
