"""The simulation's in-memory chunkserver and file model (``metaserver/chunks/sim.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dfs.wire.errors import Corrupt, NoSpace, NotFound, Stale, Unavailable

CHUNK = 4096
# The checksum block (``chunkserver/store.py``'s is larger; the rules are the same).
BLOCK = 512


class Violation(Exception):
    pass


@dataclass(slots=True)
class Replica:
    version: int
    data: bytes
    rotten: bool = False  # bit rot not found yet
    rot_at: int = 0  # where: the start of the rotten block

    def rot_after_write(self, base_length: int, offset: int, end: int) -> bool:
        """Whether the rot survives a write that cuts the replica to ``base_length`` (a
        newer version's) and then writes ``[offset, end)``, as ``chunkserver/store.py``
        keeps it: a block cut away entirely or rewritten entirely is gone with its rot; a
        block the write leaves alone stays rotten, whatever the version; a block the cut or
        the write keeps part of is verified first (``blocks.truncate``,
        ``blocks.write_blocks``) and found bad (``Corrupt``)."""
        if not self.rotten:
            return False
        lo, hi = self.rot_at, self.rot_at + BLOCK
        if base_length <= lo:
            return False  # cut away
        if base_length < min(hi, len(self.data)):
            raise Corrupt("a block the cut keeps part of is bad")
        block_end = min(hi, max(base_length, end))
        if end <= offset or end <= lo or offset >= block_end:
            return True  # not touched: still rotten
        if offset <= lo and end >= block_end:
            return False  # rewritten whole
        raise Corrupt("a block the write keeps part of is bad")


class Server:
    """An in-memory chunkserver with the version rules of ``chunkserver/store.py``."""

    def __init__(self, cs_id: int, address: str, capacity: int) -> None:
        self.cs_id = cs_id
        self.address = address
        self.capacity = capacity
        self.disk = capacity  # the capacity when the disk is not full
        self.alive = True
        self.died_s = float("-inf")
        self.replicas: dict[int, Replica] = {}
        self.quarantine: dict[int, Replica] = {}
        self.found_bad_s: dict[int, float] = {}  # chunk id -> when this server found it bad
        self.found_bad: dict[int, Replica] = {}  # chunk id -> what it found bad then

    def used(self) -> int:
        return sum(len(r.data) for r in self.replicas.values())

    def write(self, f: dict[str, Any], full_ok: bool = False) -> dict[str, Any]:
        """A ``chunk.write``; ``full_ok``: past a full disk (the fault bound spares it)."""
        chunk_id, version, length = f["chunk_id"], f["version"], f["length"]
        offset, data = f["offset"], f.get("data", b"")
        rep = self.replicas.get(chunk_id)
        rotten = False
        if rep is None:
            if chunk_id in self.quarantine:
                raise Unavailable("replica is bad", chunk_id=chunk_id)
            if length > 0 and not (offset == 0 and len(data) >= length):
                raise NotFound("no replica here and the handle says it holds data")
            base = b""
        else:
            if version < rep.version:
                raise Stale("older version", chunk_id=chunk_id, version=version,
                            replica_version=rep.version)  # fmt: skip
            base = rep.data
            if version > rep.version:
                if len(base) < length:
                    raise Stale("replica shorter than the handle's length", chunk_id=chunk_id)
                base = base[:length]
            # Bit rot stays through writes of any version (the caller finds a Corrupt bad).
            rotten = rep.rot_after_write(len(base), offset, offset + len(data))
        end = offset + len(data)
        if data:
            grown = max(len(base), end)
            if grown - len(base) > self.capacity - self.used() and not full_ok:
                raise NoSpace("disk full", chunk_id=chunk_id)
            buf = bytearray(base) + bytes(max(0, end - len(base)))
            buf[offset:end] = data
            base = bytes(buf)
        self.replicas[chunk_id] = Replica(version, base, rotten, rep.rot_at if rep else 0)
        return {"version": version, "length": len(base)}

    def info(self, chunk_id: int) -> dict[str, Any]:
        rep = self.replicas.get(chunk_id)
        if rep is None:
            raise NotFound("no replica", chunk_id=chunk_id)
        return {"version": rep.version, "length": len(rep.data)}

    def delete(self, chunks: list[list[int]]) -> list[int]:
        gone = []
        for chunk_id, version in chunks:
            rep = self.replicas.get(chunk_id)
            if rep is not None and rep.version <= version:
                del self.replicas[chunk_id]
                gone.append(chunk_id)
            self.quarantine.pop(chunk_id, None)
        return gone


@dataclass(slots=True)
class FileModel:
    """What a file's bytes may be: ``acked`` as acknowledged; ``maybe``: other values
    writes in progress (or failed, or dead) may have left at a position."""

    ino: int
    name: bytes
    acked: bytearray = field(default_factory=bytearray)
    maybe: dict[int, set[int]] = field(default_factory=dict)
    writing: int = 0  # writers between a handle and their commit
    uploading: int | None = None  # the chunk its writer uploads to (named by its keepalive)
    abandoned_s: float | None = None  # a writer died or gave up mid-chain at this time

    def copy(self) -> FileModel:
        """What the file may hold now (a reader compares with it and with the later one)."""
        maybe = {i: set(values) for i, values in self.maybe.items()}
        return FileModel(self.ino, self.name, bytearray(self.acked), maybe)

    def acknowledged(self, offset: int, data: bytes) -> None:
        """A write of ``data`` at ``offset`` was committed: those bytes are the file's
        there. What earlier writes (failed, or in progress then) may have left at those
        positions is forgotten: every member at the chunk's new version holds the new
        bytes (a member the chain left behind left the set with a bump, stale), so the
        old ones can no longer be read there."""
        end = offset + len(data)
        if len(self.acked) < end:
            self.acked.extend(bytes(end - len(self.acked)))
        self.acked[offset:end] = data
        for i in range(offset, end):
            self.maybe.pop(i, None)

    def allowed(self, start: int, data: bytes) -> bool:
        """Whether ``data`` at file offset ``start`` is what the file may hold there."""
        end = start + len(data)
        if end > len(self.acked) + CHUNK:
            return False
        acked = bytes(self.acked[start:end]).ljust(len(data), b"\0")
        if acked == data:
            return True
        for i, (a, b) in enumerate(zip(acked, data, strict=True)):
            if a != b and b not in self.maybe.get(start + i, ()):
                return False
        return True
