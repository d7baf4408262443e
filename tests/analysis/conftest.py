"""A tiny finished run with its visual analysis, shared by the analysis tests."""

from __future__ import annotations

import pytest
from test_pipeline import TINY  # tests/ is on sys.path through its conftest.py
from typer.testing import CliRunner

from slade.cli import app


@pytest.fixture(scope="session")
def analysed_run(tmp_path_factory):
    """`slade demo` on the tiny data with the analysis on, as `slade run` ends by default."""
    out = tmp_path_factory.mktemp("analysed") / "run"
    overrides = [*TINY, "analysis.enabled=true"]
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *sum((["--set", o] for o in overrides), [])])
    assert result.exit_code == 0, result.output
    return out
