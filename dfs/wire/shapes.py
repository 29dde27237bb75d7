"""The maps inside answers (protocol version 1): attributes, replicas, chunk locations,
write handles, file-system statistics. Pure.

An answer's top-level fields are in its operation's definition (``ops_meta.py``); the
maps it nests are defined here once, for the servers that build them, the client's
records that read them (``dfs/client/records.py`` checks each with ``compile_shape``) and
docs/PROTOCOL.md (generated). Fields a peer adds are ignored, as in requests.
"""

from __future__ import annotations

from dfs.wire.spec import BOOL, BYTES, INT, LIST, STR, UINT, Field


def _u(name: str, doc: str = "", required: bool = True) -> Field:
    return Field(name, UINT, required=required, doc=doc)


ATTR: tuple[Field, ...] = (
    _u("ino"),
    _u("mode", "the full `st_mode`: file type bits and permission bits"),
    _u("nlink"),
    _u("uid"),
    _u("gid"),
    _u("size"),
    Field("atime_ns", INT),
    Field("mtime_ns", INT),
    Field("ctime_ns", INT),
    _u("rdev", required=False),
    _u("goal", "replication goal", required=False),
    _u("blocks", "512-byte units allocated, for `st_blocks`", required=False),
    Field(
        "has_xattrs", BOOL, required=False, nullable=True,
        doc="whether the inode has any extended attribute; when false a client may answer "
        "a `getxattr` of it `NoAttr` without asking, for as long as it trusts the `attr`",
    ),
)  # fmt: skip

REPLICA: tuple[Field, ...] = (_u("id", "the chunkserver's id"), Field("address", STR))

CHUNK_LOCATION: tuple[Field, ...] = (
    _u("index"),
    _u("chunk_id"),
    _u("version"),
    _u("length", "valid bytes in the chunk table; past it a replica may hold junk"),
    Field("replicas", LIST, doc="`{id, address}` of live chunkservers"),
    Field("token", BYTES, doc="a read token"),
    _u("expiry_ms", "the token's expiry, wall-clock ms"),
)

WRITE_HANDLE: tuple[Field, ...] = (
    _u("chunk_id"),
    _u("version"),
    _u("length", "the chunk's valid length in the table when the handle was given"),
    Field("chain", LIST, doc="`{id, address}`, the replicas in chain order"),
    Field("token", BYTES, doc="a write token"),
    _u("expiry_ms", "the token's expiry, wall-clock ms"),
)

STATFS: tuple[Field, ...] = (
    _u("bytes_total"),
    _u("bytes_used"),
    _u("bytes_free"),
    _u("inodes_used"),
    _u("chunk_size"),
    _u("chunkservers_alive", required=False),
)

SHAPES: dict[str, tuple[Field, ...]] = {
    "attr": ATTR,
    "replica": REPLICA,
    "chunk location": CHUNK_LOCATION,
    "write handle": WRITE_HANDLE,
}

__all__ = ["ATTR", "CHUNK_LOCATION", "REPLICA", "SHAPES", "STATFS", "WRITE_HANDLE"]
