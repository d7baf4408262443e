"""The run directory of ``slade run``: the name of every folder and file in it, in one place.

    RUN/config.yaml                    the resolved config
    RUN/data.json                      image and class counts per split, dropped classes
    RUN/bad_images.csv                 unreadable images that were skipped (split, source, reason)
    RUN/metrics.json                   {stage: retrieval metrics, "gap": {embedding: domain gap}}
    RUN/slade.lock                     the writer's OS file lock (host, PID, start time inside)
    RUN/<stage>/done.json              written last: the stage's fingerprint and output digests
    RUN/<stage>/checkpoint.pt          a training stage's full training state (the engine's own)
    RUN/<stage>/log.jsonl              every logged scalar of a training stage
    RUN/<stage>/model.pt               a training stage's embedder (``inference.load_embedder``)
    RUN/<stage>/metrics.json           its retrieval metrics
    RUN/student/basis.pt               the student's feature basis and Gaussians
    RUN/pseudo_labels/                 embeddings.npy, pseudo_labels.csv, clusters.json
    RUN/analysis/, RUN/report.html     t-SNE maps, training plots, gap.json; the run report
    RUN/tensorboard/<stage>/           TensorBoard events of the stage (``logging.tensorboard``)
    RUN/mlruns/, RUN/tracking.json     the default MLflow store; the run's MLflow ids (``logging.mlflow``)

``slade tune CONFIG --out DIR`` (``tune.py``) writes ``DIR/config.yaml`` (the config tuned),
``DIR/study.db`` (the Optuna study), ``DIR/trial_000/``... (a run directory per trial) and
``DIR/best.yaml`` (the best trial's config).

Stage folders: ``pretrain``, ``teacher``, then per round r ``pseudo_labels`` and ``student``, with
``_round{r}`` appended from round 2 on (``pseudo_labels_round2``, ``student_round2``...). A stage's
folder name is also its name in ``metrics.json`` and for ``--until``.
"""

from __future__ import annotations

# The run directory's own files.
CONFIG = "config.yaml"
DATA_SUMMARY = "data.json"
BAD_IMAGES = "bad_images.csv"
METRICS = "metrics.json"
REPORT = "report.html"
ANALYSIS = "analysis"
LOCK = "slade.lock"  # held by the one process that writes the directory (engine/run_lock.py)
TENSORBOARD = "tensorboard"  # RUN/tensorboard/<stage>/: event files (tracking.py)
MLFLOW_STORE = "mlruns"  # the default MLflow store (a file: store)
TRACKING = "tracking.json"  # the MLflow ids of the run and its stages

# A tuning directory (tune.py): CONFIG and LOCK too.
STUDY = "study.db"
BEST_CONFIG = "best.yaml"
TRIALS = "trial_*"  # every trial's run directory (trial())

# Stages.
PRETRAIN = "pretrain"
TEACHER = "teacher"
PSEUDO_LABELS = "pseudo_labels"
STUDENT = "student"

# Files of every stage folder.
DONE = "done.json"
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
MODEL = "model.pt"
STAGE_METRICS = "metrics.json"

# Files of a student's folder.
BASIS = "basis.pt"

# Files of a pseudo-labels folder.
EMBEDDINGS = "embeddings.npy"
TABLE = "pseudo_labels.csv"
CLUSTERS = "clusters.json"

# Files of RUN/analysis/.
GAP = "gap.json"
TSNE_PAGE = "tsne.html"


def in_round(stage: str, round_index: int) -> str:
    """``stage`` for round 1, ``stage_round2``... after: ``in_round("student", 2)``."""
    return stage if round_index == 1 else f"{stage}_round{round_index}"


def student(round_index: int) -> str:
    return in_round(STUDENT, round_index)


def pseudo_labels(round_index: int) -> str:
    return in_round(PSEUDO_LABELS, round_index)


def teacher_of(round_index: int) -> str:
    """The stage whose model pseudo-labels round ``round_index``: the teacher, then each student."""
    return TEACHER if round_index == 1 else student(round_index - 1)


def stages(rounds: int) -> list[str]:
    """Every stage of a run with ``rounds`` student rounds, in the order they run."""
    names = [PRETRAIN, TEACHER]
    for r in range(1, rounds + 1):
        names += [pseudo_labels(r), student(r)]
    return names


def trial(number: int) -> str:
    """The run directory of tuning trial ``number``: ``trial_000``..."""
    return f"trial_{number:03d}"


def tsne_figure(embedding: str) -> str:
    return f"tsne_{embedding}.png"


def training_figure(stage: str) -> str:
    return f"training_{stage}.png"


def basis_figure(student_stage: str) -> str:
    return f"basis_similarity_{student_stage}.png"


def cluster_sizes_figure(labels_stage: str) -> str:
    return f"cluster_sizes_{labels_stage}.png"
