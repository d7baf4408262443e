"""A run killed with SIGKILL (in the teacher, then in the student) resumes to the result of an
uninterrupted run; finished stages are reused; stale ones are redone; killed writes are never trusted."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_demo import TINY, slade_demo, without_timing

from slade import run_layout as layout
from slade.cli import DEMO_CONFIG
from slade.config import load_config
from slade.engine.checkpoint import TRAINING_STATE, load_checkpoint, save_checkpoint
from slade.engine.preemption import PREEMPTED_EXIT
from slade.errors import ConfigError
from slade.pipeline import run
from slade.stages.common import stage_current, stage_done


def weights(path):
    return load_checkpoint(path)["state_dict"]


def test_run_killed_in_the_teacher_and_in_the_student_ends_as_if_never_killed(reference, tmp_path):
    ref_dir, ref_metrics = reference
    out = tmp_path / "run"

    killed = slade_demo(out, "teacher:4")  # before step 4: the checkpoint holds step 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(out / layout.TEACHER / layout.CHECKPOINT)["step"] == 2
    assert not stage_done(out / layout.TEACHER)

    killed = slade_demo(out, "student:5")  # resumes the teacher, makes pseudo labels, dies again
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert stage_done(out / layout.TEACHER) and stage_done(out / layout.PSEUDO_LABELS)
    assert load_checkpoint(out / layout.STUDENT / layout.CHECKPOINT)["step"] == 4
    assert not stage_done(out / layout.STUDENT)

    metrics = run(load_config(DEMO_CONFIG, TINY), out)  # the rerun, here in the test's process
    assert without_timing(metrics) == without_timing(ref_metrics)
    for stage in ("teacher", "student"):
        for key, value in weights(ref_dir / stage / layout.MODEL).items():
            assert torch.equal(value, weights(out / stage / layout.MODEL)[key]), (stage, key)
    assert (out / layout.PSEUDO_LABELS / layout.TABLE).read_text() == \
        (ref_dir / layout.PSEUDO_LABELS / layout.TABLE).read_text()
    steps = [json.loads(x)["step"] for x in (out / layout.STUDENT / layout.LOG).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 8]  # the last entry is the final evaluation


def test_finished_stages_are_reused_and_a_forced_change_redoes_only_what_it_affects(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    def finished():
        return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("done.json")}

    before = finished()
    assert run(load_config(DEMO_CONFIG, TINY), out) == reference[1]
    assert finished() == before

    changed = load_config(DEMO_CONFIG, [*TINY, "student.lambda1=0.5"])
    with pytest.raises(ConfigError, match=r"made with another config \(differs in student.lambda1\)"):
        run(changed, out)
    run(changed, out, force=True)
    after = finished()
    assert {stage for stage in before if after[stage] != before[stage]} == {"student/done.json"}
    done = json.loads((out / layout.STUDENT / layout.DONE).read_text())
    assert done["fingerprint"]["student"]["lambda1"] == 0.5


def test_stage_with_a_checkpoint_of_other_settings_starts_over(tmp_path, caplog):
    stage = tmp_path / layout.TEACHER
    fingerprint = {"teacher": {"lr": 1}}
    save_checkpoint(stage / layout.CHECKPOINT, {"format": TRAINING_STATE, "fingerprint": fingerprint})
    (stage / ".model.pt.x1.tmp").write_bytes(b"half a model")  # left by a killed write
    assert not stage_current(stage, {"teacher": {"lr": 1}})
    assert (stage / layout.CHECKPOINT).exists() and not (stage / ".model.pt.x1.tmp").exists()
    assert not stage_current(stage, {"teacher": {"lr": 2}})
    assert not (stage / layout.CHECKPOINT).exists()
    assert "made with other settings or inputs (teacher.lr): starting the stage over" in caplog.text


def test_pseudo_labels_killed_after_the_embeddings_are_redone(reference, tmp_path, monkeypatch):
    import slade.stages.pseudo_labels as stage

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    for name in ("pseudo_labels", "student"):
        shutil.rmtree(out / name)
    config = load_config(DEMO_CONFIG, TINY)

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # after embeddings.npy, before the table and done.json

    monkeypatch.setattr(stage, "kmeans", die)
    with pytest.raises(KeyboardInterrupt):
        run(config, out)
    labels = out / layout.PSEUDO_LABELS
    assert (labels / layout.EMBEDDINGS).exists() and not stage_done(labels)
    (out / layout.PSEUDO_LABELS / layout.EMBEDDINGS).write_bytes(b"garbage a rerun must not trust")
    monkeypatch.undo()
    assert without_timing(run(config, out)) == without_timing(reference[1])
    assert np.load(out / layout.PSEUDO_LABELS / layout.EMBEDDINGS).shape == (160, 16)


def test_killed_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / layout.METRICS
    target.write_text('{"old": 1}')
    code = f"from slade.io import write_json; write_json({str(target)!r}, {{'new': 2}})"
    env = {**os.environ, "SLADE_KILL_AT": "write:metrics.json"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert target.read_text() == '{"old": 1}'
    leftovers = list(tmp_path.glob(".metrics.json.*.tmp"))
    assert len(leftovers) == 1 and json.loads(leftovers[0].read_text()) == {"new": 2}


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import slade.io

    path = slade.io.write_json(tmp_path / layout.METRICS, {"a": 1})
    # As open() would create it (0644 under the usual umask 022), not mkstemp's private 0600.
    assert path.stat().st_mode & 0o777 == 0o666 & ~slade.io._UMASK


def test_sigterm_finishes_the_step_checkpoints_and_exits_75_then_resumes_exactly(reference, tmp_path):
    ref_dir, ref_metrics = reference
    out = tmp_path / "run"
    stopped = slade_demo(out, "student:3", signal_name="TERM")
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: student: stopped by SIGTERM after step 3; the checkpoint ")
    assert "rerun the same command to resume" in last
    # The step the signal arrived in was finished and checkpointed (checkpoint_every=2 would say 2).
    assert load_checkpoint(out / layout.STUDENT / layout.CHECKPOINT)["step"] == 3
    assert not (out / layout.STUDENT / layout.DONE).exists()
    resumed = slade_demo(out, "")
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / layout.METRICS).read_text())
    assert without_timing(metrics) == without_timing(ref_metrics)
    steps = [json.loads(line)["step"] for line in (out / layout.STUDENT / layout.LOG).read_text().splitlines()
             if "loss" in line]
    assert steps == sorted(set(steps))  # no step logged twice


def test_a_second_signal_stops_at_once():
    script = """
