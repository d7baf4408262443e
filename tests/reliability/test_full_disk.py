"""A write the disk refuses (full, read-only, no permission) stops the run with one line naming the
file and the cause; what was written before stays intact and a rerun with space resumes.

The real-disk tests mount a small tmpfs (root or CAP_SYS_ADMIN; skipped where that is refused); the
others inject the OS error at the write (``SLADE_FAIL_AT``), which works everywhere.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_demo import slade_demo, without_timing

from slade import run_layout as layout
from slade.engine.checkpoint import save_checkpoint
from slade.errors import WriteError
from slade.io import PARTIAL_SUFFIX, atomic_write, reserve, write_json
from slade.stages.common import stage_done


class SmallDisk:
    """A tmpfs of ``size`` mounted at ``path`` for one test."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")

    def remount(self, option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(self.path)], check=True)

    def fill(self) -> Path:
        """Take every free byte: the next write that needs space fails with ENOSPC."""
        filler = self.path / "filler"
        fd = os.open(filler, os.O_RDWR | os.O_CREAT)
        try:
            os.posix_fallocate(fd, 0, os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize)
        finally:
            os.close(fd)
        return filler

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "disk", "4m")
    yield disk
    disk.unmount()


def partial_files(root: Path) -> list[Path]:
    return list(root.rglob(f"*{PARTIAL_SUFFIX}"))


def error_line(done: subprocess.CompletedProcess) -> str:
    """The run's one-line error; no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stdout + done.stderr
    return lines[0]


@pytest.mark.parametrize("code, cause", [("ENOSPC", "No space left on device"),
                                         ("EROFS", "Read-only file system"),
                                         ("EACCES", "Permission denied")])
def test_a_refused_write_names_the_file_and_the_cause_and_keeps_the_old_file(tmp_path, monkeypatch,
                                                                             code, cause):
    path = tmp_path / "metrics.json"
    write_json(path, {"old": 1})
    monkeypatch.setenv("SLADE_FAIL_AT", "write:metrics.json")
    monkeypatch.setenv("SLADE_FAIL_ERRNO", code)
    with pytest.raises(WriteError, match=re.escape(f"cannot write {path}: {cause} ({code})")):
        write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1}
    assert partial_files(tmp_path) == []


def test_other_errors_of_a_write_are_not_taken_for_the_disk(tmp_path):
    def broken(path):
        raise ValueError("a bug, not the disk")

    with pytest.raises(ValueError, match="a bug"):
        atomic_write(tmp_path / "x.json", broken)
    assert partial_files(tmp_path) == []


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(small_disk):
    # torch.save reports a short write as a RuntimeError without its errno: still ENOSPC, one line.
    path = small_disk.path / "checkpoint.pt"
    save_checkpoint(path, {"step": 2, "w": torch.zeros(10)})
    with pytest.raises(WriteError, match=re.escape(f"cannot write {path}: No space left on device")):
        save_checkpoint(path, {"step": 4, "w": torch.zeros(2_000_000)})  # 8 MB on a 4 MB disk
    assert torch.load(path, weights_only=True)["step"] == 2
    assert partial_files(small_disk.path) == []


def test_a_memory_map_that_does_not_fit_fails_with_enospc_not_sigbus(small_disk):
    # Without reserve(), the first page of the map past the disk's end kills the process (SIGBUS).
    path = small_disk.path / "embeddings.npy"

    def write(p):
        array = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(2_000_000, 1))
        reserve(p, array.offset + array.nbytes)
        array[:] = 1.0

    with pytest.raises(WriteError, match=re.escape(f"cannot write {path}: No space left on device")):
        atomic_write(path, write)
    assert not path.exists() and partial_files(small_disk.path) == []


def test_a_run_on_a_full_then_read_only_disk_stops_cleanly_and_resumes_with_space(reference, small_disk):
    out = small_disk.path / "run"
    first = slade_demo(out, "", until="teacher")
    assert first.returncode == 0, first.stderr
    teacher = (out / layout.TEACHER / layout.MODEL).read_bytes()

    filler = small_disk.fill()
    line = error_line(slade_demo(out, ""))
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/\S+: No space left on device "
                        r"\(ENOSPC\); .*rerun.*", line), line
    filler.unlink()

    small_disk.remount("ro")
    line = error_line(slade_demo(out, ""))
    assert f"cannot write {out}/" in line and "Read-only file system (EROFS)" in line, line
    small_disk.remount("rw")

    assert stage_done(out / layout.TEACHER)
    assert (out / layout.TEACHER / layout.MODEL).read_bytes() == teacher
    assert partial_files(out) == []
    resumed = slade_demo(out, "")
    assert resumed.returncode == 0, resumed.stderr
    ref_dir, ref_metrics = reference
    assert without_timing(json.loads((out / layout.METRICS).read_text())) == without_timing(ref_metrics)


def test_a_student_checkpoint_the_disk_refuses_stops_the_run_and_a_rerun_ends_as_if_never_stopped(
        reference, tmp_path):
    out = tmp_path / "run"
    refused = slade_demo(out, "", fail_at="write:student/checkpoint.pt")
    line = error_line(refused)
    assert line.startswith(f"error: cannot write {out / layout.STUDENT / layout.CHECKPOINT}: "
                           "No space left on device (ENOSPC)"), line
    assert stage_done(out / layout.TEACHER) and stage_done(out / layout.PSEUDO_LABELS)
    assert not stage_done(out / layout.STUDENT) and not (out / layout.STUDENT / layout.CHECKPOINT).exists()
    assert partial_files(out) == []
    resumed = slade_demo(out, "")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(json.loads((out / layout.METRICS).read_text())) == without_timing(reference[1])
