"""Open inodes: the write-back buffer, uploads, commits and reads of one client.

What it owns: for every inode open in this client, an ``OpenInode``, shared by all handles
on it as the kernel shares a page cache (handles and their read-ahead are in
``handle.py``). What it must not do: talk to sockets itself (``chunkio.py`` and
``meta.py`` do) or decide metadata semantics (the metaserver does).

WRITE PATH (design.md §5). ``write`` copies into a per-inode extent buffer (one contiguous
range inside one chunk, at most ``write_buffer_bytes``); writes that continue or overwrite
the extent coalesce into it. The extent is *uploaded* when it is full, when it reaches the
end of its chunk, when a write lands elsewhere, and on ``fsync``/``flush``/``close``/
``truncate``. A large immutable ``bytes`` write is uploaded in place, without the copy.
An upload runs in the background (at most ``uploads_in_flight_max`` per inode; writers wait
for a slot, which is the backpressure): it gets the chunk's write handle (``fs.write_handle``,
cached per chunk until it nears expiry or fails), sends ``chunk.write`` to the chain's first
replica, and on ``Stale``/``PermissionDenied``/``NotFound`` asks for a new handle, on
``Unavailable``/``Timeout``/``Busy`` backs off and asks again, until the overall deadline.
Uploads whose ranges overlap land in the order they were started. The first failure of a
background upload is kept and raised by the next ``write``, and by ``fsync``/``close`` (which
then forget it, as Linux reports a writeback error once per file description).

CLOSE AND FSYNC (design.md §5, as MooseFS, HDFS's ``hflush``/``hsync`` and local file
systems). ``flush``/``close``: wait for the uploads, upload the extent, then ``fs.commit``
the file size, mtime and chunk lengths. Every ``chunk.write`` is acknowledged only when
every replica of the chain has the bytes (in its page cache), so the commit never points
at bytes a replica was not given, but nothing is fsynced: a closed file survives the crash
of chunkserver processes (the kernel keeps their page cache), not a power loss of every
replica. ``fsync``: the same, but the extent goes with ``sync: true`` (every earlier write
to its chunk has landed, so that fsync covers them too) and every other chunk written
since its last sync is synced, all before the commit: the data is durable on every
replica before the metaserver points at it. ``sync_on_close`` (the mount's
``--sync-on-close``) makes every close an fsync. Chunks a close left unsynced are
remembered by the client when the inode goes (``FsClient``, bounded), so that an fsync
of a descriptor later opened for writing syncs them too. Every ``chunk.write`` and
``chunk.sync`` carries ``expect_length``, the highest end acknowledged under the handle's version (at
least the handle's length): a replica that lost acknowledged bytes in a crash answers
``Stale`` instead of syncing short or filling a gap with zeros. A commit of bytes a power
loss then took from every replica is settled by the leader (``metaserver/repair.py``,
LENGTH RECOVERY): the chunk's length goes down to the best copy, never a chunk that
refuses every new version.

COMMITS NAME THE CHUNK VERSION. Each ``fs.commit`` entry is ``[index, length, chunk_id,
version]``: the handle the data was written under, which is the latest this client holds
for the chunk (a renewal commits first, below). The metaserver answers ``Stale`` when the
chunk is no longer that one at that version: another client took a newer handle, or a
truncate cut or re-created it, and either may have cut bytes we wrote but had not
committed. Then the data may be gone: the commit is not retried under a new handle. The
fsync/close fails with ``Stale``, and the inode forgets what the commit described, its
write handles and its cached locations, and takes the file size from the metaserver
(keeping what is still buffered or in flight). An ``open`` whose fresh attributes show
another client's change (size, mtime or ctime other than this client last saw) drops the
cached write handles too, so that the next write takes a fresh one.

NEW HANDLES AND CHUNK LENGTHS. A new handle bumps the chunk's version, and a replica that
sees a newer version first truncates itself to the chunk table's length (PROTOCOL.md). So
before asking for a new handle on a chunk, we wait until no write under the old handle is
still on its way, and commit what was written (its length enters the table); otherwise
the truncation would cut our own uncommitted bytes. Commits run one at a time
(``_commit_lock``): a commit takes its lengths out of ``_uncommitted`` before its answer,
and a renewal that did not wait for it could get a handle with the old length. A replica
syncs only at its own version, so a chunk whose handle was renewed since our last write
to it is synced by an empty ``chunk.write`` with ``sync`` under the new handle.

CLOSE BEHIND (a mount's ``close(2)`` of a small file it created under its directory's
lease; the promise is invariant 8c in docs/ARCHITECTURE.md). FUSE sends ``flush`` for
``close(2)`` and ``release`` after it, without the caller waiting. When the inode allows
it (``may_close_behind``: created under a lease, at most ``CLOSE_BEHIND_BYTES_MAX``
buffered, nothing in flight) and the client does (``openfiles.py``: the lease still
held, room in the cluster, not too many already), ``flush(behind=True)`` returns at once
and marks the inode ``behind``; the release uploads and commits, while ``tar``/``cp`` go
on. The upload goes along the chain (nobody waits for its latency). The client lands a
``behind`` inode itself within the lease queue's flush bound if the release is late, and
at once before a recall's answer, an ``fsyncdir`` of the directory, a rename or link of
the file and its own open of it. Bytes the cluster does not take (``BEHIND_KEPT``: an
outage, no room yet) stay here and are tried again, with backoff, until it does, while
the client lives; an ``fsync``, ``fsyncdir``, rename or link that meets such an error
fails with it meanwhile. Anything else loses them, which the client reports (a WARNING,
and the next ``fsyncdir`` and ``fsync`` error).

READ PATH. A read clips to the file size as this client knows it (its own writes
included), waits for in-flight uploads that overlap it (the replicas would answer with
older bytes), asks ``fs.locate`` for the chunks (batched, cached), reads each chunk range
from a replica (``chunkio.py``: least loaded first, failover; ``Stale`` -> locate again,
with backoff, until the deadline), zero-fills holes and every byte past a chunk's valid
length (the table's, or further where this client wrote), then lays the extent, as it was
when the read began, over the result: read-your-writes within the client. A replica that
answers short of the table's length lost data: ``chunkio.py`` fails over from it, and
``Corrupt`` when all are short; such bytes are never zero-filled. A write to the
inode bumps its ``generation``, which retires every block a handle prefetched.
"""

