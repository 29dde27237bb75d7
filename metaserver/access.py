"""POSIX permission checks for clients restricted to one user. Pure (reads the namespace).

What it owns: deciding whether a request from a client whose credential names a uid and
groups (``PeerInfo.uid``, ``gids``; docs/SECURITY.md) may run, as a local file system
would decide it for that user: search (x) on a directory to look a name up in it, read to
list it or read a file's chunks, read and write to get a write handle, write and search on
a directory to add or remove names (with the sticky bit's rule), ownership to chmod, set
times or a goal, root to chown. Owner fields of what it creates must be its own uid and
one of its groups (or the directory's group). ``admin.*`` is refused to such a client.

Clients not restricted (root's mount, the CLI of an operator, every client of a
secret-only cluster) are not checked here: their mount checks with the kernel's
``default_permissions``, as before. The check runs on the leader before the request is
proposed or read, against the state it has applied, once the leases the request recalls
have given back their queued changes: a permission change committed after that is not
seen by a request already admitted (the window is the request's own Raft round), as a
local file system's check happens before its operation. Such a client sends no
``fs.batch`` (nor ``fs.reserve``, which serves batches): every change comes alone.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dfs.wire.auth import PeerInfo
from dfs.wire.errors import AccessDenied, PermissionDenied
from metaserver.namespace.state import Inode, State

R, W, X = 4, 2, 1
RENAME_EXCHANGE = 2  # fs.rename's flags, as renameat2's
ROOT_XATTRS_READ = (b"trusted.",)
ROOT_XATTRS_WRITE = (b"trusted.", b"security.")


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


def _dir(state: State, caller: Caller, ino: Any, mask: int, what: str) -> Inode:
    """Directory ``ino`` (``NotDir``, ``NotFound`` as the op would answer), with ``mask``."""
    inode, _ = state.directory(int(ino))
    return _need(state, caller, inode.ino, mask, what)


def _owner(inode: Inode, caller: Caller, what: str) -> None:
    if caller.uid != 0 and inode.uid != caller.uid:
        raise PermissionDenied(f"{what}: not the owner", ino=inode.ino, uid=caller.uid)


def _in_dir(state: State, caller: Caller, f: dict[str, Any], key: str = "parent") -> Inode:
    return _dir(state, caller, f[key], W | X, "change the directory")


def _new(state: State, caller: Caller, f: dict[str, Any]) -> None:
    parent = _in_dir(state, caller, f)
    uid, gid = f.get("uid", caller.uid), f.get("gid")
    if caller.uid != 0 and (uid != caller.uid or (gid not in caller.gids and gid != parent.gid)):
        raise PermissionDenied("create: owner is not the caller", uid=caller.uid)


def _victim(state: State, caller: Caller, parent: Inode, name: Any) -> Inode | None:
    """The entry ``name`` in ``parent``, checked against the sticky bit's rule."""
    assert parent.dir is not None  # _in_dir checked it
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
    target = _victim(state, caller, new, f["new_name"])
    exchange = bool(f.get("flags", 0) & RENAME_EXCHANGE)
    if old.ino != new.ino:  # a directory moved elsewhere: its ".." changes
        for inode in (moved, target if exchange else None):
            if inode is not None and inode.dir is not None:
                _need(state, caller, inode.ino, W, "move a directory")


def _owner_fields(
    state: State, caller: Caller, inode: Inode, f: dict[str, Any], *, writer: bool
) -> None:
    """The rules of the fields that change who owns ``inode`` and how it may be used,
    whether ``fs.setattr`` or a writer's ``fs.commit`` (``writer``) carries them: chown
    is root's; chgrp the owner's, to one of its groups; chmod the owner's, but a writer
    may clear the set-id bits (as a write does); explicit times the owner's, but a writer
    sets the time of its write."""
    if f.get("uid") is not None and f["uid"] != inode.uid and caller.uid != 0:
        raise PermissionDenied("chown: only root gives a file away", ino=inode.ino)
    if f.get("gid") is not None and f["gid"] != inode.gid:
        _owner(inode, caller, "chgrp")
        if caller.uid != 0 and f["gid"] not in caller.gids:
            raise PermissionDenied("chgrp: not a group of the caller", ino=inode.ino)
    mode = f.get("mode")
    if mode is not None and mode != inode.mode:
        kill_priv = mode == inode.mode & ~(stat.S_ISUID | stat.S_ISGID)
        if not (writer and kill_priv):
            _owner(inode, caller, "chmod")
    if f.get("atime_ns") is not None or (f.get("mtime_ns") is not None and not writer):
        _owner(inode, caller, "set times")


