"""The file-system namespace: the state machine every metaserver applies from the Raft log.

Pure and deterministic (no clock, no randomness, no I/O: ``tests/unit/test_boundaries.py``):
time comes from the command (``now_ns``, stamped by the leader), ids from counters in the
state. It owns inodes, directories, chunks (id, version, length, replica set), the chunk
garbage list, the chunkserver ids and the client sessions (exactly-once mutations); it
knows nothing of sockets, Raft or placement.

Start with ``namespace.py`` (``Namespace``: apply / snapshot / restore / queries); the op
rules are in ``ops.py`` (the operator's chunkserver ops and the chunk policy in
``cluster.py``; subtrees: the paged walk and ``set_goal_tree``, in ``tree.py``; the trash
of removed files in ``trash.py``; each directory's recursive statistics in ``rstats.py``;
punched holes in ``holes.py``, the space they take away in ``sparse.py``), the data
and the snapshot format in ``state.py``, the
command format (version 1) and every limit in ``commands.py``.

    ns = Namespace(chunk_size_bytes=64 << 20)
    result = ns.apply(encode_command("mkdir", client, seq, now_ns, {...}))
    # {"ok": True, "attr": {...}}  or  {"ok": False, "err": {"code": ..., "msg": ...}}
"""

from metaserver.namespace.commands import COMMAND_VERSION, decode_command, encode_command
from metaserver.namespace.namespace import DEFAULT_CHUNK_SIZE_BYTES, Namespace
from metaserver.namespace.state import ROOT_INO, SNAPSHOT_VERSION

__all__ = [
    "COMMAND_VERSION",
    "DEFAULT_CHUNK_SIZE_BYTES",
    "ROOT_INO",
    "SNAPSHOT_VERSION",
    "Namespace",
    "decode_command",
    "encode_command",
]
