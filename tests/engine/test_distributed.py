"""Training under ``torchrun``: two CPU processes (gloo) end where one process with the same global
batch ends, and a rank that dies stops the other with a message, the checkpoint intact.

The test runs this file as a script under ``torchrun`` (``python -m torch.distributed.run``). Its
model has no batch statistics: on CPU each rank normalises with its own slice (no SyncBatchNorm),
the one place a CPU run may differ from a single process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slade import run_layout as layout
from slade.config import DataConfig, PretrainConfig, StudentConfig, TeacherConfig
from slade.data.batches import MPerClassBatches, _Stream
from slade.data.datasets import ImageDataset, UnlabeledUnion
from slade.data.folders import read_class_folders
from slade.data.images import Decoder
from slade.data.transforms import eval_transform, train_transform
from slade.engine import distributed
from slade.engine.checkpoint import load_checkpoint
from slade.engine.preemption import PREEMPTED_EXIT, Preempted
from slade.engine.trainer import fit
from slade.errors import SladeError
from slade.evaluation.retrieval import evaluate_embeddings
from slade.inference import embed_dataset
from slade.models.embedder import EmbeddingNet
from slade.stages.pretrain import SwAVStage
from slade.stages.student import StudentStage
from slade.stages.teacher import RankingStage

CPU = torch.device("cpu")
DATA = DataConfig(dataset="folders", image_size=28)


def small_net() -> EmbeddingNet:
    """An ``EmbeddingNet`` without batch statistics."""
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    return EmbeddingNet(backbone, 16, 16, "avg")


def train(tree: Path, out: Path) -> None:
    """SwAV, teacher and student steps on ``tree`` (global batches of 8); rank 0 saves the result."""
    images = ImageDataset(read_class_folders(tree), Decoder(1, 28, True))
    torch.manual_seed(0)
    model = small_net()

    swav_cfg = PretrainConfig(steps=3, batch_size=8, warmup_steps=1, small_crops=2, small_crop_size=16,
                              projection_hidden_dim=32, projection_dim=16, prototypes=6,
                              freeze_prototypes_steps=1, queue_length=16, queue_start_step=1,
                              log_every=1, checkpoint_every=0)
    swav = SwAVStage(model, UnlabeledUnion(images), swav_cfg, DATA, seed=0)
    swav.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))  # no BatchNorm1d
    fit(swav, swav_cfg, out / layout.PRETRAIN, CPU)

    def evaluate() -> dict[str, float]:  # every rank embeds its share, rank 0 scores
        embeddings = embed_dataset(model, images, eval_transform(28, 1), CPU, 64, across_ranks=True)
        return evaluate_embeddings(embeddings, images.labels, ks=(1, 2)) if distributed.is_main() else {}

    train_args = {"steps": 4, "batch_size": 8, "m_per_class": 2, "warmup_steps": 1, "log_every": 1,
                  "checkpoint_every": 2}
    teacher_cfg = TeacherConfig(**train_args)
    fit(RankingStage(model, images, teacher_cfg, DATA, seed=0), teacher_cfg, out / layout.TEACHER, CPU,
        evaluate)

    student_cfg = StudentConfig(**train_args, mining="confident", miner="multi_similarity",  # SLADE's basis
                                basis_warmup_steps=2, unlabeled_batch_size=8,
                                unlabeled_m_per_class=2)
    pseudo_labels = np.arange(len(images)) // 3
    torch.manual_seed(1)
    student = StudentStage(model, images, images, pseudo_labels, student_cfg, DATA, seed=1)
    result = fit(student, student_cfg, out / layout.STUDENT, CPU, evaluate)
    # 48 images in shares of 24, batches of 5: the ranks' last batches are partial.
    embeddings = embed_dataset(model, images, eval_transform(28, 1), CPU, 5, across_ranks=True)
    assert (embeddings is None) == (not distributed.is_main())
    unreadable_met_on_any_rank(tree, out)
    if distributed.is_main():
        np.save(out / layout.EMBEDDINGS, embeddings)
        state = {f"{name}.{key}": value for name, module in student.modules().items()
                 for key, value in module.state_dict().items()}
        state |= {f"swav_head.{key}": value for key, value in swav.head.state_dict().items()}
        torch.save(state, out / "weights.pt")
        (out / layout.METRICS).write_text(json.dumps(result.final_metrics))


def unreadable_met_on_any_rank(tree: Path, out: Path) -> None:
    """The last image (index 47, in rank 1's share) is corrupt: after embedding a lazily read
    copy of the tree across ranks, every rank knows it as unreadable."""
    bad_tree = out / "bad_tree"
    if distributed.is_main():
        shutil.copytree(tree, bad_tree)
        (bad_tree / "c07" / "i05.png").write_bytes(b"not a png")
    distributed.barrier()
    lazy = ImageDataset(read_class_folders(bad_tree), Decoder(1, 28, True), cache=False,
                        max_bad_fraction=0.5)
    embed_dataset(small_net(), lazy, eval_transform(28, 1), CPU, 5, across_ranks=True)
    assert lazy.unreadable().tolist() == [47], (distributed.rank(), lazy.unreadable())


def torchrun(tree: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, str(tree), str(out)]
    env = {**os.environ, "SLADE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "SLADE_DIST_TIMEOUT": "60", **env}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def losses(log: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in map(json.loads, log.read_text().splitlines()) if "loss" in e]


def test_ranks_slices_make_up_the_single_process_batch(class_tree):
    images = ImageDataset(read_class_folders(class_tree), Decoder(1, 28, True))
    sampler = MPerClassBatches(images.labels, 2, 8, seed=0)
    transform = train_transform(DATA.augmentation, 28, 1)
    whole = _Stream(sampler, images, transform, 0)._make(sampler(3))
    parts = []
    for rank in range(2):
        stream = _Stream(sampler, images, transform, 0)
        stream.part = (rank, 2)
        parts.append(stream._make(sampler(3)))
    for i in range(3):  # augmented images, labels, indices
        assert torch.equal(torch.cat([p[i] for p in parts]), whole[i])


def test_two_processes_train_as_one_process_with_the_same_global_batch(class_tree, tmp_path):
    started = time.perf_counter()
    done = torchrun(class_tree, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    train(class_tree, tmp_path / "one")

    one, two = torch.load(tmp_path / "one" / "weights.pt"), torch.load(tmp_path / "two" / "weights.pt")
    assert one.keys() == two.keys() and "basis.mu_pos" in one
    for key, value in one.items():
        assert torch.allclose(value.float(), two[key].float(), atol=1e-4), key
    for stage in ("pretrain", "teacher", "student"):
        a, b = losses(tmp_path / "one" / stage / layout.LOG), losses(tmp_path / "two" / stage / layout.LOG)
        assert [s for s, _ in a] == [s for s, _ in b] and np.allclose([x for _, x in a], [x for _, x in b],
                                                                       atol=1e-4), stage
    embeddings = [np.load(tmp_path / run / layout.EMBEDDINGS) for run in ("one", "two")]
    assert embeddings[0].shape == (48, 16) and np.allclose(embeddings[0], embeddings[1], atol=1e-4)
    metrics = [json.loads((tmp_path / run / layout.METRICS).read_text()) for run in ("one", "two")]
    assert metrics[0].keys() == metrics[1].keys() and "recall@1" in metrics[0]
    assert all(abs(metrics[0][k] - metrics[1][k]) < 1e-4 for k in metrics[0])
    # Rank 1 wrote nothing: the files are those of the single process.
    def files(run):
        return sorted(str(p.relative_to(tmp_path / run)) for p in (tmp_path / run).rglob("*"))

    assert files("two") == files("one")
    assert time.perf_counter() - started < 120


def test_a_rank_that_dies_stops_the_other_with_a_message_and_the_checkpoint_intact(class_tree, tmp_path):
    started = time.perf_counter()
    done = torchrun(class_tree, tmp_path / "run", SLADE_KILL_AT="teacher:4@1")  # rank 1, before step 4
    assert done.returncode != 0
    assert "rank 0 of 2" in done.stderr and ("lost contact" in done.stderr or "SIGTERM" in done.stderr), \
        done.stderr[-3000:]
    assert time.perf_counter() - started < 120  # well within SLADE_DIST_TIMEOUT of the gloo group
    saved = load_checkpoint(tmp_path / "run" / layout.TEACHER / layout.CHECKPOINT)
    assert saved["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["modules"]["model"].values() if v.is_floating_point())
    assert not list((tmp_path / "run" / layout.TEACHER).glob(".*.tmp"))


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step_and_the_rerun_resumes(class_tree, tmp_path):
    # Rank 1 alone gets SIGTERM before teacher step 3 (a scheduler may signal any process first).
    stopped = torchrun(class_tree, tmp_path / "two", SLADE_KILL_AT="teacher:3@1", SLADE_KILL_SIGNAL="TERM")
    assert stopped.returncode != 0
    assert stopped.stderr.count(f"exit {PREEMPTED_EXIT}: rank") == 2, stopped.stderr[-3000:]
    assert "after step 3" in stopped.stderr, stopped.stderr[-3000:]
    teacher = tmp_path / "two" / layout.TEACHER
    assert load_checkpoint(teacher / layout.CHECKPOINT)["step"] == 3  # checkpoint_every is 2
    assert [s for s, _ in losses(teacher / layout.LOG)] == [1, 2, 3]
    assert not (tmp_path / "two" / layout.STUDENT).exists()

    resumed = torchrun(class_tree, tmp_path / "two")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [s for s, _ in losses(teacher / layout.LOG)] == [1, 2, 3, 4]  # no step logged twice
    train(class_tree, tmp_path / "one")
    one, two = torch.load(tmp_path / "one" / "weights.pt"), torch.load(tmp_path / "two" / "weights.pt")
    for key, value in one.items():
        assert torch.allclose(value.float(), two[key].float(), atol=1e-4), key


if __name__ == "__main__":  # one rank under torchrun
    distributed.setup(CPU)
    try:
        train(Path(sys.argv[1]), Path(sys.argv[2]))
        distributed.finish()
    except Preempted as exc:
        print(f"exit {PREEMPTED_EXIT}: rank {distributed.rank()}: {exc}", file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT)
    except SladeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
