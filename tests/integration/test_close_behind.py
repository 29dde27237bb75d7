"""Close behind on real metaservers and chunkservers (dfs/client/files.py, CLOSE BEHIND;
docs/ARCHITECTURE.md, "Close behind").

A mount's ``close(2)`` of a small file it created under its directory's lease returns
before the bytes leave the client (``File.flush(behind=True)``, what FUSE's ``flush``
calls); the handle's ``close`` (FUSE's release) uploads and commits them. Each test
stops in that gap, where the bytes are only in client A, and checks that whatever could
show the file to anyone first puts them on the replicas and commits them:
- client B looking into the directory (the recall of A's lease);
- ``fsyncdir`` of the directory (B then sees the size without recalling anything);
- nothing at all: the client lands them within the flush bound if no release comes;
- a rename of the file into a directory A holds no lease on, and a hard link there;
- A's own open of the file;
and that the release sends the bytes along the chain (one ``chunk.write``); that under
``sync_on_close``, or with the cluster short of space, the close writes them itself; and
that an outage of every chunkserver in the gap loses nothing: the client tries again
until they are back.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import anyio
import pytest
from quick_timers import quick_cluster

from dfs.cli import cluster as local
from dfs.client import ClientOptions, FsClient, dirleases, openfiles
from dfs.client.fsclient import ROOT_INO
from dfs.client.handle import File
from dfs.wire.errors import DfsError
from tools.testing.localcluster import client

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

MODE = 0o100644


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    with quick_cluster(tmp_path_factory) as lay:
        yield lay


@pytest.fixture(autouse=True)
def no_timed_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """What A queued stays queued until something else flushes it; and closes leave
    bytes behind whatever the test machine's disk has free."""
    monkeypatch.setattr(dirleases, "FLUSH_DELAY_S", 120.0)
    monkeypatch.setattr(openfiles, "BEHIND_FREE_MIN_BYTES", 1)


async def closed_behind(fs: FsClient, parent: int, name: bytes, data: bytes) -> File:
    """Create ``name`` under the lease, write ``data`` and ``close(2)`` it as a mount
    does, leaving the bytes behind; the handle is returned, not yet released."""
    _, f = await fs.create_and_open(parent, name, MODE, os.O_WRONLY | os.O_CREAT)
    await f.write(0, data)
    writes = fs.stats.count("chunk.write")
    await f.flush(behind=True)
    assert f.inode.behind, "the close did not leave the bytes behind"
    assert fs.stats.count("chunk.write") == writes  # nothing sent yet
    return f


async def read_all(fs: FsClient, ino: int) -> bytes:
    async with await fs.open(ino, os.O_RDONLY) as f:
        return await f.read(0, 1 << 20)


async def leaders_size(fs: FsClient, ino: int) -> int:
    """The size the metaservers hold (``fs.getattr`` recalls no directory lease)."""
    header = await fs.meta.read("fs.getattr", ino=ino)
    size = header["attr"]["size"]
    assert type(size) is int
    return size


async def test_another_client_looking_in_gets_the_bytes_left_behind(
    layout: local.Layout,
) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"seen", 0o755)
        data = os.urandom(5000)
        f = await closed_behind(a, d.ino, b"f", data)
        attr = await b.lookup(d.ino, b"f")  # recalls A's lease: A lands the bytes first
        assert attr.size == len(data)
        assert await read_all(b, attr.ino) == data
        assert not f.inode.behind
        writes = a.stats.count("chunk.write")
        await f.close()  # the release: nothing left to do
        assert a.stats.count("chunk.write") == writes
        assert await read_all(b, attr.ino) == data


async def test_the_release_sends_the_bytes_along_the_chain_and_they_land(
    layout: local.Layout,
) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"chain", 0o755)
        data = os.urandom(4096)
        f = await closed_behind(a, d.ino, b"f", data)
        writes = a.stats.count("chunk.write")
        await f.close()
        # One send to the chain's head, not one per replica (ChunkIo.write, fan_out).
        assert a.stats.count("chunk.write") == writes + 1
        attr = await b.lookup(d.ino, b"f")
        assert await read_all(b, attr.ino) == data
        located = await b.meta.read("fs.locate", ino=attr.ino, index=0, count=1)
        assert len(located["chunks"][0]["replicas"]) == 3


async def test_bytes_left_behind_land_within_the_flush_bound_without_a_release(
    layout: local.Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that does not come (a descriptor still open in another process): the
    client lands the bytes itself within the lease queue's flush bound."""
    monkeypatch.setattr(dirleases, "FLUSH_DELAY_S", 0.05)
    async with client(layout) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"late", 0o755)
        data = os.urandom(2500)
        f = await closed_behind(a, d.ino, b"f", data)
        with anyio.fail_after(30):
            while f.inode.behind or a.dirleases.pending:
                await anyio.sleep(0.01)
        assert await leaders_size(b, f.ino) == len(data)  # no recall needed
        await f.close()


