"""Issue 11's proofs on real processes: a running cluster grown by two empty chunkservers
and rebalanced with ``dfs admin rebalance --threshold 5 --wait`` while a reader and a writer
use the mount and the leader is killed; a chunkserver decommissioned and then forgotten.

"At goal throughout" is checked from outside the chunk core: a sampler reads every file's
replicas on live chunkservers from the leader (``fs.locate``) in a loop, and fails the test
if any chunk ever has fewer than its goal. The rebalance is followed through a pty: its
progress bar is what an operator sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from failures_cluster import CHUNK, Cluster, _meta_call, running, wait_until

from dfs.cli import cluster as local
from tools.testing import localcluster

pytestmark = pytest.mark.timeout(600)

MIB = 1 << 20
CAPACITY = 48 * MIB
GOAL = 3
FILES = 28  # of one chunk each: ~60 % of three chunkservers' capacity at goal 3
# Files of 64 KiB the writer keeps during the rebalance: ~5 % of five chunkservers' space.
WRITER_FILES_MAX = 64


def dfs_cli(
    cluster: Cluster, *args: str, code: int | None = 0, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``dfs ARGS --dir`` the cluster's directory (``localcluster.dfs_cli``); 300 s by
    default: a drain or a rebalance waits."""
    d = str(cluster.layout.dir)
    return localcluster.dfs_cli(*args, "--dir", d, code=code, timeout_s=timeout_s)


def fill(mnt: Path, count: int, prefix: str) -> dict[Path, str]:
    sums = {}
    for i in range(count):
        data = os.urandom(CHUNK)
        path = mnt / f"{prefix}{i:03d}"
        path.write_bytes(data)
        sums[path] = hashlib.sha256(data).hexdigest()
    return sums


def used_pct(st: dict[str, Any]) -> dict[int, float]:
    """Each live chunkserver's share of its capacity that the chunk table places there
    (``replica_bytes``: what a rebalance evens out, counted in bytes)."""
    return {
        c["id"]: 100.0 * c["replica_bytes"] / c["capacity_bytes"]
        for c in st["chunkservers"]
        if c["state"] in ("alive", "draining", "drained") and c["capacity_bytes"]
    }


