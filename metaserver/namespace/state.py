"""The namespace's data: inodes, directories, chunks, garbage, chunkservers, counters. Pure.

This module owns the in-memory shape of the file system and the snapshot format, and the
few structural steps every op is built from (allocate an inode, insert or remove a
directory entry, release an inode, truncate a file, build an ``attr`` map). It does not
decide POSIX rules: which op may do what, and with which error, is ``ops.py``.

Invariants (``State.check_invariants`` verifies all of them; the tests call it):
1. Every directory entry names a live inode; every live inode but the root is named by
   at least one entry, and a non-directory by exactly ``nlink`` entries.
2. A directory is named by exactly one entry, in the directory its ``parent`` names, and
   its ``nlink`` is 2 + its number of subdirectories (the root's parent is itself).
3. ``chunk_table`` holds exactly the chunks of live regular files: chunk ``c`` with
   ``(c.ino, c.index)`` is the file's ``chunks[c.index]``. A chunk leaves the table only
   for ``garbage`` (chunk id -> last replica set), so no chunk id is ever lost track of.
4. Ids come from counters in the state (``next_ino``, ``next_chunk_id``, ``next_cs_id``)
   and are never reused; every id in use is below its counter.
5. A directory's entries are in cookie order (each insertion takes ``next_cookie``), so
   ``readdir`` pages by cookie without sorting (see ``DirData``).

Snapshot format, version 7 (``SNAPSHOT_VERSION``; versions 1 to 6 are read too): one msgpack
array, bytes as bin::

    [7,                                   # SNAPSHOT_VERSION
     chunk_size_bytes,                    # fixed per cluster; restore refuses another
     [next_ino, next_chunk_id, next_cs_id],
     [[ino, mode, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, rdev, goal,
       [[xattr_name, xattr_value], ...],  # in insertion order (listxattr's order)
       kind,
       trash_s], ...],                    # in inode-table order (trash_s: version 6 on;
                                          #   before, every inode had the default). kind is:
                                          #   directory: [parent, next_cookie,
                                          #               [[name, ino, cookie], ...]]
                                          #   symlink:   target (bin)
                                          #   otherwise: nil (a file's chunk map is
                                          #              rebuilt from the chunk list)
     [[chunk_id, version, length, [cs_id, ...], ino, index], ...],   # allocation order
     [[chunk_id, [cs_id, ...]], ...],     # garbage, in the order it was dropped
     [[cs_id, uuid, address], ...],       # registered chunkservers
     sessions,                            # SessionTable.to_wire()
     [ino, ...],                          # orphans (version 2 on; version 1 has none)
     [[holder, [[ino, chunk_id, [cs_id, ...], until_ns], ...]], ...]]
                                          # reserved entries (pools.py; version 3 on)
     [labels, draining, rebalance, stop_reason],
                                          # the operator's decisions about chunkservers
                                          # (cluster.py; version 4 on; before: none)
     [[chunk_id, version], ...],          # writes not settled yet (``State.writes``;
                                          # version 5 on; before: none)
     [[ino, removed_ns, expires_ns, path], ...],   # the trash, in the order removed
                                          # (trash.py; version 6 on; before: none)
     [[ino, [dir_ino, ...]], ...],        # inodes with several names: the directory of
                                          # each, oldest first (rstats.py; version 6 on;
                                          # before: rebuilt in directory-table order)
     [[ino, [start, stop, ...]], ...]]    # regular files' punched chunk spans
                                          # (sparse.py), in inode-table order (version 7
                                          # on; before: none, every file's blocks
                                          # followed its size)

Derived on restore, not stored: directories' names and recursive statistics, each
inode's primary directory, the trash's heap and bytes, the punched bytes of each file
with holes (``Holes.bytes``), the counters below.

Every list keeps the order of the dict it came from, so a restored state iterates (and
therefore acts, and snapshots) exactly as the original did.
"""

from __future__ import annotations

import stat
from bisect import bisect_right
from typing import Any

import msgpack

