"""Checksummed blocks in one replica file: data written with its blocks' checksums, a
replica cut to a shorter length, a block read back verified.

What it owns: keeping the checksum table (``dfs/wire/replicafile.py``) true to the data around every
change of it: only the partial blocks at the two ends of a write, or the new last block of
a cut, are read, and verified first, to be checksummed again, so that a bad block is never
re-checksummed into a good one (the store's rule 2). What it must not do: decide what a
mismatch means for the replica (the store marks it bad), or open files: it works on a
descriptor it is given. A mismatch raises what the caller's ``corrupt(block, reason)``
makes (the store logs it and makes it ``Corrupt``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from chunkserver.rawio import pwrite_all
from dfs.rawio import pread_into
from dfs.wire.replicafile import (
    BLOCK_BYTES,
    DATA_OFFSET,
    SUM,
    SUM_BYTES,
    TABLE_OFFSET,
    ZERO_BLOCK_SUM,
    block_sum,
)

# Makes the exception for block ``block`` failing for ``reason``.
Corrupter = Callable[[int, str], Exception]


def read_sum(fd: int, block: int, corrupt: Corrupter) -> int:
    raw = os.pread(fd, SUM_BYTES, TABLE_OFFSET + SUM_BYTES * block)
    if len(raw) != SUM_BYTES:
        raise corrupt(block, "checksum table cut short")
    value: int = SUM.unpack(raw)[0]
    return value


def read_verified_block(
    fd: int, block: int, valid_end: int, into: memoryview, corrupt: Corrupter
) -> None:
    """Read block ``block``'s bytes up to chunk offset ``valid_end`` into ``into`` and
    verify them against the table."""
    start = block * BLOCK_BYTES
    size = valid_end - start
    assert 0 < size <= BLOCK_BYTES and len(into) >= size
    target = into[:size]
    if pread_into(fd, target, DATA_OFFSET + start) != size:
        raise corrupt(block, "block cut short")
    if block_sum(target) != read_sum(fd, block, corrupt):
        raise corrupt(block, "checksum mismatch")


def truncate(fd: int, old_length: int, new_length: int, corrupt: Corrupter) -> None:
    """Cut the replica from ``old_length`` to ``new_length`` valid bytes: the new last
    block, if partial, gets the checksum of its shorter prefix (after verifying it)."""
    assert new_length < old_length
    tail = new_length % BLOCK_BYTES
    if tail:
        block = new_length // BLOCK_BYTES
        buf = memoryview(bytearray(BLOCK_BYTES))
        old_end = min((block + 1) * BLOCK_BYTES, old_length)
        read_verified_block(fd, block, old_end, buf, corrupt)
        pwrite_all(fd, SUM.pack(block_sum(buf[:tail])), TABLE_OFFSET + SUM_BYTES * block)
    os.ftruncate(fd, DATA_OFFSET + new_length)


# Writes bytes at a file position (all of them), in place of ``pwrite_all`` on the replica's
# descriptor: the store's direct writes (``ChunkStore.write``).
Put = Callable[[memoryview, int], None]


def write_blocks(
    fd: int,
    old_length: int,
    offset: int,
    data: memoryview,
    corrupt: Corrupter,
    put: Put | None = None,
) -> None:
    """Put ``data`` at ``offset`` (through ``put`` if given), then the checksums of every
    block it touches (and of the gap's blocks, when it starts past ``old_length``). Only
    the partial blocks at the two ends are read, and verified, to be re-checksummed."""
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
            sums.append(block_sum(data[start - offset : stop - offset]))
            continue
        old_end = min(start + BLOCK_BYTES, old_length)
        lo, hi = max(offset, start), min(end, stop)
        if old_end <= start and hi <= lo and stop - start == BLOCK_BYTES:
            sums.append(ZERO_BLOCK_SUM)  # a whole block of the gap
            continue
        if scratch is None:
            scratch = memoryview(bytearray(BLOCK_BYTES))
        else:
            scratch[:] = bytes(BLOCK_BYTES)
        if old_end > start:
            read_verified_block(fd, block, old_end, scratch, corrupt)
        if hi > lo:
            scratch[lo - start : hi - start] = data[lo - offset : hi - offset]
        sums.append(block_sum(scratch[: stop - start]))
    if put is None:
        pwrite_all(fd, data, DATA_OFFSET + offset)
    else:
        put(data, DATA_OFFSET + offset)
    table = struct.pack(f">{len(sums)}Q", *sums)
    pwrite_all(fd, table, TABLE_OFFSET + SUM_BYTES * first)


def reads_old_blocks(old_length: int, offset: int, size: int) -> bool:
    """Would ``write_blocks(fd, old_length, offset, data)`` with ``size`` bytes read (and
    verify) a block already on disk? Only a block partly covered by the write that holds
    bytes below ``old_length`` is read: the first, the last, or the one ``old_length``
    ends in (the others are wholly overwritten or part of the gap)."""
    end = offset + size
    new_length = max(old_length, end)
    first = min(offset, old_length) // BLOCK_BYTES
    last = (end - 1) // BLOCK_BYTES
    for block in {first, last, old_length // BLOCK_BYTES}:
        if not first <= block <= last:
            continue
        start = block * BLOCK_BYTES
        stop = min(start + BLOCK_BYTES, new_length)
        if offset <= start and end >= stop:
            continue  # wholly overwritten
        if min(start + BLOCK_BYTES, old_length) > start:
            return True
    return False


__all__ = [
    "Corrupter",
    "Put",
    "read_sum",
    "read_verified_block",
    "reads_old_blocks",
    "truncate",
    "write_blocks",
]
