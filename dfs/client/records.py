"""What the servers answer, as frozen dataclasses: attributes, directory entries, file-system
statistics, chunk locations and write handles (docs/PROTOCOL.md, version 1).

Each ``from_wire`` checks the fields it reads (``dfs.wire.messages.field``) and raises
``ProtocolError`` on a malformed answer, so the rest of the client works with typed values
only. Pure: no I/O.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Any

from dfs.wire.errors import ProtocolError
from dfs.wire.messages import field, uint_field


def _map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a map")
    return value


@dataclass(frozen=True, slots=True)
class Attr:
    """An inode's attributes (the protocol's ``attr`` map). Times in ns since the epoch."""

    ino: int
    mode: int  # full st_mode: S_IFMT type bits + permission bits
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    goal: int = 0  # replication goal
    blocks: int = 0  # 512-byte units allocated (st_blocks)
    # Whether the inode has extended attributes; None when the server did not say.
    has_xattrs: bool | None = None

    @classmethod
    def from_wire(cls, wire: Any) -> Attr:
        m = _map(wire, "attr")
        return cls(
            ino=uint_field(m, "ino"),
            mode=uint_field(m, "mode"),
            nlink=uint_field(m, "nlink"),
            uid=uint_field(m, "uid"),
            gid=uint_field(m, "gid"),
            size=uint_field(m, "size"),
            atime_ns=field(m, "atime_ns", int),
            mtime_ns=field(m, "mtime_ns", int),
            ctime_ns=field(m, "ctime_ns", int),
            rdev=uint_field(m, "rdev", 0),
            goal=uint_field(m, "goal", 0),
            blocks=uint_field(m, "blocks", 0),
            has_xattrs=field(m, "has_xattrs", (bool, type(None)), None),
        )

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One ``fs.readdir`` entry; pass ``cookie`` to continue the listing after it."""

    name: bytes
    attr: Attr
    cookie: int

    @classmethod
    def from_wire(cls, wire: Any) -> DirEntry:
        if not isinstance(wire, list) or len(wire) != 3:
            raise ProtocolError("readdir entry is not [name, attr, cookie]")
        name, attr, cookie = wire
        if not isinstance(name, bytes) or type(cookie) is not int:
            raise ProtocolError("readdir entry has a bad name or cookie")
        return cls(name, Attr.from_wire(attr), cookie)


@dataclass(frozen=True, slots=True)
class StatFs:
    bytes_total: int
    bytes_used: int
    bytes_free: int
    inodes_used: int
    chunk_size: int
    chunkservers_alive: int

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> StatFs:
        statfs = cls(
            bytes_total=uint_field(m, "bytes_total"),
            bytes_used=uint_field(m, "bytes_used"),
            bytes_free=uint_field(m, "bytes_free"),
            inodes_used=uint_field(m, "inodes_used"),
            chunk_size=uint_field(m, "chunk_size"),
            chunkservers_alive=uint_field(m, "chunkservers_alive", 0),
        )
        if statfs.chunk_size <= 0:
            raise ProtocolError("statfs: chunk_size must be > 0")
        return statfs


@dataclass(frozen=True, slots=True)
class Replica:
    """A chunkserver holding (or to hold) a replica: its id and "host:port"."""

    id: int
    address: str

    @classmethod
    def from_wire(cls, wire: Any) -> Replica:
        m = _map(wire, "replica")
        return cls(uint_field(m, "id"), field(m, "address", str))


def _replicas(m: dict[str, Any], name: str) -> tuple[Replica, ...]:
    return tuple(Replica.from_wire(r) for r in field(m, name, list))


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where to read chunk ``index`` of a file (``fs.locate``), with a read token."""

    index: int
    chunk_id: int
    version: int
    length: int  # valid bytes in the chunk table; past it a replica may hold junk
    replicas: tuple[Replica, ...]
    token: bytes
    expiry_ms: int  # wall clock, ms since the epoch

    @classmethod
    def from_wire(cls, wire: Any) -> ChunkLocation:
        m = _map(wire, "chunk location")
        return cls(
            index=uint_field(m, "index"),
            chunk_id=uint_field(m, "chunk_id"),
            version=uint_field(m, "version"),
            length=uint_field(m, "length"),
            replicas=_replicas(m, "replicas"),
            token=field(m, "token", bytes),
            expiry_ms=uint_field(m, "expiry_ms"),
        )


@dataclass(frozen=True, slots=True)
class WriteHandle:
    """The right to write chunk ``index`` (``fs.write_handle``): version, chain, token."""

    index: int
    chunk_id: int
    version: int
    length: int  # the chunk's valid length in the table when the handle was given
    chain: tuple[Replica, ...]
    token: bytes
    expiry_ms: int  # wall clock, ms since the epoch

    @classmethod
    def from_wire(cls, index: int, m: dict[str, Any]) -> WriteHandle:
        handle = cls(
            index=index,
            chunk_id=uint_field(m, "chunk_id"),
            version=uint_field(m, "version"),
            length=uint_field(m, "length"),
            chain=_replicas(m, "chain"),
            token=field(m, "token", bytes),
            expiry_ms=uint_field(m, "expiry_ms"),
        )
        if not handle.chain:
            raise ProtocolError("write handle with an empty chain")
        return handle


__all__ = ["Attr", "ChunkLocation", "DirEntry", "Replica", "StatFs", "WriteHandle"]
