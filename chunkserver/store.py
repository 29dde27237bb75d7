"""Chunk replicas on local disk: one file per replica, versions, per-block checksums.

What it owns: the files under ``<data_dir>/chunks/``, ``quarantine/`` and ``tmp/``, the
in-memory table of replicas (id, version, length) rebuilt by a header-only scan at start,
the bad replicas found since, the capacity accounting, and the mapping of disk errors onto
``dfs.wire.errors``.

What it must not do: know the network, tokens or the chain (``server.py`` does), or run on
the event loop. Every method here blocks on the disk; ``disk.py`` runs them in a bounded
thread pool and serialises the operations on one chunk (readers share, a writer is alone).
This class keeps its *global* state (the replica table, ``used_bytes``) consistent under a
mutex, but it relies on its caller for the per-chunk exclusion.

Rules, and where they are checked:
1. A path is built only from the integer chunk id (``chunk_path``), never from a string a
   peer sent. Names found on disk are parsed back to integers before use.
2. Bytes are returned only after every 64 KiB block they come from matched its xxh3_64
   checksum (``read``). A mismatch, or a block missing from a short file, is ``Corrupt``,
   returns nothing and makes the replica bad (rule 6). A write that keeps part of an old block verifies that part first
   (``blocks.write_blocks``, ``blocks.truncate``), so a bad block is never re-checksummed into a good one.
3. Versions (docs/PROTOCOL.md, ``chunk.write``): a write for a version older than the
   replica's is ``Stale``; a write for a newer version first truncates the replica to the
   handle's ``length`` (bytes past it are junk left by a truncate), then records the version;
   a read of any version but the replica's is ``Stale``.
4. Nothing is fsynced unless asked (``sync``, or ``write(..., sync=True)``), or by a write
   that bumps the version (rule 3: the table already counts the bytes below the handle's
   length, and a cut must not be left half done): a synced replica survives a crash
   exactly, including its name (the directory is fsynced after a create).
5. A disk error never crashes the server. ENOSPC/EDQUOT is ``NoSpace``: a write to an
   existing replica first preallocates the file range it is about to fill
   (``_preallocate``), so a full disk is found before a byte of the replica changes, and
   the replica stays as it was (or as its bump's cut left it, rule 7), not bad; a write
   that creates the replica unlinks its new file on any failure instead. A process out of
   descriptors or memory (EMFILE, ENFILE, ENOMEM) is ``Unavailable`` and says nothing of
   the replica. Any other ``OSError`` on a replica's file (EIO above all) makes the
   replica bad (rule 6) and is ``Corrupt`` to a read, ``Unavailable`` to a write or sync;
   each is logged once with its reason.
6. A bad replica is never served again. A replica is bad when a block fails its checksum or
   is missing from a short file (rule 2), when a disk error hits its file (rule 5), when its
   fdatasync failed (Linux may mark the unwritten pages clean after a failed fsync, so the
   page cache could hand back bytes the disk never got: PostgreSQL's "fsyncgate"), or when
   its cut (a version bump to a shorter ``length``) failed before its header and the replica
   table said so (its file no longer matches any description we have). ``_mark_bad`` takes
   it out of the replica table (not listed, not counted as used), moves its file to
   ``quarantine/``, remembers (id, version) for the metaserver (``bad_pending``,
   ``on_bad``), and from then on reads of that id are ``Corrupt``, writes and syncs
   ``Unavailable``, until ``delete`` removes it or ``install_incoming`` puts a good copy in
   its place. After a restart the quarantined file is only a file to delete (the id reads
   as absent, ``NotFound``).
7. The replica table always describes the file: a bump that cut the file records the new
   version and the cut length (header and table) before the data is written, so a data
   write that fails afterwards on a full disk leaves a replica at the new version holding
   exactly the handle's ``length`` bytes, as a zero-length bump write would.
8. A writer's expectation (docs/PROTOCOL.md, ``expect_length``): the highest end the writer
   saw acknowledged under this version. A replica shorter than that lost acknowledged bytes
   (a crash before they were synced): a write past its end (the gap would read as zeros
   where data was), a ``sync`` write that would leave it short, and a ``sync`` are ``Stale``.
9. A copied-in replica (``chunk.replicate``) is built whole in ``tmp/`` and fsynced before
   ``install_incoming`` renames it over the chunk's path: a crash or a failed copy never
   leaves a part-copy where a replica is looked for, and an older replica it replaces stays
   readable until the rename. ``tmp/`` is emptied at start. (``copies.py``, mixed in.)
10. ``delete(chunk_id, version)`` removes a replica only at that version or older: a
   metaserver that judged version v stale never deletes a v+1 written since. Bad and
   quarantined copies of the id go too, whatever their version.

The on-disk format (version 1) has its one canonical definition in ``dfs/wire/replicafile.py``
(the chunkserver writes it; a client on the same machine reads it: SHORT-CIRCUIT READS).

Crash model: SQLite's (style.md §4), through ``tools.testing.faultydisk.CrashDisk`` in
``tests/unit/test_chunk_store.py``. That model covers appends past the synced bytes; a
replica's header and table are rewritten in place by every write that changes them, which it
treats as "never synced" (any fate for the whole file). What the tests check is what holds
under both: a replica untouched since its last sync reads back exactly, and after unsynced
writes a read returns either the bytes that were written or ``Corrupt`` (or the file is
quarantined), never other bytes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chunkserver import blocks
from chunkserver.copies import IncomingCopies
from chunkserver.fdcache import FDS_MAX, FdCache, OpenFile
from chunkserver.pagecache import PageCachePolicy
from chunkserver.rawio import (
    drop_cached,
    pread_direct,
    pwrite_all,
)
from chunkserver.replicas import DIR_MODE, FILE_MODE, BadReplica, Replica, check_ids
from dfs.rawio import pread_into
from dfs.wire.errors import (
    Corrupt,
    DfsError,
    Invalid,
    NoSpace,
    NotFound,
    Stale,
    TooBig,
    Unavailable,
)
from dfs.wire.limits import READ_BYTES_MAX
from dfs.wire.replicafile import (
    BLOCK_BYTES,
    CHUNK_BYTES_MAX,
    DATA_OFFSET,
    FILE_RE,
    HEADER_BYTES,
    LOST_BLOCK_SUM,
    QUARANTINE_RE,
    SUBDIR_RE,
    SUM,
    SUM_BYTES,
    TABLE_OFFSET,
    BadHeader,
    ReplicaInfo,
    chunk_relpath,
    decode_header,
    encode_header,
    first_bad_block,
    footprint_bytes,
)

log = logging.getLogger(__name__)


# A new replica's check of the file system's free space (``_disk_free_for``) reuses a
# statfs this recent while it leaves this much room.
STATFS_TTL_S = 1.0
STATFS_MARGIN_BYTES = 1024 * 1024 * 1024
# Errors that say the process is short of a resource, not that a replica's file is bad:
# they fail the request (Unavailable) and leave the replica as it is (rule 5).
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_NOSPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class WouldBlock(Exception):
    """A ``cached_only`` read needs the disk (nothing was changed: read again, waiting);
    ``unsupported``: it always will here (the file system cannot read without waiting)."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


