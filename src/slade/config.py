"""Experiment configuration: one YAML file per experiment, mapped onto typed dataclasses.

Defaults live in the dataclasses below; a YAML file overrides them, and ``--set key=value``
overrides the file (values are parsed as YAML, so ``--set teacher.lr=3e-4`` gives a float).
Every error names the file, the line and the dotted key.

The loader is written here rather than taken from OmegaConf because errors must carry the YAML
line, which OmegaConf does not keep.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from slade.dicts import differing_keys, flatten
from slade.errors import ConfigError


@dataclass
class DataConfig:
    """Which images the run learns from and is tested on, and how they are decoded."""

    # glyphs: the embedded default (fonts inside matplotlib, no files needed);
    # omniglot-shift: the benchmark of ../shared/data/README.md;
    # folders: class-per-folder trees or `path,label` CSV lists named by `labeled`, `test`, ...;
    # cub-nabirds, cars-compcars, inshop-fashion200k: the paper's settings (src/slade/data/paper/).
    dataset: Literal[
        "glyphs", "omniglot-shift", "folders", "cub-nabirds", "cars-compcars", "inshop-fashion200k"
    ] = "glyphs"
    # Data root for omniglot-shift (empty means $SLADE_DATA_ROOT, else ../shared/data); for the
    # paper's settings, the labeled data set's folder (CUB_200_2011, Cars-196, In-shop).
    root: str = ""
    # omniglot-shift pool: `disjoint` (unseen alphabets) or `overlap` (includes the train alphabets).
    pool: Literal["disjoint", "overlap"] = "disjoint"
    # The paper's settings: the unlabeled pool's folder (nabirds, CompCars, fashion200k), and whether
    # to keep its categories for diagnostics only (pseudo-label purity / NMI; never trained on).
    pool_root: str = ""
    pool_labels: bool = False
    # folders: a class-folder tree or a CSV list for each part; `gallery` only for query/gallery.
    labeled: str = ""
    test: str = ""
    unlabeled: str = ""
    gallery: str = ""
    # Train on these labeled classes only (names, or prefixes such as an alphabet `Greek` or a
    # folder); empty: every labeled class.
    labeled_classes: list[str] = field(default_factory=list)
    # Choose settings without the test set: a fraction of the labeled classes (drawn with `seed`)
    # or named classes / prefixes, held out as validation classes. The run then trains on the other
    # labeled classes and evaluates on these; the test classes are not read (data/splits.py).
    validation: float | list[str] = 0.0
    # `shift`: the unlabeled pool comes from another source (SLADE's setting);
    # `traditional`: a random `labeled_fraction` of the labeled set stays labeled, the rest is the pool.
    setting: Literal["shift", "traditional"] = "shift"
    labeled_fraction: float = 0.1
    # glyphs: number of labeled (train) and test character classes.
    glyph_train_classes: int = 160
    glyph_test_classes: int = 80
    glyph_images_per_class: int = 20
    glyph_pool_size: int = 6000
    # Decoding: images are converted to `channels`, resized so the shorter side is `resize`
    # (0 means `image_size`), and cropped to `image_size` by the transforms.
    image_size: int = 28
    resize: int = 0
    channels: Literal[1, 3] = 1
    # Invert grey images whose background is light, so every source has bright ink on dark.
    dark_background: bool = True
    # `strokes`: small affine jitter (characters, glyphs); `photo`: random resized crop + flip.
    augmentation: Literal["strokes", "photo", "none"] = "strokes"
    # A class with fewer images cannot form positive pairs: `drop` it (reported) or `error`.
    min_images_per_class: int = 2
    small_classes: Literal["drop", "error"] = "drop"
    # Unreadable images are skipped and listed, up to this fraction of a set; beyond it, an error.
    max_bad_fraction: float = 0.01
    # Keep decoded images in memory: `auto` does so when they fit in `cache_limit_mb`.
    cache: Literal["auto", "always", "never"] = "auto"
    cache_limit_mb: int = 2048


@dataclass
class ModelConfig:
    """The embedding network f(x): backbone -> pooling -> linear -> L2 normalisation."""

    # A slade CPU network (`convnet4`, `convnet6`) or any timm model name (`resnet50`).
    backbone: str = "convnet4"
    # The backbone's ImageNet weights from the Hugging Face hub (timm's default tag), or from its
    # cache without network.
    pretrained: bool = False
    # Or a local state dict for the backbone: `.safetensors`, or `.pt` / `.pth` / `.bin` (read
    # without unpickling objects; `{"state_dict": ...}` / `{"model": ...}` containers unwrapped).
    # Timm's key names (torchvision's ResNets share them); the classifier head is left out. A
    # relative path is relative to the working directory, like the data paths.
    weights: str = ""
    embedding_dim: int = 128
    # Channel width of the slade CPU networks (ignored for timm backbones).
    width: int = 64
    pooling: Literal["avg", "max", "avgmax"] = "avg"


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping shared by every training stage."""

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    # Batches are m-per-class: `batch_size / m_per_class` classes, `m_per_class` images each.
    batch_size: int = 64
    m_per_class: int = 4
    eval_every: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    num_workers: int = 0
    # A NaN or Inf loss term or gradient: `rollback` to the last checkpoint and skip the batch that
    # caused it (at most `max_rollbacks` times in the stage), or `stop` with an error.
    nonfinite: Literal["rollback", "stop"] = "rollback"
    max_rollbacks: int = 3


