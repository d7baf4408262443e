"""The uninterrupted result of the tiny demo run (tiny_demo.py) that the reliability tests compare to."""

import pytest
from tiny_demo import TINY

from slade.cli import DEMO_CONFIG
from slade.config import load_config
from slade.pipeline import run


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return out, run(load_config(DEMO_CONFIG, TINY), out)
