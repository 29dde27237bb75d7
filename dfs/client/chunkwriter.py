"""One chunk's write state in an open inode: its handle, the uploads under it, what is
left to commit, and what a failed write means.

What it owns: ``ChunkWriter`` (a chunk's write handle, the chain members that failed
under it, the highest end every replica acknowledged: ``expect_length``), ``Upload`` (a
range on its way), ``Pending`` (a chunk's uncommitted length and the handle it was
written under, as ``fs.commit`` names it), and the classes of errors a write meets. What
it must not do: send anything (``files.OpenInode`` drives these).
"""

from __future__ import annotations

import anyio

from dfs.client.records import WriteHandle
from dfs.wire.errors import (
    Busy,
    Corrupt,
    DfsError,
    InternalError,
    NoSpace,
    NotFound,
    PermissionDenied,
    Stale,
    Timeout,
    Unavailable,
)

# A write handle this close to its expiry is renewed before use: a chunk.write must reach
# the end of the chain before the token expires.
HANDLE_MARGIN_MS = 5_000
# Backoff between attempts of an upload after a replica failed.
BACKOFF_MIN_S = 0.02
BACKOFF_MAX_S = 1.0

HANDLE_OUTDATED = (Stale, PermissionDenied, NotFound)
REPLICA_FAILED = (Unavailable, Timeout, Busy, InternalError, Corrupt)
# Failures that mean a replica of the chain is gone or bad (not merely busy): the writer
# names it in its next fs.write_handle (``drop``) and the leader takes it out of the set.
REPLICA_LOST = (Unavailable, Timeout, InternalError, Corrupt, NoSpace)


def lost_replica(handle: WriteHandle, e: DfsError) -> int | None:
    """The chain member that failed: the one the error names (a chunkserver down the chain
    reports which one failed, PROTOCOL.md), else the first (we could not reach it)."""
    if not isinstance(e, REPLICA_LOST):
        return None
    address = e.details.get("address")
    if not isinstance(address, str):
        address = handle.chain[0].address
    for replica in handle.chain:
        if replica.address == address:
            return replica.id
    return None


def deadline_error(what: str, last: DfsError | None) -> DfsError:
    if last is None or isinstance(last, Timeout):
        return Timeout(f"{what}: no success before the deadline (last: {last})")
    return Unavailable(f"{what}: no success before the deadline (last: {last})")


class Upload:
    __slots__ = ("done", "end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.done = anyio.Event()


class ChunkWriter:
    """One chunk's write handle and the uploads using it."""

    __slots__ = (
        "acked_end", "acked_version", "failed", "handle", "idle", "lock", "users",
        "written_version",
    )  # fmt: skip

    def __init__(self) -> None:
        self.handle: WriteHandle | None = None
        # Chain members that failed under the current handle, reported with the next one.
        self.failed: set[int] = set()
        self.written_version = 0  # the version our last write to the replicas carried
        # The highest end every replica acknowledged under ``acked_version``.
        self.acked_version = 0
        self.acked_end = 0
        self.lock = anyio.Lock()
        self.users = 0
        self.idle = anyio.Event()
        self.idle.set()

    def expect_length(self, handle: WriteHandle) -> int:
        """What every replica must hold under ``handle`` (PROTOCOL.md, ``expect_length``)."""
        if self.acked_version == handle.version:
            return max(handle.length, self.acked_end)
        return handle.length

    def acked(self, handle: WriteHandle, end: int) -> None:
        if handle.version > self.acked_version:
            self.acked_version, self.acked_end = handle.version, 0
        if handle.version == self.acked_version:
            self.acked_end = max(self.acked_end, end)

    def enter(self) -> None:
        if self.users == 0:
            self.idle = anyio.Event()
        self.users += 1

    def leave(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.idle.set()


class Pending:
    """A chunk's uncommitted length, and the handle (chunk id, version) it was written
    under: what ``fs.commit`` names."""

    __slots__ = ("chunk_id", "length", "version")

    def __init__(self, length: int, chunk_id: int, version: int) -> None:
        self.length = length
        self.chunk_id = chunk_id
        self.version = version

    def entry(self, index: int) -> list[int]:
        return [index, self.length, self.chunk_id, self.version]


__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_MIN_S",
    "HANDLE_MARGIN_MS",
    "HANDLE_OUTDATED",
    "REPLICA_FAILED",
    "REPLICA_LOST",
    "ChunkWriter",
    "Pending",
    "Upload",
    "deadline_error",
    "lost_replica",
]
