"""One writer per run directory (engine/run_lock.py)."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from slade.cli import app
from slade.engine import run_lock
from slade.engine.run_lock import RunDirectoryBusy, RunLock

HOLD = """
import sys, time
from slade.engine.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def hold(run_dir):
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_stops_at_once_naming_the_holder_and_the_lock_dies_with_it(tmp_path):
    run_dir = tmp_path / "run"
    child = hold(run_dir)
    try:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "slade", "demo", "--out", str(run_dir)],
                                capture_output=True, text=True, env=dict(os.environ, SLADE_PROGRESS="0"))
        assert time.perf_counter() - started < 60  # refused before any data is built or trained
        assert result.returncode == 2, result.stderr
        (message,) = result.stderr.strip().splitlines()  # one line
        assert message.startswith(f"error: {run_dir}: another slade process is writing this run directory")
        assert f"PID {child.pid}" in message and "started " in message
        assert sorted(p.name for p in run_dir.iterdir()) == ["slade.lock"]  # nothing else written
        with pytest.raises(RunDirectoryBusy, match=f"PID {child.pid}"):
            RunLock(run_dir).__enter__()
        (run_dir / "config.yaml").write_text("seed: 0\n")
        result = CliRunner().invoke(app, ["tsne", str(run_dir)])
        assert isinstance(result.exception, RunDirectoryBusy)
        (run_dir / "config.yaml").unlink()
    finally:
        child.kill()  # SIGKILL: the kernel drops the lock
        child.wait()
    with RunLock(run_dir) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_taking_the_lock_costs_well_under_10_ms(tmp_path):
    times = []
    for _ in range(50):
        started = time.perf_counter()
        with RunLock(tmp_path / "run"):
            pass
        times.append(time.perf_counter() - started)
    assert sorted(times)[len(times) // 2] < 0.010


def test_without_file_locks_a_marker_holds_the_directory_and_a_stale_one_is_reported(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    run_dir = tmp_path / "run"
    with RunLock(run_dir) as lock:
        assert lock.marker.is_file()
        with pytest.raises(RunDirectoryBusy, match=r"another slade process .* without file locks"):
            RunLock(run_dir).__enter__()
    assert not lock.marker.exists()  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    import socket

    lock.marker.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                       "started": "2026-12-01 10:00:00 UTC"}))
    with pytest.raises(RunDirectoryBusy, match=r"slade.lock.held: a stale lock left by a process that is "
                                               r"gone \(host .*, PID \d+, started 2026-12-01 10:00:00 UTC\);"
                                               r".*delete the file"):
        RunLock(run_dir).__enter__()
    assert lock.marker.is_file()  # never taken over silently
