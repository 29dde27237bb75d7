"""What the chunk store's writes do with the page cache: early writeback, drop-behind and
direct writes, mixed into ``ChunkStore`` (``store.py``), whose replica table, descriptors and
paths they use.

What it owns: which writes go past the page cache (DIRECT WRITES) and how, and the hint a
big buffered write gives the kernel (EARLY WRITEBACK, DROP-BEHIND). What it must not do:
decide durability (fdatasync in ``store.py`` does; nothing here changes what a sync
promises) or fail a write for a hint.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from chunkserver.fdcache import FdCache
from chunkserver.rawio import (
    DIRECT_ALIGN_BYTES,
    pwrite_all,
    pwrite_direct,
    start_writeback,
    write_back_and_drop,
)
from chunkserver.replicas import Replica
from dfs.wire.replicafile import DATA_OFFSET

log = logging.getLogger("chunkserver.store")

# An unsynced write at least this large starts its writeback at once (``start_writeback``):
# a big file's stream, not a small file's close (whose few KiB would cost the disk a seek
# per file while the metaservers' Raft fsyncs wait behind it).
WRITEBACK_BYTES_MIN = 1024 * 1024
# DROP-BEHIND: such a write also waits (on the writeback thread) for the bytes this far
# behind it to reach the disk and drops their pages from the page cache
# (``start_writeback``), as HDFS's datanodes do with drop-behind on and as Ceph's
# BlueStore never caches data: a stream's replicas then take ~this much memory each
# instead of their whole size, and the pages are used again by the next writes.
DROP_BEHIND_LAG_BYTES = 8 * 1024 * 1024
# DIRECT WRITES: a write at least this large, at a page-aligned offset, puts its data on the
# disk with O_DIRECT (its last partial page, if any, through the page cache), not into the
# page cache: a big file's stream then costs the chunkserver no page-cache copy and no
# writeback. On the project's VMs a page first touched costs the host a fault: a local
# 1 GiB write ran at 119-154 MB/s into a fresh page cache and at 1.3 GB/s with O_DIRECT. The
# bytes are on the disk when the write is answered (no cache flush: fdatasync still decides
# durability). A file system that refuses O_DIRECT (a tmpfs) keeps the page cache.
DIRECT_WRITE_BYTES_MIN = WRITEBACK_BYTES_MIN
# Errors that say the process is short of a resource (as ``store.py``'s rule 5).
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class PageCachePolicy:
    """``ChunkStore``'s use of the page cache; see the module docstring."""

    if TYPE_CHECKING:  # ChunkStore's, used here
        log_prefix: str
        drop_behind: bool
        direct_writes: bool
        _replicas: dict[int, Replica]
        _fds: FdCache

        def path(self, chunk_id: int) -> Path: ...

    def start_writeback(self, chunk_id: int, offset: int, length: int) -> None:
        """EARLY WRITEBACK: hand the pages of a large unsynced write (chunk bytes
        ``[offset, offset + length)``) to the disk now, without waiting for them. A
        writer's bytes are fsynced only at its fsync (a close syncs nothing), and the
        kernel starts writing dirty pages back by itself only past its background
        threshold (10 % of memory: gigabytes) or after 30 s; so a big file written with one
        fsync at the end had all its replicas' bytes go to the disk at that fsync, after
        the transfer rather than during it, while the disk (the limit of three copies on
        one machine) idled. Taken without the chunk's lock and never failing: durability
        does not change (fdatasync decides, and reports any write error).

        With ``drop_behind``, the range ``DROP_BEHIND_LAG_BYTES`` before this one (as
        long) is then written back, waited for and dropped from the page cache: a stream's
        pages are reused instead of the page cache growing by three times what clients
        write (on a virtual machine a page first touched costs the host a fault: writing
        into a fresh page cache ran ~6x slower than into pages just freed). The wait is on
        a descriptor of its own, so the error of a failed writeback still reaches the
        replica's next fdatasync; it is also remembered on the replica, and every sync
        (``sync``, a write's) fails for it."""
        replica = self._replicas.get(chunk_id)
        if replica is None:
            return
        try:
            opened = self._fds.acquire(chunk_id, self.path)
        except OSError:
            return  # deleted or replaced meanwhile: nothing to hurry
        try:
            start_writeback(opened.fd, DATA_OFFSET + offset, length)
        finally:
            self._fds.release(opened)
        behind_end = offset - DROP_BEHIND_LAG_BYTES
        if not self.drop_behind or behind_end <= 0:
            return
        behind = max(0, behind_end - length)
        # A descriptor of its own: the kernel reports a writeback error once to each open
        # file, so the wait below cannot take it from the descriptor fdatasync will use.
        try:
            fd = os.open(self.path(chunk_id), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            write_back_and_drop(fd, DATA_OFFSET + behind, behind_end - behind)
        except OSError as e:
            if e.errno not in _RESOURCE_ERRNOS:
                # Also kept on the replica: a descriptor fdatasync opens later (the cache
                # closed the old one) would not be told.
                replica.writeback_error = e
        finally:
            os.close(fd)

    def writes_direct(self, offset: int, size: int) -> bool:
        """Does a write of ``size`` bytes at chunk ``offset`` put its data on the disk with
        O_DIRECT (DIRECT WRITES)? Then it leaves no dirty pages to hurry or drop."""
        return (
            self.direct_writes
            and size >= DIRECT_WRITE_BYTES_MIN
            and offset % DIRECT_ALIGN_BYTES == 0
        )

    def _put_direct(self, fd: int, direct_fd: int, data: memoryview, pos: int) -> None:
        """DIRECT WRITES: ``data``'s whole pages at ``pos`` with O_DIRECT, what is left of
        its last page through the page cache (``fd``). A file system that opens with
        O_DIRECT but refuses the write (EINVAL) gets the whole range through the page
        cache, and no more direct writes."""
        whole = len(data) - len(data) % DIRECT_ALIGN_BYTES
        try:
            pwrite_direct(direct_fd, data[:whole], pos)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct_refused("write")
            whole = 0
        if whole < len(data):
            pwrite_all(fd, data[whole:], pos + whole)

    def _direct_refused(self, what: str) -> None:
        log.info("%sO_DIRECT %s refused here: big writes go through the page cache",
                 self.log_prefix, what)  # fmt: skip
        self.direct_writes = False

    def _open_direct(self, path: Path) -> int:
        """``path`` opened for O_DIRECT writes, or -1 (and direct writes off) where the
        file system refuses them."""
        try:
            return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct_refused("open")
            return -1


__all__ = [
    "DIRECT_WRITE_BYTES_MIN",
    "DROP_BEHIND_LAG_BYTES",
    "WRITEBACK_BYTES_MIN",
    "PageCachePolicy",
]