# ---------------------------------------------------------------------- the store


class ChunkStore(IncomingCopies, PageCachePolicy):
    """The replicas under ``root`` (the chunkserver's data directory). Blocking; see above.

    ``capacity_bytes`` 0 means the file system's size. ``chunk_bytes_max`` (at most
    ``CHUNK_BYTES_MAX``) bounds ``offset + size`` of every write. ``fsync`` False makes
    ``sync`` a no-op (tests only). ``log_prefix`` starts every log line (the server puts
    its id there once it has one). ``on_bad(chunk_id, version)`` is called (in the thread
    that found it) each time a replica turns bad. ``inject_eio_chunk_ids`` is a test hook:
    every read and every data write of a replica of those ids fails as if the disk answered
    EIO (the server sets it from its config; see ``_inject_eio``).
    """

    def __init__(
        self,
        root: Path,
        *,
        capacity_bytes: int = 0,
        chunk_bytes_max: int = CHUNK_BYTES_MAX,
        fsync: bool = True,
        log_prefix: str = "chunkserver",
        fds_max: int = FDS_MAX,
    ) -> None:
        assert 0 < chunk_bytes_max <= CHUNK_BYTES_MAX and capacity_bytes >= 0
        self.root = Path(root)
        self.chunks_dir = self.root / "chunks"
        self.quarantine_dir = self.root / "quarantine"
        self.tmp_dir = self.root / "tmp"
        self.chunk_bytes_max = chunk_bytes_max
        self.fsync = fsync
        self.log_prefix = log_prefix
        self.on_bad: Callable[[int, int], None] | None = None
        self.inject_eio_chunk_ids: frozenset[int] = frozenset()
        self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(self.root, DIR_MODE)  # a directory made by an older version was 0755
        self.chunks_dir.mkdir(exist_ok=True, mode=DIR_MODE)
        if capacity_bytes == 0:
            st = os.statvfs(self.chunks_dir)
            capacity_bytes = st.f_blocks * st.f_frsize
        self.capacity_bytes = capacity_bytes
        # Guards the replica table, used_bytes, the bad and quarantined tables and
        # _subdirs_unsynced; per-chunk state is the caller's to serialise (disk.py).
        self._mutex = threading.Lock()
        self._replicas: dict[int, Replica] = {}
        self._used_bytes = 0
        # Replicas found bad in this run (rule 6), and every file in quarantine/ by id.
        self._bad: dict[int, BadReplica] = {}
        self._quarantined: dict[int, list[Path]] = {}
        # Sub-directories created since the chunks directory was last fsynced.
        self._subdirs_unsynced: set[int] = set()
        # Open replica files, kept between operations (``fdcache.py``); every change of
        # what a replica's path names goes through ``forget``.
        self._fds = FdCache(fds_max)
        self._direct_reads = True  # cleared if the file system refuses O_DIRECT
        # The last statfs for new replicas: (free bytes, when, bytes reserved since).
        self._statfs: tuple[int | None, float, int] = (None, 0.0, 0)
        self.direct_writes = True  # DIRECT WRITES (config: direct_writes; cleared as above)
        self.drop_behind = True  # DROP-BEHIND of big unsynced writes (config: drop_behind)
        self.quarantined = 0  # files quarantined by this store (at start or found bad)
        self.bad_found = 0  # replicas found bad since start
        self._clear_tmp()
        self._scan_quarantine()
        self._scan()

    def close(self) -> None:
        """Close the replica files kept open (the store is not used after this)."""
        self._fds.clear()

    # ------------------------------------------------------------------ queries

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    @property
    def chunk_count(self) -> int:
        return len(self._replicas)

    def info(self, chunk_id: int) -> ReplicaInfo | None:
        replica = self._replicas.get(chunk_id)
        return None if replica is None else replica.info()

    def is_bad(self, chunk_id: int) -> bool:
        """True while a replica of this id found bad in this run waits to be deleted."""
        return chunk_id in self._bad and chunk_id not in self._replicas

    def list_chunks(self) -> list[ReplicaInfo]:
        """Every replica (id, version, length), in id order: the block report. Bad replicas
        are not replicas any more (rule 6) and are not listed."""
        with self._mutex:
            replicas = list(self._replicas.values())
        return sorted((r.info() for r in replicas), key=lambda r: r.chunk_id)

    def path(self, chunk_id: int) -> Path:
        return self.root / chunk_relpath(chunk_id)

    def fs_free_bytes(self) -> int | None:
        """Room left on the file system for us (statvfs ``f_bavail``); None if unknown."""
        try:
            st = os.statvfs(self.chunks_dir)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def capacity_now(self) -> int:
        """The capacity to advertise: the configured one, or less when the file system has
        less room (``used_bytes`` + its free space), so that a full file system shows full."""
        free = self.fs_free_bytes()
        if free is None:
            return self.capacity_bytes
        return min(self.capacity_bytes, self._used_bytes + free)

    def bad_pending(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` bad replicas (id, version) the metaserver has not acknowledged."""
        with self._mutex:
            pending = [(i, b.version) for i, b in self._bad.items() if not b.reported]
        return sorted(pending)[:limit]

    def bad_acknowledged(self, entries: list[tuple[int, int]]) -> None:
        """The metaserver took these (id, version) reports: do not send them again."""
        with self._mutex:
            for chunk_id, version in entries:
                bad = self._bad.get(chunk_id)
                if bad is not None and bad.version == version:
                    bad.reported = True

    # ------------------------------------------------------------------ start-up scan

    def _clear_tmp(self) -> None:
        """Remove copies that were being made when the last run ended (rule 9)."""
        self.tmp_dir.mkdir(exist_ok=True, mode=DIR_MODE)
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                os.unlink(entry.path)
                removed += 1
        if removed:
            log.info("%s event=incoming_discarded files=%d reason=left_by_the_last_run",
                     self.log_prefix, removed)  # fmt: skip

    def _scan_quarantine(self) -> None:
        """Index quarantine/ by chunk id, so that ``delete`` can remove a chunk's files."""
        if not self.quarantine_dir.is_dir():
            return
        for entry in os.scandir(self.quarantine_dir):
            match = QUARANTINE_RE.fullmatch(entry.name)
            if match is not None and entry.is_file(follow_symlinks=False):
                chunk_id = int(match[1], 16)
                self._quarantined.setdefault(chunk_id, []).append(Path(entry.path))

    def _scan(self) -> None:
        """Find every replica by reading headers only; quarantine files that do not parse."""
        started = time.monotonic()
        for sub in sorted(os.scandir(self.chunks_dir), key=lambda e: e.name):
            if not (sub.is_dir(follow_symlinks=False) and SUBDIR_RE.fullmatch(sub.name)):
                log.info("%s event=scan_ignored path=%s reason=not_a_chunk_dir",
                         self.log_prefix, sub.path)  # fmt: skip
                continue
            subdir = int(sub.name, 16)
            for entry in os.scandir(sub.path):
                match = FILE_RE.fullmatch(entry.name)
                if match is None or not entry.is_file(follow_symlinks=False):
                    log.info("%s event=scan_ignored path=%s reason=not_a_chunk_file",
                             self.log_prefix, entry.path)  # fmt: skip
                    continue
                chunk_id = int(match[1], 16)
                if chunk_id == 0 or chunk_id % 256 != subdir:
                    self._quarantine(Path(entry.path), chunk_id, "misplaced")
                    continue
                try:
                    fd = os.open(entry.path, os.O_RDONLY)
                    try:
                        raw = os.pread(fd, HEADER_BYTES, 0)
                    finally:
                        os.close(fd)
                    info = decode_header(raw)
                    if info.chunk_id != chunk_id:
                        raise BadHeader(f"header names chunk {info.chunk_id}")
                except (OSError, BadHeader) as e:
                    self._quarantine(Path(entry.path), chunk_id, "bad_header", str(e))
                    continue
                footprint = footprint_bytes(info.length)
                self._replicas[chunk_id] = Replica(
                    chunk_id, info.version, info.length, footprint, dirty=True
                )
                self._used_bytes += footprint
        log.info("%s event=scanned chunks=%d used_bytes=%d quarantined=%d elapsed_ms=%d",
                 self.log_prefix, len(self._replicas), self._used_bytes, self.quarantined,
                 (time.monotonic() - started) * 1000)  # fmt: skip

    def _quarantine(self, path: Path, chunk_id: int, reason: str, detail: str = "") -> bool:
        """Move ``path`` to quarantine/; False (logged) if the rename failed. ``reason`` is one
        of our own constants and the id an integer: no peer string reaches a path."""
        target = self.quarantine_dir / f"{chunk_id:016x}.{reason}.{time.time_ns()}.chunk"
        log.warning("%s event=quarantined chunk=%d path=%s reason=%s detail=%r",
                    self.log_prefix, chunk_id, path, reason, detail)  # fmt: skip
        try:
            self.quarantine_dir.mkdir(exist_ok=True, mode=DIR_MODE)
            os.rename(path, target)
        except OSError as e:
            log.warning("%s event=quarantine_failed path=%s reason=%s",
                        self.log_prefix, path, e)  # fmt: skip
            return False
        with self._mutex:
            self._quarantined.setdefault(chunk_id, []).append(target)
        self.quarantined += 1
        return True

    # ------------------------------------------------------------------ bad replicas

    def _mark_bad(self, replica: Replica, reason: str, detail: str) -> None:
        """Rule 6: take ``replica`` out of service for good, keep its file in quarantine/,
        and queue it for the metaserver. Idempotent: of two readers that find the same
        replica bad, the first marks it."""
        chunk_id = replica.chunk_id
        with self._mutex:
            if self._replicas.get(chunk_id) is not replica:
                return
            del self._replicas[chunk_id]
            self._used_bytes -= replica.footprint_bytes
            self._bad[chunk_id] = BadReplica(replica.version, reason)
            self.bad_found += 1
        log.warning("%s event=replica_bad chunk=%d version=%d reason=%s detail=%r",
                    self.log_prefix, chunk_id, replica.version, reason, detail)  # fmt: skip
        self._fds.forget(chunk_id)
        path = self.path(chunk_id)
        if self._quarantine(path, chunk_id, reason, detail):
            # Best effort: a rename lost in a crash brings the file back as a replica, which
            # is then found bad again (or judged stale by the metaserver).
            with contextlib.suppress(OSError):
                self._fsync_dir(self.quarantine_dir)
                self._fsync_dir(path.parent)
        elif path.exists():
            # Not moved: keep it where it is, but still as this id's file to delete.
            with self._mutex:
                self._quarantined.setdefault(chunk_id, []).append(path)
        if self.on_bad is not None:
            self.on_bad(chunk_id, replica.version)

    def _inject_eio(self, chunk_id: int) -> None:
        """Test hook (config ``inject_eio_chunk_ids``): fail as a dying disk would."""
        if chunk_id in self.inject_eio_chunk_ids:
            raise OSError(errno.EIO, "Input/output error (injected by inject_eio_chunk_ids)")

    # ------------------------------------------------------------------ write

    def write(
        self,
        chunk_id: int,
        version: int,
        length: int,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        sync: bool = False,
        expect_length: int | None = None,
    ) -> ReplicaInfo:
        """Write ``data`` at ``offset`` of the replica, for ``version`` with the handle's
        valid ``length`` (rule 3). Creates the replica when absent, provided nothing it
        should already hold would be missing: the handle's ``length`` is 0 or this write
        covers all of it (else ``NotFound``: zeros would stand in for data). Extends the
        valid length; a gap reads as zeros. ``sync``: fdatasync before returning.
        ``expect_length``: the writer's highest acknowledged end under this version (rule 8).
        """
        view = memoryview(data).cast("B")
        n = len(view)
        end = offset + n
        check_ids(chunk_id, version)
        if offset < 0 or length < 0 or (expect_length is not None and expect_length < 0):
            raise Invalid("negative offset or length", chunk_id=chunk_id)
        if end > self.chunk_bytes_max or length > self.chunk_bytes_max:
            raise TooBig(
                "write past the maximum chunk size", chunk_id=chunk_id, limit=self.chunk_bytes_max
            )
        replica = self._replicas.get(chunk_id)
        creating = replica is None
        if replica is None:
            if chunk_id in self._bad:
                raise Unavailable("replica is bad: waiting to be deleted", chunk_id=chunk_id)
            if length > 0 and not (offset == 0 and n >= length):
                raise NotFound(
                    "no replica of this chunk here, and the handle says it holds data",
                    chunk_id=chunk_id,
                    length=length,
                )
            old_version, old_length, old_footprint = version, 0, 0
        else:
            if version < replica.version:
                raise Stale(
                    "write for an older version than the replica's",
                    chunk_id=chunk_id,
                    version=version,
                    replica_version=replica.version,
                )
            old_version, old_length = replica.version, replica.length
            old_footprint = replica.footprint_bytes
        bump = not creating and version > old_version
        base_length = old_length
        if bump:
            if old_length < length:
                # The handle says the chunk has `length` valid bytes; this replica missed some
                # of them. Truncating "up" would make zeros of data: refuse instead.
                raise Stale(
                    "replica shorter than the handle's length",
                    chunk_id=chunk_id,
                    replica_length=old_length,
                    length=length,
                )
            base_length = length
        new_length = max(base_length, end) if n else base_length
        if (
            expect_length is not None
            and base_length < expect_length
            and (offset > base_length or (sync and new_length < expect_length))
        ):
            # Rule 8: this replica lost bytes the writer saw acknowledged under this version.
            raise Stale(
                "replica shorter than the writer's acknowledged length",
                chunk_id=chunk_id,
                replica_length=base_length,
                expect_length=expect_length,
            )
        new_footprint = footprint_bytes(new_length)
        self._reserve(chunk_id, new_footprint - old_footprint, check_disk=creating)
        # The footprint the replica table holds for this replica (see rule 7).
        settled_footprint = old_footprint
        # How far the write got: a failure before "cut" or in "allocate" changed nothing
        # the replica table describes; one in "cut", "data" or "sync" may have (rule 6).
        stage = "open"
        path = self.path(chunk_id)
        fd = -1
        direct_fd = -1  # DIRECT WRITES: a descriptor of the file opened with O_DIRECT
        opened: OpenFile | None = None  # the cached descriptor of an existing replica
        try:
            if creating:
                # Its header is written once, last (below): a new file that a crash or a
                # failure leaves without one is quarantined at start or unlinked here.
                fd = self._create_file(chunk_id, path)
            else:
                assert replica is not None
                replica.dirty = True
                opened = self._fds.acquire(chunk_id, self.path)
                fd = opened.fd
            if self.writes_direct(offset, n):
                direct_fd = self._open_direct(path)
            if base_length < old_length:
                # Only a bump cuts (rule 3). From the first byte the cut changes until the
                # table describes the result, a failure leaves a file we cannot describe.
                assert replica is not None and bump
                stage = "cut"
                blocks.truncate(fd, old_length, base_length, self._corrupter(chunk_id))
                pwrite_all(fd, encode_header(chunk_id, version, base_length), 0)
                settled_footprint = footprint_bytes(base_length)
                with self._mutex:
                    replica.version = version
                    replica.length = base_length
                    replica.footprint_bytes = settled_footprint
            if n:
                stage = "allocate"
                if offset > base_length and os.fstat(fd).st_size > DATA_OFFSET + base_length:
                    # Junk past the valid length (a crash, or a truncate) must not show
                    # through the gap: cut it off so the gap is a hole, read as zeros.
                    os.ftruncate(fd, DATA_OFFSET + base_length)
                if not creating:  # a new file is unlinked on any failure: nothing to keep
                    self._preallocate(fd, offset, n)
                stage = "data"
                self._inject_eio(chunk_id)
                put = None if direct_fd < 0 else functools.partial(self._put_direct, fd, direct_fd)
                blocks.write_blocks(fd, base_length, offset, view, self._corrupter(chunk_id), put)
            stage = "data"
            if creating or bump or new_length != old_length:
                pwrite_all(fd, encode_header(chunk_id, version, new_length), 0)
            if (sync or bump) and self.fsync:
                # A bump is durable at once, whatever the writer asked (rule 3): the new
                # version, a cut (a power loss in the write-back window could leave a mix of
                # its writes, a rewritten checksum over uncut bytes, failing verification on
                # every replica the cut reached), and the bytes below the handle's length,
                # which the metaserver's table already counts (a writer's earlier uploads,
                # committed when it renewed its handle).
                stage = "sync"
                os.fdatasync(fd)
                if replica is not None:
                    _raise_writeback_error(replica)
        except BaseException as e:
            self._release(new_footprint - settled_footprint)
            if opened is not None:
                self._fds.release(opened)
                opened = None
            elif fd >= 0:
                os.close(fd)
            fd = -1
            if creating:
                # Best effort: a half-made file would be quarantined at the next start.
                with contextlib.suppress(OSError):
                    os.unlink(path)
            else:
                assert replica is not None
                if isinstance(e, FileNotFoundError):
                    raise self._vanished(replica, e) from e
                if isinstance(e, Corrupt):
                    self._mark_bad(replica, "checksum", str(e))
                elif isinstance(e, OSError) and not self._harmless(e, stage):
                    reason = {"cut": "cut_failed", "sync": "sync_failed"}.get(stage, "disk_error")
                    self._mark_bad(replica, reason, f"write: {e}")
            if isinstance(e, OSError):
                raise self._disk_error(e, chunk_id, "write") from e
            raise
        finally:
            try:
                if direct_fd >= 0:
                    os.close(direct_fd)
            finally:
                if opened is not None:
                    self._fds.release(opened)
                elif fd >= 0:
                    os.close(fd)
        with self._mutex:
            if replica is None:
                replica = Replica(chunk_id, version, new_length, new_footprint, dirty=True)
                replica.name_unsynced = True
                self._replicas[chunk_id] = replica
            else:
                replica.version = version
                replica.length = new_length
                replica.footprint_bytes = new_footprint
        if sync:
            self._sync_names(replica)
            replica.dirty = False
        return replica.info()

    @staticmethod
    def _harmless(e: OSError, stage: str) -> bool:
        """Rule 5: did this error leave the replica as the table describes it? A full disk
        is found by the preallocation, before any byte changed; a process short of
        descriptors or memory fails before it opens the file."""
        if e.errno in _NOSPACE_ERRNOS:
            return stage in ("open", "allocate")
        return e.errno in _RESOURCE_ERRNOS and stage == "open"

    def _preallocate(self, fd: int, offset: int, size: int) -> None:
        """Reserve the disk space a write of ``size`` bytes at chunk ``offset`` fills (its
        data and its checksum entries) before writing any of it, so that ENOSPC comes from
        here and not from a write half done (rule 5). Already allocated ranges cost an
        extent lookup."""
        assert size > 0
        first = offset // BLOCK_BYTES
        last = (offset + size - 1) // BLOCK_BYTES
        try:
            os.posix_fallocate(fd, TABLE_OFFSET + SUM_BYTES * first, SUM_BYTES * (last - first + 1))
            os.posix_fallocate(fd, DATA_OFFSET + offset, size)
        except OSError as e:
            # A file system that cannot preallocate (glibc emulates it where the kernel
            # cannot, so this is rare) loses only the early ENOSPC, not correctness.
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise

    def _create_file(self, chunk_id: int, path: Path) -> int:
        self._fds.forget(chunk_id)  # a descriptor of an earlier file of this id is not this one
        subdir = chunk_id % 256
        if not path.parent.is_dir():
            path.parent.mkdir(exist_ok=True, mode=DIR_MODE)
            with self._mutex:
                self._subdirs_unsynced.add(subdir)
        # O_EXCL: the replica table said there is no such file; a leftover one (a write that
        # failed and could not unlink) is replaced, since its contents are not trusted.
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            os.unlink(path)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)

    def _reserve(self, chunk_id: int, growth_bytes: int, *, check_disk: bool = False) -> None:
        """Count ``growth_bytes`` as used, or ``NoSpace`` past the configured capacity. With
        ``check_disk`` (a new replica) the file system's free space must hold it too."""
        disk_free = self._disk_free_for(growth_bytes) if check_disk and growth_bytes > 0 else None
        with self._mutex:
            free = self.capacity_bytes - self._used_bytes
            if disk_free is not None:
                free = min(free, disk_free)
            if growth_bytes > 0 and growth_bytes > free:
                raise NoSpace(
                    "chunkserver full",
                    chunk_id=chunk_id,
                    capacity_bytes=self.capacity_bytes,
                    used_bytes=self._used_bytes,
                    free_bytes=max(free, 0),
                )
            self._used_bytes += growth_bytes

    def _disk_free_for(self, growth_bytes: int) -> int | None:
        """``fs_free_bytes`` for a new replica of ``growth_bytes``: from a reading at most
        ``STATFS_TTL_S`` old, less what was reserved since, while that leaves at least
        ``STATFS_MARGIN_BYTES``; else read again. (A small file's write created a replica
        and paid a statfs each: 14 us to 0.85 ms here under load. The preallocation is
        what guarantees the space; this is the early, clear answer.)"""
        now = time.monotonic()
        with self._mutex:
            free, taken_at, reserved = self._statfs
            if (
                free is not None
                and now - taken_at < STATFS_TTL_S
                and free - reserved - growth_bytes >= STATFS_MARGIN_BYTES
            ):
                self._statfs = (free, taken_at, reserved + growth_bytes)
                return free - reserved
        free = self.fs_free_bytes()
        with self._mutex:
            self._statfs = (free, now, growth_bytes)
        return free

    def _release(self, growth_bytes: int) -> None:
        with self._mutex:
            self._used_bytes -= growth_bytes

    # ------------------------------------------------------------------ read

    def read(
        self,
        chunk_id: int,
        version: int,
        offset: int,
        size: int,
        *,
        from_disk: bool = False,
        cached_only: bool = False,
    ) -> memoryview:
        """Up to ``size`` bytes from ``offset``, every block verified (rule 2). Shorter at
        the replica's end; empty at or past it. A mismatch or a disk error makes the
        replica bad (rule 6) and is ``Corrupt``. ``from_disk`` (the scrubber) reads the bytes
        on the disk, not a copy in memory since the last read or write, and leaves the page
        cache as it was (``_read_disk``). ``cached_only``: the
        bytes and their checksums come from the page cache or not at all (``WouldBlock``,
        nothing changed): a caller that must not wait for the disk tries this first."""
        check_ids(chunk_id, version)
        if offset < 0 or not 0 <= size <= READ_BYTES_MAX:
            raise Invalid("bad offset or size", chunk_id=chunk_id, limit=READ_BYTES_MAX)
        replica = self._replicas.get(chunk_id)
        if replica is None:
            if chunk_id in self._bad:
                raise Corrupt("replica is bad: waiting to be deleted", chunk_id=chunk_id)
            raise NotFound("no replica of this chunk here", chunk_id=chunk_id)
        if version != replica.version:
            raise Stale(
                "read of another version than the replica's",
                chunk_id=chunk_id,
                version=version,
                replica_version=replica.version,
            )
        end = min(offset + size, replica.length)
        if offset >= end:
            return memoryview(b"")
        first = offset // BLOCK_BYTES
        last = (end - 1) // BLOCK_BYTES
        start = first * BLOCK_BYTES
        stop = min((last + 1) * BLOCK_BYTES, replica.length)
        buf = memoryview(bytearray(stop - start))
        sums_view = memoryview(bytearray(SUM_BYTES * (last - first + 1)))
        flags = os.RWF_NOWAIT if cached_only else 0
        try:
            self._inject_eio(chunk_id)
            if from_disk:
                got, sums_got = self._read_disk(chunk_id, buf, sums_view, start, first)
            else:
                opened = self._fds.acquire(chunk_id, self.path)
                try:
                    got = pread_into(opened.fd, buf, DATA_OFFSET + start, flags)
                    sums_got = pread_into(
                        opened.fd, sums_view, TABLE_OFFSET + SUM_BYTES * first, flags
                    )
                finally:
                    self._fds.release(opened)
            raw = sums_view[:sums_got]
        except BlockingIOError as e:
            raise WouldBlock("not in the page cache") from e
        except FileNotFoundError as e:
            raise self._vanished(replica, e) from e
        except OSError as e:
            if cached_only and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                # This file system (or kernel) cannot read without waiting: not the disk's
                # fault, and the caller reads the usual way.
                raise WouldBlock("RWF_NOWAIT unsupported here", unsupported=True) from e
            if not self._harmless(e, "open"):
                self._mark_bad(replica, "disk_error", f"read: {e}")
            raise self._disk_error(e, chunk_id, "read") from e
        bad = first_bad_block(buf, got, raw)
        if bad is not None:
            if SUM.unpack_from(raw, SUM_BYTES * bad[0])[0] == LOST_BLOCK_SUM:  # salvaged
                raise Corrupt("block lost (salvaged)", chunk_id=chunk_id, block=first + bad[0])
            corrupt = self._corrupt(chunk_id, first + bad[0], bad[1])
            self._mark_bad(replica, "checksum", str(corrupt))
            raise corrupt
        return buf[offset - start : end - start]

    def _read_disk(
        self, chunk_id: int, buf: memoryview, sums: memoryview, start: int, first: int
    ) -> tuple[int, int]:
        """The scrubber's read of data from chunk offset ``start`` into ``buf`` and of the
        checksums from block ``first`` into ``sums``: the bytes on the disk, leaving the
        page cache as it is (``O_DIRECT``; the kernel first writes back the range's dirty
        pages). Where ``O_DIRECT`` is refused (a tmpfs), a plain read between drops of
        the range's clean pages, which also evicts pages clients were reading: that is what
        every scrub did before, and at 16 MiB/s it emptied a busy server's cache of the
        very blocks its clients read. Returns the bytes read into each."""
        if self._direct_reads:
            try:
                fd = os.open(self.path(chunk_id), os.O_RDONLY | os.O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._direct_reads = False
            else:
                try:
                    return (
                        pread_direct(fd, buf, DATA_OFFSET + start),
                        pread_direct(fd, sums, TABLE_OFFSET + SUM_BYTES * first),
                    )
                finally:
                    os.close(fd)
        opened = self._fds.acquire(chunk_id, self.path)
        fd = opened.fd
        ranges = (
            (DATA_OFFSET + start, len(buf)),
            (TABLE_OFFSET + SUM_BYTES * first, len(sums)),
        )
        try:
            drop_cached(fd, ranges)
            got = pread_into(fd, buf, DATA_OFFSET + start)
            sums_got = pread_into(fd, sums, TABLE_OFFSET + SUM_BYTES * first)
            drop_cached(fd, ranges)  # nor leave the scrubber's reads in the cache
        finally:
            self._fds.release(opened)
        return got, sums_got

    # ------------------------------------------------------------------ sync, delete

    def sync(
        self, chunk_id: int, version: int | None = None, expect_length: int | None = None
    ) -> ReplicaInfo:
        """Make the replica durable: data, checksums, header, and its name. With
        ``version``, a replica at another version is ``Stale``; with ``expect_length``, a
        replica shorter than that is ``Stale`` (rule 8)."""
        replica = self._replicas.get(chunk_id)
        if replica is None:
            if chunk_id in self._bad:
                raise Unavailable("replica is bad: waiting to be deleted", chunk_id=chunk_id)
            raise NotFound("no replica of this chunk here", chunk_id=chunk_id)
        if version is not None and version != replica.version:
            raise Stale(
                "sync of another version than the replica's",
                chunk_id=chunk_id,
                version=version,
                replica_version=replica.version,
            )
        if expect_length is not None and replica.length < expect_length:
            raise Stale(
                "replica shorter than the writer's acknowledged length",
                chunk_id=chunk_id,
                replica_length=replica.length,
                expect_length=expect_length,
            )
        if replica.dirty or replica.writeback_error is not None:
            stage = "open"
            try:
                opened = self._fds.acquire(chunk_id, self.path)
                try:
                    if self.fsync:
                        stage = "sync"
                        os.fdatasync(opened.fd)
                    stage = "sync"
                    _raise_writeback_error(replica)
                finally:
                    self._fds.release(opened)
            except FileNotFoundError as e:
                raise self._vanished(replica, e) from e
            except OSError as e:
                if stage == "sync" or e.errno not in _RESOURCE_ERRNOS:
                    self._mark_bad(replica, "sync_failed", f"sync: {e}")
                raise self._disk_error(e, chunk_id, "sync") from e
            replica.dirty = False
        self._sync_names(replica)
        return replica.info()

    def _sync_names(self, replica: Replica) -> None:
        """fsync the directories a newly created replica's name lives in."""
        if not replica.name_unsynced:
            return
        subdir = replica.chunk_id % 256
        try:
            with self._mutex:
                parent_unsynced = subdir in self._subdirs_unsynced
                self._subdirs_unsynced.discard(subdir)
            if parent_unsynced:
                self._fsync_dir(self.chunks_dir)
            self._fsync_dir(self.path(replica.chunk_id).parent)
        except OSError as e:
            if parent_unsynced:
                with self._mutex:
                    self._subdirs_unsynced.add(subdir)
            raise self._disk_error(e, replica.chunk_id, "sync") from e
        replica.name_unsynced = False

    def _fsync_dir(self, path: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, chunk_id: int, version: int | None = None) -> bool:
        """Remove the replica if its version is ``version`` or older (any version when
        None), and every bad or quarantined file of the id (rule 10). True if anything was
        removed. Not fsynced: a deleted replica that comes back after a crash is stale or
        unknown again, and deleted again."""
        removed = False
        replica = self._replicas.get(chunk_id)
        if replica is not None and (version is None or replica.version <= version):
            self._fds.forget(chunk_id)
            try:
                os.unlink(self.path(chunk_id))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise self._disk_error(e, chunk_id, "delete") from e
            with self._mutex:
                if self._replicas.get(chunk_id) is replica:
                    del self._replicas[chunk_id]
                    self._used_bytes -= replica.footprint_bytes
            removed = True
        return self._delete_quarantined(chunk_id) or removed

    def _delete_quarantined(self, chunk_id: int) -> bool:
        with self._mutex:
            self._bad.pop(chunk_id, None)
            paths = self._quarantined.pop(chunk_id, [])
        kept = []
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("%s event=quarantine_delete_failed chunk=%d path=%s reason=%s",
                            self.log_prefix, chunk_id, path, e)  # fmt: skip
                kept.append(path)
        if kept:
            with self._mutex:
                self._quarantined.setdefault(chunk_id, []).extend(kept)
        return bool(paths)

    # ------------------------------------------------------------------ errors

    def _corrupter(self, chunk_id: int) -> blocks.Corrupter:
        return functools.partial(self._corrupt, chunk_id)

    def _corrupt(self, chunk_id: int, block: int, reason: str) -> Corrupt:
        log.warning("%s event=corrupt chunk=%d block=%d reason=%r",
                    self.log_prefix, chunk_id, block, reason)  # fmt: skip
        return Corrupt(reason, chunk_id=chunk_id, block=block)

    def _vanished(self, replica: Replica, e: OSError) -> DfsError:
        chunk_id = replica.chunk_id
        self._fds.forget(chunk_id)
        with self._mutex:
            if self._replicas.get(chunk_id) is replica:
                del self._replicas[chunk_id]
                self._used_bytes -= replica.footprint_bytes
            elif chunk_id in self._bad:
                # Another reader found it bad and moved it to quarantine/ under us.
                return Corrupt("replica is bad: waiting to be deleted", chunk_id=chunk_id)
        # Someone removed the file under us: forget the replica (it is gone for good).
        log.warning("%s event=replica_vanished chunk=%d reason=%r",
                    self.log_prefix, chunk_id, str(e))  # fmt: skip
        return NotFound("replica file vanished", chunk_id=chunk_id)

    def _disk_error(self, e: OSError, chunk_id: int, op: str) -> DfsError:
        if e.errno in _NOSPACE_ERRNOS:
            log.warning("%s event=disk_full op=%s chunk=%d reason=%r",
                        self.log_prefix, op, chunk_id, str(e))  # fmt: skip
            return NoSpace("disk full", chunk_id=chunk_id)
        log.warning("%s event=disk_error op=%s chunk=%d errno=%s reason=%r",
                    self.log_prefix, op, chunk_id, e.errno, str(e))  # fmt: skip
        if op == "read" and e.errno not in _RESOURCE_ERRNOS:
            # The bytes cannot be produced: to the reader this replica is as good as corrupt
            # (it reads another one and reports this one).
            return Corrupt(f"disk error: {e.strerror}", chunk_id=chunk_id)
        return Unavailable(f"disk error: {e.strerror}", chunk_id=chunk_id)


def _raise_writeback_error(replica: Replica) -> None:
    """After an fdatasync: a writeback the drop-behind saw fail fails it too."""
    if replica.writeback_error is not None:
        raise replica.writeback_error


__all__ = [
    "READ_BYTES_MAX",
    "ChunkStore",
    "WouldBlock",
]