class Sampler(threading.Thread):
    """Every chunk's replicas on live chunkservers, sampled from the leader until stopped:
    ``low`` collects each (file, chunk, live replicas) seen below ``GOAL``."""

    def __init__(self, cluster: Cluster, names: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.names = cluster, names
        self.halt = threading.Event()
        self.samples = 0
        self.low: list[tuple[bytes, int, list[int]]] = []
        self.error: BaseException | None = None  # the last sample's, when it failed

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                anyio.run(self._sample)
                self.samples += 1
            except Exception as e:  # a leader change in the middle of one: take the next
                self.error = e

    async def _sample(self) -> None:
        # fs.locate lists a chunk's replicas on live chunkservers only (the leader's view).
        for name in self.names:
            ino = (await _meta_call(self.cluster, "fs.lookup", parent=1, name=name))["attr"]["ino"]
            located = await _meta_call(self.cluster, "fs.locate", ino=ino, index=0, count=16)
            for chunk in located["chunks"]:
                live = [r["id"] for r in chunk["replicas"]]
                if chunk["length"] and len(live) < GOAL:
                    self.low.append((name, chunk["chunk_id"], live))


def check_files(sums: dict[Path, str]) -> None:
    for path, digest in sums.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path


@pytest.fixture
def grown(tmp_path: Path) -> Iterator[Cluster]:
    with running(
        tmp_path / "cluster",
        chunkservers=3,
        cs_options={"capacity_bytes": CAPACITY},
    ) as cluster:
        yield cluster


def test_rebalance_onto_new_chunkservers_under_load_and_leader_kill(
    grown: Cluster, tmp_path: Path
) -> None:
    cluster = grown
    mnt = cluster.mount(tmp_path / "mnt")
    sums = fill(mnt, FILES, "f")
    # (status counts replicas from a walk of the chunk table at most once a second)
    wait_until(
        lambda: all(50 <= p <= 75 for p in used_pct(cluster.status()).values()),
        30, "three chunkservers at about 60 %",
    )  # fmt: skip

    dfs_cli(cluster, "up", "--add-chunkservers", "2")
    wait_until(lambda: len(used_pct(cluster.status())) == 5, 30, "the new chunkservers alive")

    plan = json.loads(
        dfs_cli(cluster, "admin", "rebalance", "--threshold", "5", "--dry-run", "--json").stdout
    )
    assert plan["moves_total"] > 0 and plan["spread_after_pct"] <= 5 < plan["spread_before_pct"]

    sampler = Sampler(cluster, [p.name.encode() for p in sums])
    stop = threading.Event()
    errors: list[BaseException] = []
    added: dict[Path, str] = {}

    def read_loop() -> None:
        try:
            while not stop.is_set():
                check_files(sums)
        except BaseException as e:
            errors.append(e)

    def write_loop() -> None:
        # A bounded working set: the oldest file goes once WRITER_FILES_MAX are there, so
        # a fast writer never fills the small chunkservers however long the run takes
        # (removals under way are load on the rebalance too).
        try:
            i = 0
            while not stop.is_set():
                data = os.urandom(64 << 10)
                path = mnt / f"w{i:05d}"
                path.write_bytes(data)
                added[path] = hashlib.sha256(data).hexdigest()
                if i >= WRITER_FILES_MAX:
                    old = mnt / f"w{i - WRITER_FILES_MAX:05d}"
                    old.unlink()
                    del added[old]
                i += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=read_loop), threading.Thread(target=write_loop)]
    sampler.start()
    for t in threads:
        t.start()
    # The rebalance is followed on a terminal (a pty): the redrawn progress bar.
    master, slave = pty.openpty()
    seen = bytearray()

    def read_terminal() -> None:
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed its end
                return
            if not chunk:
                return
            seen.extend(chunk)

    run = None
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "dfs.cli.main", "admin", "rebalance", "--threshold", "5",
             "--bandwidth", "8", "--wait", "--dir", str(cluster.layout.dir)],
            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        )  # fmt: skip
        os.close(slave)

        # The leader dies while the rebalance runs, some bytes moved; it ends under the next.
        def under_way() -> bool:
            read_terminal()
            rb = cluster.status().get("rebalance") or {}
            return bool(rb.get("running")) and rb.get("moved_bytes", 0) > 2 * MIB

        wait_until(under_way, 120, "a rebalance under way")
        old_leader = cluster.leader_name()
        samples_at_kill = sampler.samples
        cluster.kill(old_leader)

        def ended() -> bool:
            read_terminal()
            return run is not None and run.poll() is not None

        wait_until(ended, 300, "the rebalance to end")
        read_terminal()
        assert run.returncode == 0, seen.decode(errors="replace")
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait(10)
        os.close(master)
        stop.set()
        for t in threads:
            t.join(60)
        sampler.halt.set()
        sampler.join(60)
    text = seen.decode(errors="replace")
    assert "\r[" in text and "moved" in text and "ETA" in text, text[-2000:]
    assert "no rebalance running (balanced)" in text, text[-2000:]
    assert not errors, errors
    assert sampler.samples - samples_at_kill >= 3, (sampler.samples, sampler.error)
    assert not sampler.low, (sampler.low[:5], sampler.error)
    st = cluster.status()
    assert cluster.leader_name() != old_leader
    assert st["rebalance"]["moves_done"] > 0, st["rebalance"]  # moves under the new leader
    after = used_pct(cluster.status())
    mean = sum(after.values()) / len(after)
    assert all(abs(p - mean) <= 5 for p in after.values()), after
    check_files(sums)
    check_files(added)


def test_decommission_then_forget(grown: Cluster, tmp_path: Path) -> None:
    cluster = grown
    dfs_cli(cluster, "up", "--add-chunkservers", "1")
    wait_until(lambda: len(used_pct(cluster.status())) == 4, 30, "the fourth chunkserver alive")
    mnt = cluster.mount(tmp_path / "mnt")
    sums = fill(mnt, 16, "d")
    st = cluster.status()
    victim = max(st["chunkservers"], key=lambda c: c["chunks"])
    assert victim["chunks"] > 0
    sampler = Sampler(cluster, [p.name.encode() for p in sums])
    sampler.start()
    try:
        dfs_cli(cluster, "admin", "decommission", str(victim["id"]), "--wait")
    finally:
        sampler.halt.set()
        sampler.join(60)
    assert sampler.samples > 1 and not sampler.low, (sampler.low[:5], sampler.error)

    def drained_and_empty() -> bool:
        # Its chunk count is what it last reported: the deletions of its replicas that
        # the drain's end orders show within a heartbeat or two.
        gone = next(c for c in cluster.status()["chunkservers"] if c["id"] == victim["id"])
        assert gone["state"] == "drained"
        return gone["chunks"] == 0

    wait_until(drained_and_empty, 30, "the drained chunkserver's replicas deleted")
    check_files(sums)
    # Forgetting is refused while it runs; once it is stopped and dead it leaves the cluster.
    refused = dfs_cli(cluster, "admin", "forget", str(victim["id"]), code=None, timeout_s=60)
    assert refused.returncode != 0
    grown_layout = local.load_layout(cluster.layout.dir)  # with the chunkserver added
    name = next(f"cs{i}" for i, a in grown_layout.chunkservers.items() if a == victim["address"])
    cluster.kill(name)
    wait_until(
        lambda: any(c["id"] == victim["id"] and not c["alive"] for c in cluster.status()["chunkservers"]),
        30, "the drained chunkserver dead",
    )  # fmt: skip
    dfs_cli(cluster, "admin", "forget", str(victim["id"]))
    assert all(c["id"] != victim["id"] for c in cluster.status()["chunkservers"])
    check_files(sums)
