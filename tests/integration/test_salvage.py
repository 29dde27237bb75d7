"""``dfs admin fsck --salvage`` against a real local cluster (one metaserver, three
chunkservers, small chunks), as an operator runs it.

Checks: a file of goal 1 whose only replica had a byte flipped, then read (the chunkserver
finds the block bad and quarantines the replica; the leader drops it from the set), is
named by ``fsck`` with exit 1; ``fsck --salvage`` brings the quarantined copy back: every
good block reads back the bytes written, the bad block reads as an error (``Corrupt``,
EIO through the mount), and the replica stays in service after that read. With
``--zero`` the bad block reads as zeros, and a higher goal is then reached by
re-replication. Salvaging a healthy file changes nothing.

Every daemon started here is stopped by PID in a finalizer, even when a test fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from admin_cluster import REPORT_OPTIONS, running

from dfs.wire.errors import Corrupt
from dfs.wire.replicafile import BLOCK_BYTES, DATA_OFFSET
from tools.testing.localcluster import client, dfs_cli
from tools.testing.poll import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DEADLINE_S = 60.0
MODE = 0o100644
SIZE = 3 * BLOCK_BYTES + 1000  # four blocks, the last one partial
BAD = 1  # the block whose byte is flipped


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("salvage") / "cluster"
    with running(d, cs_options=REPORT_OPTIONS):
        dfs_cli("admin", "setgoal", "--dir", str(d), "1", "/")
        yield d


def write_file(d: Path, name: bytes, data: bytes) -> int:
    async def go() -> int:
        async with client(d) as fs:
            attr, f = await fs.create_and_open(1, name, MODE, os.O_WRONLY | os.O_CREAT)
            try:
                await f.write(0, data)
            finally:
                await f.close()
            header = await fs.meta.read("fs.locate", ino=attr.ino, index=0, count=1)
            return int(header["chunks"][0]["chunk_id"])

    result: int = anyio.run(go)
    return result


def read_range(d: Path, name: bytes, start: int, end: int) -> bytes | Exception:
    async def go() -> bytes | Exception:
        async with client(d) as fs:
            attr = await fs.lookup(1, name)
            f = await fs.open(attr.ino, os.O_RDONLY)
            try:
                return await f.read(start, end - start)
            except Corrupt as e:
                return e
            finally:
                await f.close()

    result: bytes | Exception = anyio.run(go)
    return result


def flip(d: Path, chunk_id: int) -> None:
    """One byte of block BAD flipped in the chunk's only replica file."""
    found = list(d.glob(f"cs*/data/chunks/*/{chunk_id:016x}.chunk"))
    assert len(found) == 1, found
    with open(found[0], "r+b") as f:
        at = DATA_OFFSET + BAD * BLOCK_BYTES + 100
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def fsck(d: Path, path: str) -> tuple[int, dict[str, Any]]:
    proc = dfs_cli("admin", "fsck", "--dir", str(d), path, "--json", code=None)
    return proc.returncode, json.loads(proc.stdout)


def lose_only_replica(d: Path, name: bytes, data: bytes) -> int:
    """Write, flip, read (the replica goes to quarantine), and wait for fsck to name it."""
    chunk_id = write_file(d, name, data)
    flip(d, chunk_id)
    assert isinstance(read_range(d, name, 0, SIZE), Corrupt)
    path = "/" + name.decode()

    def named() -> bool:
        code, report = fsck(d, path)
        return code == 1 and [f["problems"][0] for f in report["files"]] == ["missing"]

    wait_for(named, DEADLINE_S, f"fsck to name {path} as missing", interval_s=0.3)
    return chunk_id


def blocks_except_bad(data: bytes) -> list[tuple[int, int]]:
    return [(0, BAD * BLOCK_BYTES), ((BAD + 1) * BLOCK_BYTES, len(data))]


def test_salvage_brings_back_the_good_blocks_and_the_bad_one_reads_as_an_error(
    cluster: Path,
) -> None:
    data = os.urandom(SIZE)
    lose_only_replica(cluster, b"eio", data)
    out = dfs_cli("admin", "fsck", "--dir", str(cluster), "--salvage", "/eio").stdout
    assert "salvaged from chunkserver" in out and "3 of 4 blocks verified" in out, out
    assert "1 block lost" in out, out
    for start, end in blocks_except_bad(data):
        assert read_range(cluster, b"eio", start, end) == data[start:end]
    bad = read_range(cluster, b"eio", BAD * BLOCK_BYTES, (BAD + 1) * BLOCK_BYTES)
    assert isinstance(bad, Corrupt), bad
    # That read did not send the replica back to quarantine: the good blocks still read.
    assert read_range(cluster, b"eio", 0, BLOCK_BYTES) == data[:BLOCK_BYTES]
    code, report = fsck(cluster, "/eio")
    assert code == 0 and report["summary"]["replicas"] == {"1": 1}, report


def test_salvage_with_zero_then_re_replication_reaches_the_goal(cluster: Path) -> None:
    data = os.urandom(SIZE)
    lose_only_replica(cluster, b"zero", data)
    proc = dfs_cli("admin", "fsck", "--dir", str(cluster), "--salvage", "--zero", "/zero",
                   "--json")  # fmt: skip
    [chunk] = json.loads(proc.stdout)["chunks"]
    assert chunk["salvaged"] and chunk["lost_blocks"] == 1 and chunk["good_blocks"] == 3
    lo, hi = BAD * BLOCK_BYTES, (BAD + 1) * BLOCK_BYTES
    assert read_range(cluster, b"zero", 0, SIZE) == data[:lo] + bytes(hi - lo) + data[hi:]
    dfs_cli("admin", "setgoal", "--dir", str(cluster), "2", "/zero")

    def at_goal() -> bool:
        code, report = fsck(cluster, "/zero")
        return code == 0 and report["summary"]["replicas"] == {"2": 1}

    wait_for(at_goal, DEADLINE_S, "two replicas of the salvaged chunk", interval_s=0.3)


def test_salvage_of_a_healthy_file_changes_nothing(cluster: Path) -> None:
    data = os.urandom(1000)
    write_file(cluster, b"fine", data)
    out = dfs_cli("admin", "fsck", "--dir", str(cluster), "--salvage", "/fine").stdout
    assert "nothing to salvage" in out, out
    assert read_range(cluster, b"fine", 0, len(data)) == data
    dfs_cli("admin", "fsck", "--dir", str(cluster), "--salvage", "/", code=1)  # not a file