@dataclass
class ExecutionConfig:
    """How every stage runs the network (the `train:` section): numeric precision, compilation."""

    # `auto`: bf16 autocast (and channels-last) on CUDA, fp32 on the CPU; `bf16` also runs on the
    # CPU; `fp16` (with a gradient scaler) needs CUDA. Training, evaluation and the pseudo labels'
    # embeddings all use it.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # `torch.compile` the backbone of every training stage (in place: checkpoints and model.pt are
    # unchanged). The first steps of a stage are slower while it compiles.
    compile: bool = False


@dataclass
class PretrainConfig(TrainConfig):
    """Stage 0: SwAV on the labeled and unlabeled images together, labels ignored."""

    enabled: bool = True
    steps: int = 600
    lr: float = 2e-3
    batch_size: int = 128
    large_crops: int = 2
    large_crop_scale: tuple[float, float] = (0.5, 1.0)
    small_crops: int = 4
    small_crop_size: int = 16
    small_crop_scale: tuple[float, float] = (0.2, 0.5)
    projection_hidden_dim: int = 256
    projection_dim: int = 64
    prototypes: int = 300
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_steps: int = 100
    # A queue of past projections steadies Sinkhorn when batches are smaller than `prototypes`.
    queue_length: int = 0
    queue_start_step: int = 0


@dataclass
class RankingConfig(TrainConfig):
    """A stage trained with a ranking loss on m-per-class batches: the teacher and the student."""

    # Any pytorch-metric-learning loss by class name, or `contrastive` / `multi_similarity`.
    loss: str = "multi_similarity"
    loss_args: dict[str, Any] = field(default_factory=dict)
    # A pytorch-metric-learning miner by class name, or empty for none.
    miner: str = "multi_similarity"
    miner_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherConfig(RankingConfig):
    """Stage 1: the teacher, trained on the labeled set with a ranking loss."""

    steps: int = 1500
    # Start from the stage-0 weights when stage 0 ran.
    init: Literal["pretrain", "random"] = "pretrain"


