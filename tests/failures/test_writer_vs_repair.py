"""A writer and the leader's re-replication of the chunk it writes, on real processes through
a real mount: a copy (``chunk.replicate``, then ``replica_add``) must neither miss bytes a
writer overwrote and fsynced while it ran, nor fence off a writer that is busy with the
chunk.

The copy is slowed to about 8 s per 1 MiB chunk (``replicate_bytes_per_s``) so that the
writer can act while it runs, and the copy's part file in the target's ``tmp/`` shows how
far it has read. Replicas are checked by reading each directly with a token signed from the
cluster secret.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from failures_cluster import (
    CHUNK,
    DEAD_TIMEOUT_S,
    Cluster,
    cs_name,
    healthy,
    locate,
    read_replica,
    running,
    wait_until,
)

from dfs.cli import cluster as local

pytestmark = pytest.mark.timeout(300)

KIB = 1 << 10
REPAIR_QUIET_S = 3.0
# One 1 MiB chunk takes about 8 s to copy: 64 KiB pieces (one block: the throttle's step
# at this rate), the first at once, then one every 0.5 s.
REPLICATE_BYTES_PER_S = 128 * KIB
# The chunk store's data area (chunk store format v1: DATA_OFFSET in chunkserver/store.py).
DATA_OFFSET = 135168
HEAD = 64 * KIB


@pytest.fixture(scope="module")
def slow_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(
        tmp_path_factory.mktemp("cluster"),
        meta_options={"repair_quiet_ms": int(REPAIR_QUIET_S * 1000)},
        cs_options={"replicate_bytes_per_s": REPLICATE_BYTES_PER_S},
    ) as c:
        yield c


@pytest.fixture(scope="module")
def slow_mnt(slow_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slow_cluster.mount(tmp_path_factory.mktemp("mnt") / "m")


@contextlib.contextmanager
def one_chunkserver_down(cluster: Cluster, name: str) -> Iterator[None]:
    """``name`` killed for the body; then started again, and the cluster whole (every chunk
    at goal, no chunkserver dead) for the next test."""
    cluster.kill(name)
    try:
        yield
    finally:
        local.start_daemons(cluster.layout)
        wait_until(lambda: healthy(cluster), 60, f"{name} back and every chunk at goal")


def part_file(cluster: Cluster, address: str, chunk_id: int) -> Path | None:
    """The part file of a copy of ``chunk_id`` in the ``tmp/`` of the chunkserver at
    ``address`` (store.py: ``tmp/<id16>.<time_ns>.part``), if one is there."""
    tmp = cluster.layout.dir / cs_name(cluster, address) / "data" / "tmp"
    return next(iter(sorted(tmp.glob(f"{chunk_id:016x}.*.part"))), None)


def copied_head(cluster: Cluster, address: str, chunk_id: int) -> bytes:
    """The first HEAD bytes of the data area of the copy in progress (zeros where it has not
    written yet: the part file is preallocated), or b"" when there is no part file."""
    path = part_file(cluster, address, chunk_id)
    if path is None:
        return b""
    try:
        with open(path, "rb") as f:
            f.seek(DATA_OFFSET)
            return f.read(HEAD)
    except FileNotFoundError:  # installed (renamed) or dropped between the glob and the open
        return b""


def differences(got: bytes, want: bytes | bytearray, old: bytes) -> str:
    """Where ``got`` differs from ``want``, and whether it holds ``old`` there."""
    wrong = [i for i in range(len(want)) if i >= len(got) or got[i] != want[i]]
    start, end = wrong[0], wrong[-1] + 1
    what = "the old bytes" if got[start:end] == old[start:end] else "other bytes"
    return f"{len(wrong)} bytes differ in [{start}, {end}), which holds {what}"


def replicas_unlike(
    cluster: Cluster, name: bytes, cid: int, want: bytes | bytearray, old: bytes
) -> tuple[dict[str, Any], dict[str, str]]:
    """Chunk 0 of ``/name`` as the leader locates it (still ``cid``, 3 replicas), and
    each replica whose bytes differ from ``want``, with where."""
    now = locate(cluster, [name])[0]
    assert now["chunk_id"] == cid and len(now["replicas"]) == 3, now
    diverged = {}
    for r in now["replicas"]:
        got = read_replica(cluster, r["address"], cid, now["version"], len(want))
        if got != want:
            diverged[r["address"]] = differences(got, want, old)
    return now, diverged


def test_an_overwrite_during_a_copy_reaches_every_replica(
    slow_cluster: Cluster, slow_mnt: Path
) -> None:
    cluster = slow_cluster
    old, new = os.urandom(CHUNK), os.urandom(CHUNK)
    fd = os.open(slow_mnt / "overwrite", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, old, 0) == CHUNK
        os.fsync(fd)
        chunk = locate(cluster, [b"overwrite"])[0]
        cid = chunk["chunk_id"]
        replicas = [r["address"] for r in chunk["replicas"]]
        assert len(replicas) == 3, chunk
        # The only chunkserver left outside the set is the only possible copy target.
        (target,) = (a for a in cluster.layout.chunkservers.values() if a not in replicas)
        victim = cs_name(cluster, replicas[-1])
        with one_chunkserver_down(cluster, victim):
            # The writer meets the loss first (the same bytes again, so the content stays
            # `old`): its chain refuses the write, and the handle it takes instead drops the
            # dead replica, a version bump onto the two survivors. That handle stays cached
            # for the open; the copy then starts at its version once the chunk is quiet.
            # (Under the handle from before the loss the overwrite below would meet the
            # dead replica too, and its renewal would fence the copy off.)
            assert os.pwrite(fd, old[: 4 * KIB], 0) == 4 * KIB
            os.fsync(fd)
            wait_until(
                lambda: copied_head(cluster, target, cid) == old[:HEAD],
                DEAD_TIMEOUT_S + REPAIR_QUIET_S + 30,
                f"the copy to {target} to have read the chunk's head (old bytes)",
            )
            # The copy has the old head; the writer overwrites it under its cached handle.
            assert os.pwrite(fd, new, 0) == CHUNK
            os.fsync(fd)
            closing, fd = fd, -1
            os.close(closing)
            wait_until(
                lambda: healthy(cluster, dead=1),
                90,
                "the copy to join and every chunk back at goal",
            )
            now, diverged = replicas_unlike(cluster, b"overwrite", cid, new, old)
            assert not diverged, (
                f"replicas of chunk {cid} at version {now['version']} diverge from the "
                f"fsynced overwrite (copy target {target}): {diverged}"
            )
            assert (slow_mnt / "overwrite").read_bytes() == new
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def test_a_writer_busy_on_an_under_goal_chunk_is_not_fenced(
    slow_cluster: Cluster, slow_mnt: Path
) -> None:
    cluster = slow_cluster
    size = 256 * KIB
    model = bytearray(os.urandom(size))
    path = slow_mnt / "busy"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, model, 0) == size
        os.fsync(fd)  # the client now holds a write handle for chunk 0, cached for the open
        chunk = locate(cluster, [b"busy"])[0]
        cid = chunk["chunk_id"]
        replicas = [r["address"] for r in chunk["replicas"]]
        assert len(replicas) == 3, chunk
        victim = cs_name(cluster, replicas[-1])
        with one_chunkserver_down(cluster, victim):
            # Busy for longer than the server takes to be dead and the chunk to be quiet,
            # plus the copy: small writes, never synced, each away from the one before so
            # that the client uploads it at once rather than buffer it (files.py _buffer).
            busy_s = DEAD_TIMEOUT_S + REPAIR_QUIET_S + 4
            started = time.monotonic()
            writes = 0
            while time.monotonic() - started < busy_s:
                offset = (writes // 2 % 32) * 4 * KIB + (writes % 2) * size // 2
                piece = os.urandom(4 * KIB)
                try:
                    assert os.pwrite(fd, piece, offset) == len(piece)
                except OSError as e:
                    raise AssertionError(
                        f"write {writes} at {offset}, {time.monotonic() - started:.1f} s after "
                        f"the kill, failed: {e}"
                    ) from e
                model[offset : offset + len(piece)] = piece
                writes += 1
                time.sleep(0.05)  # the workload's pace, not a wait for a condition
            closing, fd = fd, -1
            try:
                os.close(closing)
            except OSError as e:
                raise AssertionError(
                    f"close after {writes} writes in {busy_s} s failed: {e}"
                ) from e
            assert path.read_bytes() == model
            wait_until(
                lambda: healthy(cluster, dead=1),
                90,
                "every chunk back at goal",
            )
            now, diverged = replicas_unlike(cluster, b"busy", cid, model, b"")
            assert not diverged, (
                f"replicas of chunk {cid} at version {now['version']} diverge from the "
                f"written bytes: {diverged}"
            )
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
