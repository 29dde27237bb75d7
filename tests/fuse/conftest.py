"""Fixtures of the FUSE tests: one real cluster and one real mount per module
(``fuse_cluster.py`` starts and stops them, by PID, in finalizers), and a fresh directory
in the mount per test.

The tests need root and /dev/fuse. CI runs as root and must run them: with ``CI`` set
nothing is skipped (a missing requirement fails the tests); elsewhere they are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_cluster import Mounts, start_cluster, stop_cluster

from dfs.cli import cluster as local
from tools.testing.fuseenv import skip_unless_fuse


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_unless_fuse(items, Path(__file__).parent, pytest.mark.skip)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    layout = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield layout
    finally:
        stop_cluster(layout)


@pytest.fixture(scope="module")
def mounts(cluster: local.Layout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounts]:
    m = Mounts(cluster, tmp_path_factory.mktemp("mnt"))
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(scope="module")
def mnt(mounts: Mounts) -> Path:
    """The module's main mount."""
    return mounts.mount("main")


@pytest.fixture
def workdir(mnt: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory in the mount for one test."""
    d = mnt / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    return d
