"""Open files of ``FsClient``: ``OpenFiles``, mixed into it.

What it owns: the life of this client's open inodes (``files.OpenInode``) from ``open``
to the last close, and after it while a close left something to do: the commit of a
new file through its directory lease's queue (dirleases.py, "New files' commits"); the
bytes a mount's ``close(2)`` left behind (files.py, CLOSE BEHIND): when a close may (the
lease, the cluster's free space) and what lands them first (a recall, an ``fsyncdir``, a
rename or link, this client's own open); and the task that commits what a close could
not, retrying bytes left behind until the cluster takes them. What it must not do: hold
state of its own (the open inodes, the caches and leases are ``FsClient``'s) or import
asyncio.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import stat
import time
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dfs.client import dirleases
from dfs.client.cache import LocationCache, MetaCache
from dfs.client.chunkio import gather
from dfs.client.dirleases import DirLease, DirLeases
from dfs.client.fileio import FileIo
from dfs.client.files import BEHIND_KEPT, OpenInode, attr_stamp
from dfs.client.handle import File, check_open_flags
from dfs.client.holdsync import HoldSync
from dfs.client.meta import MetaClient
from dfs.client.options import ClientOptions
from dfs.client.records import Attr, StatFs
from dfs.wire.errors import DfsError, Unavailable

log = logging.getLogger(__name__)

# Close behind (files.py, CLOSE BEHIND). A close leaves bytes for later only while the
# cluster's free space (``fs.statfs``, every chunkserver's) is at least this: near full, a
# close writes them itself and reports ENOSPC, rather than the bytes waiting for room.
BEHIND_FREE_MIN_BYTES = 1 << 30
# A statfs answer older than this is asked again, in the background; older than
# ``BEHIND_FREE_STALE_S`` it no longer counts, and closes write at once.
BEHIND_FREE_FRESH_S = 2.0
BEHIND_FREE_STALE_S = 10.0
# At most this many inodes behind at once (each holds at most CLOSE_BEHIND_BYTES_MAX):
# past it, closes write at once. That is backpressure when the chunkservers fall behind
# (a cp -r of small files met it about once in 70 files). 1,024 did not change cp -r's
# rate; it only let the backlog grow, and its writes then took 100 ms each.
BEHIND_INODES_MAX = 64


class OpenFiles:
    """Open inodes of ``FsClient`` (module docstring)."""

    options: ClientOptions
    meta: MetaClient
    cache: MetaCache
    locations: LocationCache
    dirleases: DirLeases
    holds: HoldSync
    holder: int
    _task_group: TaskGroup
    _open: dict[int, OpenInode]
    _unsynced_closed: dict[int, tuple[tuple[int, int, int], set[int]]]
    _finishers: set[anyio.CancelScope]
    _finished: anyio.Event
    _free_bytes: int
    _free_at: float
    _free_asking: bool
    _landing_later: bool
    _land_backoff: dict[int, tuple[float, float]]

    def _init_open_files(self) -> None:
        self._open = {}
        # Chunks a closed inode left unsynced, with the attributes they were written under,
        # oldest first: a later open adopts them, so that its fsync syncs them too.
        self._unsynced_closed = {}
        self._finishers = set()  # scopes of the ``_finish`` tasks
        self._finished = anyio.Event()  # set whenever no ``_finish`` task runs
        self._finished.set()
        # The cluster's free bytes as the last fs.statfs told, and when (monotonic); a
        # refresh is on its way; a task lands inodes whose release is late.
        self._free_bytes = 0
        self._free_at = -math.inf
        self._free_asking = False
        self._landing_later = False
        # Inodes left behind whose landing failed and was kept: (monotonic time of the
        # next attempt, the pause after that one), for ``_land_later``'s backoff.
        self._land_backoff = {}

    def _file_io(self) -> FileIo:
        raise NotImplementedError

    def _own_attr(self, attr: Attr) -> None:
        raise NotImplementedError

    def _known(self, ino: int) -> Attr | None:
        raise NotImplementedError

    async def statfs(self) -> StatFs:
        raise NotImplementedError

    # ------------------------------------------------------------------ close behind

    def _close_behind(self, inode: OpenInode) -> bool:
        """Whether a close(2) of ``inode`` leaves its bytes for later (files.py, CLOSE
        BEHIND): the inode allows it, its lease still holds, the cluster had room when
        last asked (asked again in the background when the answer is old), and not too
        many are behind already. If so, the inode is marked and will land within the
        lease queue's flush bound even if its release is late."""
        created = inode.created_under
        if (
            created is None
            or not inode.may_close_behind()
            or inode.io.behind_count >= BEHIND_INODES_MAX
            or not self.dirleases.holds(created[0])
        ):
            return False
        age_s = time.monotonic() - self._free_at
        if age_s > BEHIND_FREE_FRESH_S and not self._free_asking:
            self._free_asking = True
            self._task_group.start_soon(self._ask_free, name="free space for close behind")
        if age_s > BEHIND_FREE_STALE_S or self._free_bytes < BEHIND_FREE_MIN_BYTES:
            return False
        inode.behind = True
        self._ensure_landing()
        return True

    def _ensure_landing(self) -> None:
        if not self._landing_later:
            self._landing_later = True
            self._task_group.start_soon(self._land_later, name="land closes left behind")

    def _note_free(self, statfs: StatFs) -> None:
        self._free_bytes, self._free_at = statfs.bytes_free, time.monotonic()

    async def _ask_free(self) -> None:
        try:
            await self.statfs()  # which notes the answer
        except DfsError as e:
            log.debug("free space for close behind not known: %s", e)
        except Exception:  # never into the task group: the client must live on
            log.exception("free space for close behind not known")
        finally:
            self._free_asking = False

    async def _land_later(self) -> None:
        """Land, every flush bound, the inodes left behind whose release has not done it
        (a descriptor still open elsewhere: a dup, a fork, a mapping), so that no lease
        lapses with them and a crash loses no more than the queue's window. One whose
        landing failed and was kept (an outage) is tried again with backoff. Ends when
        none are left but those ``_finish`` retries."""
        try:
            while True:
                await anyio.sleep(dirleases.FLUSH_DELAY_S)  # the queue's bound, as for it
                left = [i for i in self._open.values() if i.behind and not i.finishing]
                if not left:
                    return
                now = time.monotonic()
                due = [i for i in left if self._land_backoff.get(i.ino, (0.0, 0.0))[0] <= now]
                await gather([partial(self._land_again, inode) for inode in due])
        except Exception:  # never into the task group: the client must live on
            log.exception("landing closes left behind failed")
        finally:
            self._landing_later = False

    async def _land_again(self, inode: OpenInode) -> None:
        """``_land`` for ``_land_later``, with the inode's backoff."""
        await self._land(inode)
        if inode.behind and inode.unsaved:  # kept: try again later
            _, pause_s = self._land_backoff.get(inode.ino, (0.0, dirleases.RETRY_MIN_S / 2))
            pause_s = min(pause_s * 2, dirleases.RETRY_MAX_S)
            self._land_backoff[inode.ino] = (time.monotonic() + pause_s, pause_s)
        else:
            self._land_backoff.pop(inode.ino, None)

    async def _land_behind(self, dirs: list[int]) -> None:
        """Before a recall's release (``DirLeases``): land every inode left behind in the
        directories ``dirs``, at once, so that whoever looks next sees the bytes. What
        fails is reported as the release would (``_behind_failed``)."""
        wanted = set(dirs)
        waiting = [
            inode
            for inode in self._open.values()
            if inode.behind and inode.created_under and inode.created_under[0].ino in wanted
        ]
        await gather([partial(self._land, inode) for inode in waiting])

    async def _land(self, inode: OpenInode) -> DfsError | None:
        """Land ``inode``'s bytes left behind; a failure is handled as ``_behind_failed``
        says. Returns the error when the bytes are kept (tried again later), else None
        (landed, or lost for good and reported)."""
        try:
            await inode.flush(sync=self.options.sync_on_close)
        except DfsError as e:
            kept = self._kept(inode, e)
            self._behind_failed(inode, e)
            return e if kept else None
        return None

    async def _land_first(self, inodes: list[OpenInode]) -> None:
        """Before a request that could show these inodes to another client without a
        recall (a rename or link of one; an ``fsyncdir`` of their directory): land what
        their closes left behind, at once. Bytes the cluster did not take (kept, and tried
        again later) fail the request with that error: it must not go on without them.
        Bytes lost for good are reported as a writeback error (``_behind_lost``: the next
        ``fsync`` and ``fsyncdir``), and the request goes on."""
        waiting = [inode for inode in inodes if inode.behind]
        errors: list[DfsError] = []

        async def land(inode: OpenInode) -> None:
            error = await self._land(inode)
            if error is not None:
                errors.append(error)

        await gather([partial(land, inode) for inode in waiting])
        if errors:
            raise errors[0]

    def _behind_in(self, parent: int, name: bytes | None = None) -> list[OpenInode]:
        """The inodes left behind in directory ``parent`` (as ``name``, when given: by
        the name each was created with, landed before any rename)."""
        if not self._file_io().behind_count:
            return []
        found = []
        for inode in self._open.values():
            created = inode.created_under
            if not (inode.behind and created is not None and created[0].ino == parent):
                continue
            if name is None or created[1] == name:
                found.append(inode)
        return found

    def _behind_failed(self, inode: OpenInode, error: DfsError) -> None:
        """A flush of ``inode``'s bytes left behind failed where nobody hears of it (the
        release, a recall, ``_land_later``): kept and tried again (``BEHIND_KEPT``), or
        lost and reported."""
        if self._kept(inode, error):
            log.info("ino %d: bytes a close left wait for the cluster: %s", inode.ino, error)
        else:
            self._behind_lost(inode, error)

    @staticmethod
    def _kept(inode: OpenInode, error: DfsError) -> bool:
        """Whether ``error`` leaves ``inode``'s bytes kept, to be tried again (an outage,
        no room yet: ``BEHIND_KEPT``), rather than lost."""
        return isinstance(error, BEHIND_KEPT) and inode.unsaved

    def _behind_lost(self, inode: OpenInode, error: BaseException) -> None:
        """Bytes a close(2) of ``inode`` left behind will never land: a WARNING, and the
        error of the next ``fsyncdir`` of its directory and ``fsync`` of the file, as a
        local file system reports a writeback error."""
        if not inode.behind:
            return  # reported already
        inode.behind = False
        log.warning("ino %d: bytes a close left behind are lost: %s", inode.ino, error)
        created = inode.created_under
        if created is not None:
            lost = error if isinstance(error, DfsError) else Unavailable(str(error))
            self.dirleases.write_lost(created[0].ino, inode.ino, lost)

    def _drop_behind(self) -> None:
        """The client is closing: what is still left behind is lost (reported)."""
        for inode in self._open.values():
            if inode.behind and inode.unsaved:
                self._behind_lost(inode, Unavailable("the client closed first"))

    async def finish_all(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, until no ``_finish`` task runs (an unmount lets
        closes left behind land before the queue's last flush)."""
        with anyio.move_on_after(timeout_s):
            while self._finishers:
                await self._finished.wait()

    # ------------------------------------------------------------------ commits

    def _defer_commit(
        self, created: tuple[DirLease, bytes], ino: int, fields: dict[str, Any]
    ) -> Attr | None:
        """Queue the commit ``fields`` of ``ino``, created here as ``name`` under
        ``lease`` (``created``; dirleases.py, "New files' commits"); return the
        attributes it will give, as this client can tell them. None: commit it the
        synchronous way (the lease is gone, or the file has another name by now)."""
        base = self._known(ino)
        if base is None or base.nlink != 1:
            return None
        if not self.dirleases.defer_commit(*created, ino, fields):
            return None
        size = fields["size"]
        changes: dict[str, Any] = {
            "size": size,
            "ctime_ns": time.time_ns(),
            "blocks": base.blocks_at(size),  # as the namespace counts a file (state.py)
        }
        for name in ("mtime_ns", "uid", "gid", "atime_ns"):
            if name in fields:
                changes[name] = fields[name]
        if "mode" in fields:
            changes["mode"] = stat.S_IFMT(base.mode) | fields["mode"]
        attr = dataclasses.replace(base, **changes)
        self._own_attr(attr)
        return attr

    async def _land_commits(self, ino: int) -> None:
        """Wait until the queued commits of ``ino`` have landed; raise the first that
        failed since the last time (an fsync's writeback error)."""
        if self.dirleases.queued(ino):
            await self.dirleases.flush()
        error = self.dirleases.file_error(ino)
        if error is not None:
            raise error

    def _commit_landed(self, attr: Attr) -> None:
        """A queued commit landed with ``attr``: the metaservers' stamp replaces the one
        this client guessed, also for a later open's fsync to adopt the chunks it left
        unsynced (``OpenInode.adopt_unsynced`` compares stamps)."""
        self._own_attr(attr)
        left = self._unsynced_closed.get(attr.ino)
        if left is not None:
            self._unsynced_closed[attr.ino] = (attr_stamp(attr), left[1])

    def _commit_lost(self, ino: int) -> None:
        """A queued commit of ``ino`` did not land: what this client told of its size
        and times is not the metaservers'."""
        self.cache.drop_attr(ino)
        self.locations.drop(ino)

    def _is_open(self, ino: int) -> bool:
        return ino in self._open

    async def open(self, ino: int, flags: int) -> File:
        """Open ``ino`` with ``os.O_*`` ``flags``: attributes are revalidated with the
        metaserver (close-to-open); O_TRUNC truncates a writable open; O_APPEND writes go to
        the end. Returns a ``File``; close it (``await f.close()`` or ``async with``)."""
        attr = await self._open_fresh(ino)
        self.cache.put_attr(attr)
        _, handle = await self._open_attr(attr, flags)
        return handle

    async def _open_fresh(self, ino: int) -> Attr:
        """``fs.open``: the inode's attributes from the metaserver, and a hold on it. What
        a close of it left behind (files.py, CLOSE BEHIND) lands first, or the answer
        could be from before that commit and this open would take the size it gives."""
        inode = self._open.get(ino)
        if inode is not None and inode.behind and not inode.finishing:
            # Failing (or retrying, when finishing), this client's own bytes still show:
            # the inode is dirty, and keeps its size over the answer's.
            await self._land(inode)
        header = await self.meta.read("fs.open", ino=ino, holder=self.holder)
        return Attr.from_wire(header.get("attr"))

    async def _open_attr(self, attr: Attr, flags: int) -> tuple[Attr, File]:
        """Open with fresh ``attr``; returns the attributes after O_TRUNC, and the file."""
        check_open_flags(attr, flags)
        io = self._file_io()
        self.locations.revalidate(attr)
        inode = self._open.get(attr.ino)
        if inode is None:
            inode = self._open[attr.ino] = OpenInode(io, attr)
            self.holds.start_keepalive()
        else:
            inode.refresh(attr)
        inode.refs += 1
        handle = File(inode, flags, self._release)
        if handle.writable:
            # Only a writer adopts them: syncing a chunk may take a write handle, which a
            # reader may not be allowed.
            left = self._unsynced_closed.pop(attr.ino, None)
            if left is not None:
                inode.adopt_unsynced(*left)
        if flags & os.O_TRUNC and handle.writable and (inode.size or attr.size):
            try:
                attr = await inode.truncate(0)
            except BaseException:
                await handle.close()
                raise
        return attr, handle

    def _release(self, inode: OpenInode) -> None:
        """A handle closed. The inode goes with its last handle, unless changes are left
        (the close's flush failed or was cancelled): then it stays, open to a new ``open``,
        until ``_finish`` has committed them or failed to."""
        inode.refs -= 1
        if inode.refs > 0 or self._open.get(inode.ino) is not inode:
            return
        if not inode.unsaved:
            self._drop_inode(inode)
        elif not inode.finishing:
            inode.finishing = True
            scope = anyio.CancelScope()  # made here, so that ``aclose`` can cancel it at once
            if not self._finishers:
                self._finished = anyio.Event()
            self._finishers.add(scope)
            self._task_group.start_soon(self._finish, inode, scope, name=f"finish ino {inode.ino}")

    def _drop_inode(self, inode: OpenInode) -> None:
        """The inode's last handle is closed and nothing is left to commit: drop it, keep
        what a later fsync must still sync, and let go of the hold."""
        del self._open[inode.ino]
        inode.behind = False  # reported already if its bytes were lost
        self._land_backoff.pop(inode.ino, None)
        left = inode.unsynced_state()
        if left is not None:
            closed = self._unsynced_closed
            closed.pop(inode.ino, None)
            closed[inode.ino] = left
            while len(closed) > self.options.unsynced_closed_max:
                del closed[next(iter(closed))]
        self.holds.released(inode.ino)

    async def _finish(self, inode: OpenInode, scope: anyio.CancelScope) -> None:
        """Wait for the inode's uploads and commit what landed, for a close that could not;
        then forget the inode if no handle joined it meanwhile. (The close that left the
        changes reported its own error; what fails here is logged.) Bytes a close(2)
        left behind are tried again, with backoff, while the cluster does not take them
        (``BEHIND_KEPT``) and no handle has joined (its close takes over)."""
        error: BaseException | None = None
        try:
            with scope:
                pause_s = dirleases.RETRY_MIN_S
                while True:
                    try:
                        await inode.settle()
                        error = None
                    except DfsError as e:
                        error = e
                    except Exception as e:
                        log.exception("ino %d: committing what a close left failed", inode.ino)
                        error = e
                    kept = isinstance(error, BEHIND_KEPT) and inode.behind and inode.unsaved
                    if kept and inode.refs > 0:
                        self._ensure_landing()  # a handle joined: retried as left behind
                    if not kept or inode.refs > 0:
                        break
                    if pause_s == dirleases.RETRY_MIN_S:
                        log.warning(
                            "ino %d: bytes a close left wait for the cluster (%s); "
                            "trying again until it takes them",
                            inode.ino,
                            error,
                        )
                    await anyio.sleep(pause_s)  # a backoff between attempts
                    pause_s = min(pause_s * 2, dirleases.RETRY_MAX_S)
        finally:
            self._finishers.discard(scope)
            if not self._finishers:
                self._finished.set()
            inode.finishing = False
            if inode.refs <= 0 and self._open.get(inode.ino) is inode:
                if inode.behind and (inode.unsaved or error is not None):
                    self._behind_lost(inode, error or Unavailable("cancelled"))
                elif inode.unsaved:
                    log.warning(
                        "ino %d: uncommitted writes a close left are dropped (%s)",
                        inode.ino,
                        error or "cancelled",
                    )
                elif error is not None:
                    log.info("ino %d: after a failed close: %s", inode.ino, error)
                self._drop_inode(inode)


__all__ = ["OpenFiles"]