@dataclass
class PseudoLabelConfig:
    """Stage 2: clusters of the teacher's embeddings of the unlabeled pool."""

    # `dbscan` (the default; not in SLADE, domain-adaptive re-identification's: Cluster Contrast,
    # SpCL): DBSCAN on the k-reciprocal Jaccard distance, which finds its own number of clusters and
    # leaves the images in no dense neighbourhood out (pseudo label -1, never sampled); chosen on
    # omniglot-shift's validation classes (benchmarks/results/student_choice.md). `kmeans` (the
    # paper's): `clusters` spherical k-means clusters of the whole pool.
    method: Literal["kmeans", "dbscan"] = "dbscan"
    clusters: int = 300
    iterations: int = 25
    redo: int = 1
    # `dbscan`: the largest Jaccard distance of two neighbours (in (0, 1)), the neighbours a core
    # image needs, the nearest neighbours each image's distances are kept to, and the k-reciprocal
    # sets' k and k2 (context/neighbourhood.py). Cluster Contrast's Market-1501 settings (eps 0.6,
    # k 30) but for eps 0.5 and k 20, chosen on omniglot-shift's validation classes.
    eps: float = 0.5
    min_samples: int = 4
    neighbours: int = 30
    context_k: int = 20
    context_k2: int = 6


@dataclass
class StudentConfig(RankingConfig):
    """Stage 3: the student. By default every pair (``mining: all_pairs``, no miner) of the DBSCAN
    pseudo labels, chosen on omniglot-shift's validation classes and then read once on its test
    classes (benchmarks/results/student_choice.md). ``mining: confident`` with ``miner:
    multi_similarity`` and ``pseudo_labels.method: kmeans`` is SLADE as published (feature basis
    learning and confident pseudo pairs)."""

    # No miner: every pair of a batch trains (on omniglot-shift's validation classes the unmined
    # students beat the mined ones).
    miner: str = ""

    # All steps, the first `basis_warmup_steps` of which train the feature basis alone.
    steps: int = 1800
    # Each step sees `batch_size` labeled and `unlabeled_batch_size` unlabeled images.
    unlabeled_batch_size: int = 64
    unlabeled_m_per_class: int = 4
    init: Literal["teacher", "pretrain"] = "teacher"
    rounds: int = 1
    # Feature basis: `basis_size` vectors (0 means one per labeled class, k = C_l).
    basis_size: int = 0
    basis_scale: float = 16.0
    basis_lr: float = 1e-2
    basis_warmup_steps: int = 300
    sd_margin: float = 0.5
    sd_variance_weight: float = 1.0
    momentum: float = 0.99
    # Rows of W_a L2-normalised (responses are cosines); `false` with `basis_scale: 1` is the plain
    # linear basis of the paper's text.
    basis_normalise: bool = True
    # L_SD (Eq. 5) on the `batch` statistics, or on the `momentum` Gaussians of Eq. 6 (the batch's
    # part of them, so its gradient is damped by 1 - momentum).
    sd_gaussians: Literal["batch", "momentum"] = "batch"
    # Unlabeled batches: `unlabeled_m_per_class` images per pseudo label, or drawn at `random`.
    unlabeled_sampling: Literal["per_label", "random"] = "per_label"
    # `confident`: Eq. 7; `thresholds_only`: Eq. 7 without the pseudo-label condition;
    # `lenient` (not in the paper): drop only the pseudo pairs the basis contradicts (thresholds
    # swapped); `all_pairs`: every pseudo pair mined by `miner`, no basis (the naive student);
    # `contextual` (not in the paper): the pseudo pairs whose k-reciprocal neighbourhoods in the pool
    # agree (context/), no basis, then `miner` if set.
    mining: Literal["confident", "thresholds_only", "lenient", "all_pairs", "contextual"] = "all_pairs"
    # `contextual`: neighbourhood size k (k-reciprocal sets), k2 (query expansion), and the
    # contextual similarity a same-cluster pair needs to be a positive (below it, a negative). 0.05
    # was chosen on omniglot-shift's validation classes over 0.15 (which keeps about 90% of the right
    # same-cluster pairs among the overlap pool's tiles of the labeled training alphabets,
    # benchmarks/results/pool_purity.md, but too few on the disjoint pool).
    context_k: int = 20
    context_k2: int = 6
    context_threshold: float = 0.05
    # `contextual`: the same-cluster pairs below this contextual similarity are negatives instead of
    # being dropped (0: none; at most context_threshold). Not the default: see student_choice.md.
    context_negative_below: float = 0.0
    # Keep only the basis-kept pairs that `miner` also selects (the hard ones; not in the paper).
    mine_hard: bool = False
    lambda1: float = 1.0
    lambda2: float = 1.0


