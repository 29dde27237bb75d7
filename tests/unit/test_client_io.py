"""FsClient's data path against the fake cluster, under asyncio and trio: writes and reads
at unaligned offsets across chunk boundaries, holes, truncation, append, commits and
syncs on fsync (and on close only with ``sync_on_close``), read-your-writes, replica failover, handle renewal, read-ahead, deadlines;
commits that name the handle's version (Stale after another client's handle or truncate,
reported, not retried), short replicas failed over, ``expect_length``, and closes that
fail or are cancelled without losing the inode's state.

Chunks are small (256 KiB) so that a few hundred KiB cross several chunk boundaries.
Every file's expected content is kept in a bytearray model and compared byte for byte.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from dfs.client import ROOT_INO, ClientOptions, FsClient
from dfs.client.handle import File
from dfs.client.records import Replica
from dfs.wire.errors import (
    Corrupt,
    Invalid,
    IsDir,
    PermissionDenied,
    Stale,
    Timeout,
    Unavailable,
)
from tools.testing.fakecluster import ClusterThread, FakeCluster, MetaFault

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB
OPTIONS = ClientOptions(
    timeout_s=5.0,
    attempt_timeout_s=0.5,
    io_timeout_s=0.5,
    connect_timeout_s=1.0,
    write_buffer_bytes=64 * KiB,
    # Along the chain, as these tests were written for (a failure injected at its head);
    # the fan-out, the default for small writes, has its own parametrized test here and
    # is what the mount's tests run.
    fanout_write_bytes_max=0,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster() -> Iterator[ClusterThread]:
    with ClusterThread(chunkservers=3, chunk_size=CHUNK) as c:
        yield c


@asynccontextmanager
async def client(
    cluster: ClusterThread, options: ClientOptions = OPTIONS, **kwargs: Any
) -> AsyncIterator[FsClient]:
    async with FsClient.open_cluster(
        cluster.meta_addresses, cluster.secret, options=options, **kwargs
    ) as fs:
        yield fs


class Model:
    """The expected content of one file."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)

    def write(self, offset: int, chunk: bytes) -> None:
        if len(self.data) < offset:
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset : offset + len(chunk)] = chunk

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))


async def read_all(fs: FsClient, ino: int) -> bytes:
    async with await fs.open(ino, os.O_RDONLY) as f:
        return await f.read(0, 1 << 30)


def replica_contents(cluster: ClusterThread, ino: int) -> list[tuple[int, int, list[bytes]]]:
    """For each chunk: (index, table length, each replica's bytes up to that length)."""

    def collect(c: FakeCluster) -> list[tuple[int, int, list[bytes]]]:
        out = []
        for index, chunk in c.file_chunks(ino).items():
            replicas = []
            for cs_id in chunk.replicas:
                cs = c.chunkserver(cs_id)
                assert cs is not None
                replica = cs.replicas[chunk.id]
                assert replica.version == chunk.version
                replicas.append(bytes(replica.data[: chunk.length]))
            out.append((index, chunk.length, replicas))
        return out

    return cluster.call(collect)


def chunk_writes(cluster: ClusterThread) -> list[int]:
    return cluster.call(lambda c: [n for cs in c.chunkservers for n in cs.write_sizes])


def chunk_reads(cluster: ClusterThread) -> int:
    return cluster.call(lambda c: sum(cs.reads for cs in c.chunkservers))


async def test_unaligned_writes_and_reads_across_chunks(cluster: ClusterThread) -> None:
    rng = random.Random(7)
    model = Model()
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT)
        for step in range(40):
            offset = rng.randrange(0, 5 * CHUNK)
            data = rng.randbytes(rng.choice([1, 17, 4096, 65 * KiB, 300 * KiB]))
            assert await f.write(offset, data) == len(data)
            model.write(offset, data)
            if step % 4 == 3:
                # Read-your-writes, buffered, in flight or landed alike.
                a = rng.randrange(0, len(model.data))
                b = min(len(model.data), a + rng.randrange(1, 2 * CHUNK))
                assert await f.read(a, b - a) == bytes(model.data[a:b])
        assert (await fs.getattr(attr.ino)).size == len(model.data)
        await f.close()
        assert await read_all(fs, attr.ino) == model.data
    async with client(cluster) as other:
        assert await read_all(other, attr.ino) == model.data
        assert (await other.getattr(attr.ino)).size == len(model.data)
    for index, length, replicas in replica_contents(cluster, attr.ino):
        expected = bytes(model.data[index * CHUNK : index * CHUNK + length])
        assert len(replicas) == 3 and all(r == expected for r in replicas)
    # Coalescing: chunk.write calls carry whole buffers, not the small writes.
    assert max(chunk_writes(cluster)) == OPTIONS.write_buffer_bytes


