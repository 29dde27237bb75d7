"""Identifier types and hard limits shared by every process.

Ids are plain integers on the wire and on disk; the NewTypes only help the reader
and the type checker tell them apart. Limits end in ``_max`` and are enforced where
bytes arrive from outside (``dfs.wire``) and where they are written to disk.
"""

from typing import NewType

NodeId = NewType("NodeId", int)
Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)
InodeId = NewType("InodeId", int)
ChunkId = NewType("ChunkId", int)

# One frame's msgpack header, and one frame's raw payload. A header carries metadata
# (and Raft entries, which are small commands); bulk bytes travel as payload.
FRAME_HEADER_BYTES_MAX = 8 * 1024 * 1024
FRAME_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024

# Inode numbers (or chunk ids) one request about open-file holds may name (fs.keepalive,
# fs.release: PROTOCOL.md).
HOLDS_PER_REQUEST_MAX = 65536
# Sub-ops of one fs.batch (what a client answered under directory leases, one Raft entry):
# 1,024 removals of names of at most 255 bytes keep one entry under ~300 KiB; a client
# also bounds a batch's bytes (dfs/client/dirleases.py, BATCH_BYTES: symlink targets).
BATCH_OPS_MAX = 1024

# A symlink target, as Linux PATH_MAX (4096 including the terminating NUL).
SYMLINK_TARGET_BYTES_MAX = 4095

# What the namespace gives a new inode, which a client answering a create under its
# directory lease (dfs/client/dirleases.py) must predict exactly: the permission bits a
# mode may carry (rwx for all, setuid, setgid, sticky); the bits mkdir(2) keeps from the
# caller (setgid comes only from the parent); a directory's size and block count (as
# ext4's one-block directory).
PERMISSION_BITS = 0o7777
MKDIR_BITS = 0o1777
DIR_SIZE_BYTES = 4096
DIR_BLOCKS = 8
