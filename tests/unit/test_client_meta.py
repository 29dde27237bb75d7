"""FsClient's metadata side against the fake cluster, under asyncio and trio: the
namespace operations, the attribute/entry caches, leader discovery, retries that keep
their sequence number, and the deadline that turns a dead cluster into an error.

The fake cluster (``tools/testing/fakecluster.py``) runs on its own asyncio loop in a thread;
faults are switched on through ``cluster.call``. Clocks are injected where a TTL matters,
so no test sleeps to wait for one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from dfs.client import ROOT_INO, ClientOptions, FsClient
from dfs.client.fsclient import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE
from dfs.client.meta import Resume
from dfs.wire.errors import (
    AuthError,
    Exists,
    Invalid,
    IsDir,
    NameTooLong,
    NoAttr,
    NotDir,
    NotEmpty,
    NotFound,
    Timeout,
    Unavailable,
)
from tools.testing.fakecluster import ClusterThread, FakeCluster, MetaFault

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

# The fake cluster grants no directory leases (tests/integration/test_dir_leases.py tests
# them on real metaservers); without them, these tests count the synchronous path's RPCs.
FAST = ClientOptions(
    timeout_s=3.0,
    attempt_timeout_s=0.3,
    io_timeout_s=0.5,
    connect_timeout_s=1.0,
    dir_leases=False,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster() -> Iterator[ClusterThread]:
    with ClusterThread(metaservers=3, chunkservers=3, chunk_size=256 * 1024) as c:
        yield c


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def client(
    cluster: ClusterThread, options: ClientOptions = FAST, **kwargs: Any
) -> AsyncIterator[FsClient]:
    async with FsClient.open_cluster(
        cluster.meta_addresses, cluster.secret, options=options, **kwargs
    ) as fs:
        yield fs


def reads(cluster: ClusterThread) -> int:
    return cluster.call(lambda c: len(c.reads))


async def test_namespace_operations(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        d = await fs.mkdir(ROOT_INO, b"d", 0o750)
        assert d.is_dir and stat.S_IMODE(d.mode) == 0o750 and d.nlink == 2
        f, created = await fs.create(d.ino, b"f", 0o640)
        assert created and f.is_file and f.size == 0
        with pytest.raises(Exists):
            await fs.create(d.ino, b"f", 0o640)
        again, created = await fs.create(d.ino, b"f", 0o600, exclusive=False)
        assert again.ino == f.ino and not created
        assert (await fs.lookup(d.ino, b"f")).ino == f.ino
        with pytest.raises(NotFound):
            await fs.lookup(d.ino, b"nope")
        with pytest.raises(NameTooLong):
            await fs.lookup(d.ino, b"x" * 256)
        with pytest.raises(Invalid):
            await fs.mkdir(d.ino, b"a/b", 0o755)

        link = await fs.symlink(d.ino, b"l", b"f")
        assert link.is_symlink and await fs.readlink(link.ino) == b"f"
        hard = await fs.link(f.ino, ROOT_INO, b"hard")
        assert hard.ino == f.ino and hard.nlink == 2
        fifo = await fs.mknod(d.ino, b"p", stat.S_IFIFO | 0o644)
        assert stat.S_ISFIFO(fifo.mode)

        with pytest.raises(NotEmpty):
            await fs.rmdir(ROOT_INO, b"d")
        with pytest.raises(IsDir):
            await fs.unlink(ROOT_INO, b"d")
        with pytest.raises(NotDir):
            await fs.rmdir(d.ino, b"f")

        await fs.rename(d.ino, b"p", ROOT_INO, b"p2")
        with pytest.raises(NotFound):
            await fs.lookup(d.ino, b"p")
        assert (await fs.lookup(ROOT_INO, b"p2")).ino == fifo.ino
        with pytest.raises(Exists):
            await fs.rename(ROOT_INO, b"p2", ROOT_INO, b"hard", RENAME_NOREPLACE)
        await fs.rename(ROOT_INO, b"p2", ROOT_INO, b"hard", RENAME_EXCHANGE)
        assert (await fs.lookup(ROOT_INO, b"hard")).ino == fifo.ino
        assert (await fs.lookup(ROOT_INO, b"p2")).ino == f.ino
        await fs.rename(ROOT_INO, b"p2", ROOT_INO, b"hard")  # replaces the fifo
        assert (await fs.lookup(ROOT_INO, b"hard")).ino == f.ino

        await fs.setxattr(f.ino, b"user.a", b"1")
        with pytest.raises(Exists):
            await fs.setxattr(f.ino, b"user.a", b"2", XATTR_CREATE)
        with pytest.raises(NoAttr):
            await fs.setxattr(f.ino, b"user.b", b"2", XATTR_REPLACE)
        assert await fs.getxattr(f.ino, b"user.a") == b"1"
        assert await fs.listxattr(f.ino) == [b"user.a"]
        await fs.removexattr(f.ino, b"user.a")
        with pytest.raises(NoAttr):
            await fs.getxattr(f.ino, b"user.a")

        changed = await fs.setattr(f.ino, mode=0o600, uid=7, gid=8, mtime_ns=123)
        assert stat.S_IMODE(changed.mode) == 0o600 and (changed.uid, changed.gid) == (7, 8)
        assert changed.mtime_ns == 123 and changed.is_file
        assert (await fs.set_goal(f.ino, 2)).goal == 2

        names = sorted([e.name async for e in fs.readdir(d.ino)])
        assert names == [b"f", b"l"]
        statfs = await fs.statfs()
        assert statfs.chunk_size == fs.chunk_size == 256 * 1024
        assert statfs.chunkservers_alive == 3

        await fs.unlink(ROOT_INO, b"hard")
        await fs.unlink(d.ino, b"l")
        await fs.unlink(d.ino, b"f")
        await fs.rmdir(ROOT_INO, b"d")
        with pytest.raises(NotFound):
            await fs.getattr(f.ino, fresh=True)


async def test_readdir_pages_with_cookies(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        d = await fs.mkdir(ROOT_INO, b"many", 0o755)
        names = {f"n{i:03}".encode() for i in range(70)}
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(fs.mknod, d.ino, name, stat.S_IFREG | 0o644)
        seen: list[bytes] = []
        cookie, more, pages = 0, True, 0
        while more:
            entries, more = await fs.readdir_page(d.ino, cookie, limit=16)
            seen += [e.name for e in entries]
            cookie = entries[-1].cookie if entries else cookie
            pages += 1
            if pages == 2:
                # A change in the middle of a listing: entries present throughout are
                # still listed exactly once.
                await fs.unlink(d.ino, seen[0])
                await fs.mknod(d.ino, b"late", stat.S_IFREG | 0o644)
        assert pages >= 5
        assert len(seen) == len(set(seen))
        assert names <= set(seen) | {seen[0]}
        assert {e.name async for e in fs.readdir(d.ino)} == (names - {seen[0]}) | {b"late"}


async def test_resolve_paths(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        a = await fs.mkdir(ROOT_INO, b"a", 0o755)
        b = await fs.mkdir(a.ino, b"b", 0o755)
        f, _ = await fs.create(b.ino, b"f", 0o644)
        await fs.symlink(ROOT_INO, b"abs", b"/a/b")
        await fs.symlink(a.ino, b"rel", b"b/f")
        await fs.symlink(ROOT_INO, b"loop", b"loop")
        assert (await fs.resolve(b"/")).ino == ROOT_INO
        assert (await fs.resolve(b"/a/b/f")).ino == f.ino
        assert (await fs.resolve(b"/a/./b/../b//f")).ino == f.ino
        assert (await fs.resolve(b"/abs/f")).ino == f.ino
        assert (await fs.resolve(b"/a/rel")).ino == f.ino
        assert (await fs.resolve(b"/a/rel", follow_symlinks=False)).is_symlink
        parent, name = await fs.resolve_parent(b"/abs/new")
        assert parent.ino == b.ino and name == b"new"
        with pytest.raises(NotFound):
            await fs.resolve(b"/a/missing/f")
        with pytest.raises(NotDir):
            await fs.resolve(b"/a/b/f/x")
        with pytest.raises(Invalid):
            await fs.resolve(b"/loop")
        with pytest.raises(Invalid):
            await fs.resolve(b"relative")


async def test_attr_cache_honours_ttl_and_own_mutations(cluster: ClusterThread) -> None:
    clock = FakeClock()
    async with client(cluster, clock=clock) as fs:
        f, _ = await fs.create(ROOT_INO, b"f", 0o644)
        base = reads(cluster)
        assert (await fs.getattr(f.ino)).ino == f.ino  # from the create's answer
        assert (await fs.lookup(ROOT_INO, b"f")).ino == f.ino
        assert reads(cluster) == base  # both from the cache

        # Another client changes the file: not seen within the TTL, seen after it.
        def chmod(c: FakeCluster) -> None:
            c.namespace.inodes[f.ino].mode = stat.S_IFREG | 0o600

        cluster.call(chmod)
        clock.now += 0.9
        assert stat.S_IMODE((await fs.getattr(f.ino)).mode) == 0o644
        clock.now += 0.2
        assert stat.S_IMODE((await fs.getattr(f.ino)).mode) == 0o600
        assert reads(cluster) == base + 1

        # The client's own mutation is visible at once, with no extra read.
        await fs.setattr(f.ino, mode=0o640)
        assert stat.S_IMODE((await fs.getattr(f.ino)).mode) == 0o640
        assert reads(cluster) == base + 1

        # Entries: a name removed elsewhere still resolves within the TTL ...
        assert (await fs.lookup(ROOT_INO, b"f")).ino == f.ino  # cached afresh

        def unlink_elsewhere(c: FakeCluster) -> None:
            root = c.namespace.inodes[ROOT_INO]
            del root.children[b"f"], root.cookies[b"f"]

        cluster.call(unlink_elsewhere)
        assert (await fs.lookup(ROOT_INO, b"f")).ino == f.ino
        clock.now += 1.1
        with pytest.raises(NotFound):
            await fs.lookup(ROOT_INO, b"f")

        # ... but the client's own unlink is seen at once.
        g, _ = await fs.create(ROOT_INO, b"g", 0o644)
        assert (await fs.lookup(ROOT_INO, b"g")).ino == g.ino
        await fs.unlink(ROOT_INO, b"g")
        with pytest.raises(NotFound):
            await fs.lookup(ROOT_INO, b"g")

    async with client(cluster, dataclasses.replace(FAST, attr_ttl_s=0)) as fs:
        base = reads(cluster)
        await fs.getattr(ROOT_INO)
        await fs.getattr(ROOT_INO)
        assert reads(cluster) == base + 2  # TTL 0: no cache


async def test_not_leader_redirect(cluster: ClusterThread) -> None:
    cluster.call(lambda c: c.set_leader(2))
    async with client(cluster) as fs:
        await fs.mkdir(ROOT_INO, b"x", 0o755)
        assert fs.meta.leader == cluster.meta_addresses[2]
        # A leader change without hints (an election): the client tries the others.
        cluster.call(lambda c: c.set_leader(1, hints=False))
        await fs.mkdir(ROOT_INO, b"y", 0o755)
        assert fs.meta.leader == cluster.meta_addresses[1]
        ops = cluster.call(lambda c: [op for op, _, _ in c.requests])
        assert ops.count("fs.mkdir") >= 3  # redirected attempts are recorded too


@pytest.mark.parametrize("kind", ["timeout", "hang", "unavailable"])
async def test_retry_keeps_the_sequence_number(cluster: ClusterThread, kind: str) -> None:
    async with client(cluster) as fs:
        await fs.mkdir(ROOT_INO, b"first", 0o755)
        cluster.call(lambda c: c.faults.append(MetaFault("fs.mkdir", kind, 2)))
        # The first two attempts fail (two of them applied, for timeout/hang, with the
        # answer lost); the retries carry the same (client, seq), so the directory is
        # made once and the answer is the first one's, not Exists.
        d = await fs.mkdir(ROOT_INO, b"d", 0o755)
        assert d.is_dir
        mkdirs = cluster.call(lambda c: [(cl, s) for op, cl, s in c.requests if op == "fs.mkdir"])
        first, *attempts = mkdirs
        assert len(attempts) >= 3
        assert len(set(attempts)) == 1  # every attempt: the same client and seq
        assert attempts[0][0] == first[0] and attempts[0][1] == first[1] + 1
        names = cluster.call(lambda c: sorted(c.namespace.inodes[ROOT_INO].children))
        assert names == [b"d", b"first"]


async def test_a_resumable_mutation_is_sent_again_under_its_session(
    cluster: ClusterThread,
) -> None:
    """A mutation that got no answer before its deadline leaves its session with the
    caller (``Resume``); sent again later under it, it is applied once and answered with
    the first result (here: the directory made, not Exists)."""
    async with client(cluster, dataclasses.replace(FAST, timeout_s=1.0)) as fs:
        await fs.getattr(ROOT_INO)
        cluster.call(lambda c: c.faults.append(MetaFault("fs.mkdir", "hang", 1000)))
        resume = Resume()
        fields = {"parent": ROOT_INO, "name": b"d", "mode": 0o40755, "uid": 0, "gid": 0}
        with pytest.raises(Timeout):
            await fs.meta.mutate_resumable("fs.mkdir", resume, **fields)
        assert resume.session is not None
        cluster.call(lambda c: c.faults.clear())
        header = await fs.meta.mutate_resumable("fs.mkdir", resume, **fields)
        assert resume.session is None  # settled
        assert header["attr"]["mode"] & 0o40000
        mkdirs = cluster.call(lambda c: [(cl, s) for op, cl, s in c.requests if op == "fs.mkdir"])
        assert len(mkdirs) >= 2 and len(set(mkdirs)) == 1
        names = cluster.call(lambda c: sorted(c.namespace.inodes[ROOT_INO].children))
        assert names == [b"d"]


async def test_leader_change_after_a_lost_answer_keeps_the_sequence_number(
    cluster: ClusterThread,
) -> None:
    async with client(cluster) as fs:
        await fs.getattr(ROOT_INO)
        # The leader applies the create, then loses its leadership before answering: the
        # client times out, is redirected to the new leader, and sends the same seq there.
        fault = MetaFault("fs.create", "hang", 1, then=lambda c: c.set_leader(2))
        cluster.call(lambda c: c.faults.append(fault))
        attr, created = await fs.create(ROOT_INO, b"f", 0o644)
        assert created and fs.meta.leader == cluster.meta_addresses[2]
        creates = cluster.call(lambda c: [(cl, s) for op, cl, s in c.requests if op == "fs.create"])
        assert len(creates) >= 3 and len(set(creates)) == 1
        assert cluster.call(lambda c: c.namespace.inodes[ROOT_INO].children) == {b"f": attr.ino}


async def test_concurrent_mutations_use_separate_lanes(cluster: ClusterThread) -> None:
    async with client(cluster) as fs:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(fs.mkdir, ROOT_INO, f"d{i}".encode(), 0o755)
        pairs = cluster.call(lambda c: [(cl, s) for op, cl, s in c.requests if op == "fs.mkdir"])
        assert len(pairs) == 40 and len(set(pairs)) == 40
        by_client: dict[int, list[int]] = {}
        for client_id, seq in pairs:
            assert 0 < client_id < 2**63
            by_client.setdefault(client_id, []).append(seq)
        assert len(by_client) > 1  # concurrent mutations used several sessions
        for seqs in by_client.values():
            assert seqs == sorted(seqs)  # one at a time per session, in order


async def test_unresponsive_cluster_times_out(cluster: ClusterThread) -> None:
    options = dataclasses.replace(FAST, timeout_s=1.0)
    async with client(cluster, options) as fs:
        await fs.mkdir(ROOT_INO, b"ok", 0o755)
        cluster.call(lambda c: c.hang_metaservers())
        started = anyio.current_time()
        with pytest.raises(Timeout):
            await fs.mkdir(ROOT_INO, b"never", 0o755)
        with pytest.raises(Timeout):
            await fs.getattr(ROOT_INO, fresh=True)
        elapsed = anyio.current_time() - started
        assert 2 * options.timeout_s <= elapsed < 2 * options.timeout_s + 3


async def test_no_leader_is_unavailable(cluster: ClusterThread) -> None:
    async with client(cluster, dataclasses.replace(FAST, timeout_s=1.0)) as fs:
        cluster.call(lambda c: c.set_leader(None, hints=False))
        with pytest.raises(Unavailable):
            await fs.getattr(ROOT_INO, fresh=True)


async def test_open_cluster_fails_cleanly(
    cluster: ClusterThread, expect_log: Callable[..., None]
) -> None:
    with pytest.raises(Unavailable):  # nobody listens there
        async with FsClient.open_cluster(["127.0.0.1:1"], cluster.secret, timeout_s=0.5):
            pass
    expect_log(r"dropping connection event=auth_failed")
    with pytest.raises(AuthError):
        async with FsClient.open_cluster(cluster.meta_addresses, os.urandom(32), options=FAST):
            pass
    # An error raised inside the block comes out as itself, not in an ExceptionGroup.
    with pytest.raises(NotFound):
        async with client(cluster) as fs:
            await fs.lookup(ROOT_INO, b"missing")


async def test_hung_metaserver_is_skipped(cluster: ClusterThread, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    cluster.call(lambda c: setattr(c.metas[0], "hang", True))
    cluster.call(lambda c: c.set_leader(1))
    async with client(cluster) as fs:
        # The first address hangs: after one attempt's timeout the next one is tried.
        started = anyio.current_time()
        await fs.mkdir(ROOT_INO, b"d", 0o755)
        assert anyio.current_time() - started < FAST.timeout_s
        assert fs.meta.leader == cluster.meta_addresses[1]


# ---------------------------------------------------------------------- absent names, xattrs


def add_elsewhere(cluster: ClusterThread, parent: int, name: bytes) -> int:
    """Another client's create of ``name`` in ``parent`` (straight into the namespace)."""

    def add(c: FakeCluster) -> int:
        ns = c.namespace
        return ns._new(ns.inodes[parent], name, stat.S_IFREG | 0o644, {}).ino

    return cluster.call(add)