async def test_sparse_files_read_holes_as_zeros(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"s", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"head")
        await f.write(3 * CHUNK + 100, b"tail")
        await f.write(CHUNK // 2 - 2, b"mid")  # a hole inside chunk 0 too
        await f.close()
        model = Model()
        model.write(0, b"head")
        model.write(3 * CHUNK + 100, b"tail")
        model.write(CHUNK // 2 - 2, b"mid")
        assert sorted(cluster.call(lambda c: list(c.file_chunks(attr.ino)))) == [0, 3]
        async with await fs.open(attr.ino, os.O_RDONLY) as r:
            assert (await fs.getattr(attr.ino)).size == 3 * CHUNK + 104
            assert await r.read(0, 4 * CHUNK) == model.data
            assert await r.read(CHUNK + 5, 1000) == bytes(1000)  # inside a hole chunk
            assert await r.read(3 * CHUNK + 98, 100) == b"\0\0tail"
            assert await r.read(3 * CHUNK + 104, 10) == b""  # at the end
            assert await r.read(10 * CHUNK, 10) == b""


async def test_truncate_down_and_up(cluster: ClusterThread) -> None:
    data = random.Random(1).randbytes(600 * KiB)
    model = Model(data)
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"t", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, data)
        await f.close()

        async with await fs.open(attr.ino, os.O_RDWR) as f:
            assert (await f.truncate(300_000)).size == 300_000
            model.truncate(300_000)
            assert await f.read(0, 1 << 20) == model.data
            # Up again: the replicas still hold the old bytes past the cut, which must
            # read as zeros.
            assert (await fs.setattr(attr.ino, size=700_000)).size == 700_000
            model.truncate(700_000)
            assert await f.read(0, 1 << 20) == model.data
            await f.write(500_000, b"x" * 1000)
            model.write(500_000, b"x" * 1000)
            assert await f.read(0, 1 << 20) == model.data
        assert await read_all(fs, attr.ino) == model.data

        # A file no handle has open: setattr alone, then read.
        await fs.setattr(attr.ino, size=CHUNK + 1)
        model.truncate(CHUNK + 1)
        assert await read_all(fs, attr.ino) == model.data
        assert sorted(cluster.call(lambda c: list(c.file_chunks(attr.ino)))) == [0, 1]
    async with client(cluster) as other:
        assert await read_all(other, attr.ino) == model.data


async def test_append_and_o_trunc(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(
            ROOT_INO, b"log", 0o644, os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
        await f.write(0, b"abc")
        await f.write(0, b"def")  # O_APPEND: the offset is ignored
        await f.close()
        async with await fs.open(attr.ino, os.O_WRONLY | os.O_APPEND) as f:
            await f.write(999, b"ghi")
        assert await read_all(fs, attr.ino) == b"abcdefghi"
        async with await fs.open(attr.ino, os.O_WRONLY | os.O_TRUNC) as f:
            assert (await fs.getattr(attr.ino)).size == 0
            await f.write(0, b"new")
        assert await read_all(fs, attr.ino) == b"new"
        # O_CREAT without O_EXCL on an existing file opens it (and O_TRUNC truncates).
        again, f = await fs.create_and_open(
            ROOT_INO, b"log", 0o644, os.O_RDWR | os.O_CREAT | os.O_TRUNC
        )
        assert again.ino == attr.ino and again.size == 0
        await f.close()
        assert await read_all(fs, attr.ino) == b""


async def test_close_and_fsync_commit_size_and_make_data_durable(cluster: ClusterThread) -> None:
    data = random.Random(2).randbytes(300 * KiB)
    async with client(cluster) as fs, client(cluster) as other:
        attr, f = await fs.create_and_open(ROOT_INO, b"c", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data[:100_000])
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].size) == 0  # not yet
        assert (await fs.getattr(attr.ino)).size == 100_000  # this client's view
        assert (await other.getattr(attr.ino, fresh=True)).size == 0  # others'
        await f.fsync()
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].size) == 100_000
        await f.write(100_000, data[100_000:])
        syncs = cluster.call(lambda c: sum(cs.syncs for cs in c.chunkservers))
        await f.close()
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].size) == len(data)
        # A close puts the bytes on every replica and commits them, without a sync.
        assert cluster.call(lambda c: sum(cs.syncs for cs in c.chunkservers)) == syncs
        commits = cluster.call(lambda c: [(m.size, m.chunks) for m in c.namespace.commits])
        # Each entry names the handle (chunk id, version) its length was written under.
        table = cluster.call(lambda c: c.file_chunks(attr.ino))
        assert commits[-1] == (
            len(data),
            [
                [0, CHUNK, table[0].id, table[0].version],
                [1, len(data) - CHUNK, table[1].id, table[1].version],
            ],
        )

        def synced() -> list[tuple[int, int]]:
            return cluster.call(
                lambda c: [
                    (cs.replicas[ch.id].synced_bytes, ch.length)
                    for ch in c.file_chunks(attr.ino).values()
                    for cs in c.chunkservers
                    if ch.id in cs.replicas
                ]
            )

        assert len(synced()) == 6 and not all(s >= length for s, length in synced())
        assert (await other.getattr(attr.ino, fresh=True)).size == len(data)
        assert await read_all(other, attr.ino) == data
        # Closing again, or a close with nothing written, commits nothing more; an fsync of
        # a descriptor opened for writing after the close syncs what the close left, as a local file
        # system's fsync covers every dirty page of the file.
        count = len(commits)
        await f.close()
        async with await fs.open(attr.ino, os.O_RDONLY) as r:
            await r.fsync()  # a reader asks for no write handle to sync another's writes
        assert not all(s >= length for s, length in synced())
        async with await fs.open(attr.ino, os.O_RDWR) as g:
            await g.fsync()
        assert len(synced()) == 6 and all(s >= length for s, length in synced())
        assert len(cluster.call(lambda c: c.namespace.commits)) == count


async def test_sync_on_close_makes_every_close_durable(cluster: ClusterThread) -> None:
    data = random.Random(3).randbytes(300 * KiB)
    options = dataclasses.replace(OPTIONS, sync_on_close=True)
    async with client(cluster, options) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"s", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        syncs = cluster.call(lambda c: sum(cs.syncs for cs in c.chunkservers))
        await f.close()
        assert cluster.call(lambda c: sum(cs.syncs for cs in c.chunkservers)) > syncs
        synced = cluster.call(
            lambda c: [
                (cs.replicas[ch.id].synced_bytes, ch.length)
                for ch in c.file_chunks(attr.ino).values()
                for cs in c.chunkservers
                if ch.id in cs.replicas
            ]
        )
        assert len(synced) == 6 and all(s >= length for s, length in synced)


