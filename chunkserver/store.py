"""Chunk replicas on local disk: one file per replica, versions, per-block checksums.

What it owns: the files under ``<data_dir>/chunks/`` and ``<data_dir>/quarantine/``, the
in-memory table of replicas (id, version, length) rebuilt by a header-only scan at start,
the capacity accounting, and the mapping of disk errors onto ``dfs.wire.errors``.

What it must not do: know the network, tokens or the chain (``server.py`` does), or run on
the event loop. Every method here blocks on the disk; ``disk.py`` runs them in a bounded
thread pool and serialises the operations on one chunk (readers share, a writer is alone).
This class keeps its *global* state (the replica table, ``used_bytes``) consistent under a
mutex, but it relies on its caller for the per-chunk exclusion.

Rules, and where they are checked:
1. A path is built only from the integer chunk id (``chunk_path``), never from a string a
   peer sent. Names found on disk are parsed back to integers before use.
2. Bytes are returned only after every 64 KiB block they come from matched its xxh3_64
   checksum (``read``). A mismatch, or a block missing from a short file, is ``Corrupt``
   and returns nothing. A write that keeps part of an old block verifies that part first
   (``_write_blocks``, ``_truncate``), so a bad block is never re-checksummed into a good one.
3. Versions (docs/PROTOCOL.md, ``chunk.write``): a write for a version older than the
   replica's is ``Stale``; a write for a newer version first truncates the replica to the
   handle's ``length`` (bytes past it are junk left by a truncate), then records the version;
   a read of any version but the replica's is ``Stale``.
4. Nothing is fsynced unless asked (``sync``, or ``write(..., sync=True)``): a synced replica
   survives a crash exactly, including its name (the directory is fsynced after a create).
5. A disk error never crashes the server: ENOSPC/EDQUOT is ``NoSpace``; any other ``OSError``
   is logged once with its reason and becomes ``Corrupt`` (reads) or ``Unavailable``
   (writes, syncs) for that replica.
6. A replica whose fdatasync failed is never served again: Linux may mark the unwritten pages
   clean after a failed fsync, so the page cache could hand back bytes the disk never got
   (PostgreSQL's "fsyncgate"). Reads of it are ``Corrupt``, writes and syncs
   ``Unavailable``, until it is deleted. The same holds for a replica whose cut (a version
   bump to a shorter ``length``) failed before its header and the replica table said so:
   its file no longer matches any description we have.
7. The replica table always describes the file: a bump that cut the file records the new
   version and the cut length (header and table) before the data is written, so a data
   write that fails afterwards (EIO, ENOSPC) leaves a replica at the new version holding
   exactly the handle's ``length`` bytes, as a zero-length bump write would.
8. A writer's expectation (docs/PROTOCOL.md, ``expect_length``): the highest end the writer
   saw acknowledged under this version. A replica shorter than that lost acknowledged bytes
   (a crash before they were synced): a write past its end (the gap would read as zeros
   where data was), a ``sync`` write that would leave it short, and a ``sync`` are ``Stale``.

ON-DISK FORMAT, version 1 (``FORMAT_VERSION``) -- the one canonical definition
=============================================================================

Layout of ``<data_dir>``::

    chunks/<xx>/<id16>.chunk   one replica; <xx> = chunk_id % 256 as 2 lowercase hex digits,
                               <id16> = chunk_id as 16 lowercase hex digits
    quarantine/<id16>.<reason>.<time_ns>.chunk
                               files whose header failed to parse at start (kept for a human;
                               never read again, not counted as used)

A replica file (all integers big-endian)::

    offset   size            field
    0        64              header
      0        8               magic           b"dfschunk"
      8        2               format_version  1
      10       2               flags           0 (reserved)
      12       4               block_bytes     65536 (BLOCK_BYTES)
      16       8               chunk_id        equal to the id in the file name
      24       8               version         the replica's chunk version
      32       8               length          valid bytes (0 .. CHUNK_BYTES_MAX)
      40       4               blocks_max      16384 (BLOCKS_MAX = CHUNK_BYTES_MAX / BLOCK_BYTES)
      44       4               data_offset     135168 (DATA_OFFSET)
      48       8               reserved        zero
      56       8               header_sum      xxh3_64 of bytes 0..56
    64       8 * BLOCKS_MAX  checksum table: entry i = xxh3_64 of block i's valid bytes, that
                             is data[i*B : min((i+1)*B, length)]. Entries of blocks at or past
                             ``length`` mean nothing.
    135168   length          data: chunk byte k is at file offset DATA_OFFSET + k, so a read is
                             one pread. DATA_OFFSET is the table's end rounded up to 4 KiB.

Invariants kept by the writer (not trusted by the reader):
- The file is ``DATA_OFFSET + length`` bytes long. After a crash it may be shorter (a read of
  a missing block is ``Corrupt``) or longer (junk past ``length``; cut off before a write
  leaves a gap, so a gap always reads as zeros).
- A write puts data, then table entries, then the header. Unsynced, any subset may reach the
  disk; the checksums catch every mix (a block whose data and entry disagree), and the
  header's own checksum catches a torn header (the file is then quarantined at start).

Why one file with a fixed-size table at the front: data at a fixed offset makes reads and
writes single ``pread``/``pwrite`` calls with no index to consult, and one ``fdatasync``
makes data, checksums and header durable together. The table has room for the largest chunk
the metaserver allows (1 GiB, ``CHUNK_BYTES_MAX``), so one format fits every cluster chunk
size; the part of it a small chunk does not use is a hole (a sparse file). Capacity is
therefore counted by *footprint*, not by the apparent file size: the 4 KiB pages of header and
table in use plus the data rounded up to 4 KiB (``footprint_bytes``). Counting the apparent
size would count 132 KiB for every small file's replica.

Crash model: SQLite's (style.md §4), through ``dfs.testing.faultydisk.CrashDisk`` in
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
import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash

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

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"dfschunk"
BLOCK_BYTES = 64 * 1024
# The metaserver's largest chunk size (metaserver/server.py CHUNK_SIZE_MAX): the table always
# has room for it, so the format does not depend on the cluster's chunk size.
CHUNK_BYTES_MAX = 1 << 30
BLOCKS_MAX = CHUNK_BYTES_MAX // BLOCK_BYTES
PAGE_BYTES = 4096
HEADER_BYTES = 64
TABLE_OFFSET = HEADER_BYTES
SUM_BYTES = 8
DATA_OFFSET = -(-(TABLE_OFFSET + SUM_BYTES * BLOCKS_MAX) // PAGE_BYTES) * PAGE_BYTES
# A single read may ask for at most this much (docs/PROTOCOL.md, chunk.read).
READ_BYTES_MAX = 16 * 1024 * 1024
CHUNK_ID_MAX = (1 << 64) - 1
VERSION_MAX = (1 << 64) - 1

_HEADER_BODY = struct.Struct(">8sHHIQQQII8s")
_SUM = struct.Struct(">Q")
assert _HEADER_BODY.size + _SUM.size == HEADER_BYTES
assert DATA_OFFSET == 135168

_SUBDIR_RE = re.compile(r"[0-9a-f]{2}")
_FILE_RE = re.compile(r"([0-9a-f]{16})\.chunk")

_hash = xxhash.xxh3_64_intdigest
_ZERO_BLOCK_SUM = _hash(bytes(BLOCK_BYTES))


class BadHeader(Exception):
    """A replica file's header does not parse: torn, garbage, or not ours."""


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    chunk_id: int
    version: int
    length: int