from __future__ import annotations

import dataclasses
import logging
import stat
import time
from functools import partial
from typing import Any

import anyio

from dfs.client.chunkio import gather
from dfs.client.chunkwriter import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    HANDLE_MARGIN_MS,
    HANDLE_OUTDATED,
    REPLICA_FAILED,
    ChunkWriter,
    Pending,
    Upload,
    deadline_error,
    lost_replica,
)
from dfs.client.fileio import FileIo
from dfs.client.records import Attr, WriteHandle
from dfs.leader import RETRYABLE
from dfs.wire.errors import (
    DfsError,
    InternalError,
    Invalid,
    NoSpace,
    Stale,
)
from dfs.wire.limits import PERMISSION_BITS

log = logging.getLogger(__name__)

# A close(2) leaves at most this many buffered bytes for the release (CLOSE BEHIND): it
# is for small files, whose upload would otherwise be most of their time.
CLOSE_BEHIND_BYTES_MAX = 1 << 20
# Errors after which bytes a close left behind are kept for another attempt: an outage
# (no leader, no chunkserver answering) or no room yet. The caller was told they were
# written, so they wait for the cluster, as a local file system's writeback waits.
BEHIND_KEPT: tuple[type[DfsError], ...] = (*RETRYABLE, NoSpace)


def attr_stamp(attr: Attr) -> tuple[int, int, int]:
    """What tells this client that someone else changed the file."""
    return attr.size, attr.mtime_ns, attr.ctime_ns


