"""What the servers answer, as frozen dataclasses: attributes, directory entries, file-system
statistics, chunk locations and write handles (docs/PROTOCOL.md, version 1).

Each ``from_wire`` checks the map against its definition in ``dfs/wire/shapes.py`` (compiled
once, here) and raises ``ProtocolError`` on a malformed answer, so the rest of the client
works with typed values only. Pure: no I/O.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Any

from dfs.wire import shapes
from dfs.wire.errors import ProtocolError
from dfs.wire.limits import size_blocks
from dfs.wire.spec import compile_shape

_ATTR = compile_shape(shapes.ATTR, "attr")
_REPLICA = compile_shape(shapes.REPLICA, "replica")
_CHUNK_LOCATION = compile_shape(shapes.CHUNK_LOCATION, "chunk location")
_WRITE_HANDLE = compile_shape(shapes.WRITE_HANDLE, "write handle")
_STATFS = compile_shape(shapes.STATFS, "statfs")


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
        m = _ATTR(wire)
        return cls(
            ino=m["ino"],
            mode=m["mode"],
            nlink=m["nlink"],
            uid=m["uid"],
            gid=m["gid"],
            size=m["size"],
            atime_ns=m["atime_ns"],
            mtime_ns=m["mtime_ns"],
            ctime_ns=m["ctime_ns"],
            rdev=m.get("rdev", 0),
            goal=m.get("goal", 0),
            blocks=m.get("blocks", 0),
            has_xattrs=m.get("has_xattrs"),
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

    @property
    def punched_blocks(self) -> int:
        """The 512-byte units of a regular file's size that take no space: its punched
        chunks (metaserver/namespace/sparse.py). The metaserver counts a file's
        ``blocks`` as its size's less those; 0 for other types."""
        if not self.is_file:
            return 0
        return max(0, size_blocks(self.size) - self.blocks)

    def blocks_at(self, size: int) -> int:
        """``blocks`` of this regular file grown or cut to ``size`` by this client, as the
        metaserver will count them: the size's, less the punched ones known here. (A
        write of a punched chunk gives its blocks back at the metaserver; this copy shows
        them once the commit's answer replaces it.)"""
        return max(0, size_blocks(size) - self.punched_blocks)


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
        m = _STATFS(m)
        statfs = cls(
            bytes_total=m["bytes_total"],
            bytes_used=m["bytes_used"],
            bytes_free=m["bytes_free"],
            inodes_used=m["inodes_used"],
            chunk_size=m["chunk_size"],
            chunkservers_alive=m.get("chunkservers_alive", 0),
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
        m = _REPLICA(wire)
        return cls(m["id"], m["address"])


def _replicas(m: dict[str, Any], name: str) -> tuple[Replica, ...]:
    return tuple(Replica.from_wire(r) for r in m[name])


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
        m = _CHUNK_LOCATION(wire)
        return cls(
            index=m["index"],
            chunk_id=m["chunk_id"],
            version=m["version"],
            length=m["length"],
            replicas=_replicas(m, "replicas"),
            token=m["token"],
            expiry_ms=m["expiry_ms"],
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
        m = _WRITE_HANDLE(m)
        handle = cls(
            index=index,
            chunk_id=m["chunk_id"],
            version=m["version"],
            length=m["length"],
            chain=_replicas(m, "chain"),
            token=m["token"],
            expiry_ms=m["expiry_ms"],
        )
        if not handle.chain:
            raise ProtocolError("write handle with an empty chain")
        return handle


__all__ = ["Attr", "ChunkLocation", "DirEntry", "Replica", "StatFs", "WriteHandle"]
