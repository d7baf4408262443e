"""The tiny demo run the reliability tests kill, starve and rerun."""

import os
import subprocess
import sys

TINY_SIZES = [
    "data.glyph_train_classes=12", "data.glyph_test_classes=6", "data.glyph_images_per_class=6",
    "data.glyph_pool_size=160", "model.width=8", "model.embedding_dim=16", "pretrain.enabled=false",
    "analysis.enabled=false", "teacher.steps=6", "teacher.batch_size=16", "teacher.checkpoint_every=2",
    "student.steps=8", "student.basis_warmup_steps=2", "student.batch_size=16",
    "student.unlabeled_batch_size=16", "student.checkpoint_every=2", "student.log_every=1",
    "pseudo_labels.clusters=8", "evaluation.batch_size=64",
]
# The reliability tests follow the contextual student on k-means clusters through every fault; the
# demo's own default (DBSCAN pseudo labels, every pair trained) runs in test_default_student.py.
TINY = [*TINY_SIZES, "pseudo_labels.method=kmeans", "student.mining=contextual"]


def slade_demo(out, kill_at, signal_name="KILL", until=None, fail_at="", extra=()):
    """``slade demo`` of the tiny run (with ``extra`` overrides) in a subprocess, killed (``kill_at``)
    or refused a write (``fail_at``) where asked (slade/engine/faults.py)."""
    env = {**os.environ, "SLADE_PROGRESS": "0", "SLADE_KILL_AT": kill_at, "SLADE_KILL_SIGNAL": signal_name,
           "SLADE_FAIL_AT": fail_at}
    overrides = [arg for o in [*TINY, *extra] for arg in ("--set", o)]
    command = [sys.executable, "-m", "slade", "demo", "--out", str(out), *overrides]
    if until:
        command += ["--until", until]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def without_timing(metrics):
    return {stage: {k: v for k, v in m.items() if k != "train_seconds"} for stage, m in metrics.items()}
