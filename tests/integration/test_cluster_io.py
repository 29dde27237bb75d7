"""The whole cluster as real processes: data through ``FsClient``, ``dfs put/get``, restarts
and a leader killed under load.

What these tests check (issue: the cluster core):
- writes at unaligned offsets across chunk boundaries, sparse files, truncate down and up,
  append, and concurrent readers all read back exactly what a local file would hold;
- close-to-open: what one client closed, another client's next open sees;
- ``dfs put`` / ``dfs get`` of a 300 MiB file are byte-identical, every chunk has 3
  replicas on 3 distinct chunkservers, and each replica's on-disk checksums verify;
- ``dfs down`` then ``dfs up`` on the same directory brings every file back intact;
- ``kill -9`` of the metaserver leader during 200 file writes: every write returns success,
  every file is there exactly once with exactly its bytes.

Every daemon is started and stopped by PID (``dfs.cli.cluster``); waits poll with deadlines.
Chunks are 1 MiB so that a few MiB already cross many chunk boundaries; metaservers take a
snapshot every 200 entries, so restarts go through snapshot + log replay.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dfs.cli import cluster as local
from dfs.client import ClientOptions, FsClient
from dfs.client.fsclient import ROOT_INO
from dfs.secret import load_secret
from dfs.wire.errors import NameTooLong, NotFound, TooBig
from dfs.wire.replicafile import DATA_OFFSET, chunk_relpath
from tools.testing.fsread import read_to_eof
from tools.testing.localcluster import client, dfs_cli, running

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(240)]

CHUNK = 1 << 20
MODE = 0o100644
UP_OPTIONS = ("--no-mount",)  # this module tests the cluster; tests/fuse test the mount
PUT_TIMEOUT_S = 180.0  # dfs put or get of 300 MiB on a loaded machine


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    with running(
        tmp_path_factory.mktemp("cluster"),
        chunk_size=CHUNK,
        # Snapshots every 200 entries: the restart and the leader kill below then recover
        # from a snapshot plus a log suffix, and a lagging node catches up by InstallSnapshot.
        meta_options={"tick_ms": 50, "snapshot_entries": 200},
        cs_options={"heartbeat_ms": 200},
    ) as lay:
        yield lay


async def write_file(fs: FsClient, parent: int, name: bytes, data: bytes) -> int:
    _, f = await fs.create_and_open(parent, name, MODE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        await f.write(0, data)
    finally:
        await f.close()
    return len(data)


async def test_unaligned_writes_across_chunk_boundaries(layout: local.Layout) -> None:
    rng = random.Random(11)
    model = bytearray()
    async with client(layout) as fs:
        d = await fs.mkdir(ROOT_INO, b"unaligned", 0o755)
        attr, f = await fs.create_and_open(d.ino, b"f", MODE, os.O_RDWR | os.O_CREAT)
        for _ in range(40):
            off = rng.randrange(0, 5 * CHUNK)
            data = rng.randbytes(rng.randrange(1, 3 * CHUNK // 2))
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off : off + len(data)] = data
            assert await f.write(off, data) == len(data)
            # Read-your-writes through the same handle, before any close.
            probe = rng.randrange(0, len(model))
            assert await f.read(probe, 70_000) == bytes(model[probe : probe + 70_000])
        await f.close()
    async with client(layout) as other:  # another client: nothing cached
        assert await read_to_eof(other, d.ino, b"f") == bytes(model)
        attr = await other.lookup(d.ino, b"f")
        assert attr.size == len(model)
        f = await other.open(attr.ino, os.O_RDONLY)
        for _ in range(30):
            off = rng.randrange(0, len(model))
            size = rng.randrange(1, 2 * CHUNK)
            assert await f.read(off, size) == bytes(model[off : off + size])
        await f.close()


async def test_sparse_truncate_append(layout: local.Layout) -> None:
    async with client(layout) as fs:
        d = await fs.mkdir(ROOT_INO, b"sparse", 0o755)
        _, f = await fs.create_and_open(d.ino, b"s", MODE, os.O_RDWR | os.O_CREAT)
        tail = b"tail" * 1000
        await f.write(5 * CHUNK + 12345, tail)  # a hole of five chunks and a bit
        await f.close()
        data = await read_to_eof(fs, d.ino, b"s")
        assert len(data) == 5 * CHUNK + 12345 + len(tail)
        assert data[: 5 * CHUNK + 12345] == bytes(5 * CHUNK + 12345) and data.endswith(tail)

        # Truncate down into the middle of chunk 1, then up: the cut part reads as zeros.
        attr = await fs.lookup(d.ino, b"s")
        f = await fs.open(attr.ino, os.O_RDWR)
        await f.write(0, b"x" * (2 * CHUNK))
        await f.truncate(CHUNK + 100)
        await f.truncate(3 * CHUNK)
        await f.close()
        data = await read_to_eof(fs, d.ino, b"s")
        assert data == b"x" * (CHUNK + 100) + bytes(3 * CHUNK - CHUNK - 100)

        # Writing again into the cut chunk after the truncate: no old bytes come back.
        f = await fs.open(attr.ino, os.O_RDWR)
        await f.write(CHUNK + 5000, b"y" * 10)
        await f.close()
        data = await read_to_eof(fs, d.ino, b"s")
        expect = bytearray(b"x" * (CHUNK + 100) + bytes(2 * CHUNK - 100))
        expect[CHUNK + 5000 : CHUNK + 5010] = b"y" * 10
        assert data == bytes(expect)

        # O_APPEND writes go to the end, whatever offset is given.
        f = await fs.open(attr.ino, os.O_WRONLY | os.O_APPEND)
        await f.write(0, b"appended")
        await f.close()
        data = await read_to_eof(fs, d.ino, b"s")
        assert data == bytes(expect) + b"appended"


async def test_concurrent_readers_and_close_to_open(layout: local.Layout) -> None:
    payload = random.Random(5).randbytes(3 * CHUNK + 777)
    async with client(layout) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"c2o", 0o755)
        await write_file(a, d.ino, b"shared", payload)
        # Client b sees the closed file at its next open (close-to-open).
        assert await read_to_eof(b, d.ino, b"shared") == payload

        results: list[bytes] = [b""] * 8

        async def reader(i: int) -> None:
            fs = a if i % 2 else b
            results[i] = await read_to_eof(fs, d.ino, b"shared")

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(reader, i)
        assert all(r == payload for r in results)

        # A rewrite by a is seen by b's next open, despite b's attribute cache.
        new = payload[::-1] + b"more"
        await write_file(a, d.ino, b"shared", new)
        assert await read_to_eof(b, d.ino, b"shared") == new


async def test_replicas_on_this_machine_are_read_from_their_files(layout: local.Layout) -> None:
    """SHORT-CIRCUIT READS: every replica of this cluster is on this machine, so reads take
    no chunk.read; a replica file that does not verify sends the read to its chunkserver,
    which finds the replica bad and reports it, and the bytes still come right from
    another; with ``local_reads`` off every read goes through a chunkserver."""
    data = random.Random(5).randbytes(3 * CHUNK + 777)
    async with client(layout) as fs:
        d = await fs.mkdir(ROOT_INO, b"local", 0o755)
        await write_file(fs, d.ino, b"f", data)
    async with client(layout) as fs:
        assert await read_to_eof(fs, d.ino, b"f") == data  # the first reads: the network
        ino = (await fs.lookup(d.ino, b"f")).ino
        known, location = fs.locations.get(ino, 1)
        assert known and location is not None
        local = fs.chunks.local
        assert local is not None
        for replica in location.replicas:  # the checks the first reads started, now
            assert await local.check(replica.address) is not None
        fs.stats.clear()
        assert await read_to_eof(fs, d.ino, b"f") == data
        assert fs.stats.count("local.read") >= 4, fs.stats.counts()
        assert fs.stats.count("chunk.read") == 0, fs.stats.counts()
        victim = location.replicas[0]  # the one read first
        data_dir = local.data_dir(victim.address)
        assert data_dir is not None
        with open(Path(data_dir) / chunk_relpath(location.chunk_id), "r+b") as raw:
            raw.seek(DATA_OFFSET + 10)
            byte = raw.read(1)
            raw.seek(DATA_OFFSET + 10)
            raw.write(bytes([byte[0] ^ 0xFF]))
    async with client(layout) as fs:
        assert fs.chunks.local is not None
        for replica in location.replicas:
            assert await fs.chunks.local.check(replica.address) is not None
        f = await fs.open(ino, os.O_RDONLY)
        try:
            assert await f.read(CHUNK, CHUNK) == data[CHUNK : 2 * CHUNK]
        finally:
            await f.close()
        assert fs.stats.count("local.miss") == 1, fs.stats.counts()
        assert fs.stats.count("chunk.read") >= 2, fs.stats.counts()  # Corrupt, then another
        status, _ = await fs._pool.call(victim.address, "cs.status", timeout_s=10)
        assert status["bad_chunks"] >= 1
    async with client(layout, options=ClientOptions(local_reads=False)) as fs:
        assert await read_to_eof(fs, d.ino, b"f") == data
        assert fs.stats.count("local.read") == 0 and fs.stats.count("chunk.read") >= 4


async def test_oversized_mutations_are_refused_before_they_reach_the_log(
    layout: local.Layout,
) -> None:
    """A setxattr value, a name or a symlink target over its limit gets the error it
    always got, but from the leader's edge: before, each was proposed, stored in every
    metaserver's log and applied only to be refused (17 of 7 MiB left an 86 MB log)."""

    async def commit() -> int:
        st = await local.cluster_status(layout.meta_addresses, load_secret(layout.secret_file))
        return max(m["commit"] for m in st["metaservers"] if m["state"] == "up")

    async with client(layout) as fs:
        before = await commit()
        for _ in range(10):
            with pytest.raises(TooBig):
                await fs.meta.mutate("fs.setxattr", ino=ROOT_INO, name=b"user.big",
                                     value=bytes(1 << 20), flags=0)  # fmt: skip
            with pytest.raises(NameTooLong):
                await fs.meta.mutate("fs.symlink", parent=ROOT_INO, name=b"l",
                                     target=b"t" * 5000, uid=0, gid=0)  # fmt: skip
            with pytest.raises(NameTooLong):
                await fs.meta.mutate("fs.mkdir", parent=ROOT_INO, name=b"d" * 256,
                                     mode=0o755, uid=0, gid=0)  # fmt: skip
        # Nothing else writes here; background upkeep makes a few entries at most.
        assert await commit() - before < 10


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