async def test_read_your_writes_across_handles(cluster: ClusterThread) -> None:
    model = Model(random.Random(3).randbytes(200 * KiB))
    async with client(cluster) as fs:
        attr, w = await fs.create_and_open(ROOT_INO, b"r", 0o644, os.O_RDWR | os.O_CREAT)
        await w.write(0, bytes(model.data))
        r = await fs.open(attr.ino, os.O_RDONLY)
        assert await r.read(0, 1 << 20) == model.data  # nothing committed yet
        await w.write(1000, b"X" * 10)  # into a landed upload
        model.write(1000, b"X" * 10)
        await w.write(len(model.data) - 5, b"Y" * 10)  # the buffered extent, and past it
        model.write(len(model.data) - 5, b"Y" * 10)
        assert await r.read(0, 1 << 20) == model.data
        assert await r.read(len(model.data) - 20, 100) == model.data[-20:]
        await w.close()
        assert await r.read(0, 1 << 20) == model.data
        await r.close()
    async with client(cluster) as other:
        assert await read_all(other, attr.ino) == model.data


async def test_read_fails_over_from_corrupt_replicas(cluster: ClusterThread) -> None:
    data = random.Random(4).randbytes(2 * CHUNK + 5)
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"x", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        await f.close()

        def corrupt_on(c: FakeCluster, servers: int) -> None:
            ids = {ch.id for ch in c.file_chunks(attr.ino).values()}
            for cs in c.chunkservers[:servers]:
                cs.corrupt |= ids

        cluster.call(lambda c: corrupt_on(c, 2))  # one good replica left of every chunk
        for _ in range(5):
            assert await read_all(fs, attr.ino) == data
        cluster.call(lambda c: corrupt_on(c, 3))
        with pytest.raises(Corrupt):
            await read_all(fs, attr.ino)


async def test_read_fails_over_from_a_hung_replica(cluster: ClusterThread) -> None:
    data = random.Random(5).randbytes(CHUNK)
    async with client(cluster, dataclasses.replace(OPTIONS, timeout_s=1.5)) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"h", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        await f.close()
        cluster.call(lambda c: setattr(c.chunkservers[0], "hang", True))
        started = anyio.current_time()
        for _ in range(5):
            assert await read_all(fs, attr.ino) == data
        # The hung server costs one timeout, then goes to the back of the line.
        assert anyio.current_time() - started < 2 * OPTIONS.io_timeout_s + 1
        cluster.call(lambda c: c.hang_chunkservers())
        started = anyio.current_time()
        with pytest.raises((Unavailable, Timeout)):
            await read_all(fs, attr.ino)
        assert anyio.current_time() - started < 1.5 + 1


async def test_outdated_handle_is_renewed_without_losing_uncommitted_data(
    cluster: ClusterThread,
) -> None:
    model = Model()
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"w", 0o644, os.O_RDWR | os.O_CREAT)
        first = random.Random(6).randbytes(128 * KiB)
        await f.write(0, first)  # two uploads of 64 KiB
        model.write(0, first)
        assert await f.read(0, len(first)) == first  # waits for them to land
        cluster.call(lambda c: c.fail_next_writes(Stale("injected")))
        second = b"z" * (64 * KiB)
        await f.write(len(first), second)
        model.write(len(first), second)
        await f.close()
        # The new handle bumped the version, and replicas cut themselves to the chunk
        # table's length: the first writes survived because they were committed first.
        assert await read_all(fs, attr.ino) == model.data
        ops = cluster.call(lambda c: [op for op, _, _ in c.requests])
        # The first handle came with the create (first_chunk), the second by its own call.
        handles = [i for i, op in enumerate(ops) if op in ("fs.create", "fs.write_handle")]
        assert ops[handles[0]] == "fs.create" and len(handles) >= 2
        assert "fs.commit" in ops[handles[0] : handles[1]]
    for _, _, replicas in replica_contents(cluster, attr.ino):
        assert all(r == model.data for r in replicas)


async def test_keepalives_name_the_chunks_being_written_until_committed(
    cluster: ClusterThread,
) -> None:
    """The leader's upkeep must not copy (and so fence) a chunk a writer is still busy
    with: every keepalive names the chunks with uploads not yet committed."""

    def keepalives() -> list[dict[str, Any]]:
        return cluster.call(lambda c: list(c.namespace.keepalives))

    cluster.call(lambda c: setattr(c.namespace, "keepalive_ms", 500))
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"k", 0o644, os.O_RDWR | os.O_CREAT)
        # The first keepalive goes as soon as a file is open, and names no chunk yet.
        with anyio.fail_after(5):
            while not keepalives():
                await anyio.sleep(0.01)
        assert keepalives()[0]["writing"] == [] and keepalives()[0]["inos"] == [attr.ino]
        seen = len(keepalives())
        await f.write(0, b"a" * (2 * CHUNK + 100))  # chunks 0 and 1 upload, uncommitted

        def named() -> bool:
            chunks = cluster.call(lambda c: c.file_chunks(attr.ino))
            want = {chunks[i].id for i in (0, 1) if i in chunks}
            return len(want) == 2 and any(want <= set(k["writing"]) for k in keepalives()[seen:])

        with anyio.fail_after(5):
            while not named():
                await anyio.sleep(0.01)
        await f.fsync()
        seen = len(keepalives())
        with anyio.fail_after(5):
            while len(keepalives()) < seen + 2:
                await anyio.sleep(0.01)
        assert keepalives()[-1]["writing"] == []  # committed: nothing busy
        await f.close()