@dataclass(slots=True)
class _Replica:
    chunk_id: int
    version: int
    length: int
    footprint_bytes: int
    # Written since the last fdatasync (or unknown: found at start).
    dirty: bool = True
    # Created since its directory was last fsynced: its name may not survive a crash.
    name_unsynced: bool = False
    # Why the replica may not be served (rule 6: an fdatasync or a cut failed); "" when
    # healthy. Never cleared (the replica must be deleted).
    failed: str = ""

    def info(self) -> ReplicaInfo:
        return ReplicaInfo(self.chunk_id, self.version, self.length)


# ---------------------------------------------------------------------- format (pure)


def encode_header(chunk_id: int, version: int, length: int) -> bytes:
    assert 0 < chunk_id <= CHUNK_ID_MAX and 0 <= version <= VERSION_MAX
    assert 0 <= length <= CHUNK_BYTES_MAX
    body = _HEADER_BODY.pack(
        MAGIC, FORMAT_VERSION, 0, BLOCK_BYTES, chunk_id, version, length, BLOCKS_MAX,
        DATA_OFFSET, bytes(8),
    )  # fmt: skip
    return body + _SUM.pack(_hash(body))


def decode_header(raw: bytes) -> ReplicaInfo:
    """Parse a header; ``BadHeader`` says why it is not a valid version-1 header."""
    if len(raw) < HEADER_BYTES:
        raise BadHeader(f"short header ({len(raw)} bytes)")
    body = raw[: _HEADER_BODY.size]
    (stored_sum,) = _SUM.unpack_from(raw, _HEADER_BODY.size)
    if _hash(body) != stored_sum:
        raise BadHeader("header checksum mismatch")
    magic, fmt, flags, block_bytes, chunk_id, version, length, blocks_max, data_offset, _ = (
        _HEADER_BODY.unpack(body)
    )
    if magic != MAGIC:
        raise BadHeader("bad magic")
    if fmt != FORMAT_VERSION or flags != 0:
        raise BadHeader(f"unsupported format version {fmt} flags {flags}")
    if (block_bytes, blocks_max, data_offset) != (BLOCK_BYTES, BLOCKS_MAX, DATA_OFFSET):
        raise BadHeader("unexpected geometry")
    if chunk_id == 0 or length > CHUNK_BYTES_MAX:
        raise BadHeader("field out of range")
    return ReplicaInfo(chunk_id, version, length)


