"""Quarantined copies of a chunk judged, and the best one made a live replica again, for
an operator (``dfs admin fsck --salvage``: ``chunk.quarantined``, ``chunk.salvage``).

What it owns: reading a quarantined file (``store.py`` rule 6: kept when no other live
member held the chunk) block by block against its own checksum table, and building from
it a replica at the version the metaserver names, through the store's copy-in path
(``copies.py``, rule 9: built in ``tmp/``, fsynced, renamed into place). What it must not
do: serve a block whose bytes do not match the checksum they had: a bad block (or one
the copy does not reach) is written as zeros with ``LOST_BLOCK_SUM`` in the table, so it
reads as ``Corrupt`` (EIO through the mount) and never as other bytes, without making
the replica bad; or, when the operator asks for it (``zero``), as zeros with their true
checksum (the file then reads whole, with zeros there, and copies of it can be made).

Both run in the disk pool under the chunk's exclusive lock (``disk.py``). File names come
from the store's own index of ``quarantine/`` (rule 1): a name a peer sends is only
compared with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chunkserver.rawio import pwrite_all
from dfs.rawio import pread_into
from dfs.wire.errors import Invalid, NotFound
from dfs.wire.replicafile import (
    BLOCK_BYTES,
    DATA_OFFSET,
    HEADER_BYTES,
    LOST_BLOCK_SUM,
    SUM,
    SUM_BYTES,
    TABLE_OFFSET,
    BadHeader,
    ReplicaInfo,
    block_sum,
    decode_header,
)

if TYPE_CHECKING:
    from chunkserver.store import ChunkStore

# Copies of one chunk judged per request at most (each is read whole).
COPIES_MAX = 16


@dataclass(frozen=True, slots=True)
class CopyJudged:
    name: str  # its file name in quarantine/
    version: int
    length: int
    blocks: int
    good_blocks: int


def _paths(store: ChunkStore, chunk_id: int) -> list[Path]:
    with store._mutex:
        return list(store._quarantined.get(chunk_id, []))[-COPIES_MAX:]


def _block_ok(fd: int, block: int, end: int, buf: memoryview) -> bool:
    """Whether block ``block``'s bytes up to chunk offset ``end`` match the table."""
    start = block * BLOCK_BYTES
    size = end - start
    if pread_into(fd, buf[:size], DATA_OFFSET + start) != size:
        return False
    raw = os.pread(fd, SUM_BYTES, TABLE_OFFSET + SUM_BYTES * block)
    return len(raw) == SUM_BYTES and block_sum(buf[:size]) == SUM.unpack(raw)[0]


def _judge(path: Path) -> tuple[ReplicaInfo, list[bool]] | None:
    """The copy's header and, per block, whether it verifies (None: no usable header)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            info = decode_header(os.pread(fd, HEADER_BYTES, 0))
        except BadHeader:
            return None
        buf = memoryview(bytearray(BLOCK_BYTES))
        count = -(-info.length // BLOCK_BYTES)
        ok = []
        for block in range(count):
            end = min((block + 1) * BLOCK_BYTES, info.length)
            try:
                ok.append(_block_ok(fd, block, end, buf))
            except OSError:
                ok.append(False)
        return info, ok
    finally:
        os.close(fd)


def quarantined(store: ChunkStore, chunk_id: int) -> list[CopyJudged]:
    """The quarantined copies of ``chunk_id`` with a readable header, judged."""
    out = []
    for path in _paths(store, chunk_id):
        judged = _judge(path)
        if judged is None or judged[0].chunk_id != chunk_id:
            continue
        info, ok = judged
        out.append(CopyJudged(path.name, info.version, info.length, len(ok), sum(ok)))
    return out


def salvage(
    store: ChunkStore, chunk_id: int, name: str, version: int, length: int, zero: bool
) -> tuple[ReplicaInfo, int]:
    """Make the quarantined copy ``name`` the replica of ``chunk_id`` at ``version``, cut
    or extended to ``length`` bytes (the chunk table's); returns it and its lost blocks."""
    path = next((p for p in _paths(store, chunk_id) if p.name == name), None)
    if path is None:
        raise NotFound("no such quarantined copy", chunk_id=chunk_id, copy=name)
    judged = _judge(path)
    if judged is None:
        raise Invalid("the copy's header does not parse", chunk_id=chunk_id, copy=name)
    info, ok = judged
    incoming = store.begin_incoming(chunk_id, version, length)
    lost: list[int] = []
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            buf = memoryview(bytearray(BLOCK_BYTES))
            for block in range(-(-length // BLOCK_BYTES)):
                start = block * BLOCK_BYTES
                end = min(start + BLOCK_BYTES, length)
                # Good only if the copy verified this block and holds all of ``end``.
                good = block < len(ok) and ok[block] and end <= info.length
                if good:
                    good = pread_into(fd, buf[: end - start], DATA_OFFSET + start) == end - start
                if not good:
                    buf[: end - start] = bytes(end - start)
                    lost.append(block)
                store.write_incoming(incoming, buf[: end - start])
        finally:
            os.close(fd)
        if not zero:
            for block in lost:
                pwrite_all(incoming.fd, SUM.pack(LOST_BLOCK_SUM), TABLE_OFFSET + SUM_BYTES * block)
        replica = store.install_incoming(incoming)
    except BaseException:
        store.abort_incoming(incoming)
        raise
    with store._mutex:
        store._bad.pop(chunk_id, None)
    return replica, len(lost)


__all__ = ["COPIES_MAX", "CopyJudged", "quarantined", "salvage"]
