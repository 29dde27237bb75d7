"""Fixtures of the FUSE tests: one real cluster and one real mount per module
(``fuse_cluster.py`` starts and stops them, by PID, in finalizers), and a fresh directory
in the mount per test.

The tests need root and /dev/fuse. CI runs as root and must run them: with ``CI`` set
nothing is skipped (a missing requirement fails the tests); elsewhere they are skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_cluster import Mounts, start_cluster, stop_cluster

from dfs.cli import cluster as local


def _fuse_usable() -> str | None:
    if os.geteuid() != 0:
        return "FUSE tests run as root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian's fuse3)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _fuse_usable()
    if reason is None or os.environ.get("CI"):
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=reason))


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