async def test_absent_names_are_cached_for_the_ttl(cluster: ClusterThread) -> None:
    clock = FakeClock()
    async with client(cluster, clock=clock) as fs:
        base = reads(cluster)
        for _ in range(3):
            with pytest.raises(NotFound):
                await fs.lookup(ROOT_INO, b"n")
        assert reads(cluster) == base + 1
        # Another client's create is seen once the TTL has passed, as its other changes.
        ino = add_elsewhere(cluster, ROOT_INO, b"n")
        clock.now += 0.9
        with pytest.raises(NotFound):
            await fs.lookup(ROOT_INO, b"n")
        clock.now += 0.2
        assert (await fs.lookup(ROOT_INO, b"n")).ino == ino
        assert reads(cluster) == base + 2
        # This client's own create replaces an absent name at once, its unlink makes one.
        with pytest.raises(NotFound):
            await fs.lookup(ROOT_INO, b"m")
        m, _ = await fs.create(ROOT_INO, b"m", 0o644)
        assert (await fs.lookup(ROOT_INO, b"m")).ino == m.ino
        await fs.unlink(ROOT_INO, b"m")
        with pytest.raises(NotFound):
            await fs.lookup(ROOT_INO, b"m")
        assert reads(cluster) == base + 3


async def test_creates_keep_the_directorys_attributes_and_new_names_are_asked_for(
    cluster: ClusterThread,
) -> None:
    async with client(cluster) as fs:
        d = await fs.mkdir(ROOT_INO, b"d", 0o755)
        for i in range(3):
            await fs.create(d.ino, b"f%d" % i, 0o644)
        base = reads(cluster)
        # The creates' answers carried the directory's attributes: no getattr.
        parent = await fs.getattr(d.ino)
        assert parent.mtime_ns == cluster.call(lambda c: c.namespace.inodes[d.ino].mtime_ns)
        assert parent.mtime_ns > d.mtime_ns
        assert reads(cluster) == base
        # A name this client never looked up is asked for, even in a directory it has
        # just created and filled itself: another client's file shows up at once.
        other = add_elsewhere(cluster, d.ino, b"other")
        assert (await fs.lookup(d.ino, b"other")).ino == other
        assert reads(cluster) == base + 1


