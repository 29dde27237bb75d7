"""Every limit of the protocol, in one place. Pure: constants only, importing nothing.

What it owns: the numbers a peer's request is checked against (``dfs/wire/ops.py`` at the
servers' edge, the namespace when it applies a command, the chunk store when it writes),
and the few fixed values every process must agree on (the root inode). Each is defined
here once; every other module imports it from here (``tests/unit/test_wire_ops.py``
checks that no module defines one of these names again).

Names end in their unit and ``_max``/``_min`` (``NAME_BYTES_MAX``). Changing a value
changes the protocol (``docs/PROTOCOL.md`` is generated from the definitions that use them:
``python -m tools.protocoldoc``).
"""

from __future__ import annotations

# ------------------------------------------------------------------ framing
# One frame's msgpack header, and one frame's raw payload. A header carries metadata (and
# Raft entries, which are small commands); bulk bytes travel as payload.
FRAME_HEADER_BYTES_MAX = 8 * 1024 * 1024
FRAME_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024

# Every request may carry ``timeout_ms``: the server's deadline for it. Five seconds covers
# an election (1-2 s) plus a slow disk; a copy of a whole chunk may ask for a minute.
OP_TIMEOUT_MS_DEFAULT = 5000
OP_TIMEOUT_MS_MAX = 60_000

# ------------------------------------------------------------------ integers
# Ids fit an int64; uid/gid/rdev fit what Linux stat reports; chunk ids and versions are
# the replica file's u64 fields (``replicafile.py``).
INT63_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
UINT32_MAX = (1 << 32) - 1
CHUNK_ID_MAX = UINT64_MAX
VERSION_MAX = UINT64_MAX
# st_mode: file type bits and permission bits.
MODE_MAX = 0o177777

# ------------------------------------------------------------------ the namespace
# The root directory's inode number, fixed in every namespace (and FUSE's own root).
ROOT_INO = 1
# A directory entry name, as Linux NAME_MAX.
NAME_BYTES_MAX = 255
# A symlink target, as Linux PATH_MAX (4096 including the terminating NUL).
SYMLINK_TARGET_BYTES_MAX = 4095
# What the namespace gives a new inode, which a client answering a create, mkdir or
# symlink under its directory lease (dfs/client/dirleases.py) must predict exactly: the
# permission bits a mode may carry (rwx for all, setuid, setgid, sticky); the bits
# mkdir(2) keeps from the caller (setgid comes only from the parent); a directory's size
# and block count (as ext4's one-block directory).
PERMISSION_BITS = 0o7777
MKDIR_BITS = 0o1777
DIR_SIZE_BYTES = 4096
DIR_BLOCKS = 8


def size_blocks(nbytes: int) -> int:
    """``st_blocks`` of ``nbytes`` bytes that take space (512-byte units, rounded up): a
    regular file's ``blocks`` is that of its size less its punched chunks' bytes."""
    return (nbytes + 511) >> 9


# Extended attributes, as Linux XATTR_NAME_MAX / XATTR_SIZE_MAX.
XATTR_NAME_BYTES_MAX = 255
XATTR_VALUE_BYTES_MAX = 64 * 1024
# The largest file (2^50 bytes = 1 PiB): keeps chunk indexes and sizes far from any
# integer limit of msgpack, the chunkserver or FUSE.
FILE_SIZE_BYTES_MAX = 1 << 50
# Replication goal (fs.set_goal, fs.reserve, admin.set_goal).
GOAL_MIN = 1
GOAL_MAX = 16
# Chunk entries in one fs.commit: a commit of a 1 TiB file at 16 MiB chunks.
COMMIT_CHUNKS_MAX = 1 << 16
# Queries: fs.readdir's limit, fs.locate's count.
READDIR_LIMIT_MAX = 4096
LOCATE_COUNT_MAX = 1024
# Inode numbers (or chunk ids) one request about open-file holds may name (fs.keepalive,
# fs.release).
HOLDS_PER_REQUEST_MAX = 65536
# Sub-ops of one fs.batch (what a client answered under directory leases, one Raft
# entry): 1,024 removals of names of at most 255 bytes keep one entry under ~300 KiB; a
# client also bounds a batch's bytes (dfs/client/dirleases.py, BATCH_BYTES: symlink
# targets).
BATCH_OPS_MAX = 1024
# Directories one fs.lease_release or fs.lease_renew may name.
LEASE_RELEASE_INOS_MAX = 4096
# Inode numbers one fs.reserve may ask for.
RESERVE_ENTRIES_MAX = 256

# ------------------------------------------------------------------ chunks
# Chunk size per cluster: at least a page (smaller only makes the chunk table huge), at
# most 1 GiB (a chunk is one file on a chunkserver, rewritten on re-replication). A
# cluster's configured size is also a multiple of the checksum block (``BLOCK_BYTES``).
CHUNK_SIZE_BYTES_MIN = 4096
CHUNK_SIZE_BYTES_MAX = 1 << 30
# A new cluster's chunk size, unless its config says otherwise.
CHUNK_SIZE_BYTES_DEFAULT = 64 << 20
# The most bytes one replica may hold: a chunkserver is not told the cluster's chunk
# size, so it takes any chunk up to the largest one.
CHUNK_BYTES_MAX = CHUNK_SIZE_BYTES_MAX
# The checksum block: the unit a replica's checksums cover.
BLOCK_BYTES = 64 * 1024
# One chunk.read.
READ_BYTES_MAX = 16 * 1024 * 1024
# The longest chain of a chunk.write: a goal is at most GOAL_MAX replicas, so at most
# GOAL_MAX - 1 follow the first.
CHAIN_MAX = GOAL_MAX - 1
# Sources one chunk.replicate may name.
SOURCES_MAX = 16
# Entries of one chunk.delete.
DELETE_CHUNKS_MAX = 4096
# One chunk.write_many: at most this many writes, each of at most WRITE_MANY_ITEM_BYTES_MAX
# (a replica writes so small a write on its event loop), all together at most
# WRITE_MANY_BYTES_MAX.
WRITE_MANY_ITEMS_MAX = 64
WRITE_MANY_ITEM_BYTES_MAX = 256 * 1024
WRITE_MANY_BYTES_MAX = 4 * 1024 * 1024

# ------------------------------------------------------------------ chunkservers
# A chunkserver's identity (a uuid string), its "host:port", its placement labels.
CS_UUID_CHARS_MAX = 64
CS_ADDRESS_CHARS_MAX = 256
CS_LABEL_CHARS_MAX = 255
# One cs.report page, one cs.bad_chunks list.
REPORT_PAGE_MAX = 8192
BAD_CHUNKS_MAX = 4096
