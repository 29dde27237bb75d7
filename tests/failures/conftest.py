"""Fixtures of the failure tests: one cluster (``failures_cluster.Cluster``) and one mount
per module. Like the FUSE tests they need root and /dev/fuse: with ``CI`` set nothing is
skipped."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from failures_cluster import Cluster


def _fuse_usable() -> str | None:
    if os.geteuid() != 0:
        return "the failure tests mount: they run as root"
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "no /dev/fuse or fusermount3 (Debian's fuse3)"
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
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def mnt(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cluster.mount(tmp_path_factory.mktemp("mnt") / "m")