def _setattr(state: State, caller: Caller, f: dict[str, Any]) -> None:
    inode = state.inode(int(f["ino"]))
    _owner_fields(state, caller, inode, f, writer=False)
    if f.get("size") is not None:
        _need(state, caller, inode.ino, W, "truncate")
    if (f.get("atime_now") or f.get("mtime_now")) and caller.uid not in (0, inode.uid):
        _need(state, caller, inode.ino, W, "touch")


def _commit(state: State, caller: Caller, f: dict[str, Any]) -> None:
    inode = _need(state, caller, f["ino"], W, "write")
    _owner_fields(state, caller, inode, f, writer=True)


def _xattr_read(state: State, caller: Caller, f: dict[str, Any]) -> None:
    if bytes(f["name"]).startswith(ROOT_XATTRS_READ) and caller.uid != 0:
        raise PermissionDenied("trusted.* attributes are root's", ino=f["ino"])
    _need(state, caller, f["ino"], R, "read an attribute")


def _xattr_write(state: State, caller: Caller, f: dict[str, Any]) -> None:
    if bytes(f["name"]).startswith(ROOT_XATTRS_WRITE) and caller.uid != 0:
        raise PermissionDenied("trusted.* and security.* attributes are root's", ino=f["ino"])
    _need(state, caller, f["ino"], W, "set an attribute")


def _goal(state: State, caller: Caller, f: dict[str, Any]) -> None:
    _owner(state.inode(int(f["ino"])), caller, "set the goal")


def _mask(key: str, mask: int, what: str) -> Callable[[State, Caller, dict[str, Any]], None]:
    def check(state: State, caller: Caller, f: dict[str, Any]) -> None:
        _need(state, caller, f[key], mask, what)

    return check


def _dir_mask(key: str, mask: int, what: str) -> Callable[[State, Caller, dict[str, Any]], None]:
    def check(state: State, caller: Caller, f: dict[str, Any]) -> None:
        _dir(state, caller, f[key], mask, what)

    return check


_CHECKS: dict[str, Callable[[State, Caller, dict[str, Any]], None]] = {
    "fs.lookup": _dir_mask("parent", X, "look up a name"),
    "fs.readdir": _dir_mask("ino", R, "list the directory"),
    "fs.dir_lease": _dir_mask("ino", R | X, "list the directory"),
    "fs.locate": _mask("ino", R, "read"),
    "fs.getxattr": _xattr_read,
    # A write token reads too (chunk.read takes it): a user who may not read a file does
    # not get one.
    "fs.write_handle": _mask("ino", R | W, "write"),
    "fs.commit": _commit,
    # Punching and allocating change the file's contents or space, as a write does.
    "fs.punch": _mask("ino", W, "write"),
    "fs.allocate": _mask("ino", W, "write"),
    "fs.mkdir": _new,
    "fs.create": _new,
    "fs.mknod": _new,
    "fs.symlink": _new,
    "fs.link": _dir_mask("parent", W | X, "change the directory"),
    "fs.unlink": _remove,
    "fs.rmdir": _remove,
    "fs.rename": _rename,
    "fs.setattr": _setattr,
    "fs.setxattr": _xattr_write,
    "fs.removexattr": _xattr_write,
    "fs.set_goal": _goal,
}
# What a restricted client may not send at all: batches are answered under a lease before
# the leader sees them, so each op comes alone, checked (batch_ops is empty in its leases);
# reserved inode numbers serve only batches.
_REFUSED = frozenset({"fs.batch", "fs.reserve"})


def caller_of(peer: PeerInfo | None) -> Caller | None:
    """The user a connection's requests are checked as; None: not checked here."""
    if peer is None or peer.uid is None:
        return None
    return Caller(peer.uid, frozenset(peer.gids))


def check(state: State, caller: Caller, op: str, fields: dict[str, Any]) -> None:
    """Raise ``AccessDenied`` (EACCES) or ``PermissionDenied`` (EPERM) unless ``caller``
    may run ``op`` with ``fields`` (already checked against the op's definition); an inode
    that is not there, or not a directory where one is needed, raises what the op would
    (``NotFound``, ``NotDir``)."""
    if op == "admin.usage" and "ino" in fields and "path" not in fields:
        _need(state, caller, fields["ino"], R, "read the usage")
        return
    if op.startswith("admin.") or op in _REFUSED:
        raise PermissionDenied(f"a client restricted to a user does not send {op}", op=op)
    rule = _CHECKS.get(op)
    if rule is not None:
        rule(state, caller, fields)
