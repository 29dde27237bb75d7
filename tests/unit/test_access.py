"""metaserver/access.py: POSIX permission checks for a client restricted to one user."""

from __future__ import annotations

import stat

import pytest

from dfs.wire.auth import PeerInfo
from dfs.wire.errors import AccessDenied, NotDir, NotFound, PermissionDenied
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


def test_a_writer_may_clear_set_id_bits_but_not_chmod() -> None:
    state, ino = _tree()
    f = state.inode(ino["roots"])
    f.mode = stat.S_IFREG | 0o6666  # root's, writable by all, set-id bits on
    commit = {"ino": f.ino, "size": 0, "chunks": []}
    check(state, ALICE, "fs.commit", {**commit, "mode": stat.S_IFREG | 0o666, "mtime_ns": 5})
    for change in ({"mode": stat.S_IFREG | 0o4777}, {"gid": 50}, {"atime_ns": 1}, {"uid": 1000}):
        with pytest.raises(PermissionDenied):
            check(state, ALICE, "fs.commit", {**commit, **change})


def test_batches_are_refused_and_wrong_parents_answered_as_the_op_would() -> None:
    state, ino = _tree()
    for op in ("fs.batch", "fs.reserve"):
        with pytest.raises(PermissionDenied):
            check(state, ALICE, op, {"ops": []})
    with pytest.raises(NotDir):  # an own file as the "directory"
        check(state, ALICE, "fs.unlink", {"parent": ino["alices"], "name": b"x"})
    with pytest.raises(NotFound):
        check(state, ALICE, "fs.setattr", {"ino": 999_999, "uid": 0})
    with pytest.raises(PermissionDenied):  # trusted.* is root's to read
        check(state, ALICE, "fs.getxattr", {"ino": ino["alices"], "name": b"trusted.x"})
    with pytest.raises(AccessDenied):  # writable but not readable: no write token
        state.inode(ino["alices"]).mode = stat.S_IFREG | 0o222
        check(state, ALICE, "fs.write_handle", {"ino": ino["alices"], "index": 0})


def test_an_exchange_moving_someone_elses_directory_needs_write_on_it() -> None:
    state, ino = _tree()
    shared, group = ino["shared"], ino["group"]
    d = state.new_inode(state.inode(group), stat.S_IFDIR | 0o755, 0, 50, 0, 0)
    state.inode(group).dir.insert(b"rootdir", d.ino)  # type: ignore[union-attr]
    mine = state.new_inode(state.inode(shared), stat.S_IFREG | 0o644, 1000, 1000, 0, 0)
    state.inode(shared).dir.insert(b"mine", mine.ino)  # type: ignore[union-attr]
    swap = {"parent": shared, "name": b"mine", "new_parent": group, "new_name": b"rootdir"}
    check(state, ALICE, "fs.rename", swap)  # a plain rename replaces it: allowed here
    with pytest.raises(AccessDenied):
        check(state, ALICE, "fs.rename", {**swap, "flags": 2})