async def test_replica_failure_during_write_is_retried(cluster: ClusterThread) -> None:
    data = random.Random(8).randbytes(300 * KiB)
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"u", 0o644, os.O_WRONLY | os.O_CREAT)
        cluster.call(lambda c: c.fail_next_writes(Unavailable("injected")))
        await f.write(0, data)
        await f.close()
        assert await read_all(fs, attr.ino) == data


@pytest.mark.parametrize("fanout_bytes", [0, 256 * KiB], ids=["chain", "fan-out"])
async def test_a_broken_replica_is_reported_and_dropped_from_the_chain(
    cluster: ClusterThread, fanout_bytes: int
) -> None:
    """A chunkserver alive but failing every write (a dead disk): the writer names it in
    its next fs.write_handle, gets a chain without it and finishes well before its
    deadline (the leader alone would never drop a server that heartbeats). The same whether
    the writes go along the chain or to every replica at once (small writes, FAN-OUT)."""
    data = random.Random(12).randbytes(300 * KiB)
    options = dataclasses.replace(OPTIONS, timeout_s=10.0, fanout_write_bytes_max=fanout_bytes)
    async with client(cluster, options) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"b", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"x")
        await f.fsync()  # the chunk exists on every replica
        broken = cluster.call(lambda c: c.chunkservers[1])
        cluster.call(lambda c: setattr(broken, "broken", True))
        started = anyio.current_time()
        await f.write(0, data)
        await f.close()
        assert anyio.current_time() - started < 5.0
        assert await read_all(fs, attr.ino) == data
    assert set(cluster.call(lambda c: c.namespace.dropped)) == {broken.cs_id}
    for chunk in cluster.call(lambda c: c.file_chunks(attr.ino)).values():
        assert broken.cs_id not in chunk.replicas


async def test_a_failed_upload_never_commits_its_size(cluster: ClusterThread) -> None:
    """Found by the chaos run: a write whose upload failed (fsync said EIO), then a close
    that succeeded, committed the size of the lost bytes: the file read as zeros. The
    size goes back to what landed, so the file reads as before the failed write."""
    options = dataclasses.replace(OPTIONS, timeout_s=1.0, io_timeout_s=0.2)
    async with client(cluster, options) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"z", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"kept" * 10)
        await f.fsync()
        cluster.call(lambda c: c.hang_chunkservers())
        await f.write(40, b"x" * 100_000)
        with pytest.raises((Timeout, Unavailable)):
            await f.fsync()
        cluster.call(lambda c: c.hang_chunkservers(False))
        await f.close()
        data = await read_all(fs, attr.ino)
        assert data == b"kept" * 10, (len(data), data[:60])


async def test_write_to_a_dead_cluster_fails_by_the_deadline(cluster: ClusterThread) -> None:
    options = dataclasses.replace(OPTIONS, timeout_s=1.0, io_timeout_s=0.2)
    async with client(cluster, options) as fs:
        _, f = await fs.create_and_open(ROOT_INO, b"d", 0o644, os.O_WRONLY | os.O_CREAT)
        cluster.call(lambda c: c.hang_chunkservers())
        await f.write(0, b"a" * 1000)  # buffered: fine
        started = anyio.current_time()
        with pytest.raises((Timeout, Unavailable)):
            await f.close()
        assert anyio.current_time() - started < options.timeout_s + 2
        assert f.closed


async def test_sequential_reads_prefetch_in_large_blocks(cluster: ClusterThread) -> None:
    data = random.Random(9).randbytes(4 * MiB)
    options = dataclasses.replace(OPTIONS, write_buffer_bytes=4 * MiB)
    with ClusterThread(chunkservers=3, chunk_size=4 * MiB) as big:
        async with client(big, options) as fs:
            attr, f = await fs.create_and_open(ROOT_INO, b"big", 0o644, os.O_WRONLY | os.O_CREAT)
            for off in range(0, len(data), 64 * KiB):  # small writes ...
                await f.write(off, data[off : off + 64 * KiB])
            await f.close()
            assert chunk_writes(big) == [4 * MiB] * 3  # ... one chunk.write per replica

            before = chunk_reads(big)
            async with await fs.open(attr.ino, os.O_RDONLY) as r:
                got = [await r.read(off, 128 * KiB) for off in range(0, len(data), 128 * KiB)]
            assert b"".join(got) == data
            sequential_reads = chunk_reads(big) - before
            assert sequential_reads <= 6  # 1 MiB blocks, not 32 reads of 128 KiB

            before = chunk_reads(big)
            # Random: no read at 0 and none that starts where the last one ended or ends
            # where it began (the read-ahead takes either for a stream, handle.py).
            offsets = list(range(128 * KiB, len(data), 128 * KiB))
            shuffler = random.Random(10)
            while any(abs(a - b) == 128 * KiB for a, b in itertools.pairwise(offsets)):
                shuffler.shuffle(offsets)
            async with await fs.open(attr.ino, os.O_RDONLY) as r:
                for off in offsets:
                    assert await r.read(off, 128 * KiB) == data[off : off + 128 * KiB]
            assert chunk_reads(big) - before == len(offsets)  # random: no read-ahead


async def test_open_revalidates_and_sees_other_clients_writes(cluster: ClusterThread) -> None:
    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    async with client(cluster) as writer, client(cluster, clock=Clock()) as reader:
        attr, f = await writer.create_and_open(ROOT_INO, b"v", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"version one")
        await f.close()
        assert await read_all(reader, attr.ino) == b"version one"
        cached = await reader.getattr(attr.ino)

        async with await writer.open(attr.ino, os.O_WRONLY | os.O_TRUNC) as f:
            await f.write(0, b"second version, longer")
        # Within the TTL the reader's cache still answers (the clock does not move) ...
        assert await reader.getattr(attr.ino) == cached
        # ... but open asks the metaserver: close-to-open.
        assert await read_all(reader, attr.ino) == b"second version, longer"
        assert (await reader.getattr(attr.ino)).size == len(b"second version, longer")