async def test_fsyncdir_lands_the_bytes_left_behind(layout: local.Layout) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"synced", 0o755)
        data = os.urandom(3000)
        f = await closed_behind(a, d.ino, b"f", data)
        await a.fsyncdir(d.ino)
        assert not f.inode.behind
        assert await leaders_size(b, f.ino) == len(data)
        await f.close()


async def test_a_rename_or_link_elsewhere_lands_the_bytes_first(layout: local.Layout) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"from", 0o755)
        other = await b.mkdir(ROOT_INO, b"elsewhere", 0o755)  # B's: A holds no lease there
        data = os.urandom(2000)
        f = await closed_behind(a, d.ino, b"moved", data)
        await a.rename(d.ino, b"moved", other.ino, b"moved")
        assert await leaders_size(b, f.ino) == len(data)
        attr = await b.lookup(other.ino, b"moved")
        assert await read_all(b, attr.ino) == data
        await f.close()

        g = await closed_behind(a, d.ino, b"linked", data[:999])
        await a.link(g.ino, other.ino, b"linked")
        assert await leaders_size(b, g.ino) == 999
        await g.close()


async def test_the_same_clients_open_reads_the_bytes_left_behind(layout: local.Layout) -> None:
    async with client(layout) as a:
        d = await a.mkdir(ROOT_INO, b"own", 0o755)
        data = os.urandom(6000)
        f = await closed_behind(a, d.ino, b"f", data)
        assert await read_all(a, f.ino) == data
        await f.close()
        assert (await a.getattr(f.ino)).size == len(data)


async def test_sync_on_close_leaves_nothing_behind(layout: local.Layout) -> None:
    async with client(layout, options=ClientOptions(sync_on_close=True)) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"strict", 0o755)
        data = os.urandom(1000)
        _, f = await a.create_and_open(d.ino, b"f", MODE, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        with anyio.fail_after(30):
            await f.flush(behind=True)
        assert not f.inode.behind
        assert await leaders_size(b, f.ino) == len(data)
        await f.close()


async def test_bytes_left_behind_outlive_an_outage_of_every_chunkserver(
    layout: local.Layout,
) -> None:
    """An fsyncdir and the release give up at the client's deadline while no chunkserver
    is up (the fsyncdir fails); the bytes stay with the client, which tries again until
    the cluster takes them."""
    chunkservers = [name for name, _, _ in layout.daemons() if not name.startswith("meta")]
    async with client(layout, timeout_s=1.0) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"outage", 0o755)
        data = os.urandom(4000)
        f = await closed_behind(a, d.ino, b"f", data)
        pids = local.start_daemons(layout, only=chunkservers)  # running: their PIDs
        try:
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            for pid in pids.values():
                assert await anyio.to_thread.run_sync(local.wait_exit, pid, 10.0)
            with pytest.raises(DfsError):
                await a.fsyncdir(d.ino)  # cannot land them: fails, rather than go on
            assert f.inode.behind and f.inode.unsaved
            with pytest.raises(DfsError):
                await f.close()  # the release: no replica answers within the deadline
            assert f.inode.behind and f.inode.unsaved  # kept for the next attempt
        finally:
            local.start_daemons(layout, only=chunkservers)
        await local.wait_ready(layout, 60.0)
        with anyio.fail_after(60):
            while f.inode.unsaved:  # the client's retries, with backoff
                await anyio.sleep(0.05)
        attr = await b.lookup(d.ino, b"f")
        assert attr.size == len(data)
        assert await read_all(b, attr.ino) == data


async def test_a_cluster_short_of_space_gets_closes_that_wait(
    layout: local.Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Near full, a close writes before it returns (and so reports ENOSPC itself)."""
    async with client(layout) as a:
        free = (await a.statfs()).bytes_free
        monkeypatch.setattr(openfiles, "BEHIND_FREE_MIN_BYTES", free + (1 << 40))
        d = await a.mkdir(ROOT_INO, b"full", 0o755)
        _, f = await a.create_and_open(d.ino, b"f", MODE, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"x" * 100)
        writes = a.stats.count("chunk.write")
        await f.flush(behind=True)
        assert not f.inode.behind
        assert a.stats.count("chunk.write") > writes
        await f.close()


async def test_past_the_cap_closes_write_at_once_and_the_counts_come_back_to_zero(
    layout: local.Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openfiles, "BEHIND_INODES_MAX", 2)
    async with client(layout) as a:
        d = await a.mkdir(ROOT_INO, b"cap", 0o755)
        first = [await closed_behind(a, d.ino, b"f%d" % i, b"x" * 100) for i in range(2)]
        io = first[0].inode.io
        assert io.behind_count == 2
        _, f = await a.create_and_open(d.ino, b"third", MODE, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"y" * 100)
        await f.flush(behind=True)  # past the cap: written now
        assert not f.inode.behind
        for g in [*first, f]:
            await g.close()
        assert io.behind_count == 0
