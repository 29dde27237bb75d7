"""``File.fallocate`` (dfs/client/allocate.py) against the fake cluster: each mode's effect
on the bytes and the size, as ext4 gives them, read back through a second open; the free
space check; refused modes. (The mount's handler and the kernel: tests/fuse.)"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from dfs.client import ROOT_INO, ClientOptions, FsClient
from dfs.client.allocate import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from dfs.wire.errors import Invalid, NoSpace, PermissionDenied, Unsupported
from tools.testing.fakecluster import ClusterThread

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CHUNK = 256 * 1024
OPTIONS = ClientOptions(timeout_s=5.0, attempt_timeout_s=0.5, io_timeout_s=0.5)
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


@pytest.fixture
def cluster() -> Iterator[ClusterThread]:
    with ClusterThread(chunkservers=3, chunk_size=CHUNK) as c:
        yield c


async def _read_all(fs: FsClient, ino: int) -> bytes:
    async with await fs.open(ino, os.O_RDONLY) as f:
        return await f.read(0, 1 << 30)


async def test_each_mode_as_ext4(cluster: ClusterThread) -> None:
    model = bytearray(random.Random(5).randbytes(2 * CHUNK + 100))
    async with FsClient.open_cluster(cluster.meta_addresses, cluster.secret, options=OPTIONS) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, bytes(model))
        # Mode 0 inside the file changes nothing; past it, the size grows over a hole.
        await f.fallocate(0, 10, 1000)
        await f.fallocate(0, len(model) - 1, CHUNK)
        model.extend(bytes(CHUNK - 1))
        # KEEP_SIZE: nothing visible.
        await f.fallocate(FALLOC_FL_KEEP_SIZE, 0, 10 * CHUNK)
        # A punch across a chunk boundary, and one running past the end (clipped).
        await f.fallocate(PUNCH, CHUNK - 7, CHUNK + 20)
        model[CHUNK - 7 : 2 * CHUNK + 13] = bytes(CHUNK + 20)
        await f.fallocate(PUNCH, len(model) - 3, 50)
        model[-3:] = bytes(3)
        # Zero range inside, then past the end with and without KEEP_SIZE.
        await f.fallocate(FALLOC_FL_ZERO_RANGE, 5, 6)
        model[5:11] = bytes(6)
        await f.fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, len(model) - 1, 99)
        model[-1:] = bytes(1)
        await f.fallocate(FALLOC_FL_ZERO_RANGE, len(model) + 100, 50)
        model.extend(bytes(150))
        assert f.inode.size == len(model)
        assert await f.read(0, 1 << 30) == model
        await f.close()
        assert (await fs.getattr(attr.ino)).size == len(model)
        assert await _read_all(fs, attr.ino) == model


async def test_refusals(cluster: ClusterThread) -> None:
    async with FsClient.open_cluster(cluster.meta_addresses, cluster.secret, options=OPTIONS) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"g", 0o644, os.O_RDWR | os.O_CREAT)
        free = (await fs.statfs()).bytes_free
        with pytest.raises(NoSpace):
            await f.fallocate(0, 0, free + 1)
        with pytest.raises(NoSpace):
            await f.fallocate(FALLOC_FL_KEEP_SIZE, 10, free + 1)
        await f.fallocate(0, 0, free)  # exactly what is free: a hole, granted
        assert f.inode.size == free
        for mode in (FALLOC_FL_PUNCH_HOLE, 0x08, 0x20, 0x40, 0x04 | FALLOC_FL_KEEP_SIZE):
            with pytest.raises(Unsupported):
                await f.fallocate(mode, 0, 10)
        with pytest.raises(Invalid):
            await f.fallocate(0, -1, 10)
        with pytest.raises(Invalid):
            await f.fallocate(0, 0, 0)
        await f.close()
        async with await fs.open(attr.ino, os.O_RDONLY) as r:
            with pytest.raises(PermissionDenied):
                await r.fallocate(0, 0, 10)


async def test_a_punch_drops_whole_chunks_and_buffered_bytes_do_not_come_back(
    cluster: ClusterThread,
) -> None:
    def chunk_indexes(ino: int) -> list[int]:
        return cluster.call(lambda c: sorted(c.namespace.inodes[ino].chunks))

    model = bytearray(random.Random(6).randbytes(5 * CHUNK + 100))
    async with FsClient.open_cluster(cluster.meta_addresses, cluster.secret, options=OPTIONS) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"p", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, bytes(model))
        await f.flush()
        assert chunk_indexes(attr.ino) == [0, 1, 2, 3, 4, 5]
        # Written and still buffered inside the range: punched with the rest.
        await f.write(2 * CHUNK + 10, b"z" * 100)
        # [CHUNK - 5, 4 CHUNK + 7): chunks 1 to 3 dropped, the ends zeroed.
        await f.fallocate(PUNCH, CHUNK - 5, 3 * CHUNK + 12)
        model[CHUNK - 5 : 4 * CHUNK + 7] = bytes(3 * CHUNK + 12)
        assert chunk_indexes(attr.ino) == [0, 4, 5]
        assert await f.read(0, 1 << 30) == model
        # Zero range to the end drops the chunk holding the end, then grows over a hole.
        await f.fallocate(FALLOC_FL_ZERO_RANGE, 5 * CHUNK, 2 * CHUNK)
        model[5 * CHUNK :] = b""
        model.extend(bytes(2 * CHUNK))
        assert chunk_indexes(attr.ino) == [0, 4]
        # Inside one chunk: zeros written, nothing dropped.
        await f.fallocate(PUNCH, 10, 20)
        model[10:30] = bytes(20)
        await f.close()
        assert chunk_indexes(attr.ino) == [0, 4]
        assert await _read_all(fs, attr.ino) == model
    async with FsClient.open_cluster(cluster.meta_addresses, cluster.secret, options=OPTIONS) as fs:
        assert await _read_all(fs, attr.ino) == model  # another client: holes read as zeros


async def test_mode_0_over_a_file_with_punched_chunks_asks_for_their_space(
    cluster: ClusterThread,
) -> None:
    async with FsClient.open_cluster(cluster.meta_addresses, cluster.secret, options=OPTIONS) as fs:
        attr, f = await fs.create_and_open(ROOT_INO, b"s", 0o644, os.O_RDWR | os.O_CREAT)
        await f.write(0, bytes(3 * CHUNK))
        await f.flush()
        # Every chunk written: nothing punched, mode 0 sends nothing but the space check.
        await f.fallocate(FALLOC_FL_KEEP_SIZE, 0, 3 * CHUNK)
        assert not f.inode.punched and cluster.call(lambda c: list(c.namespace.allocates)) == []
        await f.fallocate(PUNCH, CHUNK, CHUNK)
        assert f.inode.punched  # the punch's attributes show fewer blocks than the size's
        await f.fallocate(0, 0, 4 * CHUNK)
        assert cluster.call(lambda c: list(c.namespace.allocates)) == [(attr.ino, 0, 4 * CHUNK)]
        assert f.inode.size == 4 * CHUNK