async def test_a_rename_with_an_unknown_outcome_forgets_both_names(
    cluster: ClusterThread,
) -> None:
    async with client(cluster, dataclasses.replace(FAST, timeout_s=1.0)) as fs:
        d = await fs.mkdir(ROOT_INO, b"d", 0o755)
        await fs.create(d.ino, b"a", 0o644)
        with pytest.raises(NotFound):
            await fs.lookup(d.ino, b"b")  # b is cached as absent
        base = reads(cluster)
        cluster.call(lambda c: c.faults.append(MetaFault("fs.rename", "timeout", count=100)))
        with pytest.raises((Timeout, Unavailable)):
            await fs.rename(d.ino, b"a", d.ino, b"b")
        cluster.call(lambda c: c.faults.clear())
        # The rename was applied: b exists and a does not; the client asks rather than
        # answer from what it knew before (b absent, a present).
        assert (await fs.lookup(d.ino, b"b")).ino > 0
        with pytest.raises(NotFound):
            await fs.lookup(d.ino, b"a")
        assert reads(cluster) >= base + 2


async def test_xattrs_of_a_new_file_cost_no_round_trip(cluster: ClusterThread) -> None:
    clock = FakeClock()
    async with client(cluster, clock=clock) as fs:
        f, _ = await fs.create(ROOT_INO, b"x", 0o644)
        base = reads(cluster)
        for _ in range(3):  # as the kernel asks before every write
            with pytest.raises(NoAttr):
                await fs.getxattr(f.ino, b"security.capability")
        assert reads(cluster) == base
        await fs.setxattr(f.ino, b"user.k", b"v")
        assert await fs.getxattr(f.ino, b"user.k") == b"v"
        assert await fs.getxattr(f.ino, b"user.k") == b"v"
        with pytest.raises(NoAttr):
            await fs.getxattr(f.ino, b"user.other")
        with pytest.raises(NoAttr):
            await fs.getxattr(f.ino, b"user.other")
        assert reads(cluster) == base + 2
        await fs.removexattr(f.ino, b"user.k")
        with pytest.raises(NoAttr):
            await fs.getxattr(f.ino, b"user.k")
        assert reads(cluster) == base + 3
        # Another client's change is seen once the TTL has passed.
        cluster.call(lambda c: c.namespace.inodes[f.ino].xattrs.update({b"user.k": b"w"}))
        clock.now += 1.1
        assert await fs.getxattr(f.ino, b"user.k") == b"w"