async def test_handle_flags_are_enforced(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"f", 0o644, os.O_RDONLY | os.O_CREAT)
        with pytest.raises(PermissionDenied):
            await f.write(0, b"x")
        await f.close()
        with pytest.raises(Invalid):
            await f.read(0, 1)
        d = await fs.mkdir(ROOT_INO, b"d", 0o755)
        with pytest.raises(IsDir):
            await fs.open(d.ino, os.O_WRONLY)
        async with await fs.open(attr.ino, os.O_WRONLY) as w:
            with pytest.raises(PermissionDenied):
                await w.read(0, 1)


@pytest.mark.parametrize("seed", range(3))
async def test_concurrent_handles_on_one_inode(cluster: ClusterThread, seed: int) -> None:
    """Four tasks, each with its own handle, write and read back their own regions of one
    file (regions share chunks, and buffers) with fsyncs in between: every read sees the
    task's own writes, and the file ends as the union of the regions."""
    region = CHUNK + 12_345
    options = dataclasses.replace(
        OPTIONS,
        write_buffer_bytes=16 * KiB,
        readahead_block_bytes=16 * KiB,
        readahead_max_bytes=64 * KiB,
        uploads_in_flight_max=3,
    )
    models = [Model(bytes(region)) for _ in range(4)]
    rng0 = random.Random(seed)
    async with client(cluster, options) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"c", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, bytes(4 * region))

        async def worker(k: int, rng: random.Random) -> None:
            model = models[k]
            async with await fs.open(attr.ino, os.O_RDWR) as h:
                for _ in range(30):
                    roll = rng.random()
                    if roll < 0.5:
                        at = rng.randrange(region - 1)
                        data = rng.randbytes(min(region - at, rng.choice([1, 700, 20_000])))
                        await h.write(k * region + at, data)
                        model.write(at, data)
                    elif roll < 0.95:
                        at = rng.randrange(region)
                        for _ in range(rng.randrange(1, 4)):  # short sequential runs
                            size = min(region - at, rng.choice([4096, 40_000]))
                            got = await h.read(k * region + at, size)
                            assert got == model.data[at : at + size]
                            at += size
                    else:
                        await h.fsync()

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(worker, k, random.Random(rng0.random()))
        await f.close()
    expected = b"".join(bytes(m.data) for m in models)
    async with client(cluster) as other:
        assert await read_all(other, attr.ino) == expected


async def test_truncate_by_another_client_is_seen_at_the_next_open(
    cluster: ClusterThread,
) -> None:
    data = random.Random(11).randbytes(2 * CHUNK)
    async with client(cluster) as a, client(cluster) as b:
        attr, f = await a.create_and_open(ROOT_INO, b"t", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, data)
        await f.flush()  # committed; the handle stays open
        assert await f.read(0, len(data)) == data
        await b.setattr(attr.ino, size=1000)  # cut: a new version, pushed to the replicas
        await b.setattr(attr.ino, size=len(data))  # and extended: zeros, not old bytes
        async with await a.open(attr.ino, os.O_RDONLY) as r:
            assert await r.read(0, len(data)) == data[:1000] + bytes(len(data) - 1000)
        await f.close()


async def test_handles_renewed_at_every_use_keep_data_and_sync_it() -> None:
    """Tokens that live 5 s are within the client's renewal margin at once: every upload
    and every sync asks for a new handle, bumping the chunk's version each time. Data
    written under older versions must survive (committed before each renewal) and be
    synced at the version the replicas end up at."""
    model = Model()
    rng = random.Random(12)
    with ClusterThread(chunkservers=3, chunk_size=CHUNK, token_ttl_ms=5_000) as renewing:
        async with client(renewing) as fs:
            attr, f = await fs.create_and_open(ROOT_INO, b"r", 0o644, os.O_RDWR | os.O_CREAT)
            for _ in range(12):
                at = rng.randrange(0, 2 * CHUNK)
                data = rng.randbytes(rng.choice([100, 30 * KiB, 70 * KiB]))
                await f.write(at, data)
                model.write(at, data)
            await f.fsync()
            await f.write(10, b"after the fsync")
            model.write(10, b"after the fsync")
            await f.close()
            assert await read_all(fs, attr.ino) == model.data
            versions = [
                c.version for c in renewing.call(lambda c: c.file_chunks(attr.ino)).values()
            ]
            assert max(versions) > 3  # renewed again and again
        for index, length, replicas in replica_contents(renewing, attr.ino):
            assert all(r == model.data[index * CHUNK : index * CHUNK + length] for r in replicas)
        synced = renewing.call(
            lambda c: [
                (cs.replicas[ch.id].synced_bytes, ch.length)
                for ch in c.file_chunks(attr.ino).values()
                for cs in c.chunkservers
                if ch.id in cs.replicas
            ]
        )
        assert all(s >= length for s, length in synced)