from dfs.wire.errors import Invalid, IsDir, NotDir, NotFound
from dfs.wire.limits import (
    CHUNK_SIZE_BYTES_MAX,
    CHUNK_SIZE_BYTES_MIN,
    DIR_BLOCKS,
    DIR_SIZE_BYTES,
    size_blocks,
)
from dfs.wire.limits import ROOT_INO as ROOT_INO  # its importers take it from here
from metaserver.namespace import rstats, sparse
from metaserver.namespace.cluster import ClusterState
from metaserver.namespace.commands import GOAL_DEFAULT, TRASH_S_DEFAULT
from metaserver.raft.sessions import SessionTable

SNAPSHOT_VERSION = 7
SNAPSHOT_VERSIONS_READ = (1, 2, 3, 4, 5, 6, 7)
# Tombstones in a directory's cookie index are compacted once they are this many and
# outnumber the live entries (amortized O(1) per removal).
_DEAD_COMPACT_MIN = 64


class DirData:
    """A directory's entries, in cookie order, with an index for paging by cookie.

    HOW IT WORKS: ``entries`` maps name -> (ino, cookie) and, being a dict, iterates in
    insertion order; every insertion takes the next cookie, and a renamed or replaced
    entry is removed and inserted again with a fresh one, so insertion order is cookie
    order. ``readdir`` must find the first entry after a cookie without walking the
    directory from its start, so ``order_cookies`` / ``order_names`` list every cookie ever
    inserted, ascending (bisect finds the resume point); removals leave tombstones there
    (an entry whose name is gone or now carries another cookie), skipped when paging and
    compacted away when they outnumber the live entries.
    LIMITATIONS: a listing never sees an entry inserted behind its cursor; that is the
    contract (an entry present for the whole listing is returned exactly once).
    """

    __slots__ = (
        "dead",
        "entries",
        "name",
        "next_cookie",
        "order_cookies",
        "order_names",
        "parent",
        "r_bytes",
        "r_dirs",
        "r_files",
        "r_phys",
    )

    def __init__(self, parent: int, name: bytes = b"") -> None:
        self.parent = parent
        # Its name in ``parent`` (derived: kept with every move, rebuilt on restore), so
        # that a removed file's path can be written into the trash without a search.
        self.name = name
        # Recursive statistics of the subtree (rstats.py): bytes of its regular files,
        # those bytes times each file's goal, its regular files, its directories (itself
        # included).
        self.r_bytes = 0
        self.r_phys = 0
        self.r_files = 0
        self.r_dirs = 1
        self.entries: dict[bytes, tuple[int, int]] = {}
        self.order_cookies: list[int] = []
        self.order_names: list[bytes] = []
        self.dead = 0
        self.next_cookie = 1

    def insert(self, name: bytes, ino: int) -> None:
        assert name not in self.entries, "a replaced entry is removed first (fresh cookie)"
        cookie = self.next_cookie
        self.next_cookie = cookie + 1
        self.entries[name] = (ino, cookie)
        self.order_cookies.append(cookie)
        self.order_names.append(name)

    def remove(self, name: bytes) -> int:
        """Remove ``name`` (which must exist); returns its inode number."""
        ino = self.entries.pop(name)[0]
        self.dead += 1
        if self.dead >= _DEAD_COMPACT_MIN and self.dead > len(self.entries):
            self.compact()
        return ino

    def compact(self) -> None:
        self.order_cookies = [cookie for _, cookie in self.entries.values()]
        self.order_names = list(self.entries)
        self.dead = 0

    def page(self, after_cookie: int, limit: int) -> tuple[list[tuple[bytes, int, int]], bool]:
        """Up to ``limit`` live ``(name, ino, cookie)`` with cookie > ``after_cookie``."""
        cookies = self.order_cookies
        names = self.order_names
        entries = self.entries
        out: list[tuple[bytes, int, int]] = []
        n = len(cookies)
        i = bisect_right(cookies, after_cookie)
        while i < n:
            name = names[i]
            entry = entries.get(name)
            if entry is not None and entry[1] == cookies[i]:
                if len(out) == limit:
                    return out, True
                out.append((name, entry[0], cookies[i]))
            i += 1
        return out, False


