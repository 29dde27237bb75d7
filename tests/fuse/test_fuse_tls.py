"""The mount of a TLS cluster (``dfs up --tls``), holding the client's credential only.

- a tree of small files and a file of several chunks copied in with ``cp -r`` read back
  identical, through a mount that reads through the chunkservers (``--no-local-reads``
  is not needed: the mount's remote form below has no cluster directory, and a second
  mount checks what the first wrote);
- the mount process has no cluster secret: its credential file holds a client's
  certificate, whose role the servers read from it.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_cluster import CHUNK, Mounts, start_cluster, stop_cluster

from dfs.cli import cluster as local
from dfs.credentials import load_client_credentials

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    layout = start_cluster(tmp_path_factory.mktemp("cluster"), tls=True)
    try:
        yield layout
    finally:
        stop_cluster(layout)


@pytest.fixture(scope="module")
def two(cluster: local.Layout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounts]:
    m = Mounts(cluster, tmp_path_factory.mktemp("mnt"))
    try:
        m.mount("a", remote=True)
        m.mount("b", remote=True)
        yield m
    finally:
        m.close()


def test_a_tree_round_trips_over_tls(two: Mounts, tmp_path: Path) -> None:
    creds = load_client_credentials(two.layout.client_file)
    assert creds.secret is None and creds.tls is not None  # the mounts hold no secret
    src = tmp_path / "src"
    for d in range(5):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(4096 + f))
    (src / "big").write_bytes(os.urandom(3 * CHUNK + 12345))
    shutil.copytree(src, two.base / "a" / "tree")
    back = two.base / "b" / "tree"  # the other mount: what the first wrote, as stored
    cmp = filecmp.dircmp(src, back)
    assert not cmp.left_only and not cmp.right_only
    for d in range(5):
        for f in range(20):
            rel = Path(f"d{d}") / f"f{f}"
            assert (back / rel).read_bytes() == (src / rel).read_bytes()
    assert (back / "big").read_bytes() == (src / "big").read_bytes()