@pytest.mark.parametrize(
    ("seed", "token_ttl_ms"), [(0, 600_000), (1, 600_000), (2, 5_000), (21, 5_000)]
)
async def test_random_operations_against_a_model(seed: int, token_ttl_ms: int) -> None:
    """Writes, truncates, fsyncs and reads, at random, through two handles on one file,
    checked against the model after every read and at the end. With tokens of 5 s every
    upload and sync renews its handle, so commits race with renewals: without the commit
    lock (a renewal overtaking a commit still on its way) seeds 2 and 21 fail under trio."""
    chunk = 64 * KiB
    options = dataclasses.replace(
        OPTIONS,
        write_buffer_bytes=16 * KiB,
        readahead_block_bytes=16 * KiB,
        readahead_max_bytes=64 * KiB,
        uploads_in_flight_max=3,
    )
    rng = random.Random(seed)
    model = Model()
    with ClusterThread(chunk_size=chunk, token_ttl_ms=token_ttl_ms) as c:
        async with client(c, options) as fs:
            attr, f = await fs.create_and_open(ROOT_INO, b"m", 0o644, os.O_RDWR | os.O_CREAT)
            g = await fs.open(attr.ino, os.O_RDWR)
            for _ in range(60):
                h = rng.choice([f, g])
                roll = rng.random()
                if roll < 0.55:
                    at = rng.randrange(0, 6 * chunk)
                    data = rng.randbytes(rng.choice([1, 100, 5000, 20_000, 70_000]))
                    await h.write(at, data)
                    model.write(at, data)
                elif roll < 0.65:
                    size = rng.randrange(0, 7 * chunk)
                    await h.truncate(size)
                    model.truncate(size)
                elif roll < 0.7:
                    await h.fsync()
                else:
                    at = rng.randrange(0, max(1, len(model.data)))
                    for _ in range(rng.randrange(1, 5)):
                        size = rng.choice([4096, 16_384, 40_000])
                        assert await h.read(at, size) == model.data[at : at + size]
                        at += size
            await f.close()
            await g.close()
            assert await read_all(fs, attr.ino) == model.data
        async with client(c, options) as other:
            assert await read_all(other, attr.ino) == model.data


# ---------------------------------------------------------------------- commits name versions


async def landed(f: File, offset: int, size: int) -> None:
    """Wait until the uploads of [offset, offset + size) have landed (a read waits for them)."""
    await f.read(offset, size)


async def test_a_commit_after_another_writer_cut_our_bytes_fails_and_is_not_retried(
    cluster: ClusterThread,
) -> None:
    """Another client's handle bumps the chunk's version, and the replicas cut themselves to
    the committed length: our uploaded but uncommitted bytes are gone. Our commit names the
    version it wrote under, the metaserver says Stale, and the fsync must fail (EIO), not
    take a new handle and commit lengths that point at missing data."""
    first = random.Random(13).randbytes(128 * KiB)
    async with client(cluster) as a, client(cluster) as b:
        attr, f = await a.create_and_open(ROOT_INO, b"s", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, first)
        await f.fsync()
        await f.write(len(first), b"y" * (64 * KiB))  # one full buffer: uploaded
        await landed(f, len(first), 64 * KiB)
        async with await b.open(attr.ino, os.O_WRONLY) as g:
            await g.write(0, b"B" * 10)
        commits = len(cluster.call(lambda c: c.namespace.commits))
        with pytest.raises(Stale):
            await f.fsync()
        assert len(cluster.call(lambda c: c.namespace.commits)) == commits  # not retried
        # The client dropped what the commit described and took the metaserver's size.
        assert (await a.getattr(attr.ino)).size == len(first)
        assert await f.read(0, 1 << 20) == b"B" * 10 + first[10:]
        await f.fsync()  # reported once; nothing left to commit
        # And it goes on with a fresh handle.
        await f.write(0, b"again")
        await f.close()
        assert attr.ino not in a._open
    async with client(cluster) as other:
        assert await read_all(other, attr.ino) == b"again" + b"B" * 5 + first[10:]


async def test_a_commit_after_a_truncate_cut_our_bytes_fails(cluster: ClusterThread) -> None:
    first = random.Random(14).randbytes(128 * KiB)
    async with client(cluster) as a, client(cluster) as b:
        attr, f = await a.create_and_open(ROOT_INO, b"t", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, first)
        await f.fsync()
        await f.write(len(first), b"y" * (64 * KiB))
        await landed(f, len(first), 64 * KiB)
        await b.setattr(attr.ino, size=100_000)  # cuts chunk 0: a new version
        with pytest.raises(Stale):
            await f.close()
        assert attr.ino not in a._open
        assert await read_all(a, attr.ino) == first[:100_000]
    assert cluster.call(lambda c: c.namespace.inodes[attr.ino].size) == 100_000


async def test_open_after_another_clients_change_drops_cached_write_handles(
    cluster: ClusterThread,
) -> None:
    """Another client committed to the file (its attributes changed): an open here drops
    the cached write handles, so the next write does not go out under an old version (and
    get Stale from the replicas, or, had the replicas not moved, a Stale commit)."""

    def stale_answers(c: FakeCluster) -> int:
        return sum(cs.stale for cs in c.chunkservers)

    def handles(c: FakeCluster) -> int:
        return sum(op == "fs.write_handle" for op, _, _ in c.requests)

    model = Model()
    async with client(cluster) as a, client(cluster) as b:
        attr, f = await a.create_and_open(ROOT_INO, b"h", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, b"a" * 1000)
        await f.fsync()
        model.write(0, b"a" * 1000)
        # No change by anyone else: the handle stays cached across an open.
        before = cluster.call(handles)
        async with await a.open(attr.ino, os.O_RDONLY):
            pass
        await f.write(10, b"mine")
        await f.fsync()
        model.write(10, b"mine")
        assert cluster.call(handles) == before
        async with await b.open(attr.ino, os.O_WRONLY) as g:
            await g.write(500, b"theirs")
        model.write(500, b"theirs")
        async with await a.open(attr.ino, os.O_RDONLY) as r:  # sees b's commit
            assert await r.read(0, 2000) == model.data
        stale = cluster.call(stale_answers)
        await f.write(20, b"fresh handle")
        await f.close()
        model.write(20, b"fresh handle")
        assert cluster.call(stale_answers) == stale
    async with client(cluster) as other:
        assert await read_all(other, attr.ino) == model.data


