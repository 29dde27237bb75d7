"""Subtrees of the namespace: resolving a path, walking a subtree in pages, setting a field
over a subtree in pages (``set_tree``), and the recursive goal change (``set_goal_tree``).
Pure.

What it owns: the order of a walk and its cursor, which the operator's ops on the leader
(``metaserver/admin.py``: fsck, getgoal) and the ``set_goal_tree`` command share. What it
must not do: judge chunks (the leader's soft state does, ``metaserver/fsck.py``) or
block anything: a page is bounded (``WALK_LIMIT_MAX`` entries).

THE WALK: pre-order from a root inode (the root itself, then each entry of a directory
in cookie order, descending into each subdirectory as it is met). Each page visits at
most ``limit`` entries and returns a CURSOR, or None once the subtree is done: the list
``[[dir ino, name, after_cookie], ...]`` from the root (name ``b""``) down to the
directory being listed, ``after_cookie`` the cookie of the last entry visited in it
(``DirData.page`` resumes after it by bisection, without sorting). Resuming checks each
level against the state: a directory that is gone or no longer under that name (the
entry's cookie changes with a rename) cuts the cursor there, and the walk goes on in its
parent after it. So, as with ``readdir``, an entry present under one name for the whole
walk is visited exactly once; one created, removed or moved meanwhile may be visited or
not. Every replica applies the same command to the same state: the same page.

Paths are relative to the root of the walk (``b""`` for the root itself), without a
leading slash; the caller prefixes its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dfs.wire.errors import Invalid, NotDir, NotFound
from dfs.wire.limits import GOAL_MAX, GOAL_MIN
from metaserver.namespace.commands import arg_bool, arg_ino, arg_int, check_fields, check_name
from metaserver.namespace.state import ROOT_INO, Inode, State

# Entries one page visits at most (a page runs on the leader's event loop, or in the
# state machine: tens of milliseconds).
WALK_LIMIT_MAX = 65536
# The deepest cursor (directories nested this deep are not walked further).
CURSOR_DEPTH_MAX = 4096
# Entries fetched from a directory at a time (the rest of a batch is dropped when the
# walk descends into a subdirectory).
_BATCH = 256
PATH_BYTES_MAX = 65536

Cursor = list[list[Any]]
# visit(path relative to the root, inode) -> True to end the page after this entry
Visit = Callable[[bytes, Inode], bool]


def resolve(st: State, path: bytes) -> Inode:
    """The inode at absolute ``path`` (symlinks are not followed: the last one is the
    inode found). Raises NotFound / NotDir as a lookup would."""
    if type(path) is not bytes or not path.startswith(b"/") or len(path) > PATH_BYTES_MAX:
        raise Invalid("path: absolute, as bytes")
    inode = st.inodes[ROOT_INO]
    for name in path.split(b"/"):
        if not name or name == b".":
            continue
        d = inode.dir
        if d is None:
            raise NotDir("not a directory on the path", path=path)
        if name == b"..":
            inode = st.inodes[d.parent]
            continue
        entry = d.entries.get(check_name(name))
        if entry is None:
            raise NotFound("no such file or directory", path=path)
        inode = st.inodes[entry[0]]
    return inode


def check_cursor(value: Any) -> Cursor:
    if (
        type(value) is not list
        or not 1 <= len(value) <= CURSOR_DEPTH_MAX
        or not all(
            type(level) is list
            and len(level) == 3
            and type(level[0]) is int
            and type(level[1]) is bytes
            and type(level[2]) is int
            and level[2] >= 0
            for level in value
        )
    ):
        raise Invalid("cursor: as a walk page returned it")
    return [list(level) for level in value]


def resume(st: State, root: Inode, cursor: Cursor) -> Cursor:
    """The cursor's levels that still hold (see the module docstring)."""
    if cursor[0][0] != root.ino or root.dir is None:
        raise Invalid("cursor: of another walk", ino=root.ino)
    for k in range(1, len(cursor)):
        parent = st.inodes[cursor[k - 1][0]].dir
        ino, name, _ = cursor[k]
        assert parent is not None
        entry = parent.entries.get(name)
        child = st.inodes.get(ino)
        if entry != (ino, cursor[k - 1][2]) or child is None or child.dir is None:
            return cursor[:k]
    return cursor


