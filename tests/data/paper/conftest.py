"""Tiny trees in each data set's official layout, written by the tests themselves."""

import pytest
from layouts import write_compcars, write_cub, write_fashion200k, write_inshop, write_nabirds


@pytest.fixture
def cub_root(tmp_path):
    return write_cub(tmp_path / "CUB_200_2011")


@pytest.fixture
def nabirds_root(tmp_path):
    return write_nabirds(tmp_path / "nabirds")


@pytest.fixture
def compcars_root(tmp_path):
    return write_compcars(tmp_path / "CompCars")


@pytest.fixture
def inshop_root(tmp_path):
    return write_inshop(tmp_path / "In-shop Clothes Retrieval Benchmark")


@pytest.fixture
def fashion_root(tmp_path):
    return write_fashion200k(tmp_path / "fashion200k")
