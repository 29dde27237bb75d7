"""The chunkserver's operations (protocol version 1): one definition each. Pure.

Who sends what: clients read, write and sync replicas with a token; chunkservers forward
writes and syncs down the chain and read from each other when they copy a replica in;
the metaserver leader pushes a new version (an empty ``chunk.write``), asks a replica's
state, deletes and copies replicas. ``chunkserver/server.py`` checks every request against
its definition here, role first, before it runs it. The rules these fields obey beyond
their shape (versions, chains, tokens) are in docs/PROTOCOL.md, under the tables this
module generates.
"""

from __future__ import annotations

from dfs.wire.errors import TooBig
from dfs.wire.limits import (
    CHAIN_MAX,
    CHUNK_BYTES_MAX,
    CHUNK_ID_MAX,
    DELETE_CHUNKS_MAX,
    OP_TIMEOUT_MS_DEFAULT,
    OP_TIMEOUT_MS_MAX,
    READ_BYTES_MAX,
    SOURCES_MAX,
    UINT64_MAX,
    VERSION_MAX,
    WRITE_MANY_BYTES_MAX,
    WRITE_MANY_ITEM_BYTES_MAX,
    WRITE_MANY_ITEMS_MAX,
)
from dfs.wire.spec import (
    ANYONE,
    BOOL,
    BYTES,
    CHUNKSERVER,
    LIST,
    METASERVER,
    STR,
    UINT,
    USERS,
    Field,
    Op,
)

TIMEOUT_MS = Field(
    "timeout_ms", UINT, required=False,
    doc=f"the server's deadline in ms (default {OP_TIMEOUT_MS_DEFAULT}, at most "
    f"{OP_TIMEOUT_MS_MAX}; on every request)",
)  # fmt: skip
COMMON = (TIMEOUT_MS,)

CHUNK_ID = Field("chunk_id", UINT, low=1, high=CHUNK_ID_MAX, message="chunk_id out of range")
VERSION = Field("version", UINT, high=VERSION_MAX, message="version out of range")
TOKEN = Field("token", BYTES, doc="an access token (Access tokens below)")
CLIENT_NAME = Field(
    "client_name", STR, required=False, high=255,
    doc="from a server only (a chunkserver forwarding down its chain): the client the "
    "token was issued to; from a client, replaced by its certificate's name",
)  # fmt: skip
EXPIRY_MS = Field("expiry_ms", UINT, high=UINT64_MAX, message="expiry_ms out of range",
                  doc="the token's expiry, wall-clock ms")  # fmt: skip
CHAIN = Field(
    "chain", LIST, required=False, high=CHAIN_MAX, items=STR,
    message=f"chain: at most {CHAIN_MAX} host:port strings",
    doc='"host:port" of the replicas still to forward to, not this server; may be empty',
)  # fmt: skip
EXPECT_LENGTH = Field(
    "expect_length", UINT, required=False, high=CHUNK_BYTES_MAX, error=TooBig,
    message="expect_length past the maximum chunk size",
    doc="the writer's highest acknowledged end under this version",
)  # fmt: skip
LENGTH = Field(
    "length", UINT, high=CHUNK_BYTES_MAX, error=TooBig,
    message="length past the maximum chunk size", doc="the chunk's valid length",
)  # fmt: skip

# Who may write: a client, the chunkserver before this one in the chain, the leader
# pushing a new version.
WRITERS = USERS | {CHUNKSERVER, METASERVER}
READERS = USERS | {CHUNKSERVER}
# Replica management is the leader's: only a metaserver may ask for it.
LEADER = frozenset({METASERVER})

CHUNK_WRITE = Op(
    "chunk.write", WRITERS,
    fields=(
        CHUNK_ID, VERSION,
        Field("length", UINT, high=CHUNK_BYTES_MAX, error=TooBig,
              message="write past the maximum chunk size",
              doc="the valid length from the write handle"),
        Field("offset", UINT, doc="where the payload goes; offset + size at most "
              f"{CHUNK_BYTES_MAX:,} bytes"),
        TOKEN, EXPIRY_MS, CHAIN,
        Field("sync", BOOL, required=False,
              doc="fsync before acknowledging (a write that moves the replica to a newer "
              "version is fsynced whatever it says)"),
        Field("size", UINT, required=False, doc="when sent, must equal the payload's length"),
        EXPECT_LENGTH, CLIENT_NAME,
    ),
    payload="the bytes",
    answer="`{}` once this replica and every later one in the chain has them",
    common=COMMON,
)  # fmt: skip

# One write of a chunk.write_many: a chunk.write's own fields; its bytes are the next
# ``size`` of the request's payload.
WRITE_ITEM: tuple[Field, ...] = (
    CHUNK_ID, VERSION,
    Field("length", UINT, high=CHUNK_BYTES_MAX, error=TooBig,
          message="write past the maximum chunk size",
          doc="the valid length from the write handle"),
    Field("offset", UINT, doc="where the bytes go"),
    Field("size", UINT, high=WRITE_MANY_ITEM_BYTES_MAX, error=TooBig,
          message=f"a write of chunk.write_many over {WRITE_MANY_ITEM_BYTES_MAX} bytes",
          doc="its bytes in the payload"),
    TOKEN, EXPIRY_MS, EXPECT_LENGTH,
)  # fmt: skip