import os, signal, time
from slade.engine.preemption import StopSignals
with StopSignals("teacher") as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    print("asked", stop.received == signal.SIGTERM, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    print("still alive", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["asked True"]
    assert done.returncode == -signal.SIGTERM  # ended by the second signal, not after the sleep


def test_sigterm_during_a_checkpoint_write_keeps_a_checkpoint_a_rerun_trusts(reference, tmp_path):
    # The signal arrives inside the atomic write of the teacher's first checkpoint (after the
    # temporary file is written, before the rename): the write completes, step 1 is trained, and
    # the stage stops with its checkpoint as usual.
    out = tmp_path / "run"
    stopped = slade_demo(out, "write:checkpoint.pt", signal_name="TERM")
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr
    assert "stopped: teacher: stopped by SIGTERM after step 1" in stopped.stderr
    assert load_checkpoint(out / layout.TEACHER / layout.CHECKPOINT)["step"] == 1
    assert not list(out.rglob("*.tmp"))
    resumed = slade_demo(out, "")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(json.loads((out / layout.METRICS).read_text())) == without_timing(reference[1])


def test_sigterm_outside_a_training_step_stops_at_once_with_exit_75(reference, tmp_path):
    # In the pseudo labels (no step to finish): the command stops where it is, the embeddings'
    # atomic write leaves nothing half written, and the rerun redoes the stage.
    out = tmp_path / "run"
    stopped = slade_demo(out, "write:embeddings.npy", signal_name="TERM")
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr
    assert "stopped by SIGTERM outside a training step" in stopped.stderr.strip().splitlines()[-1]
    assert "Traceback" not in stopped.stderr
    assert stage_done(out / layout.TEACHER) and not (out / layout.PSEUDO_LABELS / layout.EMBEDDINGS).exists()
    assert not list(out.rglob("*.tmp"))
    resumed = slade_demo(out, "")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(json.loads((out / layout.METRICS).read_text())) == without_timing(reference[1])
