"""FsClient's read side against the fake cluster, under asyncio and trio: how many
``chunk.read`` calls a read costs (read-ahead in the kernel's order and out of it, random
reads), and what a read hands back.

A FUSE mount gets a sequential reader's requests concurrently (the reader's own and the
kernel's readahead), not always in order: the read-ahead must neither drop a block another
request waits for nor mistake a straggler for a random read.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import pytest

from dfs.client import ROOT_INO, ClientOptions, FsClient
from tools.testing.fakecluster import ClusterThread

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

KiB = 1024
CHUNK = 256 * KiB
BLOCK = 16 * KiB
# Generous timeouts: a chunk.read that timed out on a loaded machine would be tried on
# another replica, and counted twice.
OPTIONS = ClientOptions(
    timeout_s=30.0,
    attempt_timeout_s=10.0,
    io_timeout_s=10.0,
    connect_timeout_s=10.0,
    readahead_block_bytes=BLOCK,
    readahead_max_bytes=4 * BLOCK,
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
    cluster: ClusterThread, options: ClientOptions = OPTIONS
) -> AsyncIterator[FsClient]:
    async with FsClient.open_cluster(cluster.meta_addresses, cluster.secret, options=options) as fs:
        yield fs


async def settled(fs: FsClient) -> None:
    """Wait (polling, with a deadline) until no call of ``fs`` is in flight: a prefetch
    still running would count after ``stats.clear()``."""
    with anyio.fail_after(5):
        await anyio.wait_all_tasks_blocked()  # prefetches started have sent their call
        while any(fs._pool.in_flight.values()):
            await anyio.sleep(0.005)


async def make_file(fs: FsClient, name: bytes, data: bytes) -> int:
    attr, f = await fs.create_and_open(ROOT_INO, name, 0o644, os.O_WRONLY | os.O_CREAT)
    async with f:
        await f.write(0, data)
    return attr.ino


@pytest.mark.parametrize("request_bytes", [BLOCK // 4, BLOCK])
@pytest.mark.parametrize("order", ["in order", "pairs swapped"])
async def test_a_sequential_read_fetches_each_block_once(
    cluster: ClusterThread, order: str, request_bytes: int
) -> None:
    """Requests of a quarter block or a block, two at a time, as the kernel sends them (in
    order, or each pair's second first): one chunk.read per block, and the right bytes.
    (A second request must not drop the block the first one waits for.)"""
    data = random.Random(1).randbytes(2 * CHUNK)
    request = request_bytes
    async with client(cluster) as writer:
        ino = await make_file(writer, b"seq", data)
    async with client(cluster) as fs:
        f = await fs.open(ino, os.O_RDONLY)
        fs.stats.clear()
        got: dict[int, bytes] = {}

        async def read(at: int) -> None:
            got[at] = await f.read(at, request)

        for at in range(0, len(data), 2 * request):
            pair = [at, at + request]
            if order == "pairs swapped":
                pair.reverse()
            async with anyio.create_task_group() as tg:
                for offset in pair:
                    tg.start_soon(read, offset)
                    await anyio.sleep(0)  # the first of the pair is sent first
        assert b"".join(got[at] for at in sorted(got)) == data
        # Swapped, the stream's first request is read directly before the second (which
        # ends where it began) starts the stream: one chunk.read more.
        extra = 1 if order == "pairs swapped" else 0
        assert fs.stats.count("chunk.read") == len(data) // BLOCK + extra
        await f.close()


async def test_a_straggler_behind_the_stream_keeps_the_read_ahead(
    cluster: ClusterThread,
) -> None:
    """A request that arrives after later ones (behind the blocks kept) is read directly,
    and the stream's prefetched blocks stay: the next in-order request costs nothing."""
    data = random.Random(2).randbytes(CHUNK)
    async with client(cluster) as writer:
        ino = await make_file(writer, b"late", data)
    async with client(cluster) as fs, await fs.open(ino, os.O_RDONLY) as f:
        for at in range(0, 8 * BLOCK, BLOCK):
            assert await f.read(at, BLOCK) == data[at : at + BLOCK]
        await settled(fs)
        fs.stats.clear()
        # Blocks 6.. are kept (one behind the reader); 5 is behind them, in the window.
        assert await f.read(5 * BLOCK, 100) == data[5 * BLOCK : 5 * BLOCK + 100]
        assert fs.stats.count("chunk.read") == 1
        assert await f.read(8 * BLOCK, BLOCK) == data[8 * BLOCK : 9 * BLOCK]
        await settled(fs)
        # Block 8 was prefetched; the request moves the window by one block.
        assert fs.stats.count("chunk.read") == 2


async def test_random_reads_cost_one_chunk_read_each(cluster: ClusterThread) -> None:
    """4 KiB reads at random aligned offsets (none where the last one ended): no
    read-ahead, one chunk.read each."""
    data = random.Random(3).randbytes(2 * CHUNK)
    rng = random.Random(4)
    async with client(cluster) as writer:
        ino = await make_file(writer, b"rand", data)
    async with client(cluster) as fs, await fs.open(ino, os.O_RDONLY) as f:
        await f.read(3 * 4096, 1)  # locate once (a random read: no read-ahead)
        fs.stats.clear()
        last_end = 3 * 4096 + 1
        reads = 0
        for _ in range(50):
            at = rng.randrange(len(data) // 4096) * 4096
            if at == last_end:
                continue
            assert await f.read(at, 4096) == data[at : at + 4096]
            last_end = at + 4096
            reads += 1
        assert fs.stats.count("chunk.read") == reads


async def test_a_read_buffer_is_the_bytes_read(cluster: ClusterThread) -> None:
    """``read_buffer`` may answer with a view of a prefetched block (what the mount hands
    to the kernel); it holds the same bytes as ``read``, at every offset and size."""
    data = random.Random(5).randbytes(CHUNK + 1000)
    options = dataclasses.replace(OPTIONS, readahead_max_bytes=2 * BLOCK)
    async with client(cluster) as writer:
        ino = await make_file(writer, b"buf", data)
    async with client(cluster, options) as fs, await fs.open(ino, os.O_RDONLY) as f:
        at = 0
        for size in [1, BLOCK - 1, BLOCK, 3 * BLOCK + 7, 5000] * 8:
            got = await f.read_buffer(at, size)
            assert bytes(got) == data[at : at + size]
            at += size
