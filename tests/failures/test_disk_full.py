"""Full disks (issue 5, item 7): each chunkserver's data directory is a size-limited tmpfs,
and one of them is nearly full of someone else's data from the start. Placement weighs
free space, so that one fills up first; then new chunks go elsewhere. Then every server
fills, the writer gets ENOSPC, and everything written before is intact."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from failures_cluster import Cluster, running, wait_until

pytestmark = pytest.mark.timeout(300)

MIB = 1 << 20
DISK_MIB = 96
BALLAST_MIB = 84  # on cs1: what is not ours, that dfs must not count on


def _tmpfs(where: Path, size_mib: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)], check=True
    )


@pytest.fixture
def small_cluster(tmp_path: Path) -> Iterator[Cluster]:
    base = tmp_path / "cluster"
    mounted: list[Path] = []
    try:
        for i in (1, 2, 3, 4):
            where = base / f"cs{i}" / "data"
            _tmpfs(where, DISK_MIB)
            mounted.append(where)
        with open(base / "cs1" / "data" / "ballast", "wb") as f:
            f.write(b"\xaa" * (BALLAST_MIB * MIB))
        # Placement in turn, not weighted by free space: the small server then fills
        # after a few files, with room to spare on the others. (Weighted, it gets ever
        # fewer chunks as it fills, and the others come close to full before it is.)
        with running(base, meta_options={"placement": "round_robin"}) as c:
            yield c
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _used(cluster: Cluster) -> dict[int, tuple[int, int]]:
    return {
        c["id"]: (c["used_bytes"], c["capacity_bytes"]) for c in cluster.status()["chunkservers"]
    }


def test_full_servers_take_no_new_chunks_and_a_full_cluster_says_enospc(
    small_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = small_cluster
    mnt = cluster.mount(tmp_path / "m", timeout_s=20)
    wait_until(lambda: all(cap for _, cap in _used(cluster).values()), 30, "capacities")
    written: dict[str, str] = {}

    # Phase 1: write until the small server is full (it reports its tmpfs's size).
    def small_is_full() -> bool:
        used = _used(cluster)
        small = min(used.values(), key=lambda u: u[1])
        return small[1] - small[0] < 3 * MIB

    i = 0
    while not small_is_full():
        assert i < DISK_MIB, "the small server never filled"
        body = os.urandom(4 * MIB)
        (mnt / f"a{i:03d}").write_bytes(body)  # no error while others have room
        written[f"a{i:03d}"] = hashlib.sha256(body).hexdigest()
        i += 1
    # More chunks than it can hold: they go to the others, each with its 3 replicas.
    for j in range(4):
        body = os.urandom(4 * MIB)
        (mnt / f"c{j:03d}").write_bytes(body)
        written[f"c{j:03d}"] = hashlib.sha256(body).hexdigest()
    used = _used(cluster)
    print("after phase 1 (used, capacity):", used)
    small_id = min(used, key=lambda cs: used[cs][1])
    small_used, small_capacity = used[small_id]
    assert small_capacity <= (DISK_MIB - BALLAST_MIB) * MIB and small_used <= small_capacity
    assert all(used[cs][1] - used[cs][0] > 8 * MIB for cs in used if cs != small_id)
    # A write that met the small server full before its heartbeat said so dropped it
    # from that chunk's chain: repair puts the chunk back at its goal elsewhere.
    wait_until(
        lambda: (h := cluster.health()) is not None and not h["under_goal"] and not h["missing"],
        60,
        "every chunk at goal",
    )
    # Phase 2: write until the cluster is full: the writer gets ENOSPC, nothing else.
    failure = None
    for i in range(4 * DISK_MIB // 4):
        body = os.urandom(4 * MIB)
        try:
            (mnt / f"b{i:03d}").write_bytes(body)
        except OSError as e:
            failure = e
            break
        written[f"b{i:03d}"] = hashlib.sha256(body).hexdigest()
    assert failure is not None, "the cluster never filled up"
    assert failure.errno == errno.ENOSPC, failure
    for name, digest in written.items():
        assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, name
    # Deleting makes room again.
    for name in list(written)[: len(written) // 2]:
        (mnt / name).unlink()

    def room_again() -> bool:
        try:
            (mnt / "after").write_bytes(b"x" * MIB)
        except OSError:
            return False
        return True

    wait_until(room_again, 60, "room after deletes")
