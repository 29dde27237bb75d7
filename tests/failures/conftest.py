"""Fixtures of the failure tests: one cluster (``failures_cluster.Cluster``) and one mount
per module. Like the FUSE tests they need root and /dev/fuse: with ``CI`` set nothing is
skipped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from failures_cluster import Cluster, running

from tools.testing.fuseenv import skip_unless_fuse


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_unless_fuse(items, Path(__file__).parent, pytest.mark.skip)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def mnt(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cluster.mount(tmp_path_factory.mktemp("mnt") / "m")