@dataclass
class EvaluationConfig:
    """Retrieval evaluation on the test classes."""

    recall_at: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # Queries per chunk of the exact neighbour search (bounds memory).
    chunk_size: int = 4096
    batch_size: int = 256


@dataclass
class AnalysisConfig:
    """Visual analysis after the last stage (`slade tsne`): t-SNE maps, domain gap, RUN/report.html."""

    enabled: bool = True
    # Images drawn uniformly from each of the labeled set and the unlabeled pool.
    points: int = 1000
    perplexity: float = 30.0
    seed: int = 0
    # The report's retrieval browser: test queries shown, each with its `top_k` nearest images.
    queries: int = 12
    top_k: int = 8


@dataclass
class LoggingConfig:
    """Experiment tracking (``tracking.py``): what the training logs, also sent to TensorBoard or MLflow."""

    # RUN/tensorboard/<stage>/: every logged scalar, the periodic evaluations, the training figures.
    tensorboard: bool = False
    # One MLflow run per run directory, a nested run per training stage (`pip install slade[mlflow]`).
    mlflow: bool = False
    # A tracking server (`http://host:5000`), `sqlite:///mlflow.db`, `file:/path`...; empty: a file:
    # store in RUN/mlruns.
    mlflow_uri: str = ""
    mlflow_experiment: str = "slade"


@dataclass
class TuneConfig:
    """``slade tune``: the settings to search and the score to maximise (``tune.py``)."""

    # Setting -> a range (`student.lr: {low: 1e-4, high: 1e-2, log: true}`, `step:` too; ints for an
    # int setting) or a list of choices (`student.mining: [confident, lenient]`).
    params: dict[str, Any] = field(default_factory=dict)
    # `stage.metric` of RUN/metrics.json, scored on the data.validation classes (`teacher.recall@1`);
    # empty: the last student's map@r.
    objective: str = ""


