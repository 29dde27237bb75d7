"""POSIX permission checks for clients restricted to one user. Pure (reads the namespace).

What it owns: deciding whether a request from a client whose credential names a uid and
groups (``PeerInfo.uid``, ``gids``; docs/SECURITY.md) may run, as a local file system
would decide it for that user: search (x) on a directory to look a name up in it, read to
list it or read a file's chunks, write to get a file's write handle, write and search on
a directory to add or remove names (with the sticky bit's rule), ownership to chmod, set
times or a goal, root to chown. Owner fields of what it creates must be its own uid and
one of its groups (or the directory's group). ``admin.*`` is refused to such a client.

Clients not restricted (root's mount, the CLI of an operator, every client of a
secret-only cluster) are not checked here: their mount checks with the kernel's
``default_permissions``, as before. The check runs on the leader before the request is
proposed or read, against the state it has applied: a permission change committed in
between is not seen by a request already admitted (the window is one Raft round), as a
local file system's check happens before its operation.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dfs.wire.auth import PeerInfo
from dfs.wire.errors import AccessDenied, NotDir, NotFound, PermissionDenied
from metaserver.namespace.state import Inode, State

R, W, X = 4, 2, 1


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    gids: frozenset[int]


def may(inode: Inode, caller: Caller, mask: int) -> bool:
    """Whether ``caller`` has every permission of ``mask`` (R|W|X) on ``inode``."""
    if caller.uid == 0:  # root: all but executing a file no one may execute
        return not (mask & X) or inode.dir is not None or bool(inode.mode & 0o111)
    if inode.uid == caller.uid:
        bits = inode.mode >> 6
    elif inode.gid in caller.gids:
        bits = inode.mode >> 3
    else:
        bits = inode.mode
    return bits & mask & 7 == mask


def _need(state: State, caller: Caller, ino: Any, mask: int, what: str) -> Inode:
    inode = state.inode(int(ino))
    if not may(inode, caller, mask):
        raise AccessDenied(f"{what}: permission denied", ino=inode.ino, uid=caller.uid)
    return inode


def _owner(inode: Inode, caller: Caller, what: str) -> None:
    if caller.uid != 0 and inode.uid != caller.uid:
        raise PermissionDenied(f"{what}: not the owner", ino=inode.ino, uid=caller.uid)


def _in_dir(state: State, caller: Caller, f: dict[str, Any], key: str = "parent") -> Inode:
    return _need(state, caller, f[key], W | X, "change the directory")


def _new(state: State, caller: Caller, f: dict[str, Any]) -> None:
    parent = _in_dir(state, caller, f)
    uid, gid = f.get("uid", caller.uid), f.get("gid")
    if caller.uid != 0 and (uid != caller.uid or (gid not in caller.gids and gid != parent.gid)):
        raise PermissionDenied("create: owner is not the caller", uid=caller.uid)


def _victim(state: State, caller: Caller, parent: Inode, name: Any) -> Inode | None:
    """The entry ``name`` in ``parent``, checked against the sticky bit's rule."""
    assert parent.dir is not None
    entry = parent.dir.entries.get(bytes(name))
    if entry is None:
        return None
    victim = state.inode(entry[0])
    if parent.mode & stat.S_ISVTX and caller.uid not in (0, parent.uid, victim.uid):
        raise PermissionDenied("sticky directory: not the owner", ino=victim.ino)
    return victim


def _remove(state: State, caller: Caller, f: dict[str, Any]) -> None:
    _victim(state, caller, _in_dir(state, caller, f), f["name"])


def _rename(state: State, caller: Caller, f: dict[str, Any]) -> None:
    old = _in_dir(state, caller, f)
    new = _in_dir(state, caller, f, "new_parent")
    moved = _victim(state, caller, old, f["name"])
    _victim(state, caller, new, f["new_name"])
    if moved is not None and moved.dir is not None and old.ino != new.ino:
        _need(state, caller, moved.ino, W, "move a directory")  # its ".." changes