def walk(st: State, root_ino: int, cursor: Any, limit: int, visit: Visit) -> Cursor | None:
    """Visit at most ``limit`` entries of the subtree of ``root_ino`` from ``cursor`` (None:
    from the start, the root first); returns the cursor to resume from, or None when the
    subtree is done. ``visit`` may end the page early by returning True."""
    root = st.inode(root_ino)
    if cursor is None:
        stop = visit(b"", root)
        if root.dir is None:
            return None
        levels: Cursor = [[root_ino, b"", 0]]
        if stop:
            return levels
        count = 1
    else:
        levels = resume(st, root, check_cursor(cursor))
        count = 0
    paths = [b""]
    for _, name, _ in levels[1:]:
        paths.append(paths[-1] + b"/" + name if paths[-1] else name)
    while levels:
        ino, _, after = levels[-1]
        d = st.inodes[ino].dir
        assert d is not None
        batch, _more = d.page(after, _BATCH)
        if not batch:
            levels.pop()
            paths.pop()
            continue
        prefix = paths[-1]
        for name, child_ino, cookie in batch:
            if count >= limit:
                return levels
            child = st.inodes[child_ino]
            path = prefix + b"/" + name if prefix else name
            count += 1
            levels[-1][2] = cookie
            stop = visit(path, child)
            if child.dir is not None and len(levels) < CURSOR_DEPTH_MAX:
                levels.append([child_ino, name, 0])
                paths.append(path)
                if stop:
                    return levels
                break
            if stop:
                return levels
    return None


# --- setting a field over a subtree ------------------------------------------------------

# set(inode, value) -> True when it changed the inode, False when the inode held the value
Setter = Callable[[Inode, int], bool]


def set_tree(
    st: State, now_ns: int, a: dict[str, Any], field: str, low: int, high: int, setter: Setter
) -> tuple[int, int, Cursor | None]:
    """The body of a recursive change (``set_goal_tree``, trash.py's ``set_trash_tree``):
    the command's fields are ``ino``, ``field`` (an int from ``low`` to ``high``),
    ``recursive``, ``cursor`` and ``limit``; ``setter`` gives ``ino`` and (``recursive``)
    everything below it that value, one page of the walk a command (``limit`` entries).
    An inode the setter changes gets ``ctime`` = now. Returns (changed, unchanged, the
    cursor to resume from or None once the subtree is done). Every argument and the
    cursor are checked before the first change."""
    check_fields(a, frozenset({"ino", field, "recursive", "cursor", "limit"}))
    ino = arg_ino(a, "ino")
    value = arg_int(a, field, low, high)
    recursive = arg_bool(a, "recursive", False)
    limit = arg_int(a, "limit", 1, WALK_LIMIT_MAX)
    cursor = a.get("cursor")
    root = st.inode(ino)
    if cursor is not None:
        if not recursive:
            raise Invalid("cursor: only for a recursive change")
        resume(st, root, check_cursor(cursor))  # every check before the first change
    changed = unchanged = 0

    def visit(_path: bytes, inode: Inode) -> bool:
        nonlocal changed, unchanged
        if setter(inode, value):
            inode.ctime_ns = now_ns
            changed += 1
        else:
            unchanged += 1
        return False

    if recursive:
        next_cursor = walk(st, ino, cursor, limit, visit)
    else:
        visit(b"", root)
        next_cursor = None
    return changed, unchanged, next_cursor


def set_goal_tree(st: State, now_ns: int, a: dict[str, Any]) -> dict[str, Any]:
    """``goal`` on ``ino`` and (``recursive``) on everything below it, one page of the walk
    a command (``limit`` entries): ``{changed, unchanged, dirs, cursor}``, ``dirs`` the
    directories whose goal changed (their leases are recalled by the leader: a lease holder
    gives new files its directory's goal), ``cursor`` None once the subtree is done. An
    inode whose goal changes gets ``ctime`` = now, as ``set_goal``."""
    dirs: list[int] = []

    def set_goal(inode: Inode, goal: int) -> bool:
        if inode.goal == goal:
            return False
        st.set_goal(inode, goal)
        if inode.dir is not None:
            dirs.append(inode.ino)
        return True

    changed, unchanged, cursor = set_tree(st, now_ns, a, "goal", GOAL_MIN, GOAL_MAX, set_goal)
    return {"ok": True, "changed": changed, "unchanged": unchanged, "dirs": dirs,
            "cursor": cursor}  # fmt: skip


TREE_OPS = {"set_goal_tree": set_goal_tree}

__all__ = [
    "CURSOR_DEPTH_MAX",
    "TREE_OPS",
    "WALK_LIMIT_MAX",
    "Cursor",
    "check_cursor",
    "resolve",
    "resume",
    "set_tree",
    "walk",
]
