"""A tracked run killed with SIGKILL resumes its TensorBoard and MLflow records: each step once."""

import json
import signal

from test_tracking import LOGGING, assert_same_series, logged, mlflow_runs, mlflow_series, tensorboard
from tiny_demo import TINY, slade_demo, without_timing

from slade import run_layout as layout
from slade.cli import DEMO_CONFIG
from slade.config import load_config
from slade.engine.checkpoint import load_checkpoint
from slade.pipeline import run
from slade.tracking import mlflow_name


def test_killed_tracked_run_resumes_its_records_with_each_step_once(reference, tmp_path):
    out = tmp_path / "run"
    killed = slade_demo(out, "student:4", extra=LOGGING)  # step 3 is logged, the checkpoint holds 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(out / layout.STUDENT / layout.CHECKPOINT)["step"] == 2
    assert '"step": 3' in (out / layout.STUDENT / layout.LOG).read_text()
    ids = json.loads((out / layout.TRACKING).read_text())["mlflow"]

    metrics = run(load_config(DEMO_CONFIG, [*TINY, *LOGGING]), out)  # the rerun, in the test's process
    assert without_timing(metrics) == without_timing(reference[1])
    client, resumed = mlflow_runs(out)
    assert resumed == ids  # the same MLflow runs, continued
    for stage in ("teacher", "student"):
        expected = logged(out / stage / layout.LOG)
        assert_same_series(tensorboard(out / layout.TENSORBOARD / stage)[0], expected)
        assert_same_series(mlflow_series(client, ids["stages"][stage]),
                           {mlflow_name(k): v for k, v in expected.items()})
        assert client.get_run(ids["stages"][stage]).info.status == "FINISHED"
    assert [s for s, _ in logged(out / layout.STUDENT / layout.LOG)["loss"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert client.get_run(ids["run_id"]).info.status == "FINISHED"
