"""Directory leases and batched removals on real metaservers (docs/ARCHITECTURE.md,
"Directory leases"; dfs/client/dirleases.py).

What these tests check, with two clients A and B of one real cluster:
- A's removals under a lease take far fewer ``fs.batch`` RPCs (Raft entries) than names;
- B's readdir, lookup and create in the directory recall A's lease: B sees every removal
  A acknowledged, even those A had not flushed yet;
- A's create of a name whose unlink is still queued lands after it;
- a removal that fails to land is raised by the next ``fsyncdir`` (and logged);
- a late batch (its lease expired while its recall went unanswered) does not remove a
  new file another client created under the same name;
- a leader killed with a batch queued loses nothing ``fsyncdir`` acknowledged;
- a client killed with a batch queued: the names are back, nothing else is harmed;
- the commits of files A created under its lease go through the queue (no ``fs.commit``
  of their own, nothing waited at close), and B, looking into the directory, gets them
  whole; a file whose lease was recalled before its close commits the synchronous way;
- ``fsync`` waits for a queued commit and raises it if it did not land.

Flushes by time are pushed out of the way (``FLUSH_DELAY_S``) where a test needs the
queue to be still queued when the other client looks; nothing waits by sleeping.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from quick_timers import quick_cluster

from dfs.cli import cluster as local
from dfs.client import FsClient, dirleases
from dfs.client.fsclient import ROOT_INO
from dfs.secret import load_secret
from dfs.wire.errors import NoAttr, NotEmpty, NotFound, Stale, Timeout, Unavailable
from metaserver.leases import LEASE_MS
from tools.testing.localcluster import client

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(180)]

MODE = 0o100644


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    with quick_cluster(tmp_path_factory) as lay:
        yield lay


@pytest.fixture
def no_timed_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued removals stay queued until something else flushes them."""
    monkeypatch.setattr(dirleases, "FLUSH_DELAY_S", 120.0)