async def test_put_get_300mib_replicas_and_restart(layout: local.Layout, tmp_path: Path) -> None:
    from chunkserver.store import ChunkStore

    src = tmp_path / "big.bin"
    rng = random.Random(300)
    with open(src, "wb") as f:
        block = rng.randbytes(1 << 20)
        for i in range(300):
            # Different bytes in every MiB, cheaply: a chunk swapped for another is caught.
            f.write(i.to_bytes(4, "big") + block[4:])
    d = str(layout.dir)
    dfs_cli("mkdir", "--dir", d, "/big")
    dfs_cli("put", "--dir", d, str(src), "/big/", timeout_s=PUT_TIMEOUT_S)
    out = tmp_path / "back.bin"
    dfs_cli("get", "--dir", d, "/big/big.bin", str(out), timeout_s=PUT_TIMEOUT_S)
    assert sha256_file(out) == sha256_file(src)
    out.unlink()

    async with client(layout) as fs:
        attr = await fs.resolve(b"/big/big.bin")
        assert attr.size == 300 << 20
        header = await fs.meta.read("fs.locate", ino=attr.ino, index=0, count=1024)
    chunks = header["chunks"]
    assert [c["index"] for c in chunks] == list(range(300))
    for c in chunks:
        ids = [r["id"] for r in c["replicas"]]
        assert len(ids) == 3 and len(set(ids)) == 3, c
        assert c["length"] == CHUNK

    # Stop everything (dfs down); check every replica on disk against its checksums, then
    # restart (dfs up on the same directory).
    assert dfs_cli("down", "--dir", d).stdout.count("stopped") == 6
    status_ids = {}
    for i in layout.chunkservers:
        data_dir = layout.dir / f"cs{i}" / "data"
        status_ids[int((data_dir / "cs_id").read_text())] = data_dir
    for c in chunks:
        for r in c["replicas"]:
            store = ChunkStore(status_ids[r["id"]], fsync=False)
            got = bytes(store.read(c["chunk_id"], c["version"], 0, CHUNK))  # verifies checksums
            assert got[:4] == c["index"].to_bytes(4, "big")
    dfs_cli("up", "--dir", d, "--detach", *UP_OPTIONS)
    dfs_cli("get", "--dir", d, "/big/big.bin", str(out), timeout_s=PUT_TIMEOUT_S)
    assert sha256_file(out) == sha256_file(src)
    async with client(layout) as fs:
        assert (await fs.resolve(b"/unaligned/f")).size > 0  # earlier tests' files are back


