"""metaserver/access.py: POSIX permission checks for a client restricted to one user."""

from __future__ import annotations

import stat

import pytest

from dfs.wire.auth import PeerInfo
from dfs.wire.errors import AccessDenied, PermissionDenied
from metaserver.access import Caller, R, W, X, caller_of, check, may
from metaserver.namespace.state import ROOT_INO, State

pytestmark = pytest.mark.timeout(30)

ALICE = Caller(1000, frozenset({1000, 50}))
BOB = Caller(1001, frozenset({1001}))
ROOT = Caller(0, frozenset({0}))


def _tree() -> tuple[State, dict[str, int]]:
    """/ (root's 0755) with: priv/ (root 0700) holding f (0644); shared/ (root 1777)
    holding alices (alice's 0600) and roots (root's 0644); group/ (root:50 0770)."""
    state = State(1 << 20)
    root = state.inode(ROOT_INO)
    made: dict[str, int] = {}

    def add(parent: int, name: str, mode: int, uid: int, gid: int) -> int:
        dir_inode = state.inode(parent)
        inode = state.new_inode(dir_inode, mode, uid, gid, 0, 0)
        assert dir_inode.dir is not None
        dir_inode.dir.insert(name.encode(), inode.ino)
        made[name] = inode.ino
        return inode.ino

    priv = add(root.ino, "priv", stat.S_IFDIR | 0o700, 0, 0)
    add(priv, "f", stat.S_IFREG | 0o644, 0, 0)
    shared = add(root.ino, "shared", stat.S_IFDIR | 0o1777, 0, 0)
    add(shared, "alices", stat.S_IFREG | 0o600, 1000, 1000)
    add(shared, "roots", stat.S_IFREG | 0o644, 0, 0)
    add(root.ino, "group", stat.S_IFDIR | 0o770, 0, 50)
    return state, made


def test_mode_bits_by_owner_group_other_and_root() -> None:
    state, ino = _tree()
    alices = state.inode(ino["alices"])
    assert may(alices, ALICE, R | W) and not may(alices, ALICE, X)
    assert not may(alices, BOB, R)
    group = state.inode(ino["group"])
    assert may(group, ALICE, R | W | X) and not may(group, BOB, X)  # alice is in group 50
    assert may(alices, ROOT, R | W) and not may(alices, ROOT, X)  # no x bit anywhere
    assert may(state.inode(ino["priv"]), ROOT, X)


def test_lookup_read_write_need_their_bits() -> None:
    state, ino = _tree()
    with pytest.raises(AccessDenied):
        check(state, ALICE, "fs.lookup", {"parent": ino["priv"], "name": b"f"})
    check(state, ROOT, "fs.lookup", {"parent": ino["priv"], "name": b"f"})
    check(state, ALICE, "fs.locate", {"ino": ino["roots"], "index": 0})
    with pytest.raises(AccessDenied):
        check(state, ALICE, "fs.write_handle", {"ino": ino["roots"], "index": 0})
    with pytest.raises(AccessDenied):
        check(state, BOB, "fs.locate", {"ino": ino["alices"], "index": 0})
    with pytest.raises(AccessDenied):
        check(state, BOB, "fs.readdir", {"ino": ino["group"]})


def test_sticky_directory_keeps_others_files() -> None:
    state, ino = _tree()
    shared = ino["shared"]
    with pytest.raises(PermissionDenied):
        check(state, BOB, "fs.unlink", {"parent": shared, "name": b"alices"})
    check(state, ALICE, "fs.unlink", {"parent": shared, "name": b"alices"})
    with pytest.raises(PermissionDenied):  # a rename onto someone else's file too
        check(state, ALICE, "fs.rename", {"parent": shared, "name": b"alices",
                                          "new_parent": shared, "new_name": b"roots"})  # fmt: skip


def test_owner_fields_chmod_chown() -> None:
    state, ino = _tree()
    new = {"parent": ino["shared"], "name": b"n", "mode": 0o100644}
    check(state, ALICE, "fs.create", {**new, "uid": 1000, "gid": 50})
    with pytest.raises(PermissionDenied):
        check(state, ALICE, "fs.create", {**new, "uid": 0, "gid": 0})
    with pytest.raises(PermissionDenied):
        check(state, ALICE, "fs.create", {**new, "uid": 1000, "gid": 7})
    with pytest.raises(PermissionDenied):
        check(state, ALICE, "fs.setattr", {"ino": ino["roots"], "mode": 0o100666})
    check(state, ALICE, "fs.setattr", {"ino": ino["alices"], "mode": 0o100644})
    with pytest.raises(PermissionDenied):
        check(state, ALICE, "fs.setattr", {"ino": ino["alices"], "uid": 1001})
    check(state, ALICE, "fs.setattr", {"ino": ino["alices"], "gid": 50})
    with pytest.raises(PermissionDenied):
        check(state, ALICE, "fs.setattr", {"ino": ino["alices"], "gid": 7})
    with pytest.raises(PermissionDenied):
        check(state, ALICE, "fs.setxattr", {"ino": ino["alices"], "name": b"trusted.x",
                                            "value": b""})  # fmt: skip
    with pytest.raises(PermissionDenied):
        check(state, ALICE, "admin.fsck", {"path": b"/"})


def test_who_is_checked() -> None:
    assert caller_of(None) is None
    assert caller_of(PeerInfo("client", "root's mount")) is None
    assert caller_of(PeerInfo("client", "a", 1000, (1000, 50))) == ALICE