class OpenInode:
    """This client's state for one inode while handles on it are open (see the module
    docstring). ``size`` is the file size as this client knows it."""

    def __init__(self, io: FileIo, attr: Attr) -> None:
        self.io = io
        self.ino = attr.ino
        self.size = attr.size
        self.refs = 0
        self.writers = 0  # handles open for writing (File counts itself in and out)
        self.finishing = False  # the client commits what the last close left (fsclient.py)
        self.generation = 0  # bumped by every write and truncate (retires read-ahead)
        self._lock = anyio.Lock()  # one write/flush/truncate at a time
        # One commit at a time: a commit takes lengths out of ``_uncommitted`` before its
        # answer, and a handle renewal must not overtake a commit still on its way.
        self._commit_lock = anyio.Lock()
        # The extent: bytes [start, start + len(buf)) of the file, growing up to ``cap``
        # bytes. It grows with the data rather than being allocated whole: a 4 KiB file
        # must not cost a zeroed 4 MiB buffer (and glibc grows large buffers by mremap).
        self._ext_buf: bytearray | None = None
        self._ext_start = 0
        self._ext_cap = 0
        self._uploads: list[Upload] = []
        self._upload_slots = anyio.Semaphore(io.options.uploads_in_flight_max)
        self._error: DfsError | None = None
        self._writers: dict[int, ChunkWriter] = {}
        self._uncommitted: dict[int, Pending] = {}  # chunk index -> what to commit
        self._written: dict[int, int] = {}  # chunk index -> valid length known here
        self._unsynced: set[int] = set()  # chunks written since their last sync
        self._uploaded_end = 0  # end of the furthest upload that landed
        # Where the first upload that failed (and whose error is not reported yet) began:
        # nothing past it written before the report counts (see _forget_unwritten).
        self._poison: int | None = None
        self._mtime_ns: int | None = None  # time of the last write not yet committed
        # Attribute changes that join the next commit (``set_attrs``): mode (permission
        # bits), uid, gid, atime_ns; and when the last of them was made.
        self._attrs: dict[str, int] = {}
        self._attrs_ctime_ns = 0
        self._attrs_timer = False  # a commit of them is scheduled (``_commit_attrs_later``)
        # (size, mtime, ctime) as this client last saw them from the metaserver.
        self._seen = attr_stamp(attr)
        # Whether the file had punched chunks when this client last saw its attributes
        # (so ``fallocate`` mode 0 asks the metaserver to count them again: allocate.py).
        self.punched = attr.punched_blocks > 0
        # (the directory lease, name) when this client created the file under its
        # directory's lease: commits that need no sync may go through its queue.
        self.created_under: tuple[Any, bytes] | None = None
        self._behind = False

    # ------------------------------------------------------------------ state

    @property
    def behind(self) -> bool:
        """Whether a close(2) returned leaving this inode's bytes for later (CLOSE
        BEHIND); cleared when a flush has landed them (``FileIo.behind_count`` counts
        such inodes)."""
        return self._behind

    @behind.setter
    def behind(self, value: bool) -> None:
        if value != self._behind:
            self._behind = value
            self.io.behind_count += 1 if value else -1

    def may_close_behind(self) -> bool:
        """What this inode lets a close(2) leave for later (CLOSE BEHIND; the client
        checks the lease and the cluster's room): created here under a lease, a small
        buffer, nothing in flight, no error to report, no close that must sync."""
        buf = self._ext_buf
        return (
            self.created_under is not None
            and not self.io.options.sync_on_close
            and self._error is None
            and not self._uploads
            and (buf is None or len(buf) <= CLOSE_BEHIND_BYTES_MAX)
        )

    @property
    def dirty(self) -> bool:
        """Whether this client holds changes the metaserver has not committed."""
        return bool(
            self._ext_buf is not None
            or self._uploads
            or self._uncommitted
            or self._unsynced
            or self._mtime_ns is not None
            or self._attrs
        )

    def writing(self) -> list[int]:
        """Chunk ids this client has uploads to, in flight or not yet committed: the
        keepalive names them, so that the leader's upkeep does not fence a busy writer by
        copying one of them (``fs.keepalive``, PROTOCOL.md)."""
        ids = {p.chunk_id for p in self._uncommitted.values()}
        for index, writer in self._writers.items():
            if writer.handle is not None and (writer.users or index in self._unsynced):
                ids.add(writer.handle.chunk_id)
        return sorted(ids)

    @property
    def unsaved(self) -> bool:
        """Whether this client holds written bytes the metaserver does not point at yet
        (buffered, in flight, landed but uncommitted), or attribute changes for the next
        commit. Unlike ``dirty``, not the time and size of writes whose data failed
        (reported, and gone), nor chunks only waiting for an fsync (a close owes none:
        ``unsynced_state`` keeps them for a later one)."""
        return bool(
            self._ext_buf is not None
            or self._uploads
            or self._uncommitted
            or (self._unsynced and self.io.options.sync_on_close)
            or self._attrs
        )

    def unsynced_state(self) -> tuple[tuple[int, int, int], set[int]] | None:
        """For the client to keep when this inode goes with its last close: the chunks
        written and not synced since, and the attributes that tell whether anyone changed
        the file after (``adopt_unsynced``). None when there are none."""
        if not self._unsynced:
            return None
        return self._seen, set(self._unsynced)

    def adopt_unsynced(self, stamp: tuple[int, int, int], indexes: set[int]) -> None:
        """Chunks an earlier open of this client wrote and did not sync: this open's fsync
        syncs them too, unless the file changed since (another client's handle or truncate
        synced or replaced them; syncing would then take a handle for nothing)."""
        if stamp == self._seen:
            self._unsynced.update(indexes)

    @property
    def mtime_ns(self) -> int | None:
        """The time of the last uncommitted write, if any."""
        return self._mtime_ns

    def saw(self, attr: Attr) -> None:
        """Attributes the metaserver returned for this client's own change."""
        self._seen = attr_stamp(attr)
        self.punched = attr.punched_blocks > 0

    def overlay(self, attr: Attr) -> Attr:
        """``attr`` (from the metaserver) as this client has changed it since: size and
        mtime of uncommitted writes, attribute changes waiting for the next commit."""
        changes: dict[str, Any] = {"size": self.size}
        if self._mtime_ns is not None:
            changes["mtime_ns"] = self._mtime_ns
        pending = self._attrs
        if pending:
            if "mode" in pending:
                changes["mode"] = stat.S_IFMT(attr.mode) | pending["mode"]
            for name in ("uid", "gid", "atime_ns"):
                if name in pending:
                    changes[name] = pending[name]
            changes["ctime_ns"] = max(attr.ctime_ns, self._attrs_ctime_ns)
        return dataclasses.replace(attr, **changes)

    def set_attrs(
        self,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        """Change attributes with the next commit rather than by a ``setattr`` of their
        own (the caller has a handle open for writing, whose close commits). An mtime
        set here stands until a later write moves it, as on a local file system. So that
        other clients see the change soon even while the file stays open, and a crash
        loses it only briefly, a commit follows within ``attr_ttl_s`` at the latest."""
        for name, value in (("mode", mode), ("uid", uid), ("gid", gid), ("atime_ns", atime_ns)):
            if value is not None:
                self._attrs[name] = value & PERMISSION_BITS if name == "mode" else value
        if mtime_ns is not None:
            self._mtime_ns = mtime_ns
        self._attrs_ctime_ns = time.time_ns()
        if not self._attrs_timer:
            self._attrs_timer = True
            self.io.task_group.start_soon(self._commit_attrs_later, name=f"attrs ino {self.ino}")

    async def _commit_attrs_later(self) -> None:
        """Commit attribute changes still waiting after ``attr_ttl_s`` (the handle stayed
        open). A failure is kept for the next ``write``/``fsync``/``close`` to report."""
        try:
            await anyio.sleep(self.io.options.attr_ttl_s)
            async with self._lock:
                if not self._attrs:
                    return
                try:
                    # As a close would (synced only under sync_on_close).
                    await self._flush_locked(sync=self.io.options.sync_on_close)
                except DfsError as e:
                    if self._error is None:
                        self._error = e
                except Exception:
                    log.exception("ino %d: commit of attributes failed", self.ino)
                    if self._error is None:
                        self._error = InternalError("commit of attributes failed")
        finally:
            self._attrs_timer = False

    def adopt_handle(self, handle: WriteHandle) -> None:
        """A write handle that came with the file's creation (``fs.create`` with
        ``first_chunk``): the first write to its chunk needs no ``fs.write_handle``."""
        writer = self._writers.setdefault(handle.index, ChunkWriter())
        if writer.handle is None:
            writer.handle = handle
            self.io.locations.drop(self.ino, handle.index)
            self._written[handle.index] = max(self._written.get(handle.index, 0), handle.length)

    def refresh(self, attr: Attr) -> None:
        """Attributes fresh from the metaserver (open's revalidation): adopt its size unless
        this client has uncommitted changes, which are newer. If they show another client's
        change, forget the write handles: it may have taken newer ones, or cut the chunks."""
        self.punched = attr.punched_blocks > 0
        if attr_stamp(attr) != self._seen:
            self._seen = attr_stamp(attr)
            self._drop_handles()
        if not self.dirty:
            # Everything this client wrote is committed: the chunk table is the truth now
            # (another client may have cut chunks since).
            self._written.clear()
            if attr.size != self.size:
                self.size = attr.size
                self.generation += 1

    def _drop_handles(self) -> None:
        """The next write or sync of every chunk takes a fresh handle. (The writers stay:
        their ``idle`` still tells when the uploads under the old handles are done.)"""
        for writer in self._writers.values():
            writer.handle = None

    def _raise_error(self, *, clear: bool) -> None:
        error = self._error
        if error is not None:
            if clear:
                self._error = None
            raise error

    # ------------------------------------------------------------------ writing

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        immutable = isinstance(data, bytes)
        n = view.nbytes
        if offset < 0:
            raise Invalid("negative offset")
        async with self._lock:
            self._raise_error(clear=False)
            if n == 0:
                return 0
            chunk_size = self.io.chunk_size
            pos = 0
            while pos < n:
                at = offset + pos
                chunk_end = (at // chunk_size + 1) * chunk_size
                take = min(n - pos, chunk_end - at)
                await self._buffer(at, view[pos : pos + take], immutable, chunk_end)
                pos += take
            self.size = max(self.size, offset + n)
            self.generation += 1
            self._mtime_ns = time.time_ns()
        return n

    async def append(self, data: bytes | bytearray | memoryview) -> int:
        """O_APPEND: write at the end of the file as this client knows it."""
        return await self.write(self.size, data)

    async def _buffer(self, at: int, piece: memoryview, immutable: bool, chunk_end: int) -> None:
        """Put ``piece`` (inside one chunk, ending at or before ``chunk_end``) at ``at``."""
        buf = self._ext_buf
        if buf is not None:
            start = self._ext_start
            if start <= at <= start + len(buf) and at < start + self._ext_cap:
                # Continues or overwrites the extent: copy what fits (a slice assignment
                # that runs past the end extends the buffer).
                take = min(len(piece), start + self._ext_cap - at)
                buf[at - start : at - start + take] = piece[:take]
                if len(buf) == self._ext_cap:
                    await self._flush_extent()
                piece = piece[take:]
                at += take
                if not piece:
                    return
            else:
                await self._flush_extent()
        limit = self.io.options.write_buffer_bytes
        while piece:
            capacity = min(limit, chunk_end - at)
            if len(piece) >= capacity:
                # A whole buffer's worth: upload it as it is (immutable) or from one copy.
                data = piece[:capacity] if immutable else memoryview(bytearray(piece[:capacity]))
                await self._start_upload(at, data)
                piece = piece[capacity:]
                at += capacity
                continue
            self._ext_buf, self._ext_start, self._ext_cap = bytearray(piece), at, capacity
            return

    async def _flush_extent(self) -> None:
        buf = self._ext_buf
        if buf is None:
            return
        start = self._ext_start
        await self._reserve_upload(start, start + len(buf))
        # No await from here on: the extent leaves the buffer only as its upload starts, so
        # a cancelled write (an interrupted FUSE request) never loses buffered data.
        self._ext_buf = None
        self._spawn_upload(start, memoryview(buf))

    async def _start_upload(self, start: int, data: memoryview) -> None:
        await self._reserve_upload(start, start + data.nbytes)
        self._spawn_upload(start, data)

    async def _reserve_upload(self, start: int, end: int) -> None:
        """Wait until no upload overlapping [start, end) is in flight and take a slot."""
        while True:
            # Overlapping uploads land in the order they started.
            for upload in self._uploads:
                if upload.start < end and start < upload.end:
                    await upload.done.wait()
                    break
            else:
                await self._upload_slots.acquire()
                if any(u.start < end and start < u.end for u in self._uploads):
                    self._upload_slots.release()
                    continue
                return

    def _spawn_upload(self, start: int, data: memoryview) -> None:
        """Start an upload in the background (a slot is already taken)."""
        end = start + data.nbytes
        upload = Upload(start, end)
        self._uploads.append(upload)
        self.io.task_group.start_soon(self._run_upload, upload, data, name=f"upload ino {self.ino}")

    async def _run_upload(self, upload: Upload, data: memoryview) -> None:
        try:
            await self._write_range(upload.start, data, sync=False)
        except DfsError as e:
            log.debug(
                "ino %d: upload of [%d, %d) failed: %s", self.ino, upload.start, upload.end, e
            )
            if self._error is None:
                self._error = e
            self._forget_unwritten(upload)
        except Exception:
            log.exception("ino %d: upload failed", self.ino)
            if self._error is None:
                self._error = InternalError("upload failed")
        finally:
            self._uploads.remove(upload)
            self._upload_slots.release()
            upload.done.set()

    def _forget_unwritten(self, failed: Upload) -> None:
        """An upload failed for good: its bytes are lost, and the writer is told (EIO at
        the next write, fsync or close, as Linux reports a writeback error). The size must
        no longer cover them: a later commit of it would point the file at bytes no replica
        has, and the file would read zeros where the writer's data was. So the size goes
        back to the furthest of what is committed, landed, still buffered or in flight."""
        poison = failed.start if self._poison is None else min(self._poison, failed.start)
        self._poison = poison
        chunk_size = self.io.chunk_size
        # Written after the failed bytes and not uploaded yet: lost with them, or the file
        # would get a hole (zeros) where the failed bytes were.
        if self._ext_buf is not None and self._ext_start + len(self._ext_buf) > poison:
            if self._ext_start >= poison:
                self._ext_buf = None
            else:
                del self._ext_buf[poison - self._ext_start :]
        for index, pending in self._uncommitted.items():
            pending.length = min(pending.length, max(poison - index * chunk_size, 0))
        self._uploaded_end = min(self._uploaded_end, max(poison, self._seen[0]))
        held = [self._seen[0], self._uploaded_end]
        held += [index * chunk_size + p.length for index, p in self._uncommitted.items()]
        held += [min(u.end, poison) for u in self._uploads if u is not failed]
        if self._ext_buf is not None:
            held.append(self._ext_start + len(self._ext_buf))
        size = max(held)
        if size < self.size:
            log.info("ino %d: size back from %d to %d after a failed upload",
                     self.ino, self.size, size)  # fmt: skip
            self.size = size
            self.generation += 1

    async def _wait_uploads(self, start: int = 0, end: int | None = None) -> None:
        """Until no upload overlapping [start, end) (default: any) is in flight."""
        while True:
            for upload in self._uploads:
                if end is None or (upload.start < end and start < upload.end):
                    await upload.done.wait()
                    break
            else:
                return

    async def _write_range(
        self, start: int, data: memoryview, *, sync: bool, fan_out: bool = True
    ) -> None:
        """Write ``data`` (inside one chunk) at file offset ``start``, retrying until the
        deadline; record what landed. ``fan_out``: as ``ChunkIo.write``."""
        io = self.io
        index, offset = divmod(start, io.chunk_size)
        end_in_chunk = offset + data.nbytes
        deadline = anyio.current_time() + io.options.timeout_s
        backoff_s = BACKOFF_MIN_S
        last: DfsError | None = None
        while True:
            writer = self._writers.setdefault(index, ChunkWriter())
            handle = await self._handle(index, writer, deadline, last)
            writer.enter()
            try:
                await io.chunks.write(
                    handle,
                    offset,
                    data,
                    sync=sync,
                    expect_length=writer.expect_length(handle),
                    fan_out=fan_out,
                )
            except HANDLE_OUTDATED as e:
                last, pause = e, False
            except REPLICA_FAILED as e:
                # The chain is broken somewhere: the next handle reports the replica that
                # failed, and the leader bumps the version without it (design.md §5.3);
                # re-replication restores the goal later.
                last, pause = e, True
                self._note_lost(writer, handle, e)
            except NoSpace as e:
                # A full chunkserver (its heartbeat had not told the leader yet): the rest
                # of the chain goes on without it. With no other replica left, ENOSPC.
                if len(handle.chain) == 1:
                    raise
                last, pause = e, False
                self._note_lost(writer, handle, e)
            else:
                writer.acked(handle, end_in_chunk)
                landed_end = start + data.nbytes
                if self._poison is not None and landed_end > self._poison:
                    # Written before an earlier upload failed, and past it: lost with it
                    # (see _forget_unwritten), so not counted, whatever the replicas hold.
                    landed_end = max(self._poison, start)
                    end_in_chunk = landed_end - index * io.chunk_size
                if landed_end > start or data.nbytes == 0:
                    self._pending(index, end_in_chunk, handle.chunk_id, handle.version)
                    self._written[index] = max(self._written.get(index, 0), end_in_chunk)
                    self._uploaded_end = max(self._uploaded_end, landed_end)
                writer.written_version = max(writer.written_version, handle.version)
                if not sync:
                    self._unsynced.add(index)
                return
            finally:
                writer.leave()
            if writer.handle is handle:
                writer.handle = None
            log.debug("ino %d chunk %d: write failed (%s); new handle", self.ino, index, last)
            if anyio.current_time() >= deadline:
                raise deadline_error(f"write to ino {self.ino} chunk {index}", last)
            if pause:
                await anyio.sleep(min(backoff_s, max(0.0, deadline - anyio.current_time())))
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    def _note_lost(self, writer: ChunkWriter, handle: WriteHandle, e: DfsError) -> None:
        cs_id = lost_replica(handle, e)
        if cs_id is not None and len(handle.chain) > 1:
            log.info("ino %d chunk %d: replica on chunkserver %d failed (%s); dropping it",
                     self.ino, handle.index, cs_id, e)  # fmt: skip
            writer.failed.add(cs_id)

    def _pending(self, index: int, length: int, chunk_id: int, version: int) -> None:
        """Record ``length`` bytes of chunk ``index`` to commit, written under (chunk_id,
        version). A renewal commits before it takes a new handle, so one chunk's pending
        bytes normally share one handle; if they did not, the first handle is kept, so
        that the commit fails rather than hides bytes the newer handle's cut removed."""
        pending = self._uncommitted.get(index)
        if pending is None:
            self._uncommitted[index] = Pending(length, chunk_id, version)
        else:
            pending.length = max(pending.length, length)

    async def _handle(
        self, index: int, writer: ChunkWriter, deadline: float, last: DfsError | None
    ) -> WriteHandle:
        """The chunk's write handle, asking for a new one when there is none or it nears
        expiry (see NEW HANDLES AND CHUNK LENGTHS above)."""
        handle = writer.handle
        if handle is not None and handle.expiry_ms - HANDLE_MARGIN_MS > _now_ms():
            return handle
        async with writer.lock:
            handle = writer.handle
            if handle is not None and handle.expiry_ms - HANDLE_MARGIN_MS > _now_ms():
                return handle
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise deadline_error(f"write handle for ino {self.ino} chunk {index}", last)
            await writer.idle.wait()
            async with self._commit_lock:
                if index in self._uncommitted:
                    await self._commit_locked(self._uploaded_end, mtime_ns=time.time_ns())
            drop = {"drop": sorted(writer.failed)} if writer.failed else {}
            header = await self.io.meta.mutate(
                "fs.write_handle", timeout_s=remaining, ino=self.ino, index=index, **drop
            )
            handle = WriteHandle.from_wire(index, header)
            writer.handle = handle
            writer.failed.clear()
            # The chunk's version changed: cached read locations are stale.
            self.io.locations.drop(self.ino, index)
            self._written[index] = max(self._written.get(index, 0), handle.length)
            return handle

    async def _sync_chunk(self, index: int) -> None:
        """fsync the chunk on every replica of its chain.

        A replica syncs only at its own version. If the handle was renewed since our last
        write (its token neared expiry, say), the replicas are still at the old version:
        then an empty ``chunk.write`` with ``sync`` under the new handle moves them to it
        (cutting them to the table's length, which ``_handle`` made cover our writes) and
        fsyncs them, in one call."""
        io = self.io
        deadline = anyio.current_time() + io.options.timeout_s
        backoff_s = BACKOFF_MIN_S
        last: DfsError | None = None
        while True:
            writer = self._writers.setdefault(index, ChunkWriter())
            handle = await self._handle(index, writer, deadline, last)
            try:
                expect_length = writer.expect_length(handle)
                if handle.version == writer.written_version:
                    await io.chunks.sync(handle, expect_length=expect_length)
                else:
                    writer.enter()
                    try:
                        await io.chunks.write(
                            handle, handle.length, b"", sync=True, expect_length=expect_length
                        )
                    finally:
                        writer.leave()
                    writer.written_version = max(writer.written_version, handle.version)
                return
            except HANDLE_OUTDATED as e:
                last, pause = e, False
            except REPLICA_FAILED as e:
                last, pause = e, True
                self._note_lost(writer, handle, e)
            if writer.handle is handle:
                writer.handle = None
            if anyio.current_time() >= deadline:
                raise deadline_error(f"sync of ino {self.ino} chunk {index}", last)
            if pause:
                await anyio.sleep(min(backoff_s, max(0.0, deadline - anyio.current_time())))
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _commit(
        self,
        size: int,
        *,
        mtime_ns: int | None,
        attrs: dict[str, int] | None = None,
        defer: bool = False,
    ) -> Attr:
        """``fs.commit`` what has landed: chunk lengths, ``size``, ``mtime_ns`` (None:
        unchanged) and the attribute changes ``attrs``. ``defer``: through the directory
        lease's queue if the file was created under it (``created_under``)."""
        async with self._commit_lock:
            return await self._commit_locked(size, mtime_ns=mtime_ns, attrs=attrs, defer=defer)

    async def _commit_locked(
        self,
        size: int,
        *,
        mtime_ns: int | None,
        attrs: dict[str, int] | None = None,
        defer: bool = False,
    ) -> Attr:
        chunks = sorted(self._uncommitted.items())
        fields: dict[str, Any] = dict(attrs or {})
        if mtime_ns is not None:
            fields["mtime_ns"] = mtime_ns
        fields.update(
            ino=self.ino, size=size, chunks=[pending.entry(index) for index, pending in chunks]
        )
        if defer and self.created_under is not None and self.io.defer_commit is not None:
            queued = self.io.defer_commit(self.created_under, self.ino, fields)
            if queued is not None:
                self._uncommitted = {}
                for index, _ in chunks:
                    self.io.locations.drop(self.ino, index)
                self.saw(queued)
                return queued
        self._uncommitted = {}
        try:
            header = await self.io.meta.mutate("fs.commit", **fields)
        except Stale as e:
            # Not retried under a new handle: the bytes it describes may be gone.
            await self._lost(chunks, e)
            raise
        except BaseException:
            for index, pending in chunks:
                later = self._uncommitted.get(index)
                if later is not None:
                    pending.length = max(pending.length, later.length)
                self._uncommitted[index] = pending
            raise
        attr = Attr.from_wire(header.get("attr"))
        # Cached locations of these chunks carry their lengths from before the commit.
        for index, _ in chunks:
            self.io.locations.drop(self.ino, index)
        self.saw(attr)
        self.io.on_attr(attr)
        return attr

    async def _lost(self, chunks: list[tuple[int, Pending]], error: Stale) -> None:
        """``fs.commit`` answered ``Stale``: what ``chunks`` describe may have been cut by
        another client's handle or truncate. Forget it (the caller reports the error), the
        write handles and cached locations, and what we knew of chunk lengths; take the
        size from the metaserver, keeping what is still buffered or in flight."""
        log.info(
            "ino %d: commit of chunks %s refused (%s): their unsynced data may be lost",
            self.ino,
            [index for index, _ in chunks],
            error,
        )
        self._drop_handles()
        self.io.locations.drop(self.ino)
        self._written.clear()
        self._unsynced.difference_update(index for index, _ in chunks)
        self.generation += 1
        chunk_size = self.io.chunk_size
        held = [index * chunk_size + p.length for index, p in self._uncommitted.items()]
        held += [u.end for u in self._uploads]
        if self._ext_buf is not None:
            held.append(self._ext_start + len(self._ext_buf))
        try:
            header = await self.io.meta.read("fs.getattr", ino=self.ino)
            attr = Attr.from_wire(header.get("attr"))
        except DfsError as e:
            log.info("ino %d: size after a refused commit unknown (%s)", self.ino, e)
            committed = self._seen[0]
        else:
            self._seen = attr_stamp(attr)
            self.io.on_attr(attr)
            committed = attr.size
        self.size = max([committed, *held])
        self._uploaded_end = min(self._uploaded_end, self.size)
        if not held and not self._unsynced:
            self._mtime_ns = None

    async def flush(self, *, sync: bool = True) -> Attr | None:
        """Upload everything, make it durable (``sync``), commit size/mtime/lengths.
        Raises (and forgets) the first error of a background upload. Returns the committed
        attributes, or None when there was nothing to commit."""
        async with self._lock:
            return await self._flush_locked(sync=sync)

    async def _flush_locked(self, *, sync: bool) -> Attr | None:
        await self._wait_uploads()
        if self._error is not None:
            self._poison = None  # every upload from before the failure has ended
            self._raise_error(clear=True)
        buf, start, cap = self._ext_buf, self._ext_start, self._ext_cap
        if buf is not None:
            # Every earlier write has landed, so a synced write fsyncs its whole chunk. It
            # is an upload like the others (readers wait for it), written here inline.
            self._ext_buf = None
            upload = Upload(start, start + len(buf))
            self._uploads.append(upload)
            try:
                # Bytes a close left behind go along the chain (ChunkIo.write), unless an
                # fsync waits for them.
                fan_out = sync or not self.behind
                await self._write_range(start, memoryview(buf), sync=sync, fan_out=fan_out)
            except BaseException as e:
                # Cancelled, or bytes a close left behind that the cluster did not take
                # (BEHIND_KEPT; the client tries again: CLOSE BEHIND): the data is kept for
                # the next flush. Otherwise the write failed until its deadline: reported
                # now, as Linux does.
                keep = not isinstance(e, DfsError) or (self.behind and isinstance(e, BEHIND_KEPT))
                if keep and self._ext_buf is None:
                    # A copy: the abandoned call may still hold a view of ``buf``.
                    self._ext_buf, self._ext_start, self._ext_cap = bytearray(buf), start, cap
                elif not keep:
                    self._forget_unwritten(upload)
                raise
            finally:
                self._uploads.remove(upload)
                upload.done.set()
            if sync:
                self._unsynced.discard(start // self.io.chunk_size)
        if sync and self._unsynced:
            indexes = sorted(self._unsynced)
            await gather([partial(self._sync_chunk, i) for i in indexes])
            self._unsynced.difference_update(indexes)
        if not self._uncommitted and self._mtime_ns is None and not self._attrs:
            self.behind = False
            return None
        mtime_ns = self._mtime_ns
        if mtime_ns is None and self._uncommitted:
            mtime_ns = time.time_ns()
        attrs = dict(self._attrs)
        attr = await self._commit(self.size, mtime_ns=mtime_ns, attrs=attrs, defer=not sync)
        if self._mtime_ns == mtime_ns:
            self._mtime_ns = None
        for name, value in attrs.items():
            if self._attrs.get(name) == value:
                del self._attrs[name]
        # Nothing is in flight (we hold the lock and waited): all we wrote is in the
        # table, whose lengths a fresh locate returns.
        self._written.clear()
        self.behind = False
        return attr

    async def settle(self) -> None:
        """What the last handle's close could not do (its flush failed or was cancelled):
        wait for the uploads, then upload and commit what is left, as that close would
        have (synced only under ``sync_on_close``). An upload error kept for a ``close``
        that is gone is dropped here (logged), not raised."""
        async with self._lock:
            await self._wait_uploads()
            if self._error is not None:
                log.info("ino %d: upload error after the last close: %s", self.ino, self._error)
                self._error = None
                self._poison = None
            await self._flush_locked(sync=self.io.options.sync_on_close)

    async def truncate(self, size: int, **fields: Any) -> Attr:
        """``fs.setattr(size=...)`` (with any other setattr ``fields``) after everything
        written before has been committed; then forget handles and locations of the chunks
        the server cut or dropped."""
        if size < 0:
            raise Invalid("negative size")
        async with self._lock:
            await self._flush_locked(sync=True)
            header = await self.io.meta.mutate("fs.setattr", ino=self.ino, size=size, **fields)
            attr = Attr.from_wire(header.get("attr"))
            self.size = size
            self._uploaded_end = min(self._uploaded_end, size)
            self._changed(attr, size // self.io.chunk_size, None)  # from the chunk cut
            return attr

    async def punch(self, offset: int, length: int, *, zero: bool = False) -> tuple[int, int]:
        """``fs.punch`` (metaserver/namespace/holes.py) after everything written before has
        been committed, so that no upload of ours lands in a chunk it drops (nor recreates
        one after it); then forget handles and locations of the dropped chunks. Returns
        the span ``(first, stop)`` of chunk indexes dropped; the caller zeros the rest.
        ``zero`` (``ZERO_RANGE``): the range counts as allocated afterwards."""
        async with self._lock:
            await self._flush_locked(sync=True)
            header = await self.io.meta.mutate(
                "fs.punch",
                ino=self.ino,
                offset=offset,
                length=length,
                **({"zero": True} if zero else {}),
            )
            first, stop = int(header["first"]), int(header["stop"])
            self._changed(Attr.from_wire(header.get("attr")), first, stop)
            return first, stop

    async def allocate(self, offset: int, length: int) -> None:
        """``fs.allocate`` (metaserver/namespace/holes.py): the punched chunks the range
        touches count in the file's blocks again. Nothing of the data changes, so nothing
        written before need be committed first."""
        header = await self.io.meta.mutate(
            "fs.allocate", ino=self.ino, offset=offset, length=length
        )
        attr = Attr.from_wire(header.get("attr"))
        self.saw(attr)
        self.io.on_attr(attr)

    def _changed(self, attr: Attr, first: int, stop: int | None) -> None:
        """The metaserver cut or dropped chunks ``[first, stop)`` (``stop`` None: to the
        end): their write handles, lengths written and locations are out of date."""
        self.saw(attr)
        for table in (self._writers, self._written):
            for index in [i for i in table if i >= first and (stop is None or i < stop)]:
                del table[index]
        self.io.locations.drop(self.ino)
        self.generation += 1
        self.io.on_attr(attr)

    # ------------------------------------------------------------------ reading

    async def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file (``end`` within the size as known here)."""
        if end <= start:
            return b""
        # The extent as it is now: while we fetch, another task's write may push it out
        # as an upload, which may land after our fetch read the replicas.
        buf, at = self._ext_buf, self._ext_start
        length = len(buf) if buf is not None else 0
        if buf is not None and at <= start and end <= at + length:
            return bytes(memoryview(buf)[start - at : end - at])
        await self._wait_uploads(start, end)
        data = await self._fetch(start, end)
        if buf is None:
            return data
        a, b = max(start, at), min(end, at + length)
        if a >= b:
            return data
        view = memoryview(data)
        return b"".join((view[: a - start], memoryview(buf)[a - at : b - at], view[b - start :]))

    async def _fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end) from the chunkservers, holes and junk zero-filled."""
        # Taken before locating: a commit that lands meanwhile clears ``_written`` after the
        # table has the lengths, and the answer may predate the commit.
        return await self.io.fetch(self.ino, start, end, dict(self._written))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


__all__ = ["OpenInode", "attr_stamp"]
