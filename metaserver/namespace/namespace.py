"""``Namespace``: the file-system state machine the Raft node applies. Pure.

This module owns the state machine's face: ``apply`` (decode a command, run it exactly once
per session, always return a result dict), the read-only queries the metaserver answers
from the applied state, and ``snapshot`` / ``restore``. The rules of each op are in
``ops.py``, the data and the snapshot format in ``state.py``, the command format and the
limits in ``commands.py``.

It must not read a clock, draw random numbers or do I/O (``tests/unit/test_boundaries.py``):
every replica applies the same commands and must end in the same state.

Results:
- ``apply`` returns ``{"ok": True, **fields}`` or ``{"ok": False, "err": error_to_wire(e)}``
  and never raises, whatever the bytes. The result of a session command is also kept in
  the session table (a retry gets it again), so ``apply`` hands out a shallow copy: a
  caller may add, drop or replace top-level fields of its answer without changing what
  every replica remembers, but must not change the nested maps and lists (``attr``,
  ``replicas``) in place.
- The queries raise ``DfsError`` subclasses (NotFound, NotDir, Invalid, ...).
"""

from __future__ import annotations

from typing import Any

from dfs.wire.errors import (
    DfsError,
    InternalError,
    Invalid,
    IsDir,
    NoAttr,
    NotFound,
    ProtocolError,
    Stale,
    Unsupported,
    error_to_wire,
)
from dfs.wire.limits import CHUNK_SIZE_BYTES_DEFAULT, READDIR_LIMIT_MAX
from metaserver.chunks.policy import ClusterPolicy
from metaserver.namespace import rstats
from metaserver.namespace.batch import batch
from metaserver.namespace.cluster import CLUSTER_OPS
from metaserver.namespace.commands import (
    CHUNKS_QUERY_MAX,
    TRASH_S_DEFAULT,
    check_name,
    check_xattr_name,
    decode_command,
)
from metaserver.namespace.holes import HOLE_OPS
from metaserver.namespace.ops import OPS
from metaserver.namespace.state import State, attr, chunk_info
from metaserver.namespace.trash import TRASH_OPS
from metaserver.namespace.tree import TREE_OPS
from metaserver.raft.sessions import StaleSequence

DEFAULT_CHUNK_SIZE_BYTES = CHUNK_SIZE_BYTES_DEFAULT


def _error(err: DfsError) -> dict[str, Any]:
    return {"ok": False, "err": error_to_wire(err)}