# ---------------------------------------------------------------------- short replicas


async def test_short_replica_reads_fail_over_and_never_read_as_zeros(
    cluster: ClusterThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dfs.client.chunkio")
    data = random.Random(15).randbytes(2 * CHUNK + 5)
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"x", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        await f.close()

        def holders(c: FakeCluster) -> dict[int, list[tuple[int, str]]]:
            return {
                ch.id: [(cs.cs_id, cs.address) for cs in c.chunkservers if ch.id in cs.replicas]
                for ch in c.file_chunks(attr.ino).values()
            }

        # The replicas the client asks first (its region ranking, chunkio.py) lose their
        # tails first, so that a read meets a short one before the full one.
        ranked = {
            chunk_id: [
                r.address
                for r in fs.chunks.order(tuple(Replica(i, a) for i, a in held), chunk_id, 0)
            ]
            for chunk_id, held in cluster.call(holders).items()
        }

        def lose_tails(c: FakeCluster, servers: int) -> None:
            # As a replica that lost its unsynced tail in a crash, at the same version.
            for chunk_id, addresses in ranked.items():
                for cs in c.chunkservers:
                    if cs.address in addresses[:servers] and chunk_id in cs.replicas:
                        del cs.replicas[chunk_id].data[1000:]

        cluster.call(lambda c: lose_tails(c, 2))  # one full replica left of each chunk
        for _ in range(10):
            assert await read_all(fs, attr.ino) == data
        assert any("returned 1000 of" in r.getMessage() for r in caplog.records)
        cluster.call(lambda c: lose_tails(c, 3))
        with pytest.raises(Corrupt, match="short"):
            await read_all(fs, attr.ino)
        # Past the table's length a short answer is right: zeros (a truncate up).
        await fs.setattr(attr.ino, size=500)
        await fs.setattr(attr.ino, size=3000)
        assert await read_all(fs, attr.ino) == data[:500] + bytes(2500)


# ---------------------------------------------------------------------- expect_length


async def test_a_replica_that_lost_acknowledged_bytes_fails_the_fsync(
    cluster: ClusterThread,
) -> None:
    """The writer tells the replicas how much they acknowledged under this version: one that
    lost a tail in a crash refuses the sync instead of making a short copy durable."""
    options = dataclasses.replace(OPTIONS, timeout_s=1.0)
    async with client(cluster, options) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"e", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, random.Random(16).randbytes(128 * KiB))  # two uploads of 64 KiB
        await landed(f, 0, 128 * KiB)

        def crash_one(c: FakeCluster) -> None:
            (chunk,) = c.file_chunks(attr.ino).values()
            cs = c.chunkserver(chunk.replicas[-1])
            assert cs is not None
            del cs.replicas[chunk.id].data[64 * KiB :]

        cluster.call(crash_one)
        with pytest.raises((Stale, Unavailable, Timeout)):
            await f.fsync()
        # A close owes no sync: every replica acknowledged the bytes, so it commits them;
        # reads fail over from the short replica (and its block report gets it replaced).
        await f.close()
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].size) == 128 * KiB
    async with client(cluster, options) as fs:
        assert await read_all(fs, attr.ino) == random.Random(16).randbytes(128 * KiB)


# ---------------------------------------------------------------------- close keeps state


async def test_a_cancelled_close_keeps_the_inode_and_a_new_open_joins_it(
    cluster: ClusterThread,
) -> None:
    data = random.Random(17).randbytes(1000)
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"k", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)  # buffered
        inode = f.inode
        cluster.call(lambda c: c.hang_chunkservers())
        with anyio.move_on_after(0.2):
            await f.close()  # an interrupted release
        assert f.closed
        assert fs._open.get(attr.ino) is inode  # kept, with its buffer
        g = await fs.open(attr.ino, os.O_RDWR)
        assert g.inode is inode  # joined, not a second state
        cluster.call(lambda c: c.hang_chunkservers(False))
        assert await g.read(0, 2000) == data
        await g.close()
        assert attr.ino not in fs._open
    async with client(cluster) as other:
        assert await read_all(other, attr.ino) == data


async def test_a_failed_close_leaves_its_changes_to_be_committed_in_the_background(
    cluster: ClusterThread,
) -> None:
    data = random.Random(18).randbytes(100 * KiB)
    options = dataclasses.replace(OPTIONS, timeout_s=1.0)
    async with client(cluster, options) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"b", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        cluster.call(lambda c: c.faults.append(MetaFault("fs.commit", "unavailable", 10**6)))
        with pytest.raises((Unavailable, Timeout)):
            await f.close()
        assert attr.ino in fs._open  # its data landed, uncommitted: kept
        cluster.call(lambda c: c.faults.clear())
        deadline = anyio.current_time() + 5
        while attr.ino in fs._open:
            assert anyio.current_time() < deadline, "the left changes were never committed"
            await anyio.sleep(0.01)  # polling interval
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].size) == len(data)
    async with client(cluster) as other:
        assert await read_all(other, attr.ino) == data


# ---------------------------------------------------------------------- small files


def mutations(cluster: ClusterThread) -> list[str]:
    return cluster.call(lambda c: [op for op, _, _ in c.requests])


