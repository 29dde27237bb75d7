"""``FileIo``: what open files share (the servers, the location cache, the task group),
and reading committed bytes from the chunkservers.

What it owns: the batched ``fs.locate`` through the location cache, and a read of a
file range from its replicas: split into pieces of at most ``read_piece_bytes`` read
concurrently, holes and bytes past a chunk's length zero-filled, a chunk located again
after ``Stale`` or when every replica failed (a write in flight, a changed replica
set), with backoff, until the client's deadline. What it must not do: know an open
file's write-back state (``files.py`` overlays its own unflushed bytes on what this
returns) or FUSE.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dfs.client.cache import LocationCache
from dfs.client.chunkio import READ_BYTES_MAX, ChunkIo, gather
from dfs.client.meta import MetaClient
from dfs.client.options import ClientOptions
from dfs.client.records import Attr, ChunkLocation
from dfs.wire.errors import DfsError, Stale, Timeout, Unavailable
from dfs.wire.limits import LOCATE_COUNT_MAX

log = logging.getLogger(__name__)

# fs.locate batch: chunks asked for when one is missing from the cache (so a sequential
# read locates once per batch); at most the protocol's largest count (LOCATE_COUNT_MAX).
LOCATE_BATCH = 64
# First pause before locating a chunk again after a failed read (doubling per attempt).
STALE_BACKOFF_MIN_S = 0.005
STALE_BACKOFF_MAX_S = 1.0


class FileIo:
    """What open files share: the servers, the location cache, the task group."""

    def __init__(
        self,
        *,
        meta: MetaClient,
        chunks: ChunkIo,
        locations: LocationCache,
        task_group: TaskGroup,
        chunk_size: int,
        options: ClientOptions,
        on_attr: Callable[[Attr], None],
        defer_commit: Callable[[Any, int, dict[str, Any]], Attr | None] | None = None,
        land_commits: Callable[[int], Awaitable[None]] | None = None,
        close_behind: Callable[[Any], bool] | None = None,
        behind_failed: Callable[[Any, DfsError], None] | None = None,
    ) -> None:
        self.meta = meta
        self.chunks = chunks
        self.locations = locations
        self.task_group = task_group
        self.chunk_size = chunk_size
        self.options = options
        self.on_attr = on_attr  # attributes fresh from the metaserver (commit, truncate)
        # A new file's commit through the directory lease's queue (dirleases.py): given
        # ``OpenInode.created_under``, the ino and the commit's fields, the attributes it
        # will give, or None (commit it the synchronous way); and the wait for them.
        self.defer_commit = defer_commit
        self.land_commits = land_commits
        # files.py, CLOSE BEHIND: whether a close(2) of the given inode may leave its
        # bytes for later (marking it ``behind``; None: never); what to do when a
        # release's flush of such an inode failed (the inode, why); how many are behind.
        self.close_behind = close_behind
        self.behind_failed = behind_failed
        self.behind_count = 0

    async def locate(self, ino: int, first: int, last: int) -> dict[int, ChunkLocation | None]:
        """Locations of chunks ``first..last`` (None: a hole), from the cache or batched
        ``fs.locate`` calls."""
        result: dict[int, ChunkLocation | None] = {}
        missing: list[int] = []
        for index in range(first, last + 1):
            known, location = self.locations.get(ino, index)
            if known:
                result[index] = location
            else:
                missing.append(index)
        while missing:
            start = missing[0]
            count = min(LOCATE_COUNT_MAX, max(last - start + 1, LOCATE_BATCH))
            epoch = self.locations.epoch(ino)
            header = await self.meta.read("fs.locate", ino=ino, index=start, count=count)
            found: dict[int, ChunkLocation] = {}
            for wire in header.get("chunks", []):
                location = ChunkLocation.from_wire(wire)
                if start <= location.index < start + count:
                    found[location.index] = location
            for index in range(start, start + count):
                self.locations.put(ino, index, found.get(index), epoch=epoch)
            for index in [i for i in missing if i < start + count]:
                result[index] = found.get(index)
            missing = [i for i in missing if i >= start + count]
        return result

    async def fetch(self, ino: int, start: int, end: int, written: dict[int, int]) -> bytes:
        """Bytes [start, end) of file ``ino`` from the chunkservers, holes and junk
        zero-filled; ``written``: per chunk index, the length this client wrote there and
        the table may not have yet (its uploads landed, their commit not)."""
        io = self
        chunk_size = io.chunk_size
        first, last = start // chunk_size, (end - 1) // chunk_size
        locations = await io.locate(ino, first, last)
        piece_bytes = min(io.options.read_piece_bytes, READ_BYTES_MAX)
        # (file offset, size) of each range to ask a replica for, in order.
        pieces: list[tuple[int, int, int]] = []  # (chunk index, file offset, size)
        for index in range(first, last + 1):
            base = index * chunk_size
            a, b = max(start, base), min(end, base + chunk_size)
            location = locations.get(index)
            valid = max(location.length if location else 0, written.get(index, 0))
            b = min(b, base + valid)
            while a < b:
                size = min(piece_bytes, b - a)
                pieces.append((index, a, size))
                a += size
        if not pieces:
            return bytes(end - start)
        deadline = anyio.current_time() + io.options.timeout_s
        results = await gather(
            [
                partial(
                    self._read_piece,
                    ino,
                    index,
                    locations.get(index),
                    at - index * chunk_size,
                    size,
                    deadline,
                )
                for index, at, size in pieces
            ]
        )
        if len(pieces) == 1 and pieces[0][1] == start and len(results[0]) == end - start:
            return results[0]  # one replica answer covers it all: no copy
        segments: list[bytes | memoryview] = []
        pos = start
        for (_, at, size), payload in zip(pieces, results, strict=True):
            if at > pos:
                segments.append(bytes(at - pos))
            segments.append(payload[:size])
            pos = at + min(len(payload), size)
        if pos < end:
            segments.append(bytes(end - pos))
        return b"".join(segments)

    async def _read_piece(
        self,
        ino: int,
        index: int,
        location: ChunkLocation | None,
        offset: int,
        size: int,
        deadline: float,
    ) -> bytes:
        """One chunk range from a replica, locating the chunk again after ``Stale`` (its
        version moved: a write is on its way, or a replica set changed) or after every
        replica failed, with backoff, until ``deadline``."""
        io = self
        backoff_s = STALE_BACKOFF_MIN_S
        while True:
            if location is None:
                # A hole the cache knew of, or the chunk vanished (a truncate elsewhere).
                return b""
            # Bytes the table says exist must come back; past them, zeros are right.
            expect = max(0, min(size, location.length - offset))
            try:
                return await io.chunks.read(
                    location, offset, size, expect=expect, deadline=deadline
                )
            except (Stale, Unavailable, Timeout) as e:
                io.locations.drop(ino, index)
                if anyio.current_time() + backoff_s >= deadline:
                    raise
                log.debug("ino %d chunk %d: read failed (%s); locating again", ino, index, e)
                # A write in flight bumps the chunk table's version before the replicas
                # take it; that lasts one chunk.write, so the first retries come quickly.
                await anyio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, STALE_BACKOFF_MAX_S)
                location = (await io.locate(ino, index, index)).get(index)


__all__ = ["FileIo"]