def _setattr(state: State, caller: Caller, f: dict[str, Any]) -> None:
    inode = state.inode(int(f["ino"]))
    if f.get("uid") is not None and f["uid"] != inode.uid and caller.uid != 0:
        raise PermissionDenied("chown: only root gives a file away", ino=inode.ino)
    if f.get("gid") is not None and f["gid"] != inode.gid:
        _owner(inode, caller, "chgrp")
        if caller.uid != 0 and f["gid"] not in caller.gids:
            raise PermissionDenied("chgrp: not a group of the caller", ino=inode.ino)
    if f.get("mode") is not None:
        _owner(inode, caller, "chmod")
    if f.get("size") is not None:
        _need(state, caller, inode.ino, W, "truncate")
    if f.get("atime_ns") is not None or f.get("mtime_ns") is not None:
        _owner(inode, caller, "set times")
    elif (f.get("atime_now") or f.get("mtime_now")) and caller.uid not in (0, inode.uid):
        _need(state, caller, inode.ino, W, "touch")


def _commit(state: State, caller: Caller, f: dict[str, Any]) -> None:
    inode = _need(state, caller, f["ino"], W, "write")
    if f.get("uid") is not None and f["uid"] != inode.uid and caller.uid != 0:
        raise PermissionDenied("chown: only root gives a file away", ino=inode.ino)


def _xattr_write(state: State, caller: Caller, f: dict[str, Any]) -> None:
    if bytes(f["name"]).startswith(b"trusted.") and caller.uid != 0:
        raise PermissionDenied("trusted.* attributes are root's", ino=f["ino"])
    _need(state, caller, f["ino"], W, "set an attribute")


def _goal(state: State, caller: Caller, f: dict[str, Any]) -> None:
    _owner(state.inode(int(f["ino"])), caller, "set the goal")


def _mask(key: str, mask: int, what: str) -> Callable[[State, Caller, dict[str, Any]], None]:
    def check(state: State, caller: Caller, f: dict[str, Any]) -> None:
        _need(state, caller, f[key], mask, what)

    return check


_CHECKS: dict[str, Callable[[State, Caller, dict[str, Any]], None]] = {
    "fs.lookup": _mask("parent", X, "look up a name"),
    "fs.readdir": _mask("ino", R, "list the directory"),
    "fs.dir_lease": _mask("ino", R | X, "list the directory"),
    "fs.locate": _mask("ino", R, "read"),
    "fs.getxattr": _mask("ino", R, "read an attribute"),
    "fs.write_handle": _mask("ino", W, "write"),
    "fs.commit": _commit,
    "fs.mkdir": _new,
    "fs.create": _new,
    "fs.mknod": _new,
    "fs.symlink": _new,
    "fs.link": _mask("parent", W | X, "change the directory"),
    "fs.unlink": _remove,
    "fs.rmdir": _remove,
    "fs.rename": _rename,
    "fs.setattr": _setattr,
    "fs.setxattr": _xattr_write,
    "fs.removexattr": _xattr_write,
    "fs.set_goal": _goal,
}


def caller_of(peer: PeerInfo | None) -> Caller | None:
    """The user a connection's requests are checked as; None: not checked here."""
    if peer is None or peer.uid is None:
        return None
    return Caller(peer.uid, frozenset(peer.gids))


def check(state: State, caller: Caller, op: str, fields: dict[str, Any]) -> None:
    """Raise ``AccessDenied`` (EACCES) or ``PermissionDenied`` (EPERM) unless ``caller``
    may run ``op`` with ``fields`` (already checked against the op's definition; the
    server checks each of an ``fs.batch``'s ops on its own). An inode that is not there
    is left for the op itself to answer (``NotFound``): in a batch, one the batch makes
    earlier is its maker's."""
    if op.startswith("admin."):
        raise PermissionDenied("a client restricted to a user runs no admin command", op=op)
    rule = _CHECKS.get(op)
    if rule is None:
        return
    with contextlib.suppress(NotFound, NotDir):
        rule(state, caller, fields)