def footprint_bytes(length: int) -> int:
    """What a replica of ``length`` valid bytes occupies: the pages of header and checksum
    table in use, and the data pages. The table's unused tail is a hole in the file."""
    blocks = -(-length // BLOCK_BYTES)
    meta = TABLE_OFFSET + SUM_BYTES * blocks
    return _round_up(meta, PAGE_BYTES) + _round_up(length, PAGE_BYTES)


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def chunk_relpath(chunk_id: int) -> str:
    """The replica's path under the data directory, from the integer id alone (rule 1)."""
    assert type(chunk_id) is int and 0 < chunk_id <= CHUNK_ID_MAX
    return f"chunks/{chunk_id % 256:02x}/{chunk_id:016x}.chunk"


# ---------------------------------------------------------------------- low-level I/O


def _pread_into(fd: int, buf: memoryview, pos: int) -> int:
    """Fill ``buf`` from ``pos``; returns the bytes read (fewer only at end of file)."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], pos + got)
        if n == 0:
            break
        got += n
    return got


def _pwrite_all(fd: int, data: memoryview | bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


# ---------------------------------------------------------------------- the store


class ChunkStore:
    """The replicas under ``root`` (the chunkserver's data directory). Blocking; see above.

    ``capacity_bytes`` 0 means the file system's size. ``chunk_bytes_max`` (at most
    ``CHUNK_BYTES_MAX``) bounds ``offset + size`` of every write. ``fsync`` False makes
    ``sync`` a no-op (tests only). ``log_prefix`` starts every log line (the server puts
    its id there once it has one).
    """

    def __init__(
        self,
        root: Path,
        *,
        capacity_bytes: int = 0,
        chunk_bytes_max: int = CHUNK_BYTES_MAX,
        fsync: bool = True,
        log_prefix: str = "chunkserver",
    ) -> None:
        assert 0 < chunk_bytes_max <= CHUNK_BYTES_MAX and capacity_bytes >= 0
        self.root = Path(root)
        self.chunks_dir = self.root / "chunks"
        self.quarantine_dir = self.root / "quarantine"
        self.chunk_bytes_max = chunk_bytes_max
        self.fsync = fsync
        self.log_prefix = log_prefix
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        if capacity_bytes == 0:
            st = os.statvfs(self.chunks_dir)
            capacity_bytes = st.f_blocks * st.f_frsize
        self.capacity_bytes = capacity_bytes
        # Guards the replica table, used_bytes and _subdirs_unsynced; per-chunk state is
        # the caller's to serialise (disk.py).
        self._mutex = threading.Lock()
        self._replicas: dict[int, _Replica] = {}
        self._used_bytes = 0
        # Sub-directories created since the chunks directory was last fsynced.
        self._subdirs_unsynced: set[int] = set()
        self.quarantined = 0
        self._scan()

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

    def list_chunks(self) -> list[ReplicaInfo]:
        """Every replica (id, version, length), in id order: the block report."""
        with self._mutex:
            replicas = list(self._replicas.values())
        return sorted((r.info() for r in replicas), key=lambda r: r.chunk_id)

    def path(self, chunk_id: int) -> Path:
        return self.root / chunk_relpath(chunk_id)

    # ------------------------------------------------------------------ start-up scan

    def _scan(self) -> None:
        """Find every replica by reading headers only; quarantine files that do not parse."""
        started = time.monotonic()
        for sub in sorted(os.scandir(self.chunks_dir), key=lambda e: e.name):
            if not (sub.is_dir(follow_symlinks=False) and _SUBDIR_RE.fullmatch(sub.name)):
                log.info("%s event=scan_ignored path=%s reason=not_a_chunk_dir",
                         self.log_prefix, sub.path)  # fmt: skip
                continue
            subdir = int(sub.name, 16)
            for entry in os.scandir(sub.path):
                match = _FILE_RE.fullmatch(entry.name)
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
                self._replicas[chunk_id] = _Replica(
                    chunk_id, info.version, info.length, footprint, dirty=True
                )
                self._used_bytes += footprint
        log.info("%s event=scanned chunks=%d used_bytes=%d quarantined=%d elapsed_ms=%d",
                 self.log_prefix, len(self._replicas), self._used_bytes, self.quarantined,
                 (time.monotonic() - started) * 1000)  # fmt: skip

    def _quarantine(self, path: Path, chunk_id: int, reason: str, detail: str = "") -> None:
        # ``reason`` is one of our own constants and the id an integer: no peer string here.
        self.quarantine_dir.mkdir(exist_ok=True)
        target = self.quarantine_dir / f"{chunk_id:016x}.{reason}.{time.time_ns()}.chunk"
        log.warning("%s event=quarantined chunk=%d path=%s reason=%s detail=%r",
                    self.log_prefix, chunk_id, path, reason, detail)  # fmt: skip
        try:
            os.rename(path, target)
        except OSError as e:
            log.warning("%s event=quarantine_failed path=%s reason=%s",
                        self.log_prefix, path, e)  # fmt: skip
        self.quarantined += 1

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
        _check_ids(chunk_id, version)
        if offset < 0 or length < 0 or (expect_length is not None and expect_length < 0):
            raise Invalid("negative offset or length", chunk_id=chunk_id)
        if end > self.chunk_bytes_max or length > self.chunk_bytes_max:
            raise TooBig(
                "write past the maximum chunk size", chunk_id=chunk_id, limit=self.chunk_bytes_max
            )
        replica = self._replicas.get(chunk_id)
        creating = replica is None
        if replica is None:
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
            if replica.failed:
                raise Unavailable(f"replica failed: {replica.failed}", chunk_id=chunk_id)
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
        self._reserve(chunk_id, new_footprint - old_footprint)
        # The footprint the replica table holds for this replica (see rule 7).
        settled_footprint = old_footprint
        cutting = False
        path = self.path(chunk_id)
        fd = -1
        try:
            if creating:
                fd = self._create_file(chunk_id, path)
                _pwrite_all(fd, encode_header(chunk_id, version, 0), 0)
            else:
                assert replica is not None
                replica.dirty = True
                fd = os.open(path, os.O_RDWR)
            if base_length < old_length:
                # Only a bump cuts (rule 3). From the first byte the cut changes until the
                # table describes the result, a failure leaves a file we cannot describe.
                assert replica is not None and bump
                cutting = True
                self._truncate(fd, chunk_id, old_length, base_length)
                _pwrite_all(fd, encode_header(chunk_id, version, base_length), 0)
                settled_footprint = footprint_bytes(base_length)
                with self._mutex:
                    replica.version = version
                    replica.length = base_length
                    replica.footprint_bytes = settled_footprint
                cutting = False
            if n:
                if offset > base_length and os.fstat(fd).st_size > DATA_OFFSET + base_length:
                    # Junk past the valid length (a crash, or a truncate) must not show
                    # through the gap: cut it off so the gap is a hole, read as zeros.
                    os.ftruncate(fd, DATA_OFFSET + base_length)
                self._write_blocks(fd, chunk_id, base_length, offset, view)
            if creating or bump or new_length != old_length:
                _pwrite_all(fd, encode_header(chunk_id, version, new_length), 0)
            if sync and self.fsync:
                self._fdatasync(fd, chunk_id, replica)
        except BaseException as e:
            self._release(new_footprint - settled_footprint)
            if cutting:
                assert replica is not None
                replica.failed = "a cut failed"
                log.warning("%s event=replica_failed chunk=%d reason=%r",
                            self.log_prefix, chunk_id, "cut failed")  # fmt: skip
            if fd >= 0:
                os.close(fd)
                fd = -1
            if creating:
                # Best effort: a half-made file would be quarantined at the next start.
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if isinstance(e, FileNotFoundError) and not creating:
                raise self._vanished(chunk_id, e) from e
            if isinstance(e, OSError):
                raise self._disk_error(e, chunk_id, "write") from e
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        with self._mutex:
            if replica is None:
                replica = _Replica(chunk_id, version, new_length, new_footprint, dirty=True)
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

    def _create_file(self, chunk_id: int, path: Path) -> int:
        subdir = chunk_id % 256
        if not path.parent.is_dir():
            path.parent.mkdir(exist_ok=True)
            with self._mutex:
                self._subdirs_unsynced.add(subdir)
        # O_EXCL: the replica table said there is no such file; a leftover one (a write that
        # failed and could not unlink) is replaced, since its contents are not trusted.
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            os.unlink(path)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)

    def _reserve(self, chunk_id: int, growth_bytes: int) -> None:
        with self._mutex:
            if growth_bytes > 0 and self._used_bytes + growth_bytes > self.capacity_bytes:
                raise NoSpace(
                    "chunkserver full",
                    chunk_id=chunk_id,
                    capacity_bytes=self.capacity_bytes,
                    used_bytes=self._used_bytes,
                )
            self._used_bytes += growth_bytes

    def _release(self, growth_bytes: int) -> None:
        with self._mutex:
            self._used_bytes -= growth_bytes

    def _read_sum(self, fd: int, block: int) -> int:
        raw = os.pread(fd, SUM_BYTES, TABLE_OFFSET + SUM_BYTES * block)
        if len(raw) != SUM_BYTES:
            raise Corrupt("checksum table cut short", block=block)
        value: int = _SUM.unpack(raw)[0]
        return value

    def _read_verified_block(
        self, fd: int, chunk_id: int, block: int, valid_end: int, into: memoryview
    ) -> None:
        """Read block ``block``'s bytes up to chunk offset ``valid_end`` into ``into`` and
        verify them against the table (rule 2)."""
        start = block * BLOCK_BYTES
        size = valid_end - start
        assert 0 < size <= BLOCK_BYTES and len(into) >= size
        target = into[:size]
        if _pread_into(fd, target, DATA_OFFSET + start) != size:
            raise self._corrupt(chunk_id, block, "block cut short")
        if _hash(target) != self._read_sum(fd, block):
            raise self._corrupt(chunk_id, block, "checksum mismatch")

    def _truncate(self, fd: int, chunk_id: int, old_length: int, new_length: int) -> None:
        """Cut the replica from ``old_length`` to ``new_length`` valid bytes: the new last
        block, if partial, gets the checksum of its shorter prefix (after verifying it)."""
        assert new_length < old_length
        tail = new_length % BLOCK_BYTES
        if tail:
            block = new_length // BLOCK_BYTES
            buf = memoryview(bytearray(BLOCK_BYTES))
            old_end = min((block + 1) * BLOCK_BYTES, old_length)
            self._read_verified_block(fd, chunk_id, block, old_end, buf)
            _pwrite_all(fd, _SUM.pack(_hash(buf[:tail])), TABLE_OFFSET + SUM_BYTES * block)
        os.ftruncate(fd, DATA_OFFSET + new_length)

    def _write_blocks(
        self, fd: int, chunk_id: int, old_length: int, offset: int, data: memoryview
    ) -> None:
        """Put ``data`` at ``offset``, then the checksums of every block it touches (and of
        the gap's blocks, when it starts past ``old_length``). Only the partial blocks at the
        two ends are read, and verified, to be re-checksummed."""
        end = offset + len(data)
        new_length = max(old_length, end)
        first = min(offset, old_length) // BLOCK_BYTES
        last = (end - 1) // BLOCK_BYTES
        sums: list[int] = []
        scratch: memoryview | None = None
        for block in range(first, last + 1):
            start = block * BLOCK_BYTES
            stop = min(start + BLOCK_BYTES, new_length)
            if offset <= start and end >= stop:
                sums.append(_hash(data[start - offset : stop - offset]))
                continue
            old_end = min(start + BLOCK_BYTES, old_length)
            lo, hi = max(offset, start), min(end, stop)
            if old_end <= start and hi <= lo and stop - start == BLOCK_BYTES:
                sums.append(_ZERO_BLOCK_SUM)  # a whole block of the gap
                continue
            if scratch is None:
                scratch = memoryview(bytearray(BLOCK_BYTES))
            else:
                scratch[:] = bytes(BLOCK_BYTES)
            if old_end > start:
                self._read_verified_block(fd, chunk_id, block, old_end, scratch)
            if hi > lo:
                scratch[lo - start : hi - start] = data[lo - offset : hi - offset]
            sums.append(_hash(scratch[: stop - start]))
        _pwrite_all(fd, data, DATA_OFFSET + offset)
        table = struct.pack(f">{len(sums)}Q", *sums)
        _pwrite_all(fd, table, TABLE_OFFSET + SUM_BYTES * first)

    # ------------------------------------------------------------------ read

    def read(self, chunk_id: int, version: int, offset: int, size: int) -> memoryview:
        """Up to ``size`` bytes from ``offset``, every block verified (rule 2). Shorter at
        the replica's end; empty at or past it."""
        _check_ids(chunk_id, version)
        if offset < 0 or not 0 <= size <= READ_BYTES_MAX:
            raise Invalid("bad offset or size", chunk_id=chunk_id, limit=READ_BYTES_MAX)
        replica = self._get(chunk_id)
        if replica.failed:
            raise Corrupt(f"replica failed: {replica.failed}", chunk_id=chunk_id)
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
        try:
            fd = os.open(self.path(chunk_id), os.O_RDONLY)
            try:
                got = _pread_into(fd, buf, DATA_OFFSET + start)
                raw = os.pread(fd, SUM_BYTES * (last - first + 1), TABLE_OFFSET + SUM_BYTES * first)
            finally:
                os.close(fd)
        except FileNotFoundError as e:
            raise self._vanished(chunk_id, e) from e
        except OSError as e:
            raise self._disk_error(e, chunk_id, "read") from e
        if len(raw) != SUM_BYTES * (last - first + 1):
            raise self._corrupt(chunk_id, first, "checksum table cut short")
        sums = struct.unpack(f">{last - first + 1}Q", raw)
        for i, expected in enumerate(sums):
            lo = i * BLOCK_BYTES
            hi = min(lo + BLOCK_BYTES, len(buf))
            if got < hi:
                raise self._corrupt(chunk_id, first + i, "block cut short")
            if _hash(buf[lo:hi]) != expected:
                raise self._corrupt(chunk_id, first + i, "checksum mismatch")
        return buf[offset - start : end - start]

    # ------------------------------------------------------------------ sync, delete

    def sync(
        self, chunk_id: int, version: int | None = None, expect_length: int | None = None
    ) -> ReplicaInfo:
        """Make the replica durable: data, checksums, header, and its name. With
        ``version``, a replica at another version is ``Stale``; with ``expect_length``, a
        replica shorter than that is ``Stale`` (rule 8)."""
        replica = self._get(chunk_id)
        if version is not None and version != replica.version:
            raise Stale(
                "sync of another version than the replica's",
                chunk_id=chunk_id,
                version=version,
                replica_version=replica.version,
            )
        if replica.failed:
            raise Unavailable(f"replica failed: {replica.failed}", chunk_id=chunk_id)
        if expect_length is not None and replica.length < expect_length:
            raise Stale(
                "replica shorter than the writer's acknowledged length",
                chunk_id=chunk_id,
                replica_length=replica.length,
                expect_length=expect_length,
            )
        if replica.dirty:
            try:
                fd = os.open(self.path(chunk_id), os.O_RDONLY)
                try:
                    if self.fsync:
                        self._fdatasync(fd, chunk_id, replica)
                finally:
                    os.close(fd)
            except FileNotFoundError as e:
                raise self._vanished(chunk_id, e) from e
            except OSError as e:
                raise self._disk_error(e, chunk_id, "sync") from e
            replica.dirty = False
        self._sync_names(replica)
        return replica.info()

    def _sync_names(self, replica: _Replica) -> None:
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

    def _fdatasync(self, fd: int, chunk_id: int, replica: _Replica | None) -> None:
        try:
            os.fdatasync(fd)
        except OSError:
            # Rule 6. A replica being created is unlinked by the caller instead.
            if replica is not None:
                replica.failed = "an fdatasync failed"
            raise

    def _fsync_dir(self, path: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, chunk_id: int) -> None:
        """Remove the replica (a stale or unknown chunk). Not fsynced: a deleted replica that
        comes back after a crash is stale or unknown again, and deleted again."""
        replica = self._get(chunk_id)
        try:
            os.unlink(self.path(chunk_id))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._disk_error(e, chunk_id, "delete") from e
        with self._mutex:
            self._replicas.pop(chunk_id, None)
            self._used_bytes -= replica.footprint_bytes

    # ------------------------------------------------------------------ errors

    def _get(self, chunk_id: int) -> _Replica:
        replica = self._replicas.get(chunk_id)
        if replica is None:
            raise NotFound("no replica of this chunk here", chunk_id=chunk_id)
        return replica

    def _corrupt(self, chunk_id: int, block: int, reason: str) -> Corrupt:
        log.warning("%s event=corrupt chunk=%d block=%d reason=%r",
                    self.log_prefix, chunk_id, block, reason)  # fmt: skip
        return Corrupt(reason, chunk_id=chunk_id, block=block)

    def _vanished(self, chunk_id: int, e: OSError) -> NotFound:
        # Someone removed the file under us: forget the replica (it is gone for good).
        log.warning("%s event=replica_vanished chunk=%d reason=%r",
                    self.log_prefix, chunk_id, str(e))  # fmt: skip
        with self._mutex:
            replica = self._replicas.pop(chunk_id, None)
            if replica is not None:
                self._used_bytes -= replica.footprint_bytes
        return NotFound("replica file vanished", chunk_id=chunk_id)

    def _disk_error(self, e: OSError, chunk_id: int, op: str) -> DfsError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            log.warning("%s event=disk_full op=%s chunk=%d reason=%r",
                        self.log_prefix, op, chunk_id, str(e))  # fmt: skip
            return NoSpace("disk full", chunk_id=chunk_id)
        log.warning("%s event=disk_error op=%s chunk=%d errno=%s reason=%r",
                    self.log_prefix, op, chunk_id, e.errno, str(e))  # fmt: skip
        if op == "read":
            # The bytes cannot be produced: to the reader this replica is as good as corrupt
            # (it reads another one and reports this one).
            return Corrupt(f"disk error: {e.strerror}", chunk_id=chunk_id)
        return Unavailable(f"disk error: {e.strerror}", chunk_id=chunk_id)


def _check_ids(chunk_id: int, version: int) -> None:
    if not 0 < chunk_id <= CHUNK_ID_MAX or not 0 <= version <= VERSION_MAX:
        raise Invalid("chunk id or version out of range", chunk_id=chunk_id)


__all__ = [
    "BLOCK_BYTES",
    "CHUNK_BYTES_MAX",
    "DATA_OFFSET",
    "FORMAT_VERSION",
    "READ_BYTES_MAX",
    "BadHeader",
    "ChunkStore",
    "ReplicaInfo",
    "chunk_relpath",
    "decode_header",
    "encode_header",
    "footprint_bytes",
]