class FakeClock:
    """The client's cache clock, moved by hand (leases keep their own clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def same_attrs(a: Any, b: Any) -> bool:
    """The same inode as two answers tell it (the leader stamps its own times)."""
    fields = ("ino", "mode", "nlink", "uid", "gid", "size", "blocks", "goal")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


async def names(fs: FsClient, ino: int) -> list[bytes]:
    return sorted([e.name async for e in fs.readdir(ino)])


async def kill_the_leader(layout: local.Layout) -> None:
    st = await local.cluster_status(layout.meta_addresses, load_secret(layout.secret_file))
    leader = next(m for m in st["metaservers"] if m.get("role") == "leader")
    os.kill(leader["pid"], signal.SIGKILL)


async def restart_the_killed(layout: local.Layout) -> None:
    """Start the killed metaserver again and wait until the cluster serves."""
    local.start_daemons(layout)
    await local.wait_ready(layout, 60.0)


async def make_dir(fs: FsClient, name: bytes, count: int) -> int:
    d = await fs.mkdir(ROOT_INO, name, 0o755)
    for i in range(count):
        await fs.create(d.ino, b"f%04d" % i, MODE)
    return d.ino


async def test_a_client_that_closes_gives_its_leases_back(layout: local.Layout) -> None:
    """A client closed cleanly releases its directory leases, so another client's next
    look at those directories does not wait for them to expire (a `dfs put`, then an `ls`
    in a mount, waited 5 s)."""
    async with client(layout) as a:
        d = await make_dir(a, b"given", 21)
        await a.unlink(d, b"f0020")  # answered under a lease on the directory
        assert a.stats.count("fs.dir_lease") >= 1
        stats = a.stats
    assert stats.count("fs.lease_release") >= 1
    async with client(layout) as b:
        with anyio.fail_after(LEASE_MS / 1000 / 2):  # well before the lease would expire
            assert len(await names(b, d)) == 20


async def test_removals_batch_and_another_clients_readdir_sees_them(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await make_dir(a, b"rd", 300)
        sub = await a.mkdir(d, b"sub", 0o755)
        await a.create(sub.ino, b"inner", MODE)
        batches = a.stats.count("fs.batch")
        for i in range(300):
            await a.unlink(d, b"f%04d" % i)
        await a.unlink(sub.ino, b"inner")
        await a.rmdir(d, b"sub")
        assert a.dirleases.pending  # acknowledged, not sent: B's readdir must recall
        assert await names(b, d) == []
        assert not a.dirleases.pending
        assert a.stats.count("fs.lease_release") >= 1
        # 302 removals in a handful of entries (count bound, the lease asks' flushes).
        assert 1 <= a.stats.count("fs.batch") - batches <= 6
        with pytest.raises(NotFound):
            await b.lookup(d, b"sub")


async def test_a_leased_directory_listed_again_costs_no_round_trip_and_stays_true(
    layout: local.Layout,
) -> None:
    """``rm -rf`` lists each directory twice before emptying it: under the lease, the
    second listing is the first one's page, with this client's own changes since (a
    create, a removal, a file grown) and never a name another client changed (that
    recalls the lease first)."""
    async with client(layout) as a, client(layout) as b:
        d = await make_dir(a, b"relist", 5)
        await a.unlink(d, b"f0004")  # takes the lease
        assert await names(a, d) == [b"f%04d" % i for i in range(4)]
        listings = a.stats.count("fs.readdir")
        assert await names(a, d) == [b"f%04d" % i for i in range(4)]
        assert a.stats.count("fs.readdir") == listings  # the same page, no round trip
        f1 = await a.lookup(d, b"f0001")
        async with await a.open(f1.ino, os.O_WRONLY) as h:
            await h.write(0, b"y" * 500)
        listed = {e.name: e.attr async for e in a.readdir(d)}
        assert listed[b"f0001"].size == 500  # this client's own write, page kept or not
        await a.unlink(d, b"f0003")
        _, f = await a.create_and_open(d, b"new", MODE, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"x" * 1000)
        await f.close()
        listed = {e.name: e.attr async for e in a.readdir(d)}
        assert sorted(listed) == [b"f0000", b"f0001", b"f0002", b"new"]
        assert listed[b"new"].size == 1000
        assert (await b.lookup(d, b"new")).size == 1000  # recalls A's lease
        await b.unlink(d, b"f0000")
        assert await names(a, d) == [b"f0001", b"f0002", b"new"]


async def test_a_lease_in_use_is_renewed_past_its_length_and_still_recalled(
    layout: local.Layout,
) -> None:
    """A client that keeps working in a directory keeps its lease past ``LEASE_MS`` (one
    ``fs.lease_renew`` for all its leases, no new grant with its listing); another
    client's look still recalls it at once."""
    async with client(layout) as a, client(layout) as b:
        d = await make_dir(a, b"renewed", 3)
        await a.unlink(d, b"f0002")  # takes the lease
        grants = a.stats.count("fs.dir_lease")
        with anyio.fail_after(LEASE_MS / 1000 * 4):
            until = anyio.current_time() + LEASE_MS / 1000 * 1.5
            while anyio.current_time() < until:  # working in it past the lease's length
                with pytest.raises(NotFound):
                    await a.lookup(d, b"absent")  # answered from the leased listing
                await anyio.sleep(LEASE_MS / 1000 / 20)  # the pace of the work
        assert a.stats.count("fs.lease_renew") >= 1
        assert a.stats.count("fs.dir_lease") == grants  # never granted again
        assert a.dirleases.valid(d) is not None
        await a.unlink(d, b"f0001")  # queued under the renewed lease
        with anyio.fail_after(LEASE_MS / 1000 / 2):  # a recall, not an expiry
            assert await names(b, d) == [b"f0000"]
        assert a.dirleases.valid(d) is None