async def test_closed_files_survive_kill_9_of_chunkservers(layout: local.Layout) -> None:
    """A close leaves the bytes on every replica unsynced (only fsync syncs): kill -9 of one
    chunkserver loses nothing (reads come from the others), and neither does kill -9 of
    every chunkserver at once, restarted (the kernel keeps a killed process's page cache).
    Only a power loss of every replica can take bytes closed without an fsync."""
    rng = random.Random(9)
    secret = load_secret(layout.secret_file)
    written: dict[bytes, bytes] = {}
    async with client(layout) as fs:
        d = await fs.mkdir(ROOT_INO, b"killed", 0o755)
        for i in range(12):
            name = b"f%02d" % i
            data = rng.randbytes(4096 if i % 3 else 2 * CHUNK + 12345)
            await write_file(fs, d.ino, name, data)
            written[name] = data

    async def read_back() -> None:
        async with client(layout, timeout_s=60.0) as fs:
            d = await fs.lookup(ROOT_INO, b"killed")
            for name, data in written.items():
                assert await read_to_eof(fs, d.ino, name) == data, name

    st = await local.cluster_status(layout.meta_addresses, secret)
    pids = [c["pid"] for c in st["chunkservers"]]
    assert len(pids) == 3 and all(pids)
    os.kill(pids[0], signal.SIGKILL)
    await read_back()
    for pid in pids[1:]:
        os.kill(pid, signal.SIGKILL)
    local.start_daemons(layout)
    await local.wait_ready(layout, 60.0)
    await read_back()


