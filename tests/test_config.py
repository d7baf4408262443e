from pathlib import Path

import pytest

from slade.cli import DEMO_CONFIG
from slade.config import Config, diff_configs, dump_config, load_config
from slade.errors import ConfigError

CONFIGS = Path(__file__).parents[1] / "configs"


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    config = load_config()
    assert config == Config()
    assert config.data.dataset == "glyphs"


def student_choice(config):
    """The settings that make the student chosen in benchmarks/results/student_choice.md."""
    p, s = config.pseudo_labels, config.student
    return p.method, p.context_k, p.eps, s.mining, s.miner


@pytest.mark.parametrize("path", [DEMO_CONFIG, CONFIGS / "omniglot_shift.yaml",
                                  CONFIGS / "omniglot_shift_few.yaml"])
def test_the_demo_and_the_presets_name_the_library_default_student(path):
    chosen = ("dbscan", 20, 0.5, "all_pairs", "")
    assert student_choice(load_config(path)) == student_choice(Config()) == chosen


def test_yaml_overrides_defaults_and_set_overrides_yaml(tmp_path):
    path = write(tmp_path, "seed: 3\nteacher:\n  lr: 0.01\n  loss_args: {pos_margin: 0.1}\n")
    config = load_config(path, ["teacher.lr=3e-4", "evaluation.recall_at=[1, 10]"])
    assert config.seed == 3
    assert config.teacher.lr == pytest.approx(3e-4)  # `3e-4` is a string to YAML 1.1
    assert config.teacher.loss_args == {"pos_margin": 0.1}
    assert config.evaluation.recall_at == [1, 10]
    assert config.student.lr == Config().student.lr


def test_tuple_setting(tmp_path):
    config = load_config(write(tmp_path, "pretrain:\n  large_crop_scale: [0.3, 1.0]\n"))
    assert config.pretrain.large_crop_scale == (0.3, 1.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("teacher:\n  lrr: 1\n", r"exp.yaml:2: teacher.lrr: unknown key"),
        ("seed: 1\nteacher:\n  steps: many\n", r"exp.yaml:3: teacher.steps: expected int, got 'many'"),
        ("data:\n  pool: sideways\n", r"exp.yaml:2: data.pool: expected 'disjoint' \| 'overlap'"),
        ("teacher: 3\n", r"exp.yaml:1: teacher: expected a mapping"),
        ("student:\n  miner:\n", r"exp.yaml:2: student.miner: expected str, got None"),  # `key:` alone
        ("seed: 1\nseed: 2\n", r"exp.yaml:2: seed: duplicate key"),
        ("teacher:\n  lr: [1\n", r"exp.yaml:\d+: invalid YAML"),
        ("data:\n  cache: true\n", r"exp.yaml:2: data.cache: expected 'auto'"),
        ("teacher:\n  batch_size: 30\n", r"teacher.batch_size: must be a multiple of teacher.m_per_class"),
        ("student:\n  context_negative_below: 0.1\n",
         r"student.context_negative_below: must be in \[0, student.context_threshold \(0.05\)\], is 0.1"),
        ("student:\n  context_negative_below: 0.05\n  mining: contextual\n  miner: multi_similarity\n",
         r"student.context_negative_below: needs student.miner empty .*student.miner is 'multi_similarity'"),
        ("student:\n  context_negative_below: 0.05\n  mining: confident\n  miner: multi_similarity\n",
         r"student.context_negative_below: only student.mining=contextual reads it \(student.mining is "
         r"'confident'\); leave it 0"),
        ("pseudo_labels:\n  method: optics\n",
         r"exp.yaml:2: pseudo_labels.method: expected 'kmeans' \| 'dbscan'"),
        ("pseudo_labels:\n  eps: 1.5\n",
         r"pseudo_labels.eps: a Jaccard distance, must be in \(0, 1\), is 1.5"),
        ("pseudo_labels:\n  neighbours: 3\n",
         r"pseudo_labels.neighbours: must be at least pseudo_labels.min_samples \(4\), is 3"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError, match=r"^--set: teacher.lr: expected float, got 'fast'"):
        load_config(None, ["teacher.lr=fast"])
    with pytest.raises(ConfigError, match=r"--set nonsense: expected KEY=VALUE"):
        load_config(None, ["nonsense"])
    with pytest.raises(ConfigError, match=r"--set: nope: unknown key"):
        load_config(None, ["nope=1"])


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="teacher.steps: expected int, got True"):
        load_config(None, ["teacher.steps=true"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trip_and_diff(tmp_path):
    config = load_config(None, ["teacher.lr=0.5", "pretrain.enabled=false"])
    again = load_config(write(tmp_path, dump_config(config)))
    assert again == config
    assert diff_configs(config, Config()) == ["pretrain.enabled", "teacher.lr"]
