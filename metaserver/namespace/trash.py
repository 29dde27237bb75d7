"""The trash: removed regular files kept for their trash time before their chunks go.
Pure.

What it owns: ``State.trash`` (ino -> (removed_ns, expires_ns, path)), its derived heap
and byte count, the trash time of inodes (``Inode.trash_s``, inherited from the directory
an inode is made in, as the goal) and the ops on them: ``trash_expire``, ``trash_purge``,
``trash_restore`` and ``set_trash_tree``. MooseFS's trash is the model.

THE RULES
1. A regular file whose last name goes (unlink, or a rename over it) with a trash time
   above 0 enters the trash instead of being freed, whether or not a client holds it
   open: its inode (nlink 0, no name) and its chunks stay as they were, in the chunk
   table: no chunk of it reaches the garbage, so chunk collection cannot touch it, and
   repair keeps it at goal. Directories, symlinks and devices are freed at once: they
   hold no data (a restore makes the directories of a path again).
2. It leaves the trash by ``trash_restore`` (a name again), or by ``trash_expire`` (the
   leader's, once ``expires_ns`` passed by the command's clock, at most a batch a
   command) or ``trash_purge`` (the operator's): both make it an ORPHAN (``State.
   orphans``), which the leader frees, chunks to the garbage, as soon as no client holds
   it open (``metaserver/holds.py``): the same path as an unlink-while-open.
3. ``path`` is the absolute path the file had when removed; a restore puts it back there
   (or at ``to``), making the missing directories on the way (mode 0755, owned as the
   file), as MooseFS's undelete.
4. Deterministic: the heap pops in (expires_ns, ino) order, which depends only on the
   entries; entries that left the trash stay in it, stale, and are skipped.
"""

from __future__ import annotations

import heapq
import stat
from typing import Any

from dfs.wire.errors import DfsError, Exists, Invalid, NoSpace, NotDir, NotFound, error_to_wire
from dfs.wire.limits import INT63_MAX
from metaserver.namespace import rstats
from metaserver.namespace.commands import (
    DIR_ENTRIES_MAX,
    TRASH_BATCH_MAX,
    TRASH_S_MAX,
    arg_bytes,
    arg_int,
    arg_int_list,
    check_fields,
    check_name,
)
from metaserver.namespace.state import ROOT_INO, Inode, State
from metaserver.namespace.tree import PATH_BYTES_MAX, set_tree

Result = dict[str, Any]
# Stale heap entries are dropped once they outnumber the live ones by this many.
_HEAP_SLACK = 64


def path_of(st: State, ino: int) -> bytes:
    """The absolute path of directory ``ino`` (``b"/"`` for the root). O(depth)."""
    inodes = st.inodes
    parts: list[bytes] = []
    while ino != ROOT_INO:
        d = inodes[ino].dir
        assert d is not None
        parts.append(d.name)
        ino = d.parent
    return b"/" + b"/".join(reversed(parts))


def keeps(inode: Inode) -> bool:
    """Whether a file losing its last name goes to the trash (rule 1)."""
    return inode.chunks is not None and inode.trash_s > 0


def put(st: State, inode: Inode, parent_ino: int, name: bytes, now_ns: int) -> None:
    """``inode`` lost its last name ``name`` in ``parent_ino``: into the trash."""
    directory = path_of(st, parent_ino)
    path = directory + b"/" + name if directory != b"/" else b"/" + name
    expires_ns = min(now_ns + inode.trash_s * 1_000_000_000, INT63_MAX)
    st.trash[inode.ino] = (now_ns, expires_ns, path)
    st.trash_bytes += inode.size
    heapq.heappush(st.trash_heap, (expires_ns, inode.ino))


def _take(st: State, ino: int) -> Inode:
    del st.trash[ino]
    inode = st.inodes[ino]
    st.trash_bytes -= inode.size
    heap = st.trash_heap
    if len(heap) > 2 * len(st.trash) + _HEAP_SLACK:
        rebuild_heap(st)
    return inode


def _to_orphan(st: State, ino: int) -> None:
    _take(st, ino)
    st.orphans[ino] = None


def rebuild_heap(st: State) -> None:
    st.trash_heap = [(e[1], ino) for ino, e in st.trash.items()]
    heapq.heapify(st.trash_heap)


def next_expiry_ns(st: State) -> int | None:
    """When the next trash entry expires (maybe a stale one: an expire then pops it)."""
    return st.trash_heap[0][0] if st.trash_heap else None


# --- snapshot (state.py, version 6 on) ------------------------------------------------


def to_wire(st: State) -> list[Any]:
    return [[ino, removed, expires, path] for ino, (removed, expires, path) in st.trash.items()]


def load(st: State, rows: list[Any]) -> None:
    st.trash_bytes = 0
    for ino, removed, expires, path in rows:
        inode = st.inodes[ino]
        assert inode.nlink == 0 and inode.chunks is not None and ino not in st.orphans, ino
        st.trash[int(ino)] = (int(removed), int(expires), bytes(path))
        st.trash_bytes += inode.size
    rebuild_heap(st)


def check(st: State) -> None:
    assert st.trash_bytes == sum(st.inodes[i].size for i in st.trash)
    for ino, (removed, expires, path) in st.trash.items():
        inode = st.inodes[ino]
        assert inode.nlink == 0 and inode.chunks is not None and inode.parent == 0, ino
        assert ino not in st.orphans and removed <= expires and path.startswith(b"/"), ino
    live = {(e[1], ino) for ino, e in st.trash.items()}
    assert live <= set(st.trash_heap)


# --- ops ------------------------------------------------------------------------------

_TRASH_EXPIRE = frozenset({"limit"})