CHUNK_WRITE_MANY = Op(
    "chunk.write_many", WRITERS,
    fields=(
        Field("writes", LIST, low=1, high=WRITE_MANY_ITEMS_MAX, items=WRITE_ITEM,
              message=f"writes: 1 to {WRITE_MANY_ITEMS_MAX} maps",
              doc="each as a `chunk.write` of the same replica set, not synced; the "
              f"sizes together at most {WRITE_MANY_BYTES_MAX:,} bytes"),
        CHAIN, CLIENT_NAME,
    ),
    payload="every write's bytes, one after another in the order of `writes`",
    reply=(Field("errors", LIST, required=False,
                 doc="when any write failed: one item per write, in order, `null` or the "
                 "error (a map as an error answer's: `code`, `msg`, `details`) that a "
                 "`chunk.write` of it alone would have answered"),),
    answer="`{}` once this replica and every later one in the chain has every write: "
    "several small files' writes along one chain in one request each hop",
    common=COMMON,
)  # fmt: skip

CHUNK_READ = Op(
    "chunk.read", READERS,
    fields=(
        CHUNK_ID, VERSION,
        Field("offset", UINT),
        Field("size", UINT, high=READ_BYTES_MAX, error=TooBig,
              message=f"read over {READ_BYTES_MAX} bytes"),
        TOKEN, EXPIRY_MS, CLIENT_NAME,
    ),
    reply_payload="the bytes, verified against the block checksums; shorter than `size` at "
    "the replica's end",
    answer="no header fields, only the payload",
    common=COMMON,
)  # fmt: skip

CHUNK_SYNC = Op(
    "chunk.sync", USERS | {CHUNKSERVER},
    fields=(CHUNK_ID, VERSION, TOKEN, EXPIRY_MS, CHAIN, EXPECT_LENGTH, CLIENT_NAME),
    answer="`{}` once fsynced on every replica of the chain (a write token)",
    common=COMMON,
)  # fmt: skip

CHUNK_INFO = Op(
    "chunk.info", LEADER,
    fields=(CHUNK_ID,),
    reply=(Field("version", UINT), Field("length", UINT)),
    answer="`NotFound` if absent or bad",
    common=COMMON,
)  # fmt: skip

CHUNK_QUARANTINED = Op(
    "chunk.quarantined", LEADER,
    fields=(CHUNK_ID,),
    reply=(Field("copies", LIST, doc="[{name, version, length, blocks, good_blocks}]: the "
                 "chunk's files in quarantine/ with a readable header, each block verified "
                 "against the file's own checksums (at most 16 files)"),),
    answer="for `dfs admin fsck --salvage`",
    common=COMMON,
)  # fmt: skip

CHUNK_SALVAGE = Op(
    "chunk.salvage", LEADER,
    fields=(
        CHUNK_ID, VERSION,
        Field("length", UINT, high=CHUNK_BYTES_MAX, error=TooBig,
              message="length past the maximum chunk size", doc="the chunk table's"),
        Field("copy", STR, high=255, doc="a name `chunk.quarantined` gave"),
        Field("zero", BOOL, required=False,
              doc="bad blocks become zeros that read (default: they read as `Corrupt`)"),
    ),
    reply=(Field("version", UINT), Field("length", UINT),
           Field("lost_blocks", UINT, doc="blocks that did not verify or that the copy "
                 "did not reach")),
    answer="the copy becomes the replica at `version` and `length` (built in tmp/, then "
    "renamed into place; the chunk's other quarantined files are removed)",
    common=COMMON,
)  # fmt: skip

CHUNK_DELETE = Op(
    "chunk.delete", LEADER,
    fields=(
        Field("chunks", LIST, high=DELETE_CHUNKS_MAX,
              items=((1, CHUNK_ID_MAX), (0, VERSION_MAX)),
              message=f"chunks must be a list of at most {DELETE_CHUNKS_MAX} [chunk_id, version]",
              doc="`[chunk_id, version]` pairs"),
    ),
    reply=(Field("deleted", LIST, items=UINT,
                 doc="the chunk ids of which something was removed (ascending)"),),
    common=COMMON,
)  # fmt: skip

CHUNK_REPLICATE = Op(
    "chunk.replicate", LEADER,
    fields=(
        CHUNK_ID, VERSION, LENGTH,
        Field("sources", LIST, low=1, high=SOURCES_MAX, items=STR,
              message=f"sources must list 1 to {SOURCES_MAX} chunkservers",
              doc='"host:port" of replicas to copy from, not this server'),
        TOKEN, EXPIRY_MS,
    ),
    reply=(Field("length", UINT),),
    answer="once a replica of `version` holding `[0, length)` is here, fsynced (the token: "
    "a write token for `chunk_id`/`version`)",
    common=COMMON,
)  # fmt: skip

CS_STATUS = Op(
    "cs.status", ANYONE,
    reply=(
        Field("cs_id", UINT, doc="0 before the first registration"),
        Field("uuid", STR),
        Field("address", STR),
        Field("capacity_bytes", UINT, doc="as in heartbeats"),
        Field("used_bytes", UINT),
        Field("chunks", UINT),
        Field("pid", UINT),
        Field("scrub_bytes", UINT, doc="verified since start"),
        Field("scrub_passes", UINT, doc="completed"),
        Field("bad_chunks", UINT, doc="replicas found bad since start"),
        Field("data_dir", STR,
              doc="the data directory's absolute path: a client on the same machine that may "
              "read it reads replicas from their files (SHORT-CIRCUIT READS in "
              "ARCHITECTURE.md)"),
    ),
    common=COMMON,
)  # fmt: skip

CHUNK_OPS: tuple[Op, ...] = (
    CHUNK_WRITE, CHUNK_WRITE_MANY, CHUNK_READ, CHUNK_SYNC, CHUNK_INFO, CHUNK_DELETE, CHUNK_REPLICATE, CS_STATUS,
    CHUNK_QUARANTINED, CHUNK_SALVAGE,
)  # fmt: skip

__all__ = ["CHUNK_OPS", "COMMON", "TIMEOUT_MS"]