async def test_xattrs_of_listed_files_without_any_cost_no_round_trip(
    cluster: ClusterThread,
) -> None:
    # ls -l asks every file for security.selinux and its POSIX ACL: the attributes of the
    # listing say which files have xattrs at all (MooseFS's "no xattr" flag).
    clock = FakeClock()
    async with client(cluster, clock=clock) as fs:
        d = await fs.mkdir(ROOT_INO, b"d", 0o755)
        plain, _ = await fs.create(d.ino, b"plain", 0o644)
        tagged, _ = await fs.create(d.ino, b"tagged", 0o644)
        await fs.setxattr(tagged.ino, b"user.k", b"v")
    async with client(cluster, clock=clock) as fs:
        entries, _ = await fs.readdir_page(d.ino, 0, 100)
        assert {e.name: e.attr.has_xattrs for e in entries} == {b"plain": False, b"tagged": True}
        base = reads(cluster)
        for _ in range(3):
            with pytest.raises(NoAttr):
                await fs.getxattr(plain.ino, b"security.selinux")
        assert reads(cluster) == base
        with pytest.raises(NoAttr):
            await fs.getxattr(tagged.ino, b"security.selinux")
        assert await fs.getxattr(tagged.ino, b"user.k") == b"v"
        assert reads(cluster) == base + 2
