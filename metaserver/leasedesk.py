"""The leader's directory-lease desk: recalls, grants and releases over the RPC layer.

What it owns: the asyncio side of ``metaserver.leases`` (the pure table): which
directories a request touches, waiting for another holder's lease to end before such a
request runs (sending the one-way ``fs.recall``), and the ``fs.dir_lease``,
``fs.lease_renew`` and ``fs.lease_release`` ops. What it must not do: decide file-system semantics or talk to
Raft itself; it reads the namespace only through the server's linearizable read.

The rule it enforces (docs/ARCHITECTURE.md, "Directory leases"): a request of a client
that reads or changes the entries of a directory another client holds a lease on runs
only after that lease ended: released by its holder after a recall (the holder first
flushed the removals it queued), or expired. The test when no lease exists is one dict
lookup per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dfs.wire.errors import DfsError, Invalid, Unavailable
from dfs.wire.messages import field, uint_field
from metaserver.leases import LEASE_ENTRIES_MAX, DirLeases, Lease
from metaserver.namespace import Namespace

# Requests whose field names a directory whose entries they read or change.
_BY_PARENT = frozenset(
    {"fs.lookup", "fs.create", "fs.mkdir", "fs.mknod", "fs.symlink", "fs.link", "fs.unlink",
     "fs.rmdir"}
)  # fmt: skip
# (The lease covers the directory's own attributes too: its holder answers getattr of it
# while it removes names, so a change of them by another client recalls the lease.)
_BY_INO = frozenset(
    {"fs.readdir", "fs.getattr", "fs.open", "fs.dir_lease", "fs.setattr", "fs.setxattr",
     "fs.removexattr", "fs.set_goal"}
)  # fmt: skip
# Admin changes of names or of directories' attributes anywhere in a subtree (a restore
# from the trash remakes missing directories too): which directories they touch is known
# only as they run, and they are rare, so every lease is recalled first. (A lease on
# another directory granted while one runs may list it without the change.)
_RECALL_ALL = frozenset({"admin.trash_restore", "admin.set_goal", "admin.set_trash_time"})
# Of those, the ones that change entries (a lease granted meanwhile waits for them).
_CHANGING = frozenset(
    {"fs.create", "fs.mkdir", "fs.mknod", "fs.symlink", "fs.link", "fs.unlink", "fs.rmdir",
     "fs.rename", "fs.batch"}
)  # fmt: skip


class LeaseDesk:
    def __init__(
        self,
        ns: Namespace,
        read: Callable[[float], Awaitable[None]],
        leader_view: Callable[[], None],
        batchable: tuple[str, ...] = (),
    ) -> None:
        self.leases = DirLeases()
        self._batchable = sorted(batchable)  # what a holder may ship in fs.batch
        self._ns = ns
        self._read = read  # the server's linearizable read barrier (ReadIndex)
        self._leader_view = leader_view
        self._idle: dict[int, list[asyncio.Future[None]]] = {}

    def restart(self) -> None:
        """A new term of leadership: no lease survives it."""
        for lease in self.leases.restart():
            _wake(lease)

    # --- which directories a request touches -------------------------------------------

    def touched(self, op: str, h: dict[str, Any]) -> list[int]:
        """The directories whose entries ``op`` reads or changes (and, for a removal or a
        rename of a directory, that directory itself: its emptiness is read)."""
        try:
            if op in _BY_PARENT:
                parent = uint_field(h, "parent")
                if op == "fs.rmdir" and self.leases:
                    return [parent, *self._child_dir(parent, h.get("name"))]
                return [parent]
            if op in _BY_INO:
                return [uint_field(h, "ino")]
            if op in _RECALL_ALL:
                return list(self.leases.by_ino)
            if op == "fs.rename":
                parent, new_parent = uint_field(h, "parent"), uint_field(h, "new_parent")
                inos = [parent] if parent == new_parent else [parent, new_parent]
                if self.leases:
                    inos += self._child_dir(parent, h.get("name"))
                    inos += self._child_dir(new_parent, h.get("new_name"))
                return inos
            if op == "fs.batch":
                parents: dict[int, None] = {}
                for sub in field(h, "ops", list):
                    if type(sub) is list and len(sub) == 2 and type(sub[1]) is dict:
                        if sub[0] == "fs.commit":
                            continue  # a file's data: no directory's entries
                        if sub[0] == "fs.setattr":  # a directory's own attributes
                            parents[uint_field(sub[1], "ino")] = None
                            continue
                        parents[uint_field(sub[1], "parent")] = None
                        if self.leases and sub[0] == "fs.rmdir":
                            for child in self._child_dir(sub[1]["parent"], sub[1].get("name")):
                                parents[child] = None
                return list(parents)
        except DfsError:
            return []  # a malformed request: its handler refuses it
        return []

    def _child_dir(self, parent: Any, name: Any) -> list[int]:
        """The directory ``name`` names in ``parent``, if it is one (cheap: only asked
        while some lease exists)."""
        if type(parent) is not int or type(name) is not bytes:
            return []
        try:
            _, d = self._ns.directory(parent)
        except DfsError:
            return []
        entry = d.entries.get(name)
        if entry is None or self._ns.inodes[entry[0]].dir is None:
            return []
        return [entry[0]]

    @contextlib.asynccontextmanager
    async def guard(self, op: str, h: dict[str, Any], timeout_s: float) -> AsyncIterator[None]:
        """Run a request only after other holders' leases on what it touches ended; a
        change of entries is counted in flight meanwhile (``DirLeases.enter``)."""
        inos = self.touched(op, h)
        if not inos:
            yield
            return
        holder = uint_field(h, "holder", 0)
        while self.leases:
            if not await self.recall(inos, holder, timeout_s):
                break
            # A batch that landed while we waited may have made a directory this request
            # removes or renames (a child directory's lease is read off the namespace):
            # recall that one too before going on.
            again = [ino for ino in self.touched(op, h) if ino not in inos]
            if not again:
                break
            inos = inos + again
        if op not in _CHANGING:
            yield
            return
        self.leases.enter(inos)
        try:
            yield
        finally:
            self.leases.leave(inos)
            for ino in inos:
                if not self.leases.busy(ino):
                    for waiter in self._idle.pop(ino, ()):
                        if not waiter.done():
                            waiter.set_result(None)

    async def recall(self, inos: list[int], holder: int, timeout_s: float) -> bool:
        """Wait until no other holder than ``holder`` (0: nobody) leases any of ``inos``;
        whether it had to wait."""
        deadline = time.monotonic() + timeout_s
        waited = False
        for ino in inos:
            while True:
                now = time.monotonic()
                lease = self.leases.blocking(ino, holder, now)
                if lease is None:
                    break
                if not lease.recalled:
                    lease.recalled = True
                    conn = lease.conn
                    if conn is not None and not conn.closed:
                        conn.send_oneway_nowait({"op": "fs.recall", "inos": [ino]})
                wait_s = min(lease.expiry_s, deadline) - now
                if wait_s <= 0:
                    raise Unavailable("waiting for another client's directory lease", ino=ino)
                woken = asyncio.get_running_loop().create_future()
                lease.waiters.append(woken)
                waited = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, wait_s)
                # Released, or expired (``blocking`` drops it), or our deadline: loop.
        return waited

    # --- the ops -------------------------------------------------------------------------

    async def dir_lease(self, conn: Any, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``fs.dir_lease``: the caller's ``guard`` has recalled other holders already."""
        ino, holder = uint_field(h, "ino"), uint_field(h, "holder", 0)
        if not holder:
            raise Invalid("fs.dir_lease needs a holder")
        self._leader_view()
        _, d = self._ns.directory(ino)  # NotFound / NotDir before anything is granted
        if len(d.entries) > LEASE_ENTRIES_MAX:
            return {"granted": False}
        lease = self.leases.grant(ino, holder, conn, time.monotonic())
        try:
            # Changes of the directory's entries already on their way to the log land
            # before the listing is read (new ones recall this lease).
            if self.leases.busy(ino):
                idle = asyncio.get_running_loop().create_future()
                self._idle.setdefault(ino, []).append(idle)
                await asyncio.wait_for(idle, timeout_s)
            await self._read(timeout_s)
            entries, more = self._ns.readdir(ino, 0, LEASE_ENTRIES_MAX)
        except BaseException:
            self.leases.end(lease)
            _wake(lease)
            raise
        if lease.released or more:  # recalled while we listed, or grew past the bound
            self.leases.end(lease)
            _wake(lease)
            return {"granted": False}
        return {
            "granted": True,
            "lease_ms": self.leases.lease_ms,
            "attr": self._ns.getattr(ino),
            "entries": entries,
            "batch_ops": self._batchable,
        }

    def granted_new(self, ino: int, holder: int, conn: Any) -> None:
        """Directory ``ino`` was just made by ``holder``'s batch, under its lease on the
        parent: the maker holds the new directory's lease from here, as it assumed from
        its mkdir on (dfs/client/dirleases.py, ``queue_new``). Called as the batch's
        answer comes back from the log, before it goes out: another client could name
        the new directory only by looking into the parent, which recalls the parent's
        lease and waits for this batch first. The maker's own clock started earlier, so
        its view of the lease ends before this one.

        Not granted if the directory is gone (removed later in the same batch) or anybody
        holds a lease on it already: the answer of a batch sent again after a leader
        change, or after a long outage of the maker, when another client may have looked
        in and taken the lease meanwhile (the maker's own view of its lease ended with
        its connection, so it asks again)."""
        inode = self._ns.inodes.get(ino)
        if inode is None or inode.dir is None or ino in self.leases.by_ino:
            return
        self.leases.grant(ino, holder, conn, time.monotonic())

    def lease_release(self, h: dict[str, Any]) -> dict[str, Any]:
        holder = uint_field(h, "holder", 0)
        inos = field(h, "inos", list)
        if len(inos) > LEASE_ENTRIES_MAX or any(type(i) is not int for i in inos):
            raise Invalid(f"inos: at most {LEASE_ENTRIES_MAX} inode numbers")
        self._leader_view()
        for lease in self.leases.release(holder, inos):
            _wake(lease)
        return {}

    async def lease_renew(self, conn: Any, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``fs.lease_renew``: a holder keeps the leases it still works under. As for a
        grant, this server first makes sure it still leads (a read barrier): a deposed
        leader cut off with the holder must not keep its leases alive."""
        holder = uint_field(h, "holder", 0)
        inos = field(h, "inos", list)
        if len(inos) > LEASE_ENTRIES_MAX or any(type(i) is not int for i in inos):
            raise Invalid(f"inos: at most {LEASE_ENTRIES_MAX} inode numbers")
        self._leader_view()
        now = time.monotonic()  # the renewal counts from before the barrier
        await self._read(timeout_s)
        renewed = self.leases.renew(holder, conn, inos, now)
        return {"renewed": renewed, "lease_ms": self.leases.lease_ms}

    def expire(self) -> None:
        for lease in self.leases.expire(time.monotonic()):
            _wake(lease)


def _wake(lease: Lease) -> None:
    waiters, lease.waiters = lease.waiters, []
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