async def test_a_small_file_costs_one_create_and_one_commit(cluster: ClusterThread) -> None:
    data = random.Random(20).randbytes(10 * KiB)
    async with client(cluster) as fs:
        before = len(mutations(cluster))
        attr, f = await fs.create_and_open(ROOT_INO, b"s", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        await f.close()
        # The create brought chunk 0's write handle: no fs.write_handle of its own.
        assert mutations(cluster)[before:] == ["fs.create", "fs.commit"]
        assert await read_all(fs, attr.ino) == data
    for _, _, replicas in replica_contents(cluster, attr.ino):
        assert replicas == [data] * 3
    # One chunk.write through the chain and no sync: a close leaves the bytes in the
    # replicas' memory (an fsync would make them durable).
    synced = cluster.call(
        lambda c: [cs.replicas[ch.id].synced_bytes for ch in c.file_chunks(attr.ino).values()
                   for cs in c.chunkservers if ch.id in cs.replicas]
    )  # fmt: skip
    assert synced == [0] * 3
    assert cluster.call(lambda c: sum(cs.syncs for cs in c.chunkservers)) == 0
    # Opened for reading only, a new file asks for no chunk.
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"r", 0o644, os.O_RDONLY | os.O_CREAT)
        await f.close()
        assert cluster.call(lambda c: c.file_chunks(attr.ino)) == {}


async def test_attribute_changes_of_a_file_open_for_writing_join_its_commit(
    cluster: ClusterThread,
) -> None:
    data = random.Random(21).randbytes(5000)
    async with client(cluster) as fs, client(cluster) as other:
        attr, f = await fs.create_and_open(ROOT_INO, b"t", 0o600, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        before = len(mutations(cluster))
        # tar's order: futimens, fchown, fchmod, then close.
        await fs.setattr(attr.ino, atime_ns=1111, mtime_ns=1234)
        await fs.setattr(attr.ino, uid=5, gid=6)
        a = await fs.setattr(attr.ino, mode=0o4644)
        assert mutations(cluster)[before:] == []
        # This client sees them at once (its writes' size too) ...
        for seen in (a, await fs.getattr(attr.ino), await fs.lookup(ROOT_INO, b"t")):
            assert (seen.mode, seen.uid, seen.gid) == (0o104644, 5, 6)
            assert (seen.atime_ns, seen.mtime_ns, seen.size) == (1111, 1234, len(data))
        # ... others at the close, which commits data and attributes in one command.
        o = await other.getattr(attr.ino, fresh=True)
        assert (o.mode, o.uid, o.size) == (0o100600, 0, 0)
        await f.close()
        assert mutations(cluster)[before:] == ["fs.commit"]
        commit = cluster.call(lambda c: c.namespace.commits[-1])
        assert commit.attrs == {"mode": 0o4644, "uid": 5, "gid": 6, "atime_ns": 1111}
        assert commit.mtime_ns == 1234 and commit.size == len(data)
        o = await other.getattr(attr.ino, fresh=True)
        assert (o.mode, o.uid, o.gid, o.atime_ns, o.mtime_ns, o.size) == (
            0o104644, 5, 6, 1111, 1234, len(data),
        )  # fmt: skip
        assert await read_all(other, attr.ino) == data


async def test_a_write_after_an_explicit_mtime_moves_it(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"m", 0o644, os.O_WRONLY | os.O_CREAT)
        await fs.setattr(attr.ino, mtime_ns=1234)
        await f.write(0, b"later")
        assert (await fs.getattr(attr.ino)).mtime_ns > 1234
        await f.close()
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].mtime_ns) > 1234


async def test_attribute_changes_alone_keep_the_mtime(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"k", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.close()
        mtime_ns = cluster.call(lambda c: c.namespace.inodes[attr.ino].mtime_ns)
        async with await fs.open(attr.ino, os.O_RDWR) as f:
            await fs.setattr(attr.ino, mode=0o640)
        node = cluster.call(lambda c: c.namespace.inodes[attr.ino])
        assert (node.mode, node.mtime_ns) == (0o100640, mtime_ns)
        assert cluster.call(lambda c: c.namespace.commits[-1].mtime_ns) is None


async def test_attribute_changes_of_a_file_left_open_are_committed_within_the_ttl(
    cluster: ClusterThread,
) -> None:
    options = dataclasses.replace(OPTIONS, attr_ttl_s=0.2)
    async with client(cluster, options) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"o", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"data")
        await fs.setattr(attr.ino, mode=0o600)
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].mode) == 0o100644
        with anyio.fail_after(3):
            while cluster.call(lambda c: c.namespace.inodes[attr.ino].mode) != 0o100600:
                await anyio.sleep(0.02)  # polling the fake's state, with a deadline
        # The data written before went with it (a commit never names bytes not landed).
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].size) == 4
        await f.close()


async def test_attribute_changes_without_a_writable_handle_are_sent_at_once(
    cluster: ClusterThread,
) -> None:
    async with client(cluster) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"n", 0o644, os.O_WRONLY | os.O_CREAT)
        await f.close()
        async with await fs.open(attr.ino, os.O_RDONLY):
            before = len(mutations(cluster))
            await fs.setattr(attr.ino, mode=0o600)
            assert mutations(cluster)[before:] == ["fs.setattr"]
        async with await fs.open(attr.ino, os.O_RDWR) as f:
            await f.write(0, b"abc")
            before = len(mutations(cluster))
            await fs.setattr(attr.ino, size=1)  # a truncate never waits
            # (after the write it follows: handle, commit)
            assert mutations(cluster)[before:] == ["fs.write_handle", "fs.commit", "fs.setattr"]
        assert cluster.call(lambda c: c.namespace.inodes[attr.ino].size) == 1