def trash_expire(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """The leader's: up to ``limit`` files whose trash time is over leave the trash (as
    orphans, rule 2), earliest expiry first. ``more``: some expired one is left."""
    check_fields(a, _TRASH_EXPIRE)
    limit = arg_int(a, "limit", 1, TRASH_BATCH_MAX)
    heap = st.trash_heap
    expired = 0
    pops = 0
    while heap and heap[0][0] <= now_ns and expired < limit and pops < 4 * limit:
        expires_ns, ino = heapq.heappop(heap)
        pops += 1
        entry = st.trash.get(ino)
        if entry is None or entry[1] != expires_ns:
            continue  # stale: restored, purged, or put back later with another expiry
        _to_orphan(st, ino)
        expired += 1
    return {"ok": True, "expired": expired, "more": bool(heap) and heap[0][0] <= now_ns}


_TRASH_PURGE = frozenset({"inos"})


def trash_purge(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """The operator's: the files named leave the trash now (as orphans, rule 2). Inodes
    not in the trash are skipped: a repeated batch changes nothing."""
    check_fields(a, _TRASH_PURGE)
    inos = arg_int_list(a, "inos", TRASH_BATCH_MAX)
    purged = 0
    for ino in inos:
        if ino in st.trash:
            _to_orphan(st, ino)
            purged += 1
    return {"ok": True, "purged": purged}


_TRASH_RESTORE = frozenset({"inos", "to"})


def _components(path: bytes) -> list[bytes]:
    if not path.startswith(b"/") or len(path) > PATH_BYTES_MAX:
        raise Invalid("to: an absolute path", path=path[:256])
    parts = [c for c in path.split(b"/") if c]
    if not parts:
        raise Invalid("to: names no file", path=path)
    return [check_name(c) for c in parts]


def _room(d: Any, name: bytes) -> None:
    if name in d.entries:
        raise Exists("name exists", name=name)
    if len(d.entries) >= DIR_ENTRIES_MAX:
        raise NoSpace(f"directory has {DIR_ENTRIES_MAX} entries")


def _restore_one(st: State, ino: int, to: bytes | None, now_ns: int) -> bytes:
    """Put ``ino`` back at its path or ``to`` (rule 3); checks all, then changes. Returns
    the path it got."""
    entry = st.trash.get(ino)
    if entry is None:
        raise NotFound("not in the trash", ino=ino)
    inode = st.inodes[ino]
    parts = _components(to if to is not None else entry[2])
    at = st.inodes[ROOT_INO]
    i = 0
    while i < len(parts):
        d = at.dir
        assert d is not None
        found = d.entries.get(parts[i])
        if found is None:
            break
        nxt = st.inodes[found[0]]
        if nxt.dir is None:
            if i == len(parts) - 1:
                raise Exists("name exists", name=parts[i])
            raise NotDir("not a directory on the path", name=parts[i])
        at = nxt
        i += 1
    if i == len(parts):  # ``to`` names a directory: into it, under the file's name
        if to is None:
            raise Exists("a directory has the name", name=parts[-1])
        parts.append(entry[2].rsplit(b"/", 1)[1])
        assert at.dir is not None
        _room(at.dir, parts[-1])
    else:
        assert at.dir is not None
        _room(at.dir, parts[i])
    # --- checked: change the state ---
    for name in parts[i:-1]:
        parent = at
        assert parent.dir is not None
        mode = stat.S_IFDIR | 0o755
        at = st.new_inode(parent, mode, inode.uid, inode.gid, 0, now_ns)
        parent.dir.insert(name, at.ino)
        parent.nlink += 1
        rstats.named(st, at, parent.ino, name)
        parent.mtime_ns = parent.ctime_ns = now_ns
    _take(st, ino)
    assert at.dir is not None
    at.dir.insert(parts[-1], ino)
    inode.nlink = 1
    inode.ctime_ns = now_ns
    rstats.named(st, inode, at.ino, parts[-1])
    at.mtime_ns = at.ctime_ns = now_ns
    return b"/" + b"/".join(parts)


def trash_restore(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Put files back (rule 3), each on its own: ``restored`` [[ino, path]], ``failed``
    [[ino, err]] (NotFound: not in the trash; Exists: the name is taken; NotDir: a file
    on the path). ``to`` (bytes, absolute; with one ino only) names the new path, or a
    directory to restore into."""
    check_fields(a, _TRASH_RESTORE)
    inos = arg_int_list(a, "inos", TRASH_BATCH_MAX)
    to = arg_bytes(a, "to") if "to" in a else None
    if to is not None and len(inos) != 1:
        raise Invalid("to: with one inode only")
    restored: list[list[Any]] = []
    failed: list[list[Any]] = []
    for ino in inos:
        try:
            restored.append([ino, _restore_one(st, ino, to, now_ns)])
        except DfsError as e:
            failed.append([ino, error_to_wire(e)])
    return {"ok": True, "restored": restored, "failed": failed}


def set_trash_tree(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """``trash_s`` on ``ino`` and (``recursive``) on everything below it, one page of the
    walk a command, as ``set_goal_tree`` (tree.py's ``set_tree`` walks for both):
    ``{changed, unchanged, cursor}``."""

    def set_trash_s(inode: Inode, trash_s: int) -> bool:
        if inode.trash_s == trash_s:
            return False
        inode.trash_s = trash_s
        return True

    changed, unchanged, cursor = set_tree(st, now_ns, a, "trash_s", 0, TRASH_S_MAX, set_trash_s)
    return {"ok": True, "changed": changed, "unchanged": unchanged, "cursor": cursor}


TRASH_OPS = {
    "trash_expire": trash_expire,
    "trash_purge": trash_purge,
    "trash_restore": trash_restore,
    "set_trash_tree": set_trash_tree,
}
