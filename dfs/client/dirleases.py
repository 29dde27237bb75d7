"""Directory leases on the client: removals, new files, directories and symlinks, and
new files' commits answered at once, shipped in batches.

What it owns: the leases this client holds (``fs.dir_lease``: an exclusive right to
answer removals in a directory from its complete listing, which ``FsClient`` also lists
and looks names up in, by the lease's own cookies), the inodes this client made under a
lease it still holds (``made_here``: nobody else can have changed them), the queue of what it
acknowledged but has not yet sent (removals; creates, mkdirs and symlinks with reserved
inode numbers; changes of a leased directory's attributes; the commits of files it created
in a directory it held the lease on), the flush of that queue as one ``fs.batch`` (one Raft
entry for many), the answer to a recall, and the errors of what failed to land, kept for
the next ``fsyncdir`` of their directory (and a commit's for the next ``fsync`` of its
file). What it must not do: know FUSE
or the caches' layout (``FsClient`` calls in and is called back), or import asyncio.

The promise (docs/ARCHITECTURE.md, "Directory leases"; the model is CephFS's
asynchronous unlink under the directory's capabilities):
- a removal acknowledged to the caller reaches the metaservers within ``FLUSH_DELAY_S``
  (or sooner: the queue is flushed when it holds ``FLUSH_OPS`` names, before any other
  metadata request of this client whose answer it could change, on a recall, on
  ``fsyncdir`` and at close);
- another client that looks at or changes the directory sees it first (the leader recalls
  the lease; we flush, then release);
- ``fsyncdir`` waits for the batch and raises what failed in that directory, as a local
  file system reports a writeback error; a failure is also logged as a WARNING;
- a client that dies loses its last flush window of removals (the names reappear), as a
  local file system loses unsynced metadata in a crash; a leader change loses nothing
  that was flushed, and a batch that got no answer is sent again under the same session
  until it is answered (exactly once), first, before anything queued after it;
- each queued removal carries the inode it removes: the namespace refuses it (``Stale``)
  if the name names another inode by the time it lands.

New files' commits. The size, mtime and chunk lengths of a file this client created
while it held the lease on its directory are committed through the same queue when a
close makes them (``defer_commit``): the bytes are on every replica when the commit is
queued, and the commit lands as the removals do, within ``FLUSH_DELAY_S``. (A mount's
``close(2)`` of a small one may return before that: files.py, CLOSE BEHIND; a recall lands
such files first, ``land_behind``.) No other client can reach such a
file without reading the directory first (a lookup or a listing: either recalls the
lease, and the queue lands before the answer), so close-to-open holds between clients.
An ``fsync`` of the file waits for its commit. A commit that fails to land (the chunk was
replaced meanwhile: ``Stale``) is a WARNING and the error of the file's next ``fsync``
and of the directory's next ``fsyncdir``.

Ordering. One FIFO for the whole client, so that removals land in the order they were
answered (the unlinks in a directory before its ``rmdir``), and every other metadata
request waits for the queue to land first (``MetaClient.before``): a create of a name
after its queued unlink, a rename or a readdir never overtakes it (CephFS tracker 55332).
The exceptions are requests whose answer nothing queued can change (``_unaffected``: a
lookup of a name not queued, a getattr of an inode neither queued nor the parent of a
removal, a listing or lease of a directory with nothing queued in it, a create of a name
not queued in a directory not being removed): they go at once, or every kernel lookup
during an ``rm -rf`` whose dentries outlived their 1 s, every directory it opens, and
every file a ``cp -r`` creates after the previous one's close, would wait for a commit.

Validity of a lease here: from the local time the grant request was *sent*, for
``lease_ms`` less ``LEASE_MARGIN`` of it, and only while the connection it was granted on
to the same leader is up (a new leader knows no lease). A lease this client used within
its length is renewed before it ends (``fs.lease_renew``, one for all of them, counted
from its send in the same way), unless recalled meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import stat
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dfs.client.meta import MetaClient, Resume
from dfs.client.pool import ConnectionPool
from dfs.client.records import Attr
from dfs.types import BATCH_OPS_MAX
from dfs.wire.errors import (
    DfsError,
    IsDir,
    NotDir,
    NotFound,
    ProtocolError,
    Unavailable,
    Unsupported,
    error_from_wire,
)
from dfs.wire.messages import field as wire_field

log = logging.getLogger(__name__)

# A lease is trusted here for (1 - LEASE_MARGIN) of its length from the grant's send:
# the leader's clock and ours may run at slightly different rates, and the grant's answer
# may have been slow; 20 % leaves a second of a 5 s lease to either.
LEASE_MARGIN = 0.2
# The longest anything waits in the queue: long enough that a busy rm -rf fills a batch
# and a cp -r's commits share one (each batch is a Raft entry on three metaservers: at
# 15 ms a cp -r made one per 1.2 files), short enough that a client crash loses little
# (another client never sees the difference: it would recall).
FLUSH_DELAY_S = 0.05
# A batch's names and symlink targets, about (a batch is one Raft entry on every
# metaserver: 1,024 symlinks of 4 KiB targets would make one of 4 MiB).
BATCH_BYTES = 512 * 1024
# Queue length that sends a batch at once (half the server's bound: the next batch fills
# while this one commits).
FLUSH_OPS = BATCH_OPS_MAX // 2
# After a refusal (a big directory), removals there go the synchronous way this long
# before a lease is asked for again.
REFUSED_S = 5.0
# A lease used within its length is renewed once less than this share of it is left (one
# fs.lease_renew for all of them), so that a long rm -rf or tar keeps its leases; unused
# ones lapse (CephFS keeps a client's capabilities until recalled, renewing its session).
RENEW_LEFT = 0.5
# After a leader did not know fs.lease_renew, how long before it is asked again.
RENEWAL_UNKNOWN_S = 60.0
# After a recall (another client works in the directory too), creates there do not ask
# for a lease for this long: two clients creating files in one directory would otherwise
# take it from each other at every create, each grant carrying the whole listing.
CONTENDED_S = 5.0
CONTENDED_KEPT_MAX = 4096  # past this many, expired entries are dropped
# How long the flush at close may take (each batch retries within the client's timeout).
CLOSE_FLUSH_S = 30.0
# Inode numbers per ``fs.lease_release`` at close (the metaserver takes up to 4,096), and
# how long giving them back may take before the close goes on (they expire anyway).
RELEASE_INOS_MAX = 1024
RELEASE_AT_CLOSE_S = 2.0
# A commit goes through the queue only when it names at most this many chunks (a small
# file's: one batch stays small).
DEFER_CHUNKS_MAX = 4
# Commits of new files that got no answer are sent again after this pause, doubling up to
# the longest.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
# Cookies of a listing from a lease held here (``DirLease.cookies``) start past this, far
# above any the leader gives (one per insertion into a directory).
LOCAL_COOKIE_BASE = 1 << 62
# ``DirLeases._made`` is pruned of leases no longer held when it has doubled past this.
MADE_PRUNE_MIN = 4096
# Requests that add a name to ``parent`` (their answer depends on that name and on the
# directory still being there, not on other queued names).
_CREATING = frozenset({"fs.create", "fs.mkdir", "fs.mknod", "fs.symlink", "fs.link"})
# Of those, the ones this client answers under a lease and queues (``queue_new``).
_NEW = frozenset({"fs.create", "fs.mkdir", "fs.symlink"})


@dataclass(slots=True, weakref_slot=True)  # weakly referable: tests check none outlives
class DirLease:
    ino: int
    until: float  # local monotonic time
    conn: Any  # the connection it was granted on: valid only while that one is up
    # The listing: name -> attributes as of the grant (or as made here), in ``cookies``
    # order. Changed only through ``add`` and ``drop``.
    names: dict[bytes, Attr]
    # The directory's own attributes, kept true to the removals answered here (None once
    # a synchronous change made them unknown): the kernel asks for them before every
    # removal (its permission check), and asking the leader would flush the queue.
    attr: Attr | None
    # What the leader takes in fs.batch (metaservers of an older version take less).
    batchable: frozenset[str] = frozenset({"fs.unlink", "fs.rmdir", "fs.commit"})
    # Each name's place in this client's listing of the directory: a name added takes the
    # next, so a listing paged by them (``FsClient.readdir_page``) gives a name present
    # throughout exactly once, as the leader's cookies do (namespace/state.py, DirData).
    # They start at LOCAL_COOKIE_BASE, apart from the leader's.
    cookies: dict[bytes, int] = field(default_factory=dict)
    next_cookie: int = 0
    # What this client made under this lease (``DirLeases.made_here``).
    made: set[int] = field(default_factory=set)
    used: float = 0.0  # local monotonic time this client last answered or listed under it

    def __post_init__(self) -> None:
        self.next_cookie = LOCAL_COOKIE_BASE
        for name in self.names:
            self.next_cookie += 1
            self.cookies[name] = self.next_cookie

    def add(self, name: bytes, attr: Attr) -> None:
        """``name`` is ``attr`` now: a new name, or one named anew (a new cookie)."""
        self.drop(name)
        self.names[name] = attr
        self.next_cookie += 1
        self.cookies[name] = self.next_cookie

    def drop(self, name: bytes) -> Attr | None:
        self.cookies.pop(name, None)
        return self.names.pop(name, None)


@dataclass(slots=True)
class _Queued:
    op: str  # "fs.unlink" | "fs.rmdir" | one of _NEW | "fs.commit" | "fs.setattr"
    parent: int  # the directory: of the name removed or created, or of the file committed
    name: bytes  # the name removed or created (b"" for a commit)
    ino: int  # the inode removed, created or committed
    fields: dict[str, Any] | None = None  # the request's fields (removals: None)

    def request(self) -> dict[str, Any]:
        if self.fields is not None:
            return self.fields
        return {"parent": self.parent, "name": self.name, "ino": self.ino}


@dataclass(slots=True)
class _Releasing:
    done: anyio.Event = field(default_factory=anyio.Event)


class DirLeases:
    """This client's directory leases and its queue of removals (module docstring)."""

    def __init__(
        self,
        meta: MetaClient,
        pool: ConnectionPool,
        task_group: TaskGroup,
        *,
        on_lost: Callable[[int, bytes], None],
        on_commit_lost: Callable[[int], None],
        on_commit_landed: Callable[[Attr], None],
        is_open: Callable[[int], bool] = lambda ino: False,
        land_behind: Callable[[list[int]], Awaitable[None]] | None = None,
        enabled: bool = True,
    ) -> None:
        self._meta = meta
        self._pool = pool
        self._tg = task_group
        self._lease_s = 5.0  # the last grant's lease_ms, in seconds
        self._renewing = False  # whether _renew_while_held runs
        # Until when no renewal is asked for: the leader did not know fs.lease_renew (an
        # older version, during a rolling upgrade); leases lapse meanwhile, as before.
        self._no_renewal_until = 0.0
        self._on_lost = on_lost  # (parent, name): a queued removal did not land
        self._on_commit_lost = on_commit_lost  # (ino): a queued commit did not land
        self._on_commit_landed = on_commit_landed  # the attributes a queued commit gave
        self._is_open = is_open  # whether this client has the inode open
        # Lands the bytes closes left for later in these directories (files.py, CLOSE
        # BEHIND): before a recall's release.
        self._land_behind = land_behind
        self.enabled = enabled
        self._leases: dict[int, DirLease] = {}
        self._refused: dict[int, float] = {}
        self._acquiring: dict[int, anyio.Event] = {}
        self._releasing: dict[int, anyio.Event] = {}
        self._recalls: dict[int, int] = {}  # ino -> recalls heard (a grant racing one is void)
        self._contended: dict[int, float] = {}  # ino -> until when creates take no lease
        self._queue: deque[_Queued] = deque()
        self._enqueued = 0  # removals and commits ever queued
        self._landed = 0  # of those, the ones whose batch was answered (or failed)
        self._flushing = anyio.Lock()
        self._timer = False
        self._retrying = False  # a task sends the batch that got no answer again
        # The batch sent and not answered yet (its items out of the queue, still counted
        # as queued), with its session: sent again, first, until it is answered.
        self._unanswered: tuple[list[_Queued], Resume] | None = None
        self._errors: dict[int, list[DfsError]] = {}  # directory -> what failed there
        self._file_errors: dict[int, DfsError] = {}  # file -> its commit that failed
        # What the queue touches, for the requests that need not wait for it (counts):
        # names removed; inodes removed, committed or whose entries change; inodes removed.
        self._queued_names: dict[tuple[int, bytes], int] = {}
        self._queued_inos: dict[int, int] = {}
        self._removed_inos: dict[int, int] = {}
        self._new_inos: dict[int, int] = {}  # inodes whose create, mkdir or symlink is queued
        self._committing: dict[int, int] = {}  # directories of files with commits queued
        self._attr_queued: dict[int, int] = {}  # directories with a setattr queued
        # Inodes this client made under a lease -> that lease's directory (``made_here``:
        # the lease object itself is not kept, or a dead one's listing would stay alive).
        self._made: dict[int, int] = {}
        self._made_pruned_at = MADE_PRUNE_MIN

    @staticmethod
    def _now() -> float:
        # The lease's own clock (every deadline here is taken and compared with it):
        # ``anyio.current_time`` asks which event loop runs at each call, a seventh of a
        # leased create's time in the mount.
        return time.monotonic()

    # ------------------------------------------------------------------ leases

    def valid(self, ino: int) -> DirLease | None:
        """The lease on ``ino`` if it holds, counted as used now (``_renew``)."""
        lease = self._held(ino)
        if lease is not None:
            lease.used = self._now()
        return lease

    def _held(self, ino: int) -> DirLease | None:
        lease = self._leases.get(ino)
        if lease is None:
            return None
        leader = self._meta.leader
        if (
            self._now() >= lease.until
            or leader is None
            or self._pool.current(leader) is not lease.conn
        ):
            del self._leases[ino]
            return None
        return lease

    def _start_renewing(self, lease_ms: int) -> None:
        self._lease_s = lease_ms / 1000
        if not self._renewing and self._now() >= self._no_renewal_until:
            self._renewing = True
            self._tg.start_soon(self._renew_while_held, name="directory lease renewal")

    async def _renew_while_held(self) -> None:
        """While leases are held: every quarter of a lease, renew those used within the
        last lease that have less than ``RENEW_LEFT`` of it left (one ``fs.lease_renew``)."""
        try:
            while self._leases and self._now() >= self._no_renewal_until:
                await anyio.sleep(self._lease_s / 4)  # a period, not a wait for a condition
                await self._renew()
        except Exception:  # never into the task group: leases then simply expire
            log.exception("renewing directory leases failed; they expire")
        finally:
            self._renewing = False

    async def _renew(self) -> None:
        now = self._now()
        due = [
            lease
            for ino, lease in list(self._leases.items())
            if self._held(ino) is lease
            and now - lease.used < self._lease_s
            and lease.until - now < self._lease_s * RENEW_LEFT
        ]
        for i in range(0, len(due), RELEASE_INOS_MAX):
            part = {lease.ino: lease for lease in due[i : i + RELEASE_INOS_MAX]}
            sent_at = self._now()
            try:
                header = await self._meta.read("fs.lease_renew", inos=list(part))
            except Unsupported:
                self._no_renewal_until = self._now() + RENEWAL_UNKNOWN_S
                return
            except DfsError as e:
                log.debug("directory leases not renewed (%s); they expire", e)
                return
            until = sent_at + wire_field(header, "lease_ms", int) * (1 - LEASE_MARGIN) / 1000
            for ino in wire_field(header, "renewed", list):
                lease = part.get(ino)
                if lease is not None and self._leases.get(ino) is lease:
                    lease.until = max(lease.until, until)

    async def _acquire(self, ino: int) -> DirLease | None:
        """A valid lease on ``ino``, asking for one if needed; None where refused."""
        while True:
            lease = self.valid(ino)
            if lease is not None:
                return lease
            if self._refused.get(ino, 0.0) > self._now():
                return None
            busy = self._acquiring.get(ino) or self._releasing.get(ino)
            if busy is None:
                break
            await busy.wait()
        event = self._acquiring[ino] = anyio.Event()
        try:
            return await self._ask(ino)
        finally:
            del self._acquiring[ino]
            event.set()

    async def _ask(self, ino: int) -> DirLease | None:
        recalls = self._recalls.get(ino, 0)
        sent_at = self._now()
        try:
            header = await self._meta.read("fs.dir_lease", ino=ino)
        except Unsupported:
            log.info("the metaservers grant no directory leases: removals stay synchronous")
            self.enabled = False
            return None
        except DfsError as e:
            log.debug("directory %d: no lease (%s); removing synchronously", ino, e)
            return None
        if not wire_field(header, "granted", bool, False):
            self._refused[ino] = self._now() + REFUSED_S
            return None
        if self._recalls.get(ino, 0) != recalls:
            return None  # recalled while the grant was on its way: released already
        leader = self._meta.leader
        conn = self._pool.current(leader) if leader is not None else None
        if conn is None:
            return None
        lease_ms = wire_field(header, "lease_ms", int)
        names = {e[0]: Attr.from_wire(e[1]) for e in wire_field(header, "entries", list)}
        until = sent_at + lease_ms * (1 - LEASE_MARGIN) / 1000
        lease = DirLease(ino, until, conn, names, Attr.from_wire(header.get("attr")))
        ops = header.get("batch_ops")
        if type(ops) is list and all(type(op) is str for op in ops):
            lease.batchable = frozenset(ops)
        self._leases[ino] = lease
        self._start_renewing(lease_ms)
        return lease

    def on_oneway(self, op: str, header: dict[str, Any]) -> None:
        """A one-way frame from a metaserver (called on the connection's reader task)."""
        if op != "fs.recall":
            log.debug("one-way %r from a metaserver ignored", op)
            return
        inos = [i for i in header.get("inos", ()) if type(i) is int]
        for ino in inos:
            # No removal is answered under it from now on; the grant of a request in
            # flight is void; no new lease is asked for until the release has gone out.
            self._leases.pop(ino, None)
            self._recalls[ino] = self._recalls.get(ino, 0) + 1
            self._contended[ino] = self._now() + CONTENDED_S
            self._releasing.setdefault(ino, anyio.Event())
        if len(self._contended) > CONTENDED_KEPT_MAX:
            now = self._now()
            self._contended = {i: t for i, t in self._contended.items() if t > now}
        self._tg.start_soon(self._recalled, inos, name="directory lease recall")

    async def _recalled(self, inos: list[int]) -> None:
        try:
            if self._land_behind is not None:
                await self._land_behind(inos)
            await self.flush()
            await self._meta.read("fs.lease_release", inos=inos)
        except DfsError as e:
            log.debug("lease release of %s not delivered (%s); it expires", inos, e)
        except Exception:  # never into the task group: the client must live on
            log.exception("answering the recall of %s failed; the leases expire", inos)
        finally:
            for ino in inos:
                event = self._releasing.pop(ino, None)
                if event is not None:
                    event.set()

    # ------------------------------------------------------------------ removals

    async def remove(
        self, op: str, parent: int, name: bytes, *, is_open: Callable[[int], bool]
    ) -> bool:
        """Answer ``op`` ("fs.unlink" or "fs.rmdir") of ``name`` in ``parent`` under a
        lease and queue it: True when done so; False when the caller must take the
        synchronous way (no lease, a file open here, a directory not known empty).
        Raises what Linux would (NotFound, IsDir, NotDir) from the listing."""
        if not self.enabled:
            return False
        lease = await self._acquire(parent)
        if lease is None or op not in lease.batchable:  # the leader takes them one by one
            return False
        entry = lease.names.get(name)
        if entry is None:
            raise NotFound("no such name (leased listing)", name=name)
        ino, is_dir = entry.ino, entry.is_dir
        if op == "fs.unlink":
            if is_dir:
                raise IsDir("unlink of a directory", name=name)  # Linux gives EISDIR
            if is_open(ino):
                return False  # the leader must keep it as an orphan: the synchronous way
        else:
            if not is_dir:
                raise NotDir("rmdir of a non-directory", name=name)
            child = await self._acquire(ino)
            if child is None or child.names:
                return False  # not known empty: the leader decides (NotEmpty)
            lease = self.valid(parent)  # the child's grant flushed and waited: recheck
            current = lease.names.get(name) if lease is not None else None
            if lease is None or current is None or current.ino != ino:
                return False
            self._leases.pop(ino, None)
        lease.drop(name)
        self._unmade(ino)
        if lease.attr is not None:
            now_ns = time.time_ns()  # the leader stamps its own when the batch lands
            nlink = lease.attr.nlink - (1 if op == "fs.rmdir" else 0)
            if nlink < 2:
                # A directory counts itself and its "..": this count went wrong somewhere.
                # Not shown to anyone: the leader is asked again.
                log.warning(
                    "directory inode %d: nlink %d counted here; asking again", parent, nlink
                )
                lease.attr = None
            else:
                lease.attr = dataclasses.replace(
                    lease.attr, nlink=nlink, mtime_ns=now_ns, ctime_ns=now_ns
                )
        self._enqueue(_Queued(op, parent, name, ino))
        return True

    async def lease_for_create(self, parent: int) -> DirLease | None:
        """The lease on ``parent`` (asked for if needed) before a create there, so that
        the new file's commits may go through the queue (``defer_commit``) and the next
        absent name is known without a round trip. None where refused, or where another
        client works too (recalled within ``CONTENDED_S``): then creates go as before."""
        if not self.enabled:
            return None
        lease = self.valid(parent)
        if lease is not None:
            return lease
        until = self._contended.get(parent)
        if until is not None:
            if until > self._now():
                return None
            del self._contended[parent]
        return await self._acquire(parent)

    def defer_commit(self, lease: DirLease, name: bytes, ino: int, fields: dict[str, Any]) -> bool:
        """Queue ``fs.commit`` ``fields`` of ``ino``, a file this client created as
        ``name`` under ``lease``, if that lease is still held (not one granted again
        since: another client may have looked at the file in between) and the file
        still has that name (module docstring). False: commit it the synchronous way."""
        if self.valid(lease.ino) is not lease or "fs.commit" not in lease.batchable:
            return False
        entry = lease.names.get(name)
        # A commit without chunk entries is not deferred: it names no chunk version, so a
        # repeat of it (_send) could undo a change made meanwhile.
        if entry is None or entry.ino != ino or not 1 <= len(fields["chunks"]) <= DEFER_CHUNKS_MAX:
            return False
        self._enqueue(_Queued("fs.commit", lease.ino, b"", ino, fields))
        return True

    def queue_new(
        self, op: str, lease: DirLease, name: bytes, attr: Attr, fields: dict[str, Any]
    ) -> bool:
        """Answer the ``op`` (``fs.create``, ``fs.mkdir`` or ``fs.symlink``) of ``name``
        (the new inode ``attr``, its number reserved for this client: inopool.py) under
        ``lease`` and queue its request ``fields``. False where the lease is gone, the
        name is listed, the directory's attributes are not known here or the leader
        takes no such op in a batch: the caller goes the synchronous way.

        A new directory comes with this client's lease on it, empty, from here on: no
        other client can name it before the batch lands (it would have to look into
        ``lease``'s directory, which recalls that lease and waits for the queue first),
        and the leader grants the lease to the batch's sender as it applies the mkdir
        (``LeaseDesk.granted_new``). This side's view of it ends with the parent's, which
        began before. So the files, directories and removals a ``tar x`` makes inside a
        directory it just made are answered at once too, and queued after its mkdir."""
        assert op in _NEW, op
        if (
            self.valid(lease.ino) is not lease
            or name in lease.names
            or lease.attr is None
            or op not in lease.batchable
        ):
            return False
        lease.add(name, attr)
        lease.made.add(attr.ino)
        self._made[attr.ino] = lease.ino
        if len(self._made) > self._made_pruned_at:
            self._prune_made()
        nlink = lease.attr.nlink + (1 if op == "fs.mkdir" else 0)  # the new ".."
        lease.attr = dataclasses.replace(
            lease.attr, nlink=nlink, mtime_ns=attr.ctime_ns, ctime_ns=attr.ctime_ns
        )
        self._enqueue(_Queued(op, lease.ino, name, attr.ino, fields))
        if op == "fs.mkdir":
            self._leases[attr.ino] = DirLease(
                attr.ino, lease.until, lease.conn, {}, attr, lease.batchable
            )
        return True

    def queue_setattr(self, ino: int, fields: dict[str, Any]) -> Attr | None:
        """Answer a change of directory ``ino``'s own attributes (``fields``: mode, uid,
        gid, atime_ns, mtime_ns) under the lease held on it, and queue its
        ``fs.setattr``; the attributes it gives, as this client can tell them. None where
        no lease is held on it here or its attributes are not known."""
        lease = self.valid(ino) if ino in self._leases else None
        if lease is None or lease.attr is None or "fs.setattr" not in lease.batchable:
            return None
        old = lease.attr
        changes: dict[str, Any] = {"ctime_ns": time.time_ns()}  # the leader stamps its own
        if "mode" in fields:
            changes["mode"] = stat.S_IFMT(old.mode) | stat.S_IMODE(fields["mode"])
        for name in ("uid", "gid", "atime_ns", "mtime_ns"):
            if name in fields:
                changes[name] = fields[name]
        lease.attr = dataclasses.replace(old, **changes)
        self._enqueue(_Queued("fs.setattr", ino, b"", ino, {"ino": ino, **fields}))
        return lease.attr

    def _enqueue(self, item: _Queued) -> None:
        self._queue.append(item)
        self._enqueued += 1
        self._track(item, 1)
        if len(self._queue) >= FLUSH_OPS:
            self._tg.start_soon(self._flush_quietly, name="removals flush")
        elif not self._timer:
            self._timer = True
            self._tg.start_soon(self._flush_later, name="removals flush timer")

    def _track(self, item: _Queued, delta: int) -> None:
        _count(self._queued_inos, item.ino, delta)
        if item.op == "fs.commit":  # a listing of its directory shows its size
            _count(self._committing, item.parent, delta)
        elif item.op == "fs.setattr":  # a directory's own attributes: only it changes
            _count(self._attr_queued, item.ino, delta)
        elif item.op in _NEW:  # a new name, and a new inode nobody else knows yet
            _count(self._queued_names, (item.parent, item.name), delta)
            _count(self._queued_inos, item.parent, delta)
            _count(self._new_inos, item.ino, delta)
        else:  # a removal
            _count(self._queued_names, (item.parent, item.name), delta)
            _count(self._queued_inos, item.parent, delta)
            _count(self._removed_inos, item.ino, delta)

    def queued(self, ino: int) -> bool:
        """Whether something queued here removes or commits ``ino`` (or changes its
        entries)."""
        return ino in self._queued_inos

    def file_error(self, ino: int) -> DfsError | None:
        """The error of a queued commit of ``ino`` that failed (once)."""
        return self._file_errors.pop(ino, None)

    def note_added(
        self, parent: int, name: bytes, attr: Attr, parent_attr: Attr | None = None
    ) -> None:
        """This client added ``name`` to ``parent``: keep the listing true, and the
        directory's attributes (``parent_attr``: the synchronous answer's, or the lease's
        own for a change answered under it; None: unknown)."""
        lease = self._leases.get(parent)
        if lease is None:
            return
        listed = lease.names.get(name)
        if listed is not None and listed.ino == attr.ino:
            # Listed already: answered under this lease (``queue_new``), or nothing was
            # added (an existing file opened with O_CREAT: its listing place and the
            # directory's times stay).
            return
        lease.add(name, attr)
        if parent_attr is lease.attr:
            return  # answered under this lease: its attributes are ours already
        # A synchronous answer's nlink may be older than a batch of this directory that
        # landed after the request went out (the two answers are handled in either order):
        # it would lose that batch's subdirectories, and an rm -rf then counted below
        # zero. So the count stays ours; the times are the answer's.
        if lease.attr is not None:
            stamp = parent_attr or lease.attr
            now_ns = time.time_ns() if parent_attr is None else stamp.mtime_ns
            lease.attr = dataclasses.replace(
                lease.attr,
                nlink=lease.attr.nlink + (1 if attr.is_dir else 0),
                mtime_ns=now_ns,
                ctime_ns=now_ns if parent_attr is None else stamp.ctime_ns,
            )
        else:
            # Unknown here, and the answer's may be that old: the lease goes, and the next
            # create asks for it again (after the queue), with the leader's attributes.
            del self._leases[parent]

    def saw_attr(self, attr: Attr) -> None:
        """The metaservers' answer to this client's change of ``attr.ino`` (a chmod of a
        leased directory): the lease's copy of its attributes follows."""
        lease = self._leases.get(attr.ino)
        if lease is not None:
            lease.attr = attr

    def forget_attr(self, ino: int) -> None:
        """A change of directory ``ino``'s attributes with no answer to keep (xattrs)."""
        lease = self._leases.get(ino)
        if lease is not None:
            lease.attr = None

    def note_removed(self, parent: int, name: bytes) -> None:
        lease = self._leases.get(parent)
        removed = lease.drop(name) if lease is not None else None
        if lease is not None and removed is not None:
            self._unmade(removed.ino)
            lease.attr = None  # a synchronous removal: its times are the leader's

    def lookup(self, parent: int, name: bytes) -> tuple[bool, Attr | None]:
        """(leased, entry) of ``name`` in ``parent`` from a lease held here: with a
        lease, None means known absent (the listing is complete). A present entry's
        attributes are as old as the grant: callers use only its identity."""
        lease = self.valid(parent) if parent in self._leases else None
        if lease is None:
            return False, None
        return True, lease.names.get(name)

    def made_here(self, ino: int) -> bool:
        """Whether this client made ``ino`` (``queue_new``) under a lease it still holds:
        then no other client can have reached it (it would have looked into the directory
        first, which recalls the lease), so what this client last saw of its attributes is
        still true, however old (``FsClient._known``)."""
        parent = self._made.get(ino)
        if parent is None:
            return False
        lease = self._held(parent)
        if lease is not None and ino in lease.made:
            return True
        del self._made[ino]
        return False

    def forget_made(self, ino: int) -> None:
        """``ino`` gets a name another client may reach (a hard link elsewhere)."""
        self._unmade(ino)

    def _unmade(self, ino: int) -> None:
        parent = self._made.pop(ino, None)
        lease = self._leases.get(parent) if parent is not None else None
        if lease is not None:
            lease.made.discard(ino)

    def _prune_made(self) -> None:
        """Drop the inodes made under leases no longer held (amortized: run when the map
        has doubled since the last time)."""
        kept = {}
        for ino, parent in self._made.items():
            lease = self._held(parent)
            if lease is not None and ino in lease.made:
                kept[ino] = parent
        self._made = kept
        self._made_pruned_at = max(MADE_PRUNE_MIN, 2 * len(kept))

    def lease_of(self, ino: int) -> DirLease | None:
        """The lease object held on ``ino``, valid or not (no use counted): compared
        before and after a synchronous change of the directory (``FsClient._adding``)."""
        return self._leases.get(ino)

    def dir_attr(self, ino: int) -> Attr | None:
        """The attributes of directory ``ino`` if leased here (and known)."""
        lease = self.valid(ino) if ino in self._leases else None
        return lease.attr if lease is not None else None

    def forget(self, parent: int) -> None:
        """A change of ``parent`` with an unknown outcome: its listing is not known."""
        self._leases.pop(parent, None)

    # ------------------------------------------------------------------ flushing

    @property
    def pending(self) -> bool:
        return self._landed < self._enqueued

    async def before(self, op: str, fields: dict[str, Any]) -> None:
        """``MetaClient.before``: nothing overtakes a queued removal it could see."""
        if self._landed < self._enqueued and not self._unaffected(op, fields):
            log.debug("flushing %d queued removals before %s", len(self._queue), op)
            await self.flush()

    def _unaffected(self, op: str, fields: dict[str, Any]) -> bool:
        """Whether ``op``'s answer is the same before and after the queue lands."""
        if op == "fs.lookup":
            parent, name = fields.get("parent"), fields.get("name")
            if (
                (parent, name) in self._queued_names
                or parent in self._committing
                or parent in self._new_inos  # a directory the leader does not know yet
            ):
                return False
            # A directory with removals queued in it: its nlink and times will change.
            lease = self._leases.get(parent) if type(parent) is int else None
            entry = lease.names.get(name) if lease is not None and type(name) is bytes else None
            return entry is None or entry.ino not in self._queued_inos
        if op == "fs.release":
            # Holds: a file created or committed through the queue has a name until a
            # removal of it lands (after its commit), so no hold of it keeps it alive.
            # A queued create holds its file when it lands if the file was open when its
            # batch was sent: a release must not overtake that batch.
            if self._unanswered is None:
                return True
            inos = fields.get("inos")
            sent = {i.ino for i in self._unanswered[0] if i.op == "fs.create"}
            return not (type(inos) is list and any(i in sent for i in inos))
        if op == "fs.keepalive":
            return True  # a hold of a file not created yet holds nothing
        if op in ("fs.getattr", "fs.getxattr", "fs.listxattr", "fs.readlink"):
            return fields.get("ino") not in self._queued_inos
        if op in ("fs.readdir", "fs.dir_lease"):
            # A listing of a directory with nothing queued in it: the same names either
            # way (only a listed directory's own times may lag, by the flush window). An
            # rm -rf reads each directory before it empties it: without this, every one
            # waited for the commit of the removals before it.
            ino = fields.get("ino")
            return ino not in self._queued_inos and ino not in self._committing
        if op in _CREATING:
            # A new name: it may exist only through a queued removal of it, and the
            # directory must not be one whose removal is queued. (A cp -r creates each
            # file while the commit of the one before is still queued.)
            parent = fields.get("parent")
            return (
                (parent, fields.get("name")) not in self._queued_names
                and parent not in self._removed_inos
                and parent not in self._new_inos
                # A new entry takes the directory's group and setgid bit, and moves its
                # times: a queued change of those lands first.
                and parent not in self._attr_queued
                and fields.get("ino") not in self._queued_inos  # fs.link's inode
            )
        return False

    async def flush(self) -> None:
        """Send everything queued so far and wait until it was answered. A batch that
        gets no answer (an outage, a leader change past the client's timeout) is kept,
        with its session, and sent again first (here, and in the background with
        backoff), so that it applies at most once; ``Unavailable`` is raised meanwhile."""
        target = self._enqueued
        while self._landed < target:
            async with self._flushing:
                if self._landed >= target:
                    return
                if self._unanswered is not None:
                    batch, resume = self._unanswered
                elif self._queue:
                    batch, resume = self._take_batch(), Resume()
                    self._unanswered = (batch, resume)
                else:
                    return
                # Shielded: a caller cancelled mid-send must not leave the batch neither
                # sent nor kept. (Bounded by the client's timeout.)
                with anyio.CancelScope(shield=True):
                    answered = await self._send(batch, resume)
                if not answered:
                    self._retry_later()
                    raise Unavailable(
                        f"{len(batch)} queued metadata changes got no answer yet; "
                        "sent again in the background"
                    )
                self._unanswered = None
                self._landed += len(batch)
                for item in batch:
                    self._track(item, -1)

    def _take_batch(self) -> list[_Queued]:
        """The next batch off the queue: at most ``BATCH_OPS_MAX`` items and about
        ``BATCH_BYTES`` of names and symlink targets (one Raft entry on every metaserver)."""
        batch: list[_Queued] = []
        size = 0
        while self._queue and len(batch) < BATCH_OPS_MAX and (not batch or size < BATCH_BYTES):
            item = self._queue.popleft()
            batch.append(item)
            target = item.fields.get("target") if item.fields is not None else None
            size += len(item.name) + (len(target) if type(target) is bytes else 0) + 64
        return batch

    async def _flush_later(self) -> None:
        await anyio.sleep(FLUSH_DELAY_S)  # the time bound of the queue, not a wait
        self._timer = False
        await self._flush_quietly()

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except DfsError as e:
            log.info("queued metadata not landed yet: %s", e)
        except Exception:  # never into the task group: the client must live on
            log.exception("flushing queued removals failed")

    def _retry_later(self) -> None:
        if not self._retrying:
            self._retrying = True
            self._tg.start_soon(self._retry, name="queued batch resend")

    async def _retry(self) -> None:
        """Send the batch that got no answer again, with backoff, until it is answered
        (a new file's bytes are on its replicas: only its commit is missing)."""
        pause_s = RETRY_MIN_S
        try:
            while self._unanswered is not None:
                await anyio.sleep(pause_s)  # a backoff, not a wait for a condition
                try:
                    await self.flush()
                except DfsError as e:
                    log.info("queued batch not answered yet, sending again: %s", e)
                    pause_s = min(pause_s * 2, RETRY_MAX_S)
        finally:
            self._retrying = False

    async def _send(self, batch: list[_Queued], resume: Resume) -> bool:
        """Send ``batch`` (again, under the same session, if ``resume`` holds one) and
        settle what it answered. False: no answer yet (the batch may or may not have
        applied; it must be sent again under its session)."""
        ops = [[item.op, self._request(item)] for item in batch]
        results: list[DfsError | None]
        answers: list[Any] = []
        try:
            header = await self._meta.mutate_resumable("fs.batch", resume, ops=ops)
            answers = wire_field(header, "results", list)
            results = [_result(a) for a in answers]
            if len(results) != len(batch):
                raise ProtocolError("fs.batch answered a different number of results")
        except DfsError as e:
            # Leases are not to be trusted any more: the leader may have changed.
            self._leases.clear()
            if resume.session is not None:  # no answer: the session waits for a resend
                return False
            results = [e] * len(batch)  # refused whole
        for i, (item, error) in enumerate(zip(batch, results, strict=True)):
            if error is not None:
                self._failed(item, error)
            elif item.op == "fs.commit" or (
                # A new inode's or a setattr's attributes, unless a change of the inode
                # follows: they would undo what this client told of it (that change's
                # answer tells the truth).
                (item.op in _NEW or item.op == "fs.setattr")
                and self._queued_inos.get(item.ino, 0) == 1
            ):
                self._committed(item, answers[i])
        return True

    def _request(self, item: _Queued) -> dict[str, Any]:
        fields = item.request()
        if item.op == "fs.create" and self._is_open(item.ino):
            return {**fields, "hold": True}  # the leader holds it open once created
        return fields

    def _committed(self, item: _Queued, answer: dict[str, Any]) -> None:
        try:
            attr = Attr.from_wire(answer.get("attr"))
        except DfsError as e:
            log.info("commit of inode %d answered without attributes: %s", item.ino, e)
            return
        self._on_commit_landed(attr)

    def holds(self, lease: DirLease) -> bool:
        """Whether ``lease`` still holds (not recalled, expired, or granted again)."""
        return self.valid(lease.ino) is lease

    def write_lost(self, parent: int, ino: int, error: DfsError) -> None:
        """Bytes a close left behind in directory ``parent`` (files.py, CLOSE BEHIND)
        never landed: the directory's next ``fsyncdir`` and the file's next ``fsync``
        report it."""
        self._errors.setdefault(parent, []).append(error)
        self._file_errors.setdefault(ino, error)

    def _failed(self, item: _Queued, error: DfsError) -> None:
        self._errors.setdefault(item.parent, []).append(error)
        self._leases.pop(item.parent, None)
        if item.op in _NEW:
            what = {"fs.create": "the file and its bytes are lost",
                    "fs.mkdir": "the directory and what was made in it are lost",
                    "fs.symlink": "the symlink is lost"}[item.op]  # fmt: skip
            log.warning(
                "%s of %r (inode %d) in directory inode %d did not land: %s "
                "(%s; reported at fsync and fsyncdir)",
                item.op.removeprefix("fs."),
                item.name,
                item.ino,
                item.parent,
                error,
                what,
            )
            self._file_errors.setdefault(item.ino, error)  # the first: its cause
            self._leases.pop(item.ino, None)  # a new directory's
            self._on_commit_lost(item.ino)
            self._on_lost(item.parent, item.name)
            return
        if item.op == "fs.setattr":
            log.warning(
                "attribute change of directory inode %d did not land: %s (reported at fsyncdir)",
                item.ino,
                error,
            )
            self._on_commit_lost(item.ino)
            return
        if item.op == "fs.commit":
            log.warning(
                "commit of inode %d (created in directory inode %d) did not land: %s "
                "(its written bytes are lost; reported at fsync)",
                item.ino,
                item.parent,
                error,
            )
            self._file_errors.setdefault(item.ino, error)  # the first: its cause
            self._on_commit_lost(item.ino)
            return
        log.warning(
            "%s of %r in directory inode %d did not land: %s (reported at fsyncdir)",
            item.op.removeprefix("fs."),
            item.name,
            item.parent,
            error,
        )
        self._on_lost(item.parent, item.name)

    async def fsyncdir(self, ino: int) -> None:
        """Make this client's removals durable (they are, once their batch is answered)
        and raise the first that failed in directory ``ino`` since the last fsyncdir."""
        await self.flush()
        errors = self._errors.pop(ino, None)
        if errors:
            raise errors[0]

    async def aclose(self) -> None:
        """Flush what is queued, a batch that got no answer sent again with backoff, for
        at most ``CLOSE_FLUSH_S``; forget the leases."""
        pause_s = RETRY_MIN_S
        with anyio.move_on_after(CLOSE_FLUSH_S):
            while self.pending:
                try:
                    await self.flush()
                except DfsError as e:
                    log.info("queued batch not answered at close yet: %s", e)
                    await anyio.sleep(pause_s)  # a backoff between attempts
                    pause_s = min(pause_s * 2, RETRY_MAX_S)
        lost = self._enqueued - self._landed
        if lost:
            log.warning(
                "%d queued removals and commits lost at close (no metaserver answered)", lost
            )
        held = list(self._leases)
        self._leases.clear()
        if lost:
            return  # no metaserver answers: the leases expire
        # Given back, so that another client's next look at these directories does not wait
        # for the leases to expire (a `dfs put` then an `ls` in a mount waited 5 s).
        with anyio.move_on_after(RELEASE_AT_CLOSE_S):
            for i in range(0, len(held), RELEASE_INOS_MAX):
                try:
                    await self._meta.read("fs.lease_release", inos=held[i : i + RELEASE_INOS_MAX])
                except DfsError as e:
                    log.debug("leases not given back at close (%s); they expire", e)
                    break


def _count(counts: dict[Any, int], key: Any, delta: int) -> None:
    left = counts.get(key, 0) + delta
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _result(answer: Any) -> DfsError | None:
    """One sub-op's answer: None for success, else its error."""
    if type(answer) is not dict:
        return ProtocolError("fs.batch: a result must be a map")
    return None if answer.get("ok") is True else error_from_wire(answer.get("err"))


__all__ = ["FLUSH_DELAY_S", "LOCAL_COOKIE_BASE", "DirLease", "DirLeases"]