class Inode:
    """One inode. ``chunks`` is set for regular files only (chunk index -> chunk id),
    ``target`` for symlinks only, ``dir`` for directories only."""

    __slots__ = (
        "atime_ns",
        "chunks",
        "ctime_ns",
        "dir",
        "gid",
        "goal",
        "holes",
        "ino",
        "mode",
        "mtime_ns",
        "nlink",
        "parent",
        "rdev",
        "size",
        "target",
        "trash_s",
        "uid",
        "xattrs",
    )

    def __init__(
        self, ino: int, mode: int, uid: int, gid: int, rdev: int, goal: int, now_ns: int
    ) -> None:
        self.ino = ino
        self.mode = mode
        self.nlink = 1
        # A non-directory's primary directory (rstats.py: the directory of its oldest
        # name, 0 while it has none); a directory's parent is ``dir.parent``.
        self.parent = 0
        # Seconds a removed regular file is kept in the trash (0: freed at once);
        # inherited from the directory it is made in, as ``goal`` (trash.py).
        self.trash_s = TRASH_S_DEFAULT
        self.uid = uid
        self.gid = gid
        self.size = 0
        self.atime_ns = now_ns
        self.mtime_ns = now_ns
        self.ctime_ns = now_ns
        self.rdev = rdev
        self.goal = goal
        self.xattrs: dict[bytes, bytes] | None = None
        self.chunks: dict[int, int] | None = None
        # A regular file's punched chunks (sparse.py), None while it has none.
        self.holes: sparse.Holes | None = None
        self.target: bytes | None = None
        self.dir: DirData | None = None


class Chunk:
    __slots__ = ("chunk_id", "index", "ino", "length", "replicas", "version")

    def __init__(
        self, chunk_id: int, version: int, length: int, replicas: list[int], ino: int, index: int
    ) -> None:
        self.chunk_id = chunk_id
        self.version = version
        self.length = length
        self.replicas = replicas
        self.ino = ino
        self.index = index


def attr(inode: Inode) -> dict[str, Any]:
    """The ``attr`` map of docs/PROTOCOL.md, freshly built (callers may keep it)."""
    if inode.chunks is not None:
        # The size's, less the punched chunks' (sparse.py): a hole a truncate or
        # fallocate left counts, as on ext4 after fallocate; a punched one does not.
        holes = inode.holes
        blocks = size_blocks(inode.size if holes is None else inode.size - holes.bytes)
    elif inode.dir is not None:
        blocks = DIR_BLOCKS
    else:
        blocks = 0  # symlink targets and device nodes live in the inode, as ext4's fast ones
    return {
        "ino": inode.ino,
        "mode": inode.mode,
        "nlink": inode.nlink,
        "uid": inode.uid,
        "gid": inode.gid,
        "size": inode.size,
        "atime_ns": inode.atime_ns,
        "mtime_ns": inode.mtime_ns,
        "ctime_ns": inode.ctime_ns,
        "rdev": inode.rdev,
        "goal": inode.goal,
        "blocks": blocks,
        # MooseFS's MATTR_NOXATTR: with this false a client answers every getxattr of the
        # inode "no such attribute" itself (ls -l asks each file for two).
        "has_xattrs": bool(inode.xattrs),
    }


def chunk_info(chunk: Chunk) -> dict[str, Any]:
    return {
        "index": chunk.index,
        "chunk_id": chunk.chunk_id,
        "version": chunk.version,
        "length": chunk.length,
        "replicas": list(chunk.replicas),
    }