@dataclass
class Config:
    """One SLADE experiment."""

    seed: int = 0
    # `auto` picks CUDA when present.
    device: str = "auto"
    train: ExecutionConfig = field(default_factory=ExecutionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


# ---------------------------------------------------------------------------------------------
# Loading


class _Where:
    """Where each dotted key was written (``file:line`` or ``--set``), for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.origin: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        if key in self.origin:
            return self.origin[key]
        inner = [v for k, v in self.origin.items() if k.startswith(key + ".")]
        return inner[0] if inner else self.file


def _node_to_python(node: yaml.Node, prefix: str, where: _Where) -> Any:
    """Convert a composed YAML node to Python, recording the line of each mapping key."""
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}.{key}" if prefix else key
            where.origin[dotted] = f"{where.file}:{key_node.start_mark.line + 1}"
            if key in out:
                raise ConfigError(f"{where(dotted)}: {dotted}: duplicate key")
            out[key] = _node_to_python(value_node, dotted, where)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(v, prefix, where) for v in node.value]
    if node.tag == "tag:yaml.org,2002:null":  # `key:` with nothing after it
        return None
    return yaml.safe_load(yaml.serialize(node))


def _read_yaml(path: Path, where: _Where) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    if node is None:
        return {}
    data = _node_to_python(node, "", where)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, not {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: _Where) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless."""
    origin = typing.get_origin(tp)
    bad = ConfigError(
        f"{where(key)}: {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(
            typing.get_args(tp)[typing.get_args(tp).index(value)]
        ):
            return value
        raise bad
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if origin is tuple:
            if len(value) != len(args):
                raise bad
            return tuple(_coerce(v, a, key, where) for v, a in zip(value, args, strict=False))
        return [_coerce(v, args[0], key, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where(key)}: {key}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, key, where)
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _build(cls: type, values: dict[str, Any], prefix: str, where: _Where) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(
                f"{where(dotted)}: {dotted}: unknown key (known: {', '.join(sorted(names))})"
            )
        kwargs[key] = _coerce(value, hints[key], dotted, where)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["teacher.lr=3e-4", ...]`` -> nested dict, values parsed as YAML scalars."""
    data: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. teacher.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    where = _Where(str(path) if path else "<defaults>")
    data = _read_yaml(Path(path), where) if path else {}
    if overrides:
        parsed = parse_overrides(overrides)
        for key in flatten(parsed):
            where.origin[key] = "--set"
        data = _merge(data, parsed)
    config = _coerce(data, Config, "", where) if data else Config()
    config.tune.params = _search_space(config.tune.params, where)
    validate(config)
    return config


def with_settings(config: Config, settings: dict[str, Any]) -> Config:
    """``config`` with ``{dotted key: value}`` applied, checked as a loaded config is."""
    data = to_dict(config)
    for key, value in settings.items():
        _set_dotted(data, key, value)
    changed = _coerce(data, Config, "", _Where("<settings>"))
    validate(changed)
    return changed


def setting_type(dotted: str) -> Any:
    """The type of setting ``dotted`` (``student.lr`` -> float).

    Raises:
        KeyError: no such setting (or ``dotted`` is a section).
    """
    tp: Any = Config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp) or part not in {f.name for f in dataclasses.fields(tp)}:
            raise KeyError(dotted)
        tp = typing.get_type_hints(tp)[part]
    if dataclasses.is_dataclass(tp):
        raise KeyError(dotted)
    return tp


_RANGE_KEYS = ("low", "high", "log", "step")


def _search_space(params: dict[str, Any], where: _Where, prefix: str = "") -> dict[str, Any]:
    """``tune.params`` as ``{setting: range | choices}``, each checked against its setting's type.

    A setting may be written dotted (``student.lr: ...``) or nested (``student: {lr: ...}``).
    """
    space: dict[str, Any] = {}
    for name, spec in params.items():
        setting, key = f"{prefix}{name}", f"tune.params.{prefix}{name}"
        if isinstance(spec, dict) and spec and not spec.keys() & set(_RANGE_KEYS):
            space.update(_search_space(spec, where, f"{setting}."))
            continue
        try:
            tp = setting_type(setting)
        except KeyError:
            raise ConfigError(f"{where(key)}: {key}: {setting} is not a setting") from None
        if setting.split(".")[0] in ("tune", "logging"):
            raise ConfigError(f"{where(key)}: {key}: not a setting a trial can change")
        if isinstance(spec, dict):
            space[setting] = _search_range(spec, tp, key, where)
        elif isinstance(spec, list) and spec:
            choices = [_coerce(v, tp, key, where) for v in spec]
            if not all(v is None or isinstance(v, (bool, int, float, str)) for v in choices):
                raise ConfigError(f"{where(key)}: {key}: choices must be single values, not lists")
            space[setting] = choices
        else:
            raise ConfigError(f"{where(key)}: {key}: expected a range {{low: .., high: ..}} or a list "
                              f"of choices, got {spec!r}")
    return space


def _search_range(spec: dict[str, Any], tp: Any, key: str, where: _Where) -> dict[str, Any]:
    if tp not in (int, float):
        raise ConfigError(f"{where(key)}: {key}: a range needs a number setting, this one is "
                          f"{_type_name(tp)}: give a list of choices")
    unknown = sorted(spec.keys() - set(_RANGE_KEYS))
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where(key)}: {key}: a range is {{low: .., high: ..}} with optional log "
                          f"and step{f', not {unknown[0]}' if unknown else ''}")
    low, high = (_coerce(spec[k], tp, f"{key}.{k}", where) for k in ("low", "high"))
    log = _coerce(spec.get("log", False), bool, f"{key}.log", where)
    out = {"low": low, "high": high, "log": log}
    if "step" in spec:
        out["step"] = _coerce(spec["step"], tp, f"{key}.step", where)
    problem = ("low must be below high" if low >= high else
               "a log range needs low > 0" if log and low <= 0 else
               "step must be > 0" if out.get("step", 1) <= 0 else
               "step and log do not go together" if log and "step" in out else None)
    if problem:
        raise ConfigError(f"{where(key)}: {key}: {problem}")
    return out


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    checks: list[tuple[bool, str]] = [
        (config.data.image_size >= 8, "data.image_size: must be at least 8"),
        (0.0 <= config.data.max_bad_fraction <= 1.0, "data.max_bad_fraction: must be in [0, 1]"),
        (0.0 < config.data.labeled_fraction < 1.0, "data.labeled_fraction: must be in (0, 1)"),
        (config.data.min_images_per_class >= 2, "data.min_images_per_class: must be at least 2"),
        (config.model.embedding_dim >= 2, "model.embedding_dim: must be at least 2"),
        (not (config.model.pretrained and config.model.weights),
         "model.weights: set either model.weights or model.pretrained, not both "
         "(model.pretrained: false to start from the file)"),
        (config.pseudo_labels.clusters >= 2, "pseudo_labels.clusters: must be at least 2"),
        (0.0 < config.pseudo_labels.eps < 1.0,
         f"pseudo_labels.eps: a Jaccard distance, must be in (0, 1), is {config.pseudo_labels.eps}"),
        (config.pseudo_labels.min_samples >= 2, "pseudo_labels.min_samples: must be at least 2"),
        (config.pseudo_labels.neighbours >= config.pseudo_labels.min_samples,
         f"pseudo_labels.neighbours: must be at least pseudo_labels.min_samples "
         f"({config.pseudo_labels.min_samples}), is {config.pseudo_labels.neighbours}"),
        (config.student.rounds >= 1, "student.rounds: must be at least 1"),
        (0.0 <= config.student.momentum < 1.0, "student.momentum: must be in [0, 1)"),
        (0.0 <= config.student.context_negative_below <= config.student.context_threshold,
         "student.context_negative_below: must be in [0, student.context_threshold "
         f"({config.student.context_threshold})], is {config.student.context_negative_below}"),
        (not (config.student.context_negative_below and config.student.mining != "contextual"),
         "student.context_negative_below: only student.mining=contextual reads it "
         f"(student.mining is {config.student.mining!r}); leave it 0"),
        (not (config.student.context_negative_below and config.student.miner),
         "student.context_negative_below: needs student.miner empty (a PML miner picks negatives by "
         f"pseudo label and would drop these; student.miner is {config.student.miner!r})"),
        (bool(config.evaluation.recall_at), "evaluation.recall_at: give at least one K"),
        (all(k >= 1 for k in config.evaluation.recall_at), "evaluation.recall_at: K must be >= 1"),
        (config.analysis.points >= 2, "analysis.points: must be at least 2"),
        (config.analysis.perplexity > 0, "analysis.perplexity: must be > 0"),
        (config.analysis.top_k >= 1, "analysis.top_k: must be at least 1"),
    ]
    for name in ("pretrain", "teacher", "student"):
        stage: TrainConfig = getattr(config, name)
        checks += [
            (stage.steps >= 0, f"{name}.steps: must be >= 0"),
            (stage.lr > 0, f"{name}.lr: must be > 0"),
            (stage.batch_size >= 2, f"{name}.batch_size: must be at least 2"),
            (stage.max_rollbacks >= 0, f"{name}.max_rollbacks: must be >= 0"),
            (stage.m_per_class >= 2 or name == "pretrain", f"{name}.m_per_class: must be at least 2"),
            (
                name == "pretrain" or stage.batch_size % stage.m_per_class == 0,
                f"{name}.batch_size: must be a multiple of {name}.m_per_class ({stage.m_per_class})",
            ),
        ]
    s = config.student
    checks.append(
        (
            s.unlabeled_batch_size % s.unlabeled_m_per_class == 0,
            "student.unlabeled_batch_size: must be a multiple of student.unlabeled_m_per_class",
        )
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def diff_configs(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    return differing_keys(to_dict(a), to_dict(b))