async def test_a_name_added_with_no_answer_is_not_hidden_by_the_lease(
    layout: local.Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A synchronous create that landed but whose answer was lost (a timeout) leaves its
    outcome unknown: the lease's listing (kept, renewed) must not go on hiding the name."""
    async with client(layout) as a:
        d = await make_dir(a, b"unknown", 2)
        await a.unlink(d, b"f0001")  # takes the lease
        assert await names(a, d) == [b"f0000"]  # and keeps this listing
        real = a.meta.mutate

        async def answer_lost(op: str, **fields: Any) -> Any:
            await real(op, **fields)
            raise Timeout("the answer was lost")

        monkeypatch.setattr(a.meta, "mutate", answer_lost)
        with pytest.raises(Timeout):
            await a.mknod(d, b"fifo", 0o010644)  # always synchronous
        monkeypatch.setattr(a.meta, "mutate", real)
        assert await names(a, d) == [b"f0000", b"fifo"]
        assert (await a.lookup(d, b"fifo")).mode == 0o010644


async def test_lookup_and_create_of_another_client_recall(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await make_dir(a, b"lc", 3)
        await a.unlink(d, b"f0000")
        assert a.dirleases.pending
        with pytest.raises(NotFound):
            await b.lookup(d, b"f0000")
        assert not a.dirleases.pending
        await a.unlink(d, b"f0001")  # under a new lease
        assert a.dirleases.pending
        await b.create(d, b"f0001", MODE)  # no Exists: A's unlink landed first
        assert not a.dirleases.pending
        assert await names(b, d) == [b"f0001", b"f0002"]


async def test_create_after_a_queued_unlink_lands_after_it(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await make_dir(a, b"cu", 1)
        old = await a.lookup(d, b"f0000")
        await a.unlink(d, b"f0000")
        assert a.dirleases.pending
        new, created = await a.create(d, b"f0000", MODE)
        assert created and new.ino != old.ino
        await a.fsyncdir(d)
        assert (await b.lookup(d, b"f0000")).ino == new.ino


async def test_fsyncdir_reports_a_removal_that_did_not_land(
    layout: local.Layout, no_timed_flush: None, expect_log: Callable[..., None]
) -> None:
    expect_log(r"unlink of b'ghost' in directory inode \d+ did not land")
    async with client(layout) as a:
        d = await make_dir(a, b"fs", 2)
        await a.unlink(d, b"f0000")  # takes the lease
        # A listing that went wrong (as a lease that lapsed unnoticed would leave it): a
        # name the namespace does not have.
        lease = a.dirleases.valid(d)
        assert lease is not None
        lease.names[b"ghost"] = dataclasses.replace(lease.names[b"f0001"], ino=10**9)
        await a.unlink(d, b"ghost")  # answered from the listing
        with pytest.raises(NotFound):
            await a.fsyncdir(d)
        await a.fsyncdir(d)  # reported once
        assert await names(a, d) == [b"f0001"]


async def test_late_batch_does_not_remove_another_clients_new_file(
    layout: local.Layout, no_timed_flush: None, expect_log: Callable[..., None]
) -> None:
    expect_log(r"unlink of b'f0000' in directory inode \d+ did not land")
    async with client(layout) as a, client(layout) as b:
        d = await make_dir(a, b"late", 1)
        await a.unlink(d, b"f0000")
        assert a.dirleases.pending
        # A stops hearing recalls (a partition of the one-way path): B waits for the lease
        # to expire, then removes and creates the name again.
        leader = a.meta.leader
        assert leader is not None
        conn = a._pool.current(leader)
        assert conn is not None
        conn.on_oneway = None
        a.dirleases.enabled = False  # and A takes no new lease meanwhile
        with anyio.fail_after(30):
            await b.unlink(d, b"f0000")
        mine, _ = await b.create(d, b"f0000", MODE)
        assert a.dirleases.pending
        with pytest.raises(Stale):
            await a.fsyncdir(d)  # the late batch: refused, the name names another inode
        assert (await b.lookup(d, b"f0000")).ino == mine.ino


async def test_leader_killed_with_a_batch_queued_loses_nothing_fsyncdir_acked(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout, timeout_s=30.0) as a:
        d = await make_dir(a, b"lk", 100)
        for i in range(100):
            await a.unlink(d, b"f%04d" % i)
        assert a.dirleases.pending
        await kill_the_leader(layout)
        await a.fsyncdir(d)  # re-sent to the new leader: no error
    await restart_the_killed(layout)
    async with client(layout) as b:
        assert await names(b, d) == []


CHILD = """
import sys, anyio
from dfs.client import FsClient, dirleases
from dfs.secret import load_secret
dirleases.FLUSH_DELAY_S = 120.0

async def main():
    addresses, secret_file, d = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
    async with FsClient.open_cluster(addresses, load_secret(secret_file)) as fs:
        for i in range(20):
            await fs.unlink(d, b"f%04d" % i)
        assert fs.dirleases.pending
        print("queued", flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


async def test_client_killed_with_a_batch_queued_loses_it_and_nothing_else(
    layout: local.Layout, tmp_path: Path
) -> None:
    async with client(layout) as b:
        d = await make_dir(b, b"ck", 30)
        other = await make_dir(b, b"ck-other", 5)
        script = tmp_path / "child.py"
        script.write_text(textwrap.dedent(CHILD))
        child = subprocess.Popen(
            [sys.executable, str(script), ",".join(layout.meta_addresses),
             str(layout.secret_file), str(d)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            line = await anyio.to_thread.run_sync(child.stdout.readline)
            assert line.strip() == b"queued"
        finally:
            child.kill()
            child.wait(timeout=10)
        # B's readdir recalls the dead client's lease: nobody answers, it expires.
        with anyio.fail_after(30):
            assert await names(b, d) == [b"f%04d" % i for i in range(30)]
        assert await names(b, other) == [b"f%04d" % i for i in range(5)]
        await b.unlink(d, b"f0000")
        await b.fsyncdir(d)
        assert len(await names(b, d)) == 29


async def test_rmdir_of_a_directory_not_known_empty_asks_the_leader(
    layout: local.Layout,
) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await make_dir(a, b"rn", 0)
        sub = await b.mkdir(d, b"sub", 0o755)
        await b.create(sub.ino, b"x", MODE)
        with pytest.raises(NotEmpty):
            await a.rmdir(d, b"sub")
        await b.unlink(sub.ino, b"x")
        await a.rmdir(d, b"sub")
        await a.fsyncdir(d)
        assert await names(b, d) == []


async def test_new_files_commits_are_queued_and_another_client_sees_them_whole(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"nc", 0o755)
        payloads = {b"f%d" % i: os.urandom(3000 + i) for i in range(5)}
        commits = a.stats.count("fs.commit")
        for name, data in payloads.items():
            _, f = await a.create_and_open(d.ino, name, MODE, os.O_WRONLY | os.O_CREAT)
            await f.write(0, data)
            await f.close()
            assert (await a.lookup(d.ino, name)).size == len(data)  # as A sees it at once
        assert a.stats.count("fs.commit") == commits  # none sent on their own
        assert a.dirleases.pending
        # A's own listing waits for the commits: it shows the sizes, not the leader's 0s.
        listed = {e.name: e.attr.size async for e in a.readdir(d.ino)}
        assert listed == {name: len(data) for name, data in payloads.items()}
        for name, data in payloads.items():  # B's first lookup recalls A's lease
            attr = await b.lookup(d.ino, name)
            assert attr.size == len(data)
            async with await b.open(attr.ino, os.O_RDONLY) as f:
                assert await f.read(0, len(data) + 10) == data
        assert not a.dirleases.pending

        # Recalled between the create and the close: the commit goes as it always did.
        _, f = await a.create_and_open(d.ino, b"late", MODE, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"late bytes")
        assert sorted(await names(b, d.ino)) == sorted([*payloads, b"late"])  # recalls
        await f.close()
        assert a.stats.count("fs.commit") == commits + 1
        attr = await b.lookup(d.ino, b"late")  # from B's listing: its open revalidates
        async with await b.open(attr.ino, os.O_RDONLY) as f:
            assert await f.read(0, 100) == b"late bytes"

        # Another client works there too: A's next creates take no lease for a while
        # (no listing at every create), and their commits go as they always did.
        grants = a.stats.count("fs.dir_lease")
        for name in (b"after1", b"after2"):
            _, f = await a.create_and_open(d.ino, name, MODE, os.O_WRONLY | os.O_CREAT)
            await f.write(0, name)
            await f.close()
        assert a.stats.count("fs.dir_lease") == grants
        assert a.stats.count("fs.commit") == commits + 3
        assert not a.dirleases.pending


async def test_fsync_waits_for_a_queued_commit_and_reports_one_that_did_not_land(
    layout: local.Layout,
    no_timed_flush: None,
    expect_log: Callable[..., None],
) -> None:
    expect_log(r"commit of inode \d+ \(created in directory inode \d+\) did not land")
    async with client(layout) as a, client(layout) as b:
        d = await a.mkdir(ROOT_INO, b"fq", 0o755)
        _, f = await a.create_and_open(d.ino, b"ok", MODE, os.O_RDWR | os.O_CREAT)
        await f.write(0, b"durable")
        await f.flush()  # close(2): the commit is queued
        assert a.dirleases.pending
        await f.fsync()
        assert not a.dirleases.pending
        await f.close()

        # Closed unsynced under a queued commit, reopened, fsynced: the fsync still syncs
        # what the first open wrote (it knows the file unchanged since, by the stamp the
        # landed commit gave, not the one the client guessed).
        re, f = await a.create_and_open(d.ino, b"re", MODE, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"unsynced")
        await f.close()
        assert a.dirleases.pending
        f = await a.open(re.ino, os.O_WRONLY)
        syncs = a.stats.count("chunk.write") + a.stats.count("chunk.sync")
        await f.fsync()
        assert a.stats.count("chunk.write") + a.stats.count("chunk.sync") > syncs
        await f.close()

        _, f = await a.create_and_open(d.ino, b"bad", MODE, os.O_RDWR | os.O_CREAT)
        await f.write(0, b"lost")
        await f.flush()
        # A commit the namespace must refuse, as it would one whose chunk was replaced
        # meanwhile: it names a chunk version that is not the file's.
        queued = a.dirleases._queue[-1]
        assert queued.op == "fs.commit" and queued.fields is not None
        entry = queued.fields["chunks"][0]
        entry[3] += 1000
        with pytest.raises(Stale):
            await f.fsync()
        await f.fsync()  # reported once
        await f.close()
        assert (await b.lookup(d.ino, b"bad")).size == 0
        assert (await b.lookup(d.ino, b"ok")).size == len(b"durable")


async def test_a_queued_commit_outlives_an_outage_of_every_metaserver(
    layout: local.Layout, no_timed_flush: None
) -> None:
    secret = load_secret(layout.secret_file)
    async with client(layout, timeout_s=3.0) as a:
        d = await a.mkdir(ROOT_INO, b"out", 0o755)
        data = os.urandom(5000)
        _, f = await a.create_and_open(d.ino, b"f", MODE, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        await f.close()
        assert a.dirleases.pending
        st = await local.cluster_status(layout.meta_addresses, secret)
        pids = [m["pid"] for m in st["metaservers"]]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with anyio.fail_after(30):
                while local.pid_alive(pid):
                    await anyio.sleep(0.05)  # polling for the exit
        with pytest.raises((Unavailable, Timeout)):
            await a.dirleases.flush()
        assert a.dirleases.pending  # kept, not dropped
        local.start_daemons(layout)
        await local.wait_ready(layout, 60.0)
        with anyio.fail_after(60):
            await a.fsyncdir(d.ino)  # lands (the background retry may have been first)
        assert not a.dirleases.pending
    async with client(layout) as b:
        attr = await b.lookup(d.ino, b"f")
        async with await b.open(attr.ino, os.O_RDONLY) as f:
            assert await f.read(0, len(data) + 1) == data


async def leased_dir_with_reserved(fs: FsClient, name: bytes, goal: int = 3) -> int:
    """A new directory ``name`` whose lease ``fs`` holds (its first create took it), with
    inode numbers reserved for the next creates (the pool fills in the background)."""
    d = await fs.mkdir(ROOT_INO, name, 0o755)
    _, f = await fs.create_and_open(d.ino, b"first", MODE, os.O_WRONLY | os.O_CREAT)
    await f.close()
    with anyio.fail_after(30):
        while not fs._inos._entries.get(goal):
            await anyio.sleep(0.01)  # polling for the background refill
    return d.ino


async def test_creates_under_a_lease_are_answered_at_once_and_land_whole(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout) as a, client(layout) as b:
        d_ino = await leased_dir_with_reserved(a, b"ac")
        creates, commits = a.stats.count("fs.create"), a.stats.count("fs.commit")
        payloads = {b"f%02d" % i: os.urandom(100 + 37 * i) for i in range(20)}
        told = {}
        for name, data in payloads.items():
            attr, f = await a.create_and_open(d_ino, name, MODE, os.O_WRONLY | os.O_CREAT)
            await f.write(0, data)
            await f.close()
            told[name] = attr.ino
        assert a.stats.count("fs.create") == creates  # no round trip of their own
        assert a.stats.count("fs.commit") == commits
        assert a.dirleases.pending
        assert len(set(told.values())) == len(told)
        for name, data in payloads.items():  # B's lookups recall A's lease: all landed
            attr = await b.lookup(d_ino, name)
            assert (attr.ino, attr.size, attr.mode, attr.nlink) == (told[name], len(data), MODE, 1)
            async with await b.open(attr.ino, os.O_RDONLY) as f:
                assert await f.read(0, len(data) + 10) == data
        assert not a.dirleases.pending
        assert sorted(await names(b, d_ino)) == sorted([b"first", *payloads])


async def test_a_leased_create_held_open_outlives_another_clients_unlink(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout) as a, client(layout) as b:
        d_ino = await leased_dir_with_reserved(a, b"ah")
        creates = a.stats.count("fs.create")
        _, f = await a.create_and_open(d_ino, b"open", MODE, os.O_RDWR | os.O_CREAT)
        assert a.stats.count("fs.create") == creates
        await f.write(0, b"before")
        await b.unlink(d_ino, b"open")  # recalls: the create lands, held open by A
        await f.write(6, b" after")
        await f.fsync()
        assert await f.read(0, 100) == b"before after"
        await f.close()
        with pytest.raises(NotFound):
            await b.lookup(d_ino, b"open")


async def test_a_leased_create_that_does_not_land_is_reported_at_fsync(
    layout: local.Layout, no_timed_flush: None, expect_log: Callable[..., None]
) -> None:
    expect_log(r"create of b'bad' \(inode \d+\) in directory inode \d+ did not land")
    expect_log(r"ino \d+: uncommitted writes a close left are dropped")
    async with client(layout) as a, client(layout) as b:
        d_ino = await leased_dir_with_reserved(a, b"af")
        _, f = await a.create_and_open(d_ino, b"bad", MODE, os.O_RDWR | os.O_CREAT)
        queued = a.dirleases._queue[-1]
        assert queued.op == "fs.create" and queued.fields is not None
        # An inode number this client was not given: the namespace must refuse it, as it
        # would an entry that expired while the batch waited out a long outage.
        queued.fields["ino"] = 1 << 40
        await f.write(0, b"lost")
        with pytest.raises(Stale):
            await f.fsync()
        with pytest.raises(NotFound):  # what the close writes has no file any more
            await f.close()
        with anyio.fail_after(30):
            while a._is_open(queued.ino):  # the client gives up what the close left
                await anyio.sleep(0.01)  # polling for the background settle
        with pytest.raises(NotFound):
            await b.lookup(d_ino, b"bad")


async def test_a_leased_directorys_attributes_change_at_once_and_others_see_them(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout) as a, client(layout, attr_ttl_s=0) as b:
        d = await a.mkdir(ROOT_INO, b"sa", 0o755)
        _, f = await a.create_and_open(d.ino, b"x", MODE, os.O_WRONLY | os.O_CREAT)
        await f.close()  # A holds the lease on d now
        setattrs = a.stats.count("fs.setattr")
        mtime = 1_234_567_890_123_456_789
        attr = await a.setattr(d.ino, mode=0o700, uid=1234, gid=4321)
        attr = await a.setattr(d.ino, atime_ns=mtime, mtime_ns=mtime)
        assert a.stats.count("fs.setattr") == setattrs  # answered under the lease
        assert (attr.mode, attr.uid, attr.gid, attr.mtime_ns) == (0o40700, 1234, 4321, mtime)
        assert await a.getattr(d.ino) == attr
        assert a.dirleases.pending
        # B's getattr of the directory recalls A's lease on it: what A changed lands
        # before the answer.
        seen = await b.getattr(d.ino, fresh=True)
        assert (seen.mode, seen.uid, seen.gid, seen.mtime_ns) == (0o40700, 1234, 4321, mtime)
        assert not a.dirleases.pending
        assert (await b.lookup(ROOT_INO, b"sa")).mode == 0o40700


async def test_a_tree_made_under_a_lease_is_answered_at_once_and_lands_whole(
    layout: local.Layout, no_timed_flush: None
) -> None:
    """``tar x``'s pattern: a directory made under the parent's lease comes with this
    client's lease on it, so what is made inside is answered at once too; another
    client's first look gets all of it, with the attributes A answered."""
    async with client(layout) as a, client(layout) as b:
        top = await leased_dir_with_reserved(a, b"tree")
        counts = {op: a.stats.count(op) for op in ("fs.mkdir", "fs.symlink", "fs.create",
                                                   "fs.dir_lease", "fs.lookup")}  # fmt: skip
        sub = await a.mkdir(top, b"sub", 0o2750)
        deeper = await a.mkdir(sub.ino, b"deeper", 0o700)
        link = await a.symlink(sub.ino, b"link", b"deeper/file")
        _, f = await a.create_and_open(deeper.ino, b"file", MODE, os.O_WRONLY | os.O_CREAT)
        await f.write(0, b"inside")
        await f.close()
        assert {op: a.stats.count(op) for op in counts} == counts  # no round trip at all
        assert a.dirleases.pending
        assert (sub.mode, sub.nlink, deeper.mode) == (0o40750, 2, 0o40700)
        # What A tells of them now (sub's nlink counts deeper's "..").
        told = {name: await a.getattr(x.ino) for name, x in
                ((b"sub", sub), (b"deeper", deeper), (b"link", link))}  # fmt: skip
        assert told[b"sub"].nlink == 3
        # B's lookup of the new name recalls A's lease on the parent: the whole tree lands.
        seen = {b"sub": await b.lookup(top, b"sub")}
        assert not a.dirleases.pending
        seen[b"deeper"] = await b.lookup(sub.ino, b"deeper")
        seen[b"link"] = await b.lookup(sub.ino, b"link")
        for name, attr in told.items():
            assert same_attrs(seen[name], attr), name
        assert await b.readlink(link.ino) == b"deeper/file"
        inner = await b.lookup(deeper.ino, b"file")
        async with await b.open(inner.ino, os.O_RDONLY) as g:
            assert await g.read(0, 100) == b"inside"
        assert (await b.getattr(top, fresh=True)).nlink == 3  # "sub"'s ".." counted


async def test_the_maker_of_a_directory_keeps_its_lease_after_the_mkdir_lands(
    layout: local.Layout, no_timed_flush: None
) -> None:
    """The leader grants the new directory's lease to its maker as the batch applies
    (``LeaseDesk.granted_new``): what A makes in it after that batch landed, still
    answered at once, is recalled by B's listing of it, never missed."""
    async with client(layout) as a, client(layout) as b:
        top = await leased_dir_with_reserved(a, b"kept")
        sub = await a.mkdir(top, b"sub", 0o755)
        await a.fsyncdir(top)  # the mkdir landed
        assert not a.dirleases.pending
        dir_leases = a.stats.count("fs.dir_lease")
        _, f = await a.create_and_open(sub.ino, b"late", MODE, os.O_WRONLY | os.O_CREAT)
        await f.close()
        assert a.dirleases.pending  # answered under the lease A assumed at its mkdir
        assert a.stats.count("fs.dir_lease") == dir_leases
        assert await names(b, sub.ino) == [b"late"]  # the recall brought it
        assert not a.dirleases.pending


async def test_a_mkdir_that_does_not_land_is_reported_with_what_was_made_in_it(
    layout: local.Layout, no_timed_flush: None, expect_log: Callable[..., None]
) -> None:
    expect_log(r"mkdir of b'gone' \(inode \d+\) in directory inode \d+ did not land")
    expect_log(r"create of b'x' \(inode \d+\) in directory inode \d+ did not land")
    async with client(layout) as a, client(layout) as b:
        top = await leased_dir_with_reserved(a, b"lost")
        gone = await a.mkdir(top, b"gone", 0o755)
        queued = a.dirleases._queue[-1]
        assert queued.op == "fs.mkdir" and queued.fields is not None
        queued.fields["ino"] = 1 << 40  # a number this client was not given
        _, f = await a.create_and_open(gone.ino, b"x", MODE, os.O_WRONLY | os.O_CREAT)
        with pytest.raises(Stale):
            await a.fsyncdir(top)
        with pytest.raises(NotFound):
            await b.lookup(top, b"gone")
        with pytest.raises(NotFound):  # the file made in it has no directory
            await f.fsync()
        await f.close()  # nothing written: nothing more to report


async def test_leader_killed_with_a_tree_queued_loses_nothing_fsyncdir_acked(
    layout: local.Layout, no_timed_flush: None
) -> None:
    async with client(layout, timeout_s=30.0) as a:
        top = await leased_dir_with_reserved(a, b"tk")
        dirs = [await a.mkdir(top, b"d%d" % i, 0o755) for i in range(5)]
        for d in dirs:
            await a.symlink(d.ino, b"s", b"target")
            _, f = await a.create_and_open(d.ino, b"f", MODE, os.O_WRONLY | os.O_CREAT)
            await f.write(0, b"%d" % d.ino)
            await f.close()
        assert a.dirleases.pending
        await kill_the_leader(layout)
        await a.fsyncdir(top)  # re-sent to the new leader: no error
    await restart_the_killed(layout)
    async with client(layout) as b:
        assert await names(b, top) == [b"d0", b"d1", b"d2", b"d3", b"d4", b"first"]
        for d in dirs:
            assert await names(b, d.ino) == [b"f", b"s"]
            f_attr = await b.lookup(d.ino, b"f")
            async with await b.open(f_attr.ino, os.O_RDONLY) as g:
                assert await g.read(0, 100) == b"%d" % d.ino


async def test_what_a_client_made_under_its_lease_is_listed_and_looked_up_at_once(
    layout: local.Layout, no_timed_flush: None
) -> None:
    """``rm -rf`` after ``tar x``, ``ls -l`` after ``cp -r``: a directory leased here is
    listed from the lease with no round trip, and what this client made in it answers
    with what it last saw, however old its cache (nobody else can have reached those
    inodes). The attributes listed are the ones looked up and stat'ed, and the ones
    another client sees once it looks."""
    clock = FakeClock()
    async with client(layout, clock=clock) as a, client(layout) as b:
        d = await leased_dir_with_reserved(a, b"listed")
        sizes = {b"f%02d" % i: 100 * i for i in range(8)}
        for name, size in sizes.items():
            _, f = await a.create_and_open(d, name, MODE, os.O_WRONLY | os.O_CREAT)
            await f.write(0, b"x" * size)
            await f.close()
        await a.mkdir(d, b"sub", 0o755)
        await a.symlink(d, b"link", b"f01")
        clock.now += 3600  # every cached answer is long stale
        ops = ("fs.readdir", "fs.lookup", "fs.getattr", "fs.getxattr")
        asked = {op: a.stats.count(op) for op in ops}
        listed = {e.name: e.attr async for e in a.readdir(d)}
        looked = {name: await a.lookup(d, name) for name in listed}
        stated = {name: await a.getattr(attr.ino) for name, attr in listed.items()}
        for attr in listed.values():  # ls -l asks each for its ACL
            with pytest.raises(NoAttr):
                await a.getxattr(attr.ino, b"system.posix_acl_access")
        assert {op: a.stats.count(op) for op in asked} == asked  # all answered here
        assert listed == looked == stated
        assert {name: listed[name].size for name in sizes} == sizes
        assert (listed[b"sub"].nlink, listed[b"link"].size) == (2, 3)
        for name, attr in listed.items():  # B's first look recalls A's lease
            assert same_attrs(await b.lookup(d, name), attr), name
        clock.now += 3600
        assert {e.name async for e in a.readdir(d)} == set(listed)
        assert a.stats.count("fs.readdir") > asked["fs.readdir"]  # the lease is gone


async def test_a_leased_listing_pages_by_the_leases_own_cookies(
    layout: local.Layout, no_timed_flush: None
) -> None:
    """Paged by the lease's cookies, a listing gives each name present throughout exactly
    once while names come and go in the middle of it (as the leader's cookies do); a name
    made anew comes after the names already there."""
    async with client(layout) as a, client(layout) as b:
        d = await leased_dir_with_reserved(a, b"paged")
        for i in range(10):
            _, f = await a.create_and_open(d, b"n%02d" % i, MODE, os.O_WRONLY | os.O_CREAT)
            await f.close()
        readdirs = a.stats.count("fs.readdir")
        first, more = await a.readdir_page(d, 0, 100)
        assert not more and len(first) == 11  # with the helper's "first"
        cut = first[4].cookie
        await a.unlink(d, first[2].name)  # before the cut
        await a.unlink(d, first[7].name)  # after it
        _, f = await a.create_and_open(d, first[2].name, MODE, os.O_WRONLY | os.O_CREAT)
        await f.close()
        rest, more = await a.readdir_page(d, cut, 100)
        assert not more
        expected = [e.name for e in first[5:] if e.name != first[7].name] + [first[2].name]
        assert [e.name for e in rest] == expected
        assert a.stats.count("fs.readdir") == readdirs
        # A cookie of the lease's once it is gone ends the listing (only a seekdir across
        # a rewinddir can ask for it); a listing from the start asks the leader.
        await b.lookup(d, b"n00")
        assert await a.readdir_page(d, cut, 100) == ([], False)
        assert len(await names(a, d)) == 10


async def test_a_file_made_here_and_linked_elsewhere_is_asked_for_again(
    layout: local.Layout, no_timed_flush: None
) -> None:
    """A hard link in another directory lets other clients reach a file A made under its
    lease without a recall of that lease: from then on A's cache ages as for any file."""
    clock = FakeClock()
    async with client(layout, clock=clock) as a, client(layout) as b:
        d = await leased_dir_with_reserved(a, b"made-linked")
        other = await a.mkdir(ROOT_INO, b"made-linked-elsewhere", 0o755)
        made, f = await a.create_and_open(d, b"f", MODE, os.O_WRONLY | os.O_CREAT)
        await f.close()
        await a.link(made.ino, other.ino, b"g")
        reached = await b.lookup(other.ino, b"g")
        async with await b.open(reached.ino, os.O_WRONLY) as g:
            await g.write(0, b"y" * 500)
        assert a.dirleases.valid(d) is not None  # B never looked into d
        clock.now += 3600
        assert (await a.getattr(made.ino)).size == 500