class Namespace(State):
    """The namespace state machine (``apply`` / ``snapshot`` / ``restore``) and its queries."""

    def __init__(
        self,
        chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
        trash_s_default: int = TRASH_S_DEFAULT,
    ) -> None:
        super().__init__(chunk_size_bytes, trash_s_default)

    # --- the Raft StateMachine protocol -----------------------------------------------

    def apply(self, data: bytes) -> dict[str, Any]:
        """Apply one committed command; always a result dict (see the module docstring)."""
        try:
            op, client, seq, now_ns, args = decode_command(data)
        except ProtocolError as e:
            return _error(e)
        # A batch, a file-system op (ops.py), one of the operator's (cluster.py), a
        # subtree's (tree.py), the trash's (trash.py) or a punched hole (holes.py).
        handler = (
            batch
            if op == "batch"
            else OPS.get(op)
            or CLUSTER_OPS.get(op)
            or TREE_OPS.get(op)
            or TRASH_OPS.get(op)
            or HOLE_OPS.get(op)
        )

        def run() -> dict[str, Any]:
            if handler is None:
                return _error(Unsupported("unknown namespace op", op=op))
            try:
                return handler(self, now_ns, args)
            except DfsError as e:
                return _error(e)
            except Exception as e:
                # A bug, not bad input (every input is checked). The same on every replica,
                # so it is recorded like any result rather than failing the Raft apply loop;
                # only the exception's type goes in it, as its text may hold an address
                # (a repr) that differs between replicas.
                return _error(InternalError(f"{op} failed: {type(e).__name__}", op=op))

        try:
            result: dict[str, Any] = self.sessions.apply(client, seq, run)
        except StaleSequence as e:
            return _error(Stale(str(e), client=client, seq=seq))
        return dict(result)

    def snapshot(self) -> bytes:
        return self.encode_snapshot()

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's; ``b""`` is a fresh file system (root only).

        Raises ValueError for a snapshot of another format version or chunk size.
        """
        if not data:
            self.reset()
            return
        self.decode_snapshot(data)

    # --- queries (linearizable once the caller has waited for its read index) ----------

    def getattr(self, ino: int) -> dict[str, Any]:
        return attr(self.inode(ino))

    def lookup(self, parent: int, name: bytes) -> dict[str, Any]:
        if type(name) is not bytes:
            raise ProtocolError("name must be bytes")
        check_name(name)
        _, d = self.directory(parent)
        entry = d.entries.get(name)
        if entry is None:
            raise NotFound("no such name", name=name)
        return attr(self.inodes[entry[0]])

    def readdir(self, ino: int, cookie: int, limit: int) -> tuple[list[list[Any]], bool]:
        """``([[name, attr, cookie], ...], more)``: entries after ``cookie``, in cookie order.

        Cost O(log n + limit + tombstones skipped), not O(n): see ``DirData``.
        """
        if type(cookie) is not int or cookie < 0:
            raise Invalid("cookie must be an int >= 0")
        if type(limit) is not int or not 1 <= limit <= READDIR_LIMIT_MAX:
            raise Invalid(f"limit must be 1..{READDIR_LIMIT_MAX}")
        _, d = self.directory(ino)
        page, more = d.page(cookie, limit)
        inodes = self.inodes
        return [[name, attr(inodes[child]), c] for name, child, c in page], more

    def readlink(self, ino: int) -> bytes:
        target = self.inode(ino).target
        if target is None:
            raise Invalid("not a symlink", ino=ino)  # readlink(2) gives EINVAL
        return target

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if type(name) is not bytes:
            raise ProtocolError("name must be bytes")
        check_xattr_name(name)
        xattrs = self.inode(ino).xattrs
        value = xattrs.get(name) if xattrs is not None else None
        if value is None:
            raise NoAttr("no such xattr", name=name)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        xattrs = self.inode(ino).xattrs
        return list(xattrs) if xattrs is not None else []

    def chunks(self, ino: int, index: int, count: int) -> list[dict[str, Any]]:
        """The chunks that exist in ``[index, index + count)`` (holes are absent)."""
        if type(index) is not int or index < 0:
            raise Invalid("index must be an int >= 0")
        if type(count) is not int or not 1 <= count <= CHUNKS_QUERY_MAX:
            raise Invalid(f"count must be 1..{CHUNKS_QUERY_MAX}")
        inode = self.inode(ino)
        file_chunks = inode.chunks
        if file_chunks is None:
            if inode.dir is not None:
                raise IsDir("is a directory", ino=ino)
            raise Invalid("not a regular file", ino=ino)
        table = self.chunk_table
        if len(file_chunks) <= count:  # a small file: walk its chunks, not the range
            found = sorted(i for i in file_chunks if index <= i < index + count)
        else:
            found = [i for i in range(index, index + count) if i in file_chunks]
        return [chunk_info(table[file_chunks[i]]) for i in found]

    def chunk(self, chunk_id: int) -> dict[str, Any]:
        """``{chunk_id, version, length, replicas, ino, index}`` of a live chunk."""
        c = self.chunk_table.get(chunk_id)
        if c is None:
            raise NotFound("no such chunk", chunk_id=chunk_id)
        info = chunk_info(c)
        info["ino"] = c.ino
        return info

    def chunkservers(self) -> dict[int, dict[str, str]]:
        return {cs_id: {"uuid": u, "address": a} for cs_id, (u, a) in self.cs_table.items()}

    def policy(self) -> ClusterPolicy:
        """The operator's chunk policy (draining servers, labels, a running rebalance): one
        frozen value, the same object until an op changes it (``cluster.py``)."""
        return self.cluster.policy()

    def rebalance_stop_reason(self) -> str:
        """Why the last rebalance ended ("" if none ended, or one runs)."""
        return self.cluster.stop_reason

    def replicas_by_chunkserver(self) -> dict[int, tuple[int, int]]:
        """cs_id -> (replicas, bytes) its chunks' replica sets place there. O(chunks)."""
        out: dict[int, tuple[int, int]] = {}
        for c in self.chunk_table.values():
            for cs_id in c.replicas:
                n, b = out.get(cs_id, (0, 0))
                out[cs_id] = (n + 1, b + c.length)
        return out

    def stats(self) -> dict[str, int]:
        """Counts for statfs and status; ``bytes`` is the sum of regular files' sizes
        (those in the trash included: their chunks are kept)."""
        return {
            "inodes": len(self.inodes),
            "files": self.files_count,
            "dirs": self.dirs_count,
            "chunks": len(self.chunk_table),
            "bytes": self.file_bytes,
            "trash_files": len(self.trash),
            "trash_bytes": self.trash_bytes,
        }

    def usage(self, ino: int) -> dict[str, int]:
        """A subtree's recursive statistics (rstats.py), O(1), and the cluster's trash
        and garbage: ``bytes``, ``physical_bytes`` (allocated bytes x goal), ``files``, ``dirs``,
        ``trash_files``, ``trash_bytes``, ``garbage_chunks`` (deleted, not yet collected)."""
        return {
            **rstats.usage(self, self.inode(ino)),
            "trash_files": len(self.trash),
            "trash_bytes": self.trash_bytes,
            "garbage_chunks": len(self.garbage),
        }
