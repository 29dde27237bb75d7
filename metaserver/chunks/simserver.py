"""The simulation's in-memory chunkserver and file model (``metaserver/chunks/sim.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dfs.wire.errors import NoSpace, NotFound, Stale, Unavailable

CHUNK = 4096


class Violation(Exception):
    pass


@dataclass(slots=True)
class Replica:
    version: int
    data: bytes
    rotten: bool = False  # bit rot not found yet


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

    def used(self) -> int:
        return sum(len(r.data) for r in self.replicas.values())

    def write(self, f: dict[str, Any], full_ok: bool = False) -> dict[str, Any]:
        """A ``chunk.write``; ``full_ok``: past a full disk (the fault bound spares it)."""
        chunk_id, version, length = f["chunk_id"], f["version"], f["length"]
        offset, data = f["offset"], f.get("data", b"")
        rep = self.replicas.get(chunk_id)
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
        end = offset + len(data)
        if data:
            grown = max(len(base), end)
            if grown - len(base) > self.capacity - self.used() and not full_ok:
                raise NoSpace("disk full", chunk_id=chunk_id)
            buf = bytearray(base) + bytes(max(0, end - len(base)))
            buf[offset:end] = data
            base = bytes(buf)
        rotten = rep.rotten and rep.version == version if rep is not None else False
        self.replicas[chunk_id] = Replica(version, base, rotten)
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
