"""Copies coming in (store rule 9): a replica copied from another chunkserver is written
to a file in ``tmp/`` and installed whole, under the chunk's exclusive lock, by a rename
over the chunk's path.

What it owns: the life of one copy (``Incoming``: begun with its space reserved and
preallocated, written in order from offset 0, installed or aborted), mixed into
``ChunkStore``, whose replica table, space accounting and error mapping it uses. What it
must not do: install a copy that is older than, or no longer than, the replica in place at
the same version, or leave a file in ``tmp/`` or reserved space behind an aborted copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chunkserver import blocks
from chunkserver.fdcache import FdCache
from chunkserver.rawio import pwrite_all
from chunkserver.replicas import DIR_MODE, FILE_MODE, Replica, check_ids
from dfs.wire.errors import DfsError, Stale, TooBig, Unavailable
from dfs.wire.replicafile import ReplicaInfo, encode_header, footprint_bytes

log = logging.getLogger("chunkserver.store")


@dataclass(slots=True)
class Incoming:
    """A replica being copied in (rule 9): a file in ``tmp/`` until ``install_incoming``.

    Its methods on ``ChunkStore`` take ``lock`` in the thread that runs them, so that an
    abort issued while a write job still runs (its request was cancelled) waits for that job
    instead of closing the descriptor under it.
    """

    chunk_id: int
    version: int
    length: int
    path: Path
    fd: int
    footprint_bytes: int
    written: int = 0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class IncomingCopies:
    """``ChunkStore``'s copies in (rule 9); see the module docstring."""

    if TYPE_CHECKING:  # ChunkStore's, used here
        chunk_bytes_max: int
        tmp_dir: Path
        fsync: bool
        log_prefix: str
        _mutex: threading.Lock
        _replicas: dict[int, Replica]
        _used_bytes: int
        _subdirs_unsynced: set[int]
        _fds: FdCache

        def path(self, chunk_id: int) -> Path: ...
        def _reserve(
            self, chunk_id: int, growth_bytes: int, *, check_disk: bool = False
        ) -> None: ...
        def _release(self, growth_bytes: int) -> None: ...
        def _preallocate(self, fd: int, offset: int, size: int) -> None: ...
        def _corrupter(self, chunk_id: int) -> blocks.Corrupter: ...
        def _disk_error(self, e: OSError, chunk_id: int, op: str) -> DfsError: ...
        def _delete_quarantined(self, chunk_id: int) -> bool: ...
        def _sync_names(self, replica: Replica) -> None: ...

    def begin_incoming(self, chunk_id: int, version: int, length: int) -> Incoming:
        """Start a copy of ``length`` bytes at ``version`` (rule 9): space reserved and
        preallocated (``NoSpace`` now rather than half-way), an empty file in ``tmp/``."""
        check_ids(chunk_id, version)
        if not 0 <= length <= self.chunk_bytes_max:
            raise TooBig("copy past the maximum chunk size", limit=self.chunk_bytes_max)
        footprint = footprint_bytes(length)
        self._reserve(chunk_id, footprint, check_disk=True)
        path = self.tmp_dir / f"{chunk_id:016x}.{time.time_ns()}.part"
        fd = -1
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
            pwrite_all(fd, encode_header(chunk_id, version, 0), 0)
            if length:
                self._preallocate(fd, 0, length)
        except BaseException as e:
            self._release(footprint)
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if isinstance(e, OSError):
                raise self._disk_error(e, chunk_id, "replicate") from e
            raise
        return Incoming(chunk_id, version, length, path, fd, footprint)

    def write_incoming(self, incoming: Incoming, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the copy (pieces come in order, from offset 0)."""
        view = memoryview(data).cast("B")
        with incoming.lock:
            if incoming.closed:
                raise Unavailable("copy aborted", chunk_id=incoming.chunk_id)
            assert 0 < len(view) <= incoming.length - incoming.written
            try:
                blocks.write_blocks(
                    incoming.fd,
                    incoming.written,
                    incoming.written,
                    view,
                    self._corrupter(incoming.chunk_id),
                )
            except OSError as e:
                raise self._disk_error(e, incoming.chunk_id, "replicate") from e
            incoming.written += len(view)

    def install_incoming(self, incoming: Incoming) -> ReplicaInfo:
        """Make the complete copy the chunk's replica (the caller holds the chunk's
        exclusive lock): header, fdatasync, rename over the chunk's path, fsync of the
        directory. A replica of a newer version found in place is kept (``Stale``); one at
        the same version and at least as long makes the copy needless (it is dropped). The
        copy replaces an older or shorter replica, and any bad or quarantined file of the
        id. The copy is closed whatever happens."""
        chunk_id, version, length = incoming.chunk_id, incoming.version, incoming.length
        with incoming.lock:
            if incoming.closed:
                raise Unavailable("copy aborted", chunk_id=chunk_id)
            assert incoming.written == length
            current = self._replicas.get(chunk_id)
            if current is not None and (
                current.version > version
                or (current.version == version and current.length >= length)
            ):
                self._close_incoming(incoming)
                if current.version > version:
                    raise Stale(
                        "a newer replica is here already",
                        chunk_id=chunk_id,
                        version=version,
                        replica_version=current.version,
                    )
                return current.info()
            path = self.path(chunk_id)
            try:
                pwrite_all(incoming.fd, encode_header(chunk_id, version, length), 0)
                if self.fsync:
                    os.fdatasync(incoming.fd)
                if not path.parent.is_dir():
                    path.parent.mkdir(exist_ok=True, mode=DIR_MODE)
                    with self._mutex:
                        self._subdirs_unsynced.add(chunk_id % 256)
                os.replace(incoming.path, path)
                self._fds.forget(chunk_id)  # the replaced file's descriptor, if any
            except BaseException as e:
                self._close_incoming(incoming)
                if isinstance(e, OSError):
                    raise self._disk_error(e, chunk_id, "replicate") from e
                raise
            os.close(incoming.fd)
            incoming.closed = True
            replica = Replica(
                chunk_id, version, length, incoming.footprint_bytes, dirty=False,
                name_unsynced=True,
            )  # fmt: skip
            with self._mutex:
                old = self._replicas.get(chunk_id)
                if old is not None:
                    self._used_bytes -= old.footprint_bytes
                self._replicas[chunk_id] = replica
        self._delete_quarantined(chunk_id)
        log.info("%s event=replica_installed chunk=%d version=%d length=%d replaced=%s",
                 self.log_prefix, chunk_id, version, length,
                 "none" if old is None else old.version)  # fmt: skip
        self._sync_names(replica)
        return replica.info()

    def abort_incoming(self, incoming: Incoming) -> None:
        """Drop the copy (a failed or cancelled ``chunk.replicate``); idempotent."""
        with incoming.lock:
            self._close_incoming(incoming)

    def _close_incoming(self, incoming: Incoming) -> None:
        if incoming.closed:
            return
        incoming.closed = True
        with contextlib.suppress(OSError):
            os.close(incoming.fd)
        with contextlib.suppress(OSError):
            os.unlink(incoming.path)
        self._release(incoming.footprint_bytes)


__all__ = ["Incoming", "IncomingCopies"]
