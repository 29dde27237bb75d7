"""SHORT-CIRCUIT READS: a replica on this machine read from its file, not through its
chunkserver (HDFS's short-circuit local reads, in their first form: by path).

What it owns: finding which chunkservers keep their replicas where this process can read
them, and reading a range of a replica file with every block verified. What it must not
do: judge a replica (a file that does not read back as expected is left to its
chunkserver: the caller reads it through the network, where a bad replica is found and
reported as always) or change any file.

Why: a read through a chunkserver on the same machine costs a request, a wake-up of the
chunkserver, its answer and a wake-up of the client, each a pass through Python on a
loaded machine; reading the file is one ``pread`` of the page cache. Clients often run
beside chunkservers (compute next to storage, as Hadoop places its tasks), and a local
cluster (``dfs up``) has every replica beside its mount.

Which chunkservers are local: the chunkserver's address must be one of this machine's (of
this network namespace: a socket here can bind it), then ``cs.status`` names a chunkserver's data directory; it is
this machine's when the directory's ``uuid`` file holds the uuid the server gave and its
``lock`` is held (a server runs on it: ``chunkserver/config.py``). The check runs in the
background (reads go through the network until it has ended); its answer is trusted for
``LOCAL_CHECK_S``, then checked again (a chunkserver restarted on another directory at the
same address is noticed within about that time). A process the replica files' modes keep out
(a mount not run as the chunkservers' user) gets ``PermissionError`` on the first open:
that chunkserver is then read through the network. Nothing here grants access the file
modes do not: the chunk files stay 0600 in 0700 directories.

A read (``read_file``): open the replica's path (a replica deleted, replaced by a copy or
moved to quarantine is no longer there, or is another file), read its header, check the
chunk id and the version asked for, read the blocks the range covers and their checksums,
verify each block, read the header again: the same header before and after means the bytes
belong to that version (versions only grow), or to a write of the next version under
way (a bump writes its data before its header: a read through that chunkserver right
after the write would return the same bytes). Anything else (a missing file, another version,
a checksum that does not match, a short file) gives ``None`` and the caller reads through
the chunkserver. A read concurrent with a write of the same version may see some blocks
before the write and some after, as a read through the network may see a write's effect
on one replica and not yet on another; the promise between mounts is close-to-open
(ARCHITECTURE.md), which this keeps.

Small reads try the page cache on the caller's thread (``RWF_NOWAIT``: the bytes or nothing
at once); the rest run on a worker thread (at most ``THREADS_MAX`` at once), so the event
loop does not wait for the disk's data. (Opening the file may still read its directory
entry and inode from the disk, once after the caches were dropped, as the chunkserver's own
reads on its loop do; a data disk that hangs there holds the mount up too.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from dfs.rawio import pread_into
from dfs.wire.codec import PayloadPool
from dfs.wire.replicafile import (
    BLOCK_BYTES,
    DATA_OFFSET,
    HEADER_BYTES,
    SUM_BYTES,
    TABLE_OFFSET,
    BadHeader,
    chunk_relpath,
    decode_header,
    first_bad_block,
)

# How long a chunkserver's data directory is trusted before ``cs.status`` is asked again.
LOCAL_CHECK_S = 5.0
# Reads up to this size try the page cache on the caller's thread first.
INLINE_READ_BYTES_MAX = 256 * 1024
# Worker threads reading replica files at once (a read-ahead window's blocks overlap).
THREADS_MAX = 4
# Buffers of reads kept for the next ones, shared by the worker threads: a read-ahead
# window of 4 MiB blocks (``dfs/client/options.py``) and the blocks behind it, 48 MiB at
# most. A fresh ``bytearray`` is zero-filled into pages the host faults in: reading 1 GiB
# into pooled buffers took about 14 % less time (six alternated pairs, caches dropped).
POOLED_BUFFERS_MAX = 12
POOLED_BUFFER_BYTES_MAX = 4 * 1024 * 1024
_buffers = PayloadPool(POOLED_BUFFERS_MAX, POOLED_BUFFER_BYTES_MAX)
_buffers_lock = threading.Lock()  # a pool's check and hand-out are not atomic


def _take_buffer(size: int) -> bytearray:
    with _buffers_lock:
        return _buffers.take(size)


@dataclass(slots=True)
class _Dir:
    path: str | None  # the data directory, or None: read that chunkserver remotely
    checked: float  # clock time of the check


def data_dir_is_live(path: str, uuid: str) -> bool:
    """``path`` is a running chunkserver's data directory with that uuid, seen from here."""
    try:
        with open(os.path.join(path, "uuid")) as f:
            if f.read().strip() != uuid:
                return False
        fd = os.open(os.path.join(path, "lock"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # held: the server runs
    except OSError:
        return False
    else:
        return False  # nobody holds it: no server runs there now
    finally:
        os.close(fd)  # closing releases a lock we took


async def is_local_address(address: str) -> bool:
    """``host:port`` names an address of this machine (of this network namespace: one a
    socket here can bind), as HDFS asks before a short-circuit read."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((sockaddr[0], 0, *sockaddr[2:]))
            return True
        except OSError:
            continue
    return False


def read_file(
    data_dir: str, chunk_id: int, version: int, offset: int, size: int, *, nowait: bool
) -> bytes | bytearray | None:
    """Up to ``size`` bytes at ``offset`` of the replica of ``chunk_id`` at ``version`` in
    ``data_dir``, every block verified (shorter at the replica's end); ``None`` when the file
    is not that replica as it should be (see the module docstring). With ``nowait``, raises
    ``BlockingIOError`` unless everything is in the page cache. ``PermissionError`` when the
    file's modes keep this process out."""
    try:
        fd = os.open(os.path.join(data_dir, chunk_relpath(chunk_id)), os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise
    except OSError:
        return None  # gone, or a disk error: its chunkserver is asked instead
    flags = os.RWF_NOWAIT if nowait else 0
    try:
        head = bytearray(HEADER_BYTES)
        if pread_into(fd, memoryview(head), 0, flags) < HEADER_BYTES:
            return None
        try:
            info = decode_header(bytes(head))
        except BadHeader:
            return None
        if info.chunk_id != chunk_id or info.version != version:
            return None
        end = min(offset + size, info.length)
        if offset >= end:
            return b""
        first, last = offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES
        start = first * BLOCK_BYTES
        stop = min((last + 1) * BLOCK_BYTES, info.length)
        data = _take_buffer(stop - start)
        sums = memoryview(bytearray(SUM_BYTES * (last - first + 1)))
        view = memoryview(data)
        got = pread_into(fd, view, DATA_OFFSET + start, flags)
        sums_got = pread_into(fd, sums, TABLE_OFFSET + SUM_BYTES * first, flags)
        if first_bad_block(view, got, sums[:sums_got]) is not None:
            return None
        again = bytearray(HEADER_BYTES)
        if pread_into(fd, memoryview(again), 0, flags) < HEADER_BYTES or again != head:
            return None
    except OSError as e:
        if isinstance(e, BlockingIOError) or e.errno == errno.EAGAIN:
            raise BlockingIOError(errno.EAGAIN, "not in the page cache") from None
        if e.errno == errno.EOPNOTSUPP and nowait:
            raise BlockingIOError(errno.EAGAIN, "RWF_NOWAIT unsupported") from None
        return None
    finally:
        os.close(fd)
    if start == offset and stop == end:
        return data
    return bytes(view[offset - start : end - start])


class LocalReads:
    """Which chunkservers' replicas this process reads from their files, and those reads.

    ``status`` asks a chunkserver for ``cs.status`` (the caller's pool); ``clock`` is the
    event loop's clock."""

    def __init__(
        self,
        status: Callable[[str], Awaitable[dict[str, Any]]],
        clock: Callable[[], float],
        spawn: Callable[..., Any],
    ) -> None:
        self._status = status
        self._clock = clock
        self._spawn = spawn  # starts a background task (the client's task group)
        self._dirs: dict[str, _Dir] = {}
        self._checking: set[str] = set()
        self._limiter: anyio.CapacityLimiter | None = None

    def data_dir(self, address: str) -> str | None:
        """The data directory of the chunkserver at ``address`` if it is readable here, as
        last checked; None until a first check has ended (reads go through the network
        meanwhile, so a chunkserver that does not answer never holds a read up). A check
        older than ``LOCAL_CHECK_S`` starts another in the background."""
        known = self._dirs.get(address)
        stale = known is None or self._clock() - known.checked >= LOCAL_CHECK_S
        if stale and address not in self._checking:
            self._checking.add(address)
            self._spawn(self.check, address)
        return None if known is None else known.path

    async def check(self, address: str) -> str | None:
        """Check now whether the chunkserver at ``address`` keeps its replicas where this
        process reads them; remember and return its data directory (or None)."""
        path: str | None = None
        try:
            if await is_local_address(address):
                status = await self._status(address)
                candidate, uuid = status.get("data_dir"), status.get("uuid")
                if (
                    isinstance(candidate, str)
                    and isinstance(uuid, str)
                    and os.path.isabs(candidate)
                    and await anyio.to_thread.run_sync(data_dir_is_live, candidate, uuid)
                ):
                    path = candidate
        except Exception:  # any failure: read through the network
            path = None
        finally:
            self._checking.discard(address)
        self._dirs[address] = _Dir(path, self._clock())
        return path

    def forget(self, address: str) -> None:
        """Read ``address`` through the network until its next check (a file we may not
        open)."""
        self._dirs[address] = _Dir(None, self._clock())

    async def read(
        self, data_dir: str, chunk_id: int, version: int, offset: int, size: int
    ) -> bytes | bytearray | None:
        """The range from the replica's file in ``data_dir`` (``data_dir(address)``), or
        None when it is not as it should be (read it through its chunkserver).
        ``PermissionError`` when the files' modes keep this process out (``forget`` that
        chunkserver)."""
        if size <= INLINE_READ_BYTES_MAX:
            try:
                return read_file(data_dir, chunk_id, version, offset, size, nowait=True)
            except BlockingIOError:
                pass
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(THREADS_MAX)
        return await anyio.to_thread.run_sync(
            lambda: read_file(data_dir, chunk_id, version, offset, size, nowait=False),
            limiter=self._limiter,
        )


__all__ = [
    "INLINE_READ_BYTES_MAX",
    "LOCAL_CHECK_S",
    "LocalReads",
    "data_dir_is_live",
    "is_local_address",
    "read_file",
]
