"""The on-disk format of a replica, and the names of replica files: pure (no I/O).
The chunkserver writes replicas (``chunkserver/store.py``); a client on the same machine
reads them too (``dfs/client/localread.py``, SHORT-CIRCUIT READS).

What it owns: the one canonical definition of the format below, its constants, the
header's encoding and decoding, a replica's footprint, and the paths and file names
under a data directory built from (or parsed back to) integer chunk ids. What it must not
do: touch a file (``store.py`` reads and writes replicas by these rules).

ON-DISK FORMAT, version 1 (``FORMAT_VERSION``) -- the one canonical definition
=============================================================================

Layout of ``<data_dir>``::

    chunks/<xx>/<id16>.chunk   one replica; <xx> = chunk_id % 256 as 2 lowercase hex digits,
                               <id16> = chunk_id as 16 lowercase hex digits
    quarantine/<id16>.<reason>.<time_ns>.chunk
                               files whose header failed to parse at start, and bad replicas
                               (rule 6); never read again, not counted as used, removed by
                               ``delete`` or ``install_incoming`` of their id
    tmp/<id16>.<time_ns>.part  a replica being copied in (rule 9); removed at start

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
                             ``length`` mean nothing. ``LOST_BLOCK_SUM`` marks a block an
                             operator's salvage (``chunkserver/salvage.py``) found bad: it
                             reads as ``Corrupt`` without making the replica bad.
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

"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import xxhash

from dfs.wire.limits import BLOCK_BYTES, CHUNK_BYTES_MAX, CHUNK_ID_MAX, VERSION_MAX

FORMAT_VERSION = 1
MAGIC = b"dfschunk"
# The table always has room for the largest chunk (``CHUNK_BYTES_MAX``, the largest chunk
# size), so the format does not depend on the cluster's chunk size.
BLOCKS_MAX = CHUNK_BYTES_MAX // BLOCK_BYTES
PAGE_BYTES = 4096
HEADER_BYTES = 64
TABLE_OFFSET = HEADER_BYTES
SUM_BYTES = 8
DATA_OFFSET = -(-(TABLE_OFFSET + SUM_BYTES * BLOCKS_MAX) // PAGE_BYTES) * PAGE_BYTES

HEADER_BODY = struct.Struct(">8sHHIQQQII8s")
SUM = struct.Struct(">Q")
assert HEADER_BODY.size + SUM.size == HEADER_BYTES
assert DATA_OFFSET == 135168

SUBDIR_RE = re.compile(r"[0-9a-f]{2}")
FILE_RE = re.compile(r"([0-9a-f]{16})\.chunk")
QUARANTINE_RE = re.compile(r"([0-9a-f]{16})\.[a-z_]+\.[0-9]+\.chunk")

# The checksum of a block: xxh3_64 of its valid bytes.
block_sum = xxhash.xxh3_64_intdigest
ZERO_BLOCK_SUM = block_sum(bytes(BLOCK_BYTES))
# A lost block of a salvaged replica ("lostblk!"; a real block's checksum equals it with a
# chance of 2^-64).
LOST_BLOCK_SUM = 0x6C6F7374626C6B21


class BadHeader(Exception):
    """A replica file's header does not parse: torn, garbage, or not ours."""


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    chunk_id: int
    version: int
    length: int


def encode_header(chunk_id: int, version: int, length: int) -> bytes:
    assert 0 < chunk_id <= CHUNK_ID_MAX and 0 <= version <= VERSION_MAX
    assert 0 <= length <= CHUNK_BYTES_MAX
    body = HEADER_BODY.pack(
        MAGIC, FORMAT_VERSION, 0, BLOCK_BYTES, chunk_id, version, length, BLOCKS_MAX,
        DATA_OFFSET, bytes(8),
    )  # fmt: skip
    return body + SUM.pack(block_sum(body))


def decode_header(raw: bytes) -> ReplicaInfo:
    """Parse a header; ``BadHeader`` says why it is not a valid version-1 header."""
    if len(raw) < HEADER_BYTES:
        raise BadHeader(f"short header ({len(raw)} bytes)")
    body = raw[: HEADER_BODY.size]
    (stored_sum,) = SUM.unpack_from(raw, HEADER_BODY.size)
    if block_sum(body) != stored_sum:
        raise BadHeader("header checksum mismatch")
    magic, fmt, flags, block_bytes, chunk_id, version, length, blocks_max, data_offset, _ = (
        HEADER_BODY.unpack(body)
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


def first_bad_block(
    data: memoryview, got: int, sums: bytes | bytearray | memoryview
) -> tuple[int, str] | None:
    """The first block of ``data`` (read from a block boundary; ``got`` of its bytes came)
    that does not match its checksum, ``sums`` being the table's entries for those blocks
    in order: (its index in ``data``, why); None when every block matches. The one rule of
    a verified read, for the chunk store and the client's short-circuit reads."""
    count = -(-len(data) // BLOCK_BYTES)
    if len(sums) != SUM_BYTES * count:
        return 0, "checksum table cut short"
    for i, (expected,) in enumerate(SUM.iter_unpack(sums)):
        lo = i * BLOCK_BYTES
        hi = min(lo + BLOCK_BYTES, len(data))
        if got < hi:
            return i, "block cut short"
        if block_sum(data[lo:hi]) != expected:
            return i, "checksum mismatch"
    return None


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


__all__ = [
    "BLOCKS_MAX",
    "BLOCK_BYTES",
    "CHUNK_BYTES_MAX",
    "CHUNK_ID_MAX",
    "DATA_OFFSET",
    "FILE_RE",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "LOST_BLOCK_SUM",
    "PAGE_BYTES",
    "QUARANTINE_RE",
    "SUBDIR_RE",
    "SUM",
    "SUM_BYTES",
    "TABLE_OFFSET",
    "VERSION_MAX",
    "ZERO_BLOCK_SUM",
    "BadHeader",
    "ReplicaInfo",
    "block_sum",
    "chunk_relpath",
    "decode_header",
    "encode_header",
    "first_bad_block",
    "footprint_bytes",
]