class State:
    """The whole replicated state of the namespace, and its structural steps."""

    def __init__(self, chunk_size_bytes: int, trash_s_default: int = TRASH_S_DEFAULT) -> None:
        if (
            type(chunk_size_bytes) is not int
            or not CHUNK_SIZE_BYTES_MIN <= chunk_size_bytes <= CHUNK_SIZE_BYTES_MAX
        ):
            raise ValueError(
                f"chunk_size_bytes must be {CHUNK_SIZE_BYTES_MIN}..{CHUNK_SIZE_BYTES_MAX}"
            )
        self.chunk_size_bytes = chunk_size_bytes
        # The fresh root's trash time (a cluster-wide setting, as the chunk size: every
        # metaserver of a group must start with the same); afterwards it is the root's.
        self.trash_s_default = trash_s_default
        self.reset()

    def reset(self) -> None:
        """A fresh file system: only the root directory (mode 0755, owned by 0:0)."""
        self.inodes: dict[int, Inode] = {}
        self.chunk_table: dict[int, Chunk] = {}
        self.garbage: dict[int, list[int]] = {}
        # Regular files whose last name is gone while a client still holds them open
        # (POSIX unlink-while-open): alive, nameless, until the leader releases them.
        self.orphans: dict[int, None] = {}
        self.cs_table: dict[int, tuple[str, str]] = {}  # cs_id -> (uuid, address)
        self.cs_by_uuid: dict[str, int] = {}
        # Labels, draining, the running rebalance: the chunk policy's source (cluster.py).
        self.cluster = ClusterState()
        # Inode numbers and first chunks reserved for a client's creates (pools.py):
        # holder -> ino -> (chunk_id, replicas, until_ns); and chunk_id -> holder.
        self.pools: dict[int, dict[int, tuple[int, list[int], int]]] = {}
        self.reserved_chunks: dict[int, int] = {}
        # Chunks a writer was given a handle of (chunk id -> the handle's version) and the
        # leader has not yet seen settled: committed and left, or recovered (a dead
        # writer's chain may have left its members differing at one version). Hard state
        # so that a new leader recovers what its predecessor's writers left
        # (``write_marks``; docs/ARCHITECTURE.md, "Writer recovery").
        self.writes: dict[int, int] = {}
        self.next_ino = ROOT_INO + 1
        self.next_chunk_id = 1
        self.next_cs_id = 1
        self.sessions = SessionTable()
        # Removed regular files kept for their trash time (trash.py): ino -> (removed_ns,
        # expires_ns, the path it had), in the order removed; each is an inode with
        # nlink 0 and its chunks still in the chunk table.
        self.trash: dict[int, tuple[int, int, bytes]] = {}
        # Inodes with more than one name: ino -> the directory of each name, oldest
        # first (the first is its primary: rstats.py). Derived for an inode with one name.
        self.links: dict[int, list[int]] = {}
        # Derived (rebuilt on restore): (expires_ns, ino) of the trash, a heap with stale
        # entries skipped when popped (trash.py); the bytes of the files in the trash.
        self.trash_heap: list[tuple[int, int]] = []
        self.trash_bytes = 0
        # Derived counters (rebuilt on restore), so stats() costs O(1).
        self.files_count = 0
        self.dirs_count = 0
        self.file_bytes = 0
        root = Inode(ROOT_INO, stat.S_IFDIR | 0o755, 0, 0, 0, GOAL_DEFAULT, 0)
        root.nlink = 2
        root.size = DIR_SIZE_BYTES
        root.dir = DirData(ROOT_INO)
        root.trash_s = self.trash_s_default
        self.inodes[ROOT_INO] = root
        self.dirs_count = 1

    # --- lookups that raise -----------------------------------------------------------

    def inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise NotFound("no such inode", ino=ino)
        return inode

    def directory(self, ino: int) -> tuple[Inode, DirData]:
        inode = self.inodes.get(ino)
        if inode is None:
            raise NotFound("no such directory", ino=ino)
        d = inode.dir
        if d is None:
            raise NotDir("not a directory", ino=ino)
        return inode, d

    def regular(self, ino: int) -> Inode:
        """A regular file: IsDir for a directory (EISDIR), Invalid for anything else
        (EINVAL), as truncate(2) and fallocate(2) give."""
        inode = self.inode(ino)
        if inode.chunks is None:
            if inode.dir is not None:
                raise IsDir("is a directory", ino=ino)
            raise Invalid("not a regular file", ino=ino)
        return inode

    # --- structural steps (callers have checked every error condition first) ----------

    def new_inode(
        self,
        parent: Inode,
        mode: int,
        uid: int,
        gid: int,
        rdev: int,
        now_ns: int,
        ino: int | None = None,
    ) -> Inode:
        """A new inode created in directory ``parent`` (not yet linked anywhere), numbered
        from the counter, or ``ino`` (a number reserved earlier: pools.py).

        POSIX group inheritance: in a setgid directory the new inode takes the directory's
        group, and a new subdirectory keeps the setgid bit (as ext4 with ``grpid`` off).
        """
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        if ino is None:
            ino = self.next_ino
            self.next_ino = ino + 1
        inode = Inode(ino, mode, uid, gid, rdev, parent.goal, now_ns)
        inode.trash_s = parent.trash_s
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFDIR:
            inode.nlink = 2
            inode.size = DIR_SIZE_BYTES
            inode.dir = DirData(parent.ino)
            self.dirs_count += 1
        elif fmt == stat.S_IFREG:
            inode.chunks = {}
            self.files_count += 1
        self.inodes[ino] = inode
        return inode

    def release(self, inode: Inode) -> None:
        """Free an inode whose last name is gone: its chunks move to ``garbage``.

        HOOK (open-file holds, a later issue): an inode that a client still holds open must
        outlive its last name (POSIX unlink-while-open). That issue keeps such an inode on
        an orphan list here and calls this when the last hold is dropped.
        """
        del self.inodes[inode.ino]
        if inode.chunks is not None:
            self.files_count -= 1
            self.file_bytes -= inode.size
            self.drop_chunks(inode, sorted(inode.chunks))
        elif inode.dir is not None:
            self.dirs_count -= 1

    def drop_chunks(self, inode: Inode, indexes: list[int]) -> None:
        """The chunks at ``indexes`` (which must exist) leave the file and the table for
        ``garbage``; the size stays (the caller keeps it right)."""
        chunks = inode.chunks
        assert chunks is not None
        table = self.chunk_table
        garbage = self.garbage
        for index in indexes:
            chunk_id = chunks.pop(index)
            garbage[chunk_id] = table.pop(chunk_id).replicas
            self.writes.pop(chunk_id, None)

    def set_size(self, inode: Inode, size: int) -> None:
        """A regular file's size, keeping ``file_bytes`` (the sum of sizes), the
        directories' recursive statistics and the trash's bytes right."""
        delta = size - inode.size
        self.file_bytes += delta
        holes = inode.holes
        if holes is None:  # the common case: the allocated bytes are the size
            inode.size = size
            phys = delta * inode.goal
        else:  # cut to the new size (a shrink), measured again
            before = inode.size - holes.bytes
            inode.size = size
            inode.holes = sparse.make(holes.spans, size, self.chunk_size_bytes)
            phys = (sparse.allocated_bytes(inode) - before) * inode.goal
        if inode.parent:
            rstats.add_up(self, inode.parent, delta, phys, 0, 0)
        elif inode.ino in self.trash:
            self.trash_bytes += delta

    def set_holes(self, inode: Inode, spans: list[int]) -> None:
        """A regular file's punched chunk spans (sparse.py), keeping the recursive
        physical bytes right."""
        before = sparse.allocated_bytes(inode)
        if len(spans) > 2 * sparse.SPANS_MAX:  # past the cap the file counts whole (CAP)
            spans = []
        inode.holes = sparse.make(spans, inode.size, self.chunk_size_bytes)
        if inode.parent:
            phys = (sparse.allocated_bytes(inode) - before) * inode.goal
            rstats.add_up(self, inode.parent, 0, phys, 0, 0)

    def set_goal(self, inode: Inode, goal: int) -> None:
        """An inode's goal, keeping the recursive physical bytes right."""
        if inode.chunks is not None and inode.parent:
            phys = sparse.allocated_bytes(inode) * (goal - inode.goal)
            rstats.add_up(self, inode.parent, 0, phys, 0, 0)
        inode.goal = goal

    def truncate(self, inode: Inode, size: int) -> Chunk | None:
        """Set a regular file's size; no chunk keeps data past it afterwards.

        Chunks that start at or past ``size`` go to garbage. The chunk ``size`` falls inside
        (if any) gets that length and a new version, which it returns: its replicas still
        hold the old bytes past the cut, and a writer holding a handle of the old version
        could otherwise write inside them (no cut happens for a same-version write) or
        commit lengths that bring them back. The new version makes every such writer
        ``Stale``; the leader pushes it to the replicas, which cut themselves when they
        take it. Growing leaves a hole: no chunk is made.
        """
        chunks = inode.chunks
        assert chunks is not None
        chunk_size = self.chunk_size_bytes
        first_dropped = -(-size // chunk_size)  # chunks at this index and above start >= size
        dropped = sorted(i for i in chunks if i >= first_dropped)
        if dropped:
            self.drop_chunks(inode, dropped)
        cut_index = size // chunk_size
        cut_id = chunks.get(cut_index)
        chunk = None
        if cut_id is not None:
            chunk = self.chunk_table[cut_id]
            chunk.length = min(chunk.length, size - cut_index * chunk_size)
            chunk.version += 1
        self.set_size(inode, size)
        return chunk

    def allocate_chunk(
        self, inode: Inode, index: int, replicas: list[int], chunk_id: int | None = None
    ) -> Chunk:
        """A new chunk at ``index``: numbered from the counter, or ``chunk_id`` (reserved
        earlier: pools.py)."""
        assert inode.chunks is not None and index not in inode.chunks
        if chunk_id is None:
            chunk_id = self.next_chunk_id
            self.next_chunk_id = chunk_id + 1
        if sparse.contains(inode.holes, index):  # written again: takes space again
            self.set_holes(inode, sparse.remove(inode.holes, index, index + 1))
        chunk = Chunk(chunk_id, 1, 0, replicas, inode.ino, index)
        self.chunk_table[chunk_id] = chunk
        self.writes[chunk_id] = 1  # only a writer allocates a chunk
        inode.chunks[index] = chunk_id
        return chunk

    # --- snapshot ---------------------------------------------------------------------

    def encode_snapshot(self) -> bytes:
        from metaserver.namespace import trash  # trash.py builds on this module

        inodes: list[Any] = []
        for i in self.inodes.values():
            kind: Any = None
            if i.dir is not None:
                d = i.dir
                kind = [d.parent, d.next_cookie, [[n, e[0], e[1]] for n, e in d.entries.items()]]
            elif i.target is not None:
                kind = i.target
            xattrs = [[n, v] for n, v in i.xattrs.items()] if i.xattrs else []
            inodes.append(
                [
                    i.ino, i.mode, i.nlink, i.uid, i.gid, i.size, i.atime_ns, i.mtime_ns,
                    i.ctime_ns, i.rdev, i.goal, xattrs, kind, i.trash_s,
                ]
            )  # fmt: skip
        blob = [
            SNAPSHOT_VERSION,
            self.chunk_size_bytes,
            [self.next_ino, self.next_chunk_id, self.next_cs_id],
            inodes,
            [
                [c.chunk_id, c.version, c.length, c.replicas, c.ino, c.index]
                for c in self.chunk_table.values()
            ],
            [[chunk_id, replicas] for chunk_id, replicas in self.garbage.items()],
            [[cs_id, uuid, address] for cs_id, (uuid, address) in self.cs_table.items()],
            self.sessions.to_wire(),
            list(self.orphans),
            [
                [holder, [[ino, c, r, until] for ino, (c, r, until) in pool.items()]]
                for holder, pool in self.pools.items()
            ],
            self.cluster.to_wire(),
            [[chunk_id, version] for chunk_id, version in self.writes.items()],
            trash.to_wire(self),
            [[ino, parents] for ino, parents in self.links.items()],
            [[i.ino, i.holes.spans] for i in self.inodes.values() if i.holes is not None],
        ]
        return bytes(msgpack.packb(blob, use_bin_type=True))

    def decode_snapshot(self, data: bytes) -> None:
        """Replace the whole state with the snapshot's. Raises ValueError on a bad blob."""
        try:
            blob = msgpack.unpackb(data, raw=False, strict_map_key=False)
            version, chunk_size = blob[0], blob[1]
        except Exception as e:  # any malformed bytes: refuse the snapshot
            raise ValueError(f"undecodable namespace snapshot: {e}") from e
        if version not in SNAPSHOT_VERSIONS_READ:
            raise ValueError(f"unknown namespace snapshot version {version!r}")
        if chunk_size != self.chunk_size_bytes:
            raise ValueError(
                f"snapshot chunk size {chunk_size} != this cluster's {self.chunk_size_bytes}"
            )
        try:
            self._load(blob)
        except (TypeError, ValueError, KeyError, IndexError, AssertionError) as e:
            self.reset()  # never leave a half-loaded state behind
            raise ValueError(f"malformed namespace snapshot: {e!r}") from e

    def _load(self, blob: list[Any]) -> None:
        from metaserver.namespace import trash  # trash.py builds on this module

        _, _, counters, inodes, chunks, garbage, chunkservers, sessions = blob[:8]
        orphans = blob[8] if blob[0] >= 2 else []
        pools = blob[9] if blob[0] >= 3 else []
        cluster = blob[10] if blob[0] >= 4 else None
        writes = blob[11] if blob[0] >= 5 else []
        trash_rows, links = (blob[12], blob[13]) if blob[0] >= 6 else ([], None)
        holes = blob[14] if blob[0] >= 7 else []
        self.reset()
        self.inodes.clear()
        self.dirs_count = 0
        self.next_ino, self.next_chunk_id, self.next_cs_id = (int(x) for x in counters)
        for row in inodes:
            ino, mode, nlink, uid, gid, size, atime, mtime, ctime, rdev, goal, xattrs, kind = row[
                :13
            ]
            inode = Inode(ino, mode, uid, gid, rdev, goal, 0)
            # Before version 6 every inode had the default trash time.
            inode.trash_s = row[13] if len(row) > 13 else TRASH_S_DEFAULT
            inode.nlink = nlink
            inode.size = size
            inode.atime_ns, inode.mtime_ns, inode.ctime_ns = atime, mtime, ctime
            if xattrs:
                inode.xattrs = {bytes(n): bytes(v) for n, v in xattrs}
            fmt = stat.S_IFMT(mode)
            if fmt == stat.S_IFDIR:
                parent, next_cookie, entries = kind
                d = DirData(parent)
                d.next_cookie = next_cookie
                for name, child, cookie in entries:
                    d.entries[bytes(name)] = (child, cookie)
                d.compact()
                inode.dir = d
                self.dirs_count += 1
            elif fmt == stat.S_IFREG:
                inode.chunks = {}
                self.files_count += 1
                self.file_bytes += size
            elif fmt == stat.S_IFLNK:
                inode.target = bytes(kind)
            self.inodes[ino] = inode
        for chunk_id, version, length, replicas, ino, index in chunks:
            file_chunks = self.inodes[ino].chunks
            assert file_chunks is not None, "chunk of a non-file"
            self.chunk_table[chunk_id] = Chunk(
                chunk_id, version, length, list(replicas), ino, index
            )
            file_chunks[index] = chunk_id
        for ino, spans in holes:
            inode = self.inodes[ino]
            assert inode.chunks is not None and spans, ino
            inode.holes = sparse.make([int(x) for x in spans], inode.size, self.chunk_size_bytes)
        for chunk_id, replicas in garbage:
            self.garbage[chunk_id] = list(replicas)
        for cs_id, uuid, address in chunkservers:
            self.cs_table[cs_id] = (uuid, address)
            self.cs_by_uuid[uuid] = cs_id
        self.sessions = SessionTable.from_wire(sessions)
        for ino in orphans:
            assert self.inodes[ino].nlink == 0, "orphan with a name"
            self.orphans[ino] = None
        for holder, entries in pools:
            pool = self.pools[int(holder)] = {}
            for ino, chunk_id, replicas, until_ns in entries:
                assert ino not in self.inodes and chunk_id not in self.chunk_table, ino
                pool[int(ino)] = (int(chunk_id), [int(r) for r in replicas], int(until_ns))
                self.reserved_chunks[int(chunk_id)] = int(holder)
        if cluster is not None:
            self.cluster = ClusterState.from_wire(cluster)
            self.cluster.check(self.cs_table)
        for chunk_id, version in writes:
            assert chunk_id in self.chunk_table, chunk_id
            self.writes[int(chunk_id)] = int(version)
        trash.load(self, trash_rows)
        rstats.rebuild(self, links)

    # --- invariants (for tests; O(size of the state)) ---------------------------------

    def check_invariants(self) -> None:
        """Assert invariants 1-5 of the module docstring, the trash's and rstats'."""
        from metaserver.namespace import trash  # trash.py builds on this module

        inodes = self.inodes
        names: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        for ino, i in inodes.items():
            assert i.ino == ino and 0 < ino < self.next_ino, ino
            kinds = (i.chunks is not None) + (i.dir is not None) + (i.target is not None)
            assert kinds <= 1, ino
            assert (i.dir is not None) == stat.S_ISDIR(i.mode), ino
            assert (i.chunks is not None) == stat.S_ISREG(i.mode), ino
            assert (i.target is not None) == stat.S_ISLNK(i.mode), ino
            d = i.dir
            if d is None:
                continue
            last_cookie = 0
            for name, (child, cookie) in d.entries.items():
                assert last_cookie < cookie < d.next_cookie, (ino, name)
                last_cookie = cookie
                c = inodes.get(child)
                assert c is not None, f"entry {name!r} of {ino} names dead inode {child}"
                names[child] = names.get(child, 0) + 1
                if c.dir is not None:
                    assert c.dir.parent == ino, f"dir {child} in {ino} has parent {c.dir.parent}"
                    subdirs[ino] = subdirs.get(ino, 0) + 1
            live = [
                (c, n)
                for c, n in zip(d.order_cookies, d.order_names, strict=True)
                if d.entries.get(n, (0, 0))[1] == c
            ]
            assert live == [(e[1], n) for n, e in d.entries.items()], ino
            assert d.order_cookies == sorted(d.order_cookies), ino
        for ino, i in inodes.items():
            if i.dir is not None:
                assert i.nlink == 2 + subdirs.get(ino, 0), f"dir {ino} nlink {i.nlink}"
                assert names.get(ino, 0) == (0 if ino == ROOT_INO else 1), ino
            elif ino in self.orphans or ino in self.trash:
                assert i.nlink == 0 and ino not in names and i.chunks is not None, ino
            else:
                assert names.get(ino, 0) == i.nlink >= 1, f"inode {ino} nlink {i.nlink}"
        root_dir = inodes[ROOT_INO].dir
        assert root_dir is not None and root_dir.parent == ROOT_INO
        seen = 0
        for chunk_id, chunk in self.chunk_table.items():
            assert chunk.chunk_id == chunk_id and 0 < chunk_id < self.next_chunk_id
            f = inodes.get(chunk.ino)
            assert f is not None and f.chunks is not None
            assert f.chunks.get(chunk.index) == chunk_id
            assert 0 <= chunk.length <= self.chunk_size_bytes and chunk.version >= 1
            assert chunk_id not in self.garbage
            seen += 1
        assert seen == sum(len(i.chunks) for i in inodes.values() if i.chunks is not None)
        for i in inodes.values():
            if i.chunks is not None:
                sparse.check(i.holes, i.size, self.chunk_size_bytes, i.chunks)
            else:
                assert i.holes is None, i.ino
        assert all(self.chunk_table[c].version >= v for c, v in self.writes.items())
        assert all(0 < c < self.next_chunk_id for c in self.garbage)
        assert self.files_count == sum(1 for i in inodes.values() if i.chunks is not None)
        assert self.dirs_count == sum(1 for i in inodes.values() if i.dir is not None)
        assert self.file_bytes == sum(i.size for i in inodes.values() if i.chunks is not None)
        assert {u: c for c, (u, _) in self.cs_table.items()} == self.cs_by_uuid
        assert all(0 < c < self.next_cs_id for c in self.cs_table)
        self.cluster.check(self.cs_table)
        reserved: dict[int, int] = {}
        for holder, pool in self.pools.items():
            assert pool, holder
            for ino, (chunk_id, _, _) in pool.items():
                assert 0 < ino < self.next_ino and ino not in inodes, ino
                assert 0 < chunk_id < self.next_chunk_id, chunk_id
                assert chunk_id not in self.chunk_table and chunk_id not in self.garbage
                reserved[chunk_id] = holder
        assert reserved == self.reserved_chunks
        assert not (self.orphans.keys() & self.trash.keys())
        trash.check(self)
        rstats.check(self)