async def test_leader_killed_during_200_puts(layout: local.Layout) -> None:
    secret = load_secret(layout.secret_file)
    written: dict[bytes, bytes] = {}
    async with client(layout, timeout_s=30.0) as fs:
        d = await fs.mkdir(ROOT_INO, b"puts", 0o755)
        killed = None
        for i in range(200):
            name = b"f%03d" % i
            data = hashlib.sha256(name).digest() * (1 + i % 50)
            await write_file(fs, d.ino, name, data)  # must not raise, leader kill or not
            written[name] = data
            if i == 60:
                st = await local.cluster_status(layout.meta_addresses, secret)
                leader = next(m for m in st["metaservers"] if m.get("role") == "leader")
                os.kill(leader["pid"], signal.SIGKILL)
                killed = leader["id"]
        assert killed is not None
    local.start_daemons(layout)  # bring the killed metaserver back
    await local.wait_ready(layout, 60.0)
    async with client(layout) as fs:
        d = await fs.lookup(ROOT_INO, b"puts")
        names = sorted([e.name async for e in fs.readdir(d.ino)])
        assert names == sorted(written)
        for name, data in written.items():
            assert await read_to_eof(fs, d.ino, name) == data, name
        with pytest.raises(NotFound):
            await fs.lookup(d.ino, b"f200")
