"""The client's directory leases (dfs/client/dirleases.py) without a cluster: a stub
leader, the order of answers chosen by the test."""

from __future__ import annotations

import stat
from typing import Any

import anyio
import pytest

from dfs.client import dirleases
from dfs.client.records import Attr

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

CONN = object()
DIR = 100
BATCHABLE = frozenset({"fs.unlink", "fs.rmdir", "fs.mkdir", "fs.create", "fs.setattr"})


class Pool:
    def current(self, address: str) -> object:
        return CONN


class Leader:
    """Answers ``fs.batch`` when ``answer`` is set."""

    leader = "m1"

    def __init__(self) -> None:
        self.answer = anyio.Event()

    async def mutate_resumable(self, op: str, resume: Any, ops: list[Any]) -> dict[str, Any]:
        await self.answer.wait()
        return {"results": [{"ok": True} for _ in ops]}


def dir_attr(ino: int, nlink: int) -> Attr:
    return Attr(ino=ino, mode=stat.S_IFDIR | 0o755, nlink=nlink, uid=0, gid=0, size=4096,
                atime_ns=1, mtime_ns=1, ctime_ns=1, goal=2)  # fmt: skip


def new_leases(tg: Any, leader: Leader) -> dirleases.DirLeases:
    return dirleases.DirLeases(
        leader,  # type: ignore[arg-type]
        Pool(),  # type: ignore[arg-type]
        tg,
        on_lost=lambda parent, name: None,
        on_commit_lost=lambda ino: None,
        on_commit_landed=lambda attr: None,
    )


def counted(leases: dirleases.DirLeases) -> int | None:
    """The nlink the lease on DIR tells."""
    attr = leases.dir_attr(DIR)
    return None if attr is None else attr.nlink


def file_attr(ino: int) -> Attr:
    return Attr(ino=ino, mode=stat.S_IFREG | 0o644, nlink=1, uid=0, gid=0, size=0,
                atime_ns=1, mtime_ns=1, ctime_ns=1, goal=2)  # fmt: skip


async def test_an_answer_older_than_a_landed_batch_does_not_lose_its_subdirectories() -> None:
    """tar x: mkdirs answered under the lease are queued; a create that went the
    synchronous way (no reserved inode at hand) is applied by the leader before their
    batch, so its answer counts none of them, and it may be handled after the batch's.
    The lease's nlink must still count them: an rm -rf counted it below zero (EIO)."""
    leader = Leader()
    async with anyio.create_task_group() as tg:
        leases = new_leases(tg, leader)
        until = dirleases.DirLeases._now() + 60
        lease = dirleases.DirLease(DIR, until, CONN, {}, dir_attr(DIR, 2), BATCHABLE)
        leases._leases[DIR] = lease
        for i in range(5):
            assert leases.queue_new("fs.mkdir", lease, b"sub%d" % i, dir_attr(200 + i, 2), {})
        assert counted(leases) == 7
        tg.start_soon(leases.flush)
        leader.answer.set()
        with anyio.fail_after(5):
            while leases.pending:
                await anyio.sleep(0.001)  # polling for the batch's answer to be handled
        # Then the synchronous create's answer, from before the batch: nlink 2.
        leases.note_added(DIR, b"late", file_attr(300), dir_attr(DIR, 2))
        assert counted(leases) == 7
        for i in range(5):  # rm -rf
            child = dirleases.DirLease(200 + i, until, CONN, {}, dir_attr(200 + i, 2), BATCHABLE)
            leases._leases[200 + i] = child
            assert await leases.remove("fs.rmdir", DIR, b"sub%d" % i, is_open=lambda ino: False)
        assert counted(leases) == 2
        tg.cancel_scope.cancel()


async def test_a_synchronous_answer_in_a_lease_with_unknown_attributes_ends_the_lease() -> None:
    leader = Leader()
    async with anyio.create_task_group() as tg:
        leases = new_leases(tg, leader)
        until = dirleases.DirLeases._now() + 60
        lease = dirleases.DirLease(DIR, until, CONN, {}, None, BATCHABLE)
        leases._leases[DIR] = lease
        leases.note_added(DIR, b"f", file_attr(300), dir_attr(DIR, 2))
        assert leases.valid(DIR) is None  # asked for again, with the leader's attributes
        tg.cancel_scope.cancel()


async def test_what_was_made_under_a_lease_is_known_while_it_holds_and_frees_it_after() -> None:
    """``made_here``: what was made under the lease, not what was listed at its grant; a
    lease gone takes them with it, and nothing here keeps it (or its listing) alive."""
    import gc
    import weakref

    async with anyio.create_task_group() as tg:
        leases = new_leases(tg, Leader())
        until = dirleases.DirLeases._now() + 60
        names = {b"old%d" % i: file_attr(1000 + i) for i in range(100)}
        lease = dirleases.DirLease(DIR, until, CONN, names, dir_attr(DIR, 2), BATCHABLE)
        leases._leases[DIR] = lease
        assert leases.queue_new("fs.create", lease, b"f", file_attr(300), {})
        assert leases.queue_new("fs.mkdir", lease, b"d", dir_attr(301, 2), {})
        assert leases.made_here(300) and leases.made_here(301)
        assert not leases.made_here(1000)  # listed at the grant: someone else's
        gone = weakref.ref(lease)
        leases.forget(DIR)
        assert not leases.made_here(300)
        del lease
        leases._leases.pop(301, None)  # the new directory's own lease
        gc.collect()
        assert gone() is None
        tg.cancel_scope.cancel()


async def test_an_existing_file_opened_with_o_creat_changes_nothing_in_the_lease() -> None:
    async with anyio.create_task_group() as tg:
        leases = new_leases(tg, Leader())
        until = dirleases.DirLeases._now() + 60
        f = file_attr(300)
        lease = dirleases.DirLease(DIR, until, CONN, {b"f": f, b"g": file_attr(301)},
                                   dir_attr(DIR, 2), BATCHABLE)  # fmt: skip
        leases._leases[DIR] = lease
        before, cookie = lease.attr, lease.cookies[b"f"]
        leases.note_added(DIR, b"f", f, None)  # fs.create answered created: False
        assert lease.attr is before and lease.cookies[b"f"] == cookie
        tg.cancel_scope.cancel()
