"""metaserver.namespace: every op, its POSIX error cases, sessions, commands, snapshots."""

from __future__ import annotations

import random
import stat
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from dfs.wire.errors import DfsError, ErrorCode
from metaserver.namespace import ROOT_INO, Namespace, encode_command
from metaserver.namespace import commands as commands_module
from metaserver.namespace import ops as ops_module

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

CHUNK = 4096  # the smallest chunk size: chunk arithmetic in small numbers
E = ErrorCode


def without_sessions(ns: Namespace) -> Any:
    """The decoded snapshot minus the session table (element 7)."""
    blob = msgpack.unpackb(ns.snapshot(), raw=False)
    return blob[:7] + blob[8:]


class Fs:
    """A namespace driven the way the metaserver drives it: one session, rising seq/time."""

    def __init__(self, chunk_size_bytes: int = CHUNK, client: int = 7) -> None:
        self.ns = Namespace(chunk_size_bytes, trash_s_default=0)  # test_namespace_trash.py
        self.client = client
        self.seq = 0
        self.now = 1_000

    def command(self, op: str, **args: Any) -> bytes:
        self.seq += 1
        self.now += 10
        return encode_command(op, self.client, self.seq, self.now, args)

    def do(self, op: str, **args: Any) -> dict[str, Any]:
        result = self.ns.apply(self.command(op, **args))
        assert isinstance(result, dict) and type(result["ok"]) is bool
        return result

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        result = self.do(op, **args)
        assert result["ok"], result
        return result

    def err(self, op: str, **args: Any) -> ErrorCode:
        before = without_sessions(self.ns)
        result = self.do(op, **args)
        assert not result["ok"], result
        # A failed op changes nothing but the session's remembered result.
        assert without_sessions(self.ns) == before, f"{op} failed but changed the state"
        return ErrorCode(result["err"]["code"])

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0) -> int:
        r = self.ok("mkdir", parent=parent, name=name, mode=mode, uid=uid, gid=gid)
        return int(r["attr"]["ino"])

    def create(
        self, parent: int, name: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> int:
        r = self.ok("create", parent=parent, name=name, mode=mode, uid=uid, gid=gid, exclusive=True)
        assert r["created"] is True
        return int(r["attr"]["ino"])

    def names(self, ino: int) -> list[bytes]:
        entries, more = self.ns.readdir(ino, 0, 4096)
        assert not more
        return [e[0] for e in entries]

    def attr(self, ino: int) -> dict[str, Any]:
        return self.ns.getattr(ino)

    def dotdot(self, ino: int) -> int:
        """The parent a directory's ".." names (internal state: no query shows it)."""
        d = self.ns.inodes[ino].dir
        assert d is not None
        return d.parent

    def register(self, n: int = 3) -> list[int]:
        return [
            int(self.ok("cs_register", uuid=f"u{i}", address=f"h{i}:1")["cs_id"]) for i in range(n)
        ]


@pytest.fixture
def fs() -> Iterator[Fs]:
    f = Fs()
    yield f
    f.ns.check_invariants()


def ce(fs: Fs, ino: int, pairs: list[Any]) -> list[Any]:
    """Commit entries [index, length, chunk_id, version] for the file's current chunks (a
    missing chunk gets an id no file has, which the namespace must refuse)."""
    out = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2):
            out.append(pair)  # malformed on purpose: passed through as given
            continue
        index, length = pair
        got = fs.ns.chunks(ino, index, 1) if isinstance(index, int) and index >= 0 else []
        cid, ver = (got[0]["chunk_id"], got[0]["version"]) if got else (10**9, 1)
        out.append([index, length, cid, ver])
    return out


def query_error(query: Callable[..., Any], *args: Any) -> ErrorCode:
    """The code of the DfsError a query raises (it must raise one)."""
    with pytest.raises(DfsError) as info:
        query(*args)
    return info.value.code


# --- root, mkdir, create, mknod, symlink ----------------------------------------------


def test_fresh_namespace_is_root_only(fs: Fs) -> None:
    assert ROOT_INO == 1
    a = fs.attr(ROOT_INO)
    assert stat.S_ISDIR(a["mode"]) and a["nlink"] == 2 and a["goal"] == 3 and a["ino"] == 1
    assert set(a) == {
        "ino", "mode", "nlink", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns",
        "rdev", "goal", "blocks", "has_xattrs",
    }  # fmt: skip
    assert a["has_xattrs"] is False
    assert fs.names(ROOT_INO) == []
    assert fs.ns.stats() == {"inodes": 1, "files": 0, "dirs": 1, "chunks": 0, "bytes": 0,
                             "trash_files": 0, "trash_bytes": 0}  # fmt: skip


def test_mkdir_links_parent_and_sets_times(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d", mode=0o750, uid=5, gid=6)
    a = fs.attr(d)
    assert a["mode"] == stat.S_IFDIR | 0o750 and (a["uid"], a["gid"]) == (5, 6)
    assert a["nlink"] == 2 and a["atime_ns"] == a["mtime_ns"] == a["ctime_ns"] == fs.now
    root = fs.attr(ROOT_INO)
    assert root["nlink"] == 3 and root["mtime_ns"] == root["ctime_ns"] == fs.now
    assert fs.ns.lookup(ROOT_INO, b"d") == a
    fs.mkdir(d, b"e")
    assert fs.attr(d)["nlink"] == 3 and fs.attr(ROOT_INO)["nlink"] == 3
    assert fs.ok("mkdir", parent=ROOT_INO, name=b"x", mode=stat.S_IFDIR | 0o700, uid=0, gid=0)


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/", b"a\0b"])
def test_bad_names_are_invalid(fs: Fs, name: bytes) -> None:
    assert fs.err("mkdir", parent=ROOT_INO, name=name, mode=0o755, uid=0, gid=0) is E.INVALID
    assert fs.err("unlink", parent=ROOT_INO, name=name) is E.INVALID
    assert query_error(fs.ns.lookup, ROOT_INO, name) is E.INVALID


def test_name_length_limit(fs: Fs) -> None:
    fs.create(ROOT_INO, b"n" * 255)
    code = fs.err("create", parent=ROOT_INO, name=b"n" * 256, mode=0o644, uid=0, gid=0)
    assert code is E.NAME_TOO_LONG
    assert fs.names(ROOT_INO) == [b"n" * 255]


def test_mkdir_errors(fs: Fs) -> None:
    f = fs.create(ROOT_INO, b"f")
    fs.mkdir(ROOT_INO, b"d")
    mk = {"mode": 0o755, "uid": 0, "gid": 0}
    assert fs.err("mkdir", parent=ROOT_INO, name=b"d", **mk) is E.EXISTS
    assert fs.err("mkdir", parent=ROOT_INO, name=b"f", **mk) is E.EXISTS
    assert fs.err("mkdir", parent=999, name=b"x", **mk) is E.NOT_FOUND
    assert fs.err("mkdir", parent=f, name=b"x", **mk) is E.NOT_DIR
    bad_mode = {**mk, "mode": stat.S_IFREG | 0o755}
    assert fs.err("mkdir", parent=ROOT_INO, name=b"x", **bad_mode) is E.INVALID
    assert fs.err("mkdir", parent=0, name=b"x", **mk) is E.INVALID
    assert fs.err("mkdir", parent=ROOT_INO, name=b"x", mode=0o755, uid=-1, gid=0) is E.INVALID


def test_create_exclusive_and_not(fs: Fs) -> None:
    f = fs.create(ROOT_INO, b"f", mode=0o640, uid=3, gid=4)
    a = fs.attr(f)
    assert a["mode"] == stat.S_IFREG | 0o640 and a["nlink"] == 1 and a["size"] == 0
    assert a["blocks"] == 0 and (a["uid"], a["gid"]) == (3, 4)
    args = {"parent": ROOT_INO, "name": b"f", "mode": 0o600, "uid": 9, "gid": 9}
    assert fs.err("create", exclusive=True, **args) is E.EXISTS
    again = fs.ok("create", exclusive=False, **args)
    assert again["created"] is False and again["attr"] == a  # nothing changed
    fs.mkdir(ROOT_INO, b"d")
    assert fs.err("create", exclusive=False, **{**args, "name": b"d"}) is E.IS_DIR
    assert fs.err("create", exclusive=True, **{**args, "name": b"d"}) is E.EXISTS
    assert fs.err("create", exclusive=False, **{**args, "name": b"x", "mode": 0o40755}) is (
        E.INVALID
    )
    assert fs.ns.stats()["files"] == 1


def test_mknod_types(fs: Fs) -> None:
    base = {"parent": ROOT_INO, "uid": 0, "gid": 0}
    fifo = fs.ok("mknod", name=b"p", mode=stat.S_IFIFO | 0o600, rdev=0, **base)["attr"]
    assert stat.S_ISFIFO(fifo["mode"]) and fifo["rdev"] == 0
    dev = fs.ok("mknod", name=b"c", mode=stat.S_IFCHR | 0o600, rdev=0x0501, **base)["attr"]
    assert stat.S_ISCHR(dev["mode"]) and dev["rdev"] == 0x0501
    sock = fs.ok("mknod", name=b"s", mode=stat.S_IFSOCK | 0o600, rdev=7, **base)["attr"]
    assert sock["rdev"] == 0  # only device nodes keep a device number
    reg = fs.ok("mknod", name=b"r", mode=0o600, rdev=0, **base)["attr"]
    assert stat.S_ISREG(reg["mode"])
    for mode in (stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777):
        assert fs.err("mknod", name=b"x", mode=mode, rdev=0, **base) is E.INVALID
    assert fs.ns.stats() == {"inodes": 5, "files": 1, "dirs": 1, "chunks": 0, "bytes": 0,
                             "trash_files": 0, "trash_bytes": 0}  # fmt: skip


def test_symlink_and_readlink(fs: Fs) -> None:
    target = b"../some/where"
    a = fs.ok("symlink", parent=ROOT_INO, name=b"l", target=target, uid=1, gid=2)["attr"]
    assert a["mode"] == stat.S_IFLNK | 0o777 and a["size"] == len(target)
    assert fs.ns.readlink(a["ino"]) == target
    f = fs.create(ROOT_INO, b"f")
    assert query_error(fs.ns.readlink, f) is E.INVALID
    base = {"parent": ROOT_INO, "name": b"m", "uid": 0, "gid": 0}
    assert fs.err("symlink", target=b"", **base) is E.INVALID
    assert fs.err("symlink", target=b"x" * 4096, **base) is E.NAME_TOO_LONG
    assert fs.err("symlink", **{**base, "name": b"l"}, target=b"t") is E.EXISTS
    fs.ok("symlink", target=b"x" * 4095, **base)


# --- link, unlink, rmdir --------------------------------------------------------------


def test_link_counts_and_errors(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    f = fs.create(ROOT_INO, b"f")
    a = fs.ok("link", ino=f, parent=d, name=b"g")["attr"]
    assert a["nlink"] == 2 and a["ctime_ns"] == fs.now
    assert fs.ns.lookup(d, b"g")["ino"] == f
    assert fs.err("link", ino=d, parent=ROOT_INO, name=b"dd") is E.PERMISSION
    assert fs.err("link", ino=f, parent=ROOT_INO, name=b"d") is E.EXISTS
    assert fs.err("link", ino=999, parent=ROOT_INO, name=b"x") is E.NOT_FOUND
    assert fs.err("link", ino=f, parent=f, name=b"x") is E.NOT_DIR
    fs.ok("unlink", parent=ROOT_INO, name=b"f")
    assert fs.attr(f)["nlink"] == 1 and fs.names(ROOT_INO) == [b"d"]


def test_link_limit(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops_module, "LINKS_MAX", 3)
    f = fs.create(ROOT_INO, b"f")
    fs.ok("link", ino=f, parent=ROOT_INO, name=b"g")
    fs.ok("link", ino=f, parent=ROOT_INO, name=b"h")
    assert fs.err("link", ino=f, parent=ROOT_INO, name=b"i") is E.TOO_MANY_LINKS
    assert fs.attr(f)["nlink"] == 3


def test_unlink_last_link_frees_inode_and_chunks(fs: Fs) -> None:
    cs = fs.register()
    f = fs.create(ROOT_INO, b"f")
    c0 = fs.ok("write_handle", ino=f, index=0, replicas=cs)["chunk_id"]
    c1 = fs.ok("write_handle", ino=f, index=5, replicas=cs[:2])["chunk_id"]
    fs.ok("commit", ino=f, size=5 * CHUNK + 10, mtime_ns=1, chunks=ce(fs, f, [[0, CHUNK], [5, 10]]))
    fs.ok("link", ino=f, parent=ROOT_INO, name=b"g")
    fs.ok("unlink", parent=ROOT_INO, name=b"f")
    assert fs.attr(f)["nlink"] == 1 and fs.ns.garbage == {}
    fs.ok("unlink", parent=ROOT_INO, name=b"g")
    assert query_error(fs.ns.getattr, f) is E.NOT_FOUND
    assert fs.ns.garbage == {c0: cs, c1: cs[:2]}
    assert query_error(fs.ns.chunk, c0) is E.NOT_FOUND
    assert fs.ns.stats() == {"inodes": 1, "files": 0, "dirs": 1, "chunks": 0, "bytes": 0,
                             "trash_files": 0, "trash_bytes": 0}  # fmt: skip


def test_unlink_and_rmdir_errors(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    fs.create(d, b"f")
    fs.create(ROOT_INO, b"g")
    assert fs.err("unlink", parent=ROOT_INO, name=b"d") is E.IS_DIR
    assert fs.err("unlink", parent=ROOT_INO, name=b"nope") is E.NOT_FOUND
    assert fs.err("rmdir", parent=ROOT_INO, name=b"d") is E.NOT_EMPTY
    assert fs.err("rmdir", parent=ROOT_INO, name=b"g") is E.NOT_DIR
    assert fs.err("rmdir", parent=ROOT_INO, name=b"nope") is E.NOT_FOUND
    assert fs.err("rmdir", parent=999, name=b"d") is E.NOT_FOUND
    fs.ok("unlink", parent=d, name=b"f")
    assert fs.attr(ROOT_INO)["nlink"] == 3
    fs.ok("rmdir", parent=ROOT_INO, name=b"d")
    root = fs.attr(ROOT_INO)
    assert root["nlink"] == 2 and root["mtime_ns"] == fs.now and fs.names(ROOT_INO) == [b"g"]


def test_setgid_directory_inheritance(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d", uid=1, gid=50)
    # mkdir never takes setgid from the caller's mode, only from the parent
    assert not fs.attr(fs.mkdir(ROOT_INO, b"plain", mode=0o2755))["mode"] & stat.S_ISGID
    fs.ok("setattr", ino=d, mode=0o2775)
    assert fs.attr(d)["mode"] == stat.S_IFDIR | 0o2775
    f = fs.create(d, b"f", uid=2, gid=7)
    assert fs.attr(f)["gid"] == 50 and fs.attr(f)["uid"] == 2
    assert not fs.attr(f)["mode"] & stat.S_ISGID
    sub = fs.mkdir(d, b"sub", mode=0o755, uid=2, gid=7)
    a = fs.attr(sub)
    assert a["gid"] == 50 and a["mode"] == stat.S_IFDIR | stat.S_ISGID | 0o755
    deeper = fs.mkdir(sub, b"deeper", uid=2, gid=8)
    assert fs.attr(deeper)["gid"] == 50 and fs.attr(deeper)["mode"] & stat.S_ISGID
    link = fs.ok("symlink", parent=d, name=b"l", target=b"x", uid=2, gid=7)["attr"]
    assert link["gid"] == 50
    other = fs.create(ROOT_INO, b"other", uid=2, gid=7)
    assert fs.attr(other)["gid"] == 7


def test_goal_inherited_from_parent(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    assert fs.attr(d)["goal"] == 3
    assert fs.ok("set_goal", ino=d, goal=5)["attr"]["goal"] == 5
    f = fs.create(d, b"f")
    sub = fs.mkdir(d, b"s")
    assert fs.attr(f)["goal"] == 5 and fs.attr(sub)["goal"] == 5
    assert fs.err("set_goal", ino=f, goal=0) is E.INVALID
    assert fs.err("set_goal", ino=f, goal=17) is E.INVALID
    assert fs.err("set_goal", ino=999, goal=2) is E.NOT_FOUND
    fs.ok("set_goal", ino=f, goal=1)
    assert fs.attr(f)["goal"] == 1 and fs.attr(f)["ctime_ns"] == fs.now


# --- rename ---------------------------------------------------------------------------


def rn(fs: Fs, p: int, n: bytes, np: int, nn: bytes, flags: int = 0) -> dict[str, Any]:
    return fs.do("rename", parent=p, name=n, new_parent=np, new_name=nn, flags=flags)


def rn_err(fs: Fs, p: int, n: bytes, np: int, nn: bytes, flags: int = 0) -> ErrorCode:
    return fs.err("rename", parent=p, name=n, new_parent=np, new_name=nn, flags=flags)


def test_rename_moves_directory_and_its_dotdot(fs: Fs) -> None:
    a = fs.mkdir(ROOT_INO, b"a")
    b = fs.mkdir(ROOT_INO, b"b")
    c = fs.mkdir(a, b"c")
    assert rn(fs, a, b"c", b, b"c2")["ok"]
    assert fs.names(a) == [] and fs.names(b) == [b"c2"]
    assert fs.attr(a)["nlink"] == 2 and fs.attr(b)["nlink"] == 3 and fs.attr(ROOT_INO)["nlink"] == 4
    assert fs.dotdot(c) == b
    assert fs.attr(c)["ctime_ns"] == fs.now and fs.attr(a)["mtime_ns"] == fs.now
    # and now c2 can be removed from b, and a can move under c2 (not its own subtree)
    assert rn(fs, ROOT_INO, b"a", c, b"a")["ok"]
    assert fs.attr(ROOT_INO)["nlink"] == 3 and fs.attr(c)["nlink"] == 3


def test_rename_replaces_file_atomically(fs: Fs) -> None:
    cs = fs.register()
    f = fs.create(ROOT_INO, b"f")
    g = fs.create(ROOT_INO, b"g")
    chunk = fs.ok("write_handle", ino=g, index=0, replicas=cs)["chunk_id"]
    assert rn(fs, ROOT_INO, b"f", ROOT_INO, b"g")["ok"]
    assert fs.names(ROOT_INO) == [b"g"] and fs.ns.lookup(ROOT_INO, b"g")["ino"] == f
    assert query_error(fs.ns.getattr, g) is E.NOT_FOUND
    assert fs.ns.garbage == {chunk: cs}


def test_rename_replaced_file_with_other_links_survives(fs: Fs) -> None:
    f = fs.create(ROOT_INO, b"f")
    g = fs.create(ROOT_INO, b"g")
    fs.ok("link", ino=g, parent=ROOT_INO, name=b"g2")
    assert rn(fs, ROOT_INO, b"f", ROOT_INO, b"g")["ok"]
    assert fs.attr(g)["nlink"] == 1 and fs.ns.lookup(ROOT_INO, b"g2")["ino"] == g
    assert fs.ns.lookup(ROOT_INO, b"g")["ino"] == f


def test_rename_directory_over_directory(fs: Fs) -> None:
    a = fs.mkdir(ROOT_INO, b"a")
    fs.mkdir(ROOT_INO, b"empty")
    full = fs.mkdir(ROOT_INO, b"full")
    fs.create(full, b"x")
    assert fs.attr(ROOT_INO)["nlink"] == 5
    assert rn_err(fs, ROOT_INO, b"a", ROOT_INO, b"full") is E.NOT_EMPTY
    assert rn(fs, ROOT_INO, b"a", ROOT_INO, b"empty")["ok"]
    assert fs.attr(ROOT_INO)["nlink"] == 4 and fs.ns.lookup(ROOT_INO, b"empty")["ino"] == a
    # across directories: the target's parent loses the replaced dir, gains the moved one
    sub = fs.mkdir(full, b"sub")
    assert rn(fs, ROOT_INO, b"empty", full, b"sub")["ok"]
    assert fs.attr(full)["nlink"] == 3 and fs.attr(ROOT_INO)["nlink"] == 3
    assert query_error(fs.ns.getattr, sub) is E.NOT_FOUND


def test_rename_type_mismatch(fs: Fs) -> None:
    fs.mkdir(ROOT_INO, b"d")
    fs.create(ROOT_INO, b"f")
    assert rn_err(fs, ROOT_INO, b"d", ROOT_INO, b"f") is E.NOT_DIR
    assert rn_err(fs, ROOT_INO, b"f", ROOT_INO, b"d") is E.IS_DIR


def test_rename_into_own_subtree_is_invalid(fs: Fs) -> None:
    a = fs.mkdir(ROOT_INO, b"a")
    b = fs.mkdir(a, b"b")
    c = fs.mkdir(b, b"c")
    assert rn_err(fs, ROOT_INO, b"a", a, b"x") is E.INVALID
    assert rn_err(fs, ROOT_INO, b"a", c, b"x") is E.INVALID
    assert rn_err(fs, a, b"b", c, b"b") is E.INVALID
    # target is an ancestor of the source: replacing it would orphan the source
    assert rn_err(fs, b, b"c", ROOT_INO, b"a") is E.NOT_EMPTY
    assert rn_err(fs, b, b"c", ROOT_INO, b"a", flags=2) is E.INVALID
    assert rn_err(fs, ROOT_INO, b"a", b, b"c", flags=2) is E.INVALID


def test_rename_onto_itself_is_a_noop(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    f = fs.create(ROOT_INO, b"f")
    fs.ok("link", ino=f, parent=d, name=b"f2")
    before = fs.ns.readdir(ROOT_INO, 0, 100)
    assert rn(fs, ROOT_INO, b"f", d, b"f2")["ok"]
    assert rn(fs, ROOT_INO, b"f", ROOT_INO, b"f")["ok"]
    assert rn(fs, ROOT_INO, b"d", ROOT_INO, b"d")["ok"]
    assert rn(fs, ROOT_INO, b"f", d, b"f2", flags=2)["ok"]
    assert fs.ns.readdir(ROOT_INO, 0, 100) == before  # same cookies, same times
    assert fs.attr(f)["nlink"] == 2 and fs.names(d) == [b"f2"]
    # NOREPLACE checks existence before sameness, as Linux
    assert rn_err(fs, ROOT_INO, b"f", ROOT_INO, b"f", flags=1) is E.EXISTS


def test_rename_noreplace(fs: Fs) -> None:
    fs.create(ROOT_INO, b"a")
    fs.create(ROOT_INO, b"b")
    assert rn_err(fs, ROOT_INO, b"a", ROOT_INO, b"b", flags=1) is E.EXISTS
    assert rn(fs, ROOT_INO, b"a", ROOT_INO, b"c", flags=1)["ok"]
    assert fs.names(ROOT_INO) == [b"b", b"c"]


def test_rename_exchange_file_and_directory(fs: Fs) -> None:
    a = fs.mkdir(ROOT_INO, b"a")
    b = fs.mkdir(ROOT_INO, b"b")
    d = fs.mkdir(a, b"d")
    f = fs.create(b, b"f")
    assert rn(fs, a, b"d", b, b"f", flags=2)["ok"]
    assert fs.ns.lookup(a, b"d")["ino"] == f and fs.ns.lookup(b, b"f")["ino"] == d
    assert fs.attr(a)["nlink"] == 2 and fs.attr(b)["nlink"] == 3
    assert fs.dotdot(d) == b
    assert fs.attr(f)["ctime_ns"] == fs.now == fs.attr(d)["ctime_ns"]
    # and back: now the directory is the target, and it moves back to a
    assert rn(fs, a, b"d", b, b"f", flags=2)["ok"]
    assert fs.ns.lookup(a, b"d")["ino"] == d and fs.ns.lookup(b, b"f")["ino"] == f
    assert fs.dotdot(d) == a
    assert fs.attr(a)["nlink"] == 3 and fs.attr(b)["nlink"] == 2
    assert rn_err(fs, a, b"d", b, b"missing", flags=2) is E.NOT_FOUND
    assert rn_err(fs, a, b"missing", b, b"f", flags=2) is E.NOT_FOUND
    # within one directory
    fs.create(a, b"g")
    before = fs.ns.lookup(a, b"d")["ino"], fs.ns.lookup(a, b"g")["ino"]
    assert rn(fs, a, b"d", a, b"g", flags=2)["ok"]
    assert (fs.ns.lookup(a, b"g")["ino"], fs.ns.lookup(a, b"d")["ino"]) == before


def test_rename_errors_and_flags(fs: Fs) -> None:
    f = fs.create(ROOT_INO, b"f")
    assert rn_err(fs, ROOT_INO, b"nope", ROOT_INO, b"x") is E.NOT_FOUND
    assert rn_err(fs, ROOT_INO, b"f", 999, b"x") is E.NOT_FOUND
    assert rn_err(fs, ROOT_INO, b"f", f, b"x") is E.NOT_DIR
    assert rn_err(fs, ROOT_INO, b"f", ROOT_INO, b"x", flags=3) is E.INVALID
    assert rn_err(fs, ROOT_INO, b"f", ROOT_INO, b"x", flags=4) is E.INVALID
    assert rn_err(fs, ROOT_INO, b"f", ROOT_INO, b"..") is E.INVALID


def test_rename_gives_a_fresh_cookie(fs: Fs) -> None:
    for name in (b"a", b"b", b"c"):
        fs.create(ROOT_INO, name)
    entries, _ = fs.ns.readdir(ROOT_INO, 0, 10)
    cookie_b = entries[1][2]
    assert rn(fs, ROOT_INO, b"a", ROOT_INO, b"z")["ok"]
    entries, _ = fs.ns.readdir(ROOT_INO, cookie_b, 10)
    assert [e[0] for e in entries] == [b"c", b"z"]
    assert entries[1][2] > entries[0][2] > cookie_b


# --- setattr and truncate -------------------------------------------------------------


def test_setattr_mode_owner_times(fs: Fs) -> None:
    f = fs.create(ROOT_INO, b"f")
    a = fs.ok("setattr", ino=f, mode=0o4755 | stat.S_IFDIR, uid=10, gid=20)["attr"]
    assert a["mode"] == stat.S_IFREG | 0o4755  # the file type never changes
    assert (a["uid"], a["gid"], a["ctime_ns"]) == (10, 20, fs.now)
    a = fs.ok("setattr", ino=f, atime_ns=-5, mtime_ns=123)["attr"]
    assert (a["atime_ns"], a["mtime_ns"], a["ctime_ns"]) == (-5, 123, fs.now)
    a = fs.ok("setattr", ino=f, atime_now=True, mtime_ns=7, mtime_now=True)["attr"]
    assert a["atime_ns"] == a["mtime_ns"] == a["ctime_ns"] == fs.now
    d = fs.mkdir(ROOT_INO, b"d")
    assert fs.ok("setattr", ino=d, mode=0o1777)["attr"]["mode"] == stat.S_IFDIR | 0o1777
    assert fs.err("setattr", ino=999, mode=0o644) is E.NOT_FOUND
    assert fs.err("setattr", ino=f, uid=1 << 32) is E.INVALID
    assert fs.err("setattr", ino=f, mode="rw") is E.PROTOCOL
    assert fs.err("setattr", ino=f, mtime=5) is E.PROTOCOL  # misspelt field


def test_setattr_size_rules(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    link = fs.ok("symlink", parent=ROOT_INO, name=b"l", target=b"t", uid=0, gid=0)["attr"]
    f = fs.create(ROOT_INO, b"f")
    assert fs.err("setattr", ino=d, size=0) is E.IS_DIR
    assert fs.err("setattr", ino=link["ino"], size=0) is E.INVALID
    assert fs.err("setattr", ino=f, size=-1) is E.INVALID
    assert fs.err("setattr", ino=f, size=(1 << 50) + 1) is E.TOO_BIG
    a = fs.ok("setattr", ino=f, size=1 << 50)["attr"]
    assert a["size"] == 1 << 50 and a["blocks"] == (1 << 50) // 512
    assert a["mtime_ns"] == a["ctime_ns"] == fs.now
    assert fs.ns.stats()["bytes"] == 1 << 50 and fs.ns.stats()["chunks"] == 0


def test_truncate_drops_and_cuts_chunks(fs: Fs) -> None:
    cs = fs.register()
    f = fs.create(ROOT_INO, b"f")
    ids = [fs.ok("write_handle", ino=f, index=i, replicas=cs)["chunk_id"] for i in range(4)]
    fs.ok(
        "commit",
        ino=f,
        size=4 * CHUNK,
        mtime_ns=5,
        chunks=ce(fs, f, [[i, CHUNK] for i in range(4)]),
    )
    assert fs.ns.stats()["bytes"] == 4 * CHUNK
    fs.ok("setattr", ino=f, size=CHUNK + 100)
    assert fs.ns.garbage == {ids[2]: cs, ids[3]: cs}
    got = fs.ns.chunks(f, 0, 10)
    assert [(c["index"], c["chunk_id"], c["length"]) for c in got] == [
        (0, ids[0], CHUNK),
        (1, ids[1], 100),
    ]
    # truncating up leaves a hole: no chunk appears, lengths stay
    fs.ok("setattr", ino=f, size=10 * CHUNK)
    assert [c["length"] for c in fs.ns.chunks(f, 0, 100)] == [CHUNK, 100]
    assert fs.attr(f)["size"] == 10 * CHUNK and fs.ns.stats()["bytes"] == 10 * CHUNK
    # exactly on a chunk boundary: the chunk starting there goes, the one before is whole
    fs.ok("setattr", ino=f, size=CHUNK)
    assert [(c["index"], c["length"]) for c in fs.ns.chunks(f, 0, 100)] == [(0, CHUNK)]
    assert ids[1] in fs.ns.garbage
    fs.ok("setattr", ino=f, size=0)
    assert fs.ns.chunks(f, 0, 100) == [] and set(fs.ns.garbage) == set(ids)
    assert fs.ns.stats()["chunks"] == 0 and fs.ns.stats()["bytes"] == 0


# --- write_handle, commit, chunk queries ----------------------------------------------


def test_write_handle_allocates_then_bumps(fs: Fs) -> None:
    cs = fs.register(4)
    f = fs.create(ROOT_INO, b"f")
    h = fs.ok("write_handle", ino=f, index=2, replicas=cs[:3])
    assert (h["version"], h["length"], h["replicas"]) == (1, 0, cs[:3]) and h["chunk_id"] >= 1
    fs.ok("commit", ino=f, size=2 * CHUNK + 50, mtime_ns=9, chunks=ce(fs, f, [[2, 50]]))
    h2 = fs.ok("write_handle", ino=f, index=2, replicas=[cs[3]])
    assert h2["chunk_id"] == h["chunk_id"] and h2["version"] == 2
    assert h2["length"] == 50 and h2["replicas"] == cs[:3]  # the replica set is kept
    h3 = fs.ok("write_handle", ino=f, index=0, replicas=cs[1:])
    assert h3["chunk_id"] > h["chunk_id"]
    assert fs.ns.chunk(h["chunk_id"]) == {
        "chunk_id": h["chunk_id"], "version": 2, "length": 50, "replicas": cs[:3],
        "ino": f, "index": 2,
    }  # fmt: skip
    assert [c["index"] for c in fs.ns.chunks(f, 0, 3)] == [0, 2]
    assert [c["index"] for c in fs.ns.chunks(f, 1, 1)] == []
    assert [c["index"] for c in fs.ns.chunks(f, 2, 1024)] == [2]
    assert fs.ns.stats()["chunks"] == 2


def test_write_handle_drops_failed_replicas_with_the_bump_but_never_the_last(fs: Fs) -> None:
    cs = fs.register(3)
    f = fs.create(ROOT_INO, b"f")
    h = fs.ok("write_handle", ino=f, index=0, replicas=cs)
    assert h["allocated"] is True
    # Dropping on allocation is meaningless (the leader placed the chunk just now).
    assert fs.ok("write_handle", ino=f, index=1, replicas=cs, drop=[cs[0]])["replicas"] == cs
    h2 = fs.ok("write_handle", ino=f, index=0, replicas=[], drop=[cs[1], 99])
    assert (h2["version"], h2["replicas"]) == (h["version"] + 1, [cs[0], cs[2]])
    assert h2["allocated"] is False  # a bump: the leader pushes it, whatever it read before
    h3 = fs.ok("write_handle", ino=f, index=0, replicas=[], drop=[cs[0], cs[2]])
    assert (h3["version"], h3["replicas"]) == (h2["version"] + 1, [cs[2]])
    assert fs.ns.chunk(h["chunk_id"])["replicas"] == [cs[2]]
    assert fs.err("write_handle", ino=f, index=0, replicas=[], drop=[1.0]) is E.PROTOCOL
    fs.ns.check_invariants()


def test_replica_add_needs_the_copied_version_and_length_and_bumps(fs: Fs) -> None:
    cs = fs.register(4)
    f = fs.create(ROOT_INO, b"f")
    h = fs.ok("write_handle", ino=f, index=0, replicas=cs[:2])
    cid, v = h["chunk_id"], h["version"]
    fs.ok("commit", ino=f, size=10, mtime_ns=1, chunks=ce(fs, f, [[0, 10]]))
    # The copy was made before the commit grew the chunk: it misses bytes.
    assert fs.err("replica_add", chunk_id=cid, version=v, length=0, cs_id=cs[2]) is E.STALE
    assert fs.err("replica_add", chunk_id=cid, version=v + 1, length=10, cs_id=cs[2]) is E.STALE
    r = fs.ok("replica_add", chunk_id=cid, version=v, length=10, cs_id=cs[2])
    assert (r["version"], r["replicas"]) == (v + 1, cs[:3])
    # A writer of the old version is fenced off: its commit is refused.
    old = [[0, 20, cid, v]]
    assert fs.err("commit", ino=f, size=20, mtime_ns=2, chunks=old) is E.STALE
    assert fs.err("replica_add", chunk_id=cid, version=v + 1, length=10, cs_id=cs[2]) is E.EXISTS
    assert fs.err("replica_add", chunk_id=cid, version=v + 1, length=10, cs_id=99) is E.INVALID
    assert fs.err("replica_add", chunk_id=12345, version=1, length=0, cs_id=cs[3]) is E.NOT_FOUND
    assert fs.ns.chunk(cid)["replicas"] == cs[:3]
    fs.ns.check_invariants()


def test_length_recover_lowers_the_length_only_as_the_leader_saw_it(fs: Fs) -> None:
    """After a power loss of every replica, the leader lowers a chunk's length to its best
    copy; the file keeps its size (what lies past the chunk's length reads as zeros)."""
    cs = fs.register(3)
    f = fs.create(ROOT_INO, b"f")
    h = fs.ok("write_handle", ino=f, index=0, replicas=cs)
    cid, v = h["chunk_id"], h["version"]
    fs.ok("commit", ino=f, size=100, mtime_ns=1, chunks=ce(fs, f, [[0, 100]]))
    seen = {"chunk_id": cid, "version": v, "length": 100}
    assert fs.err("length_recover", **{**seen, "length": 90}, to=40) is E.STALE
    assert fs.err("length_recover", **{**seen, "version": v + 1}, to=40) is E.STALE
    assert fs.err("length_recover", **seen, to=100) is E.INVALID
    r = fs.ok("length_recover", **seen, to=40)
    assert (r["version"], r["length"], r["replicas"]) == (v, 40, cs)
    assert fs.ns.getattr(f)["size"] == 100
    # The same writer's handle still commits (its lengths only grow the chunk again).
    fs.ok("commit", ino=f, size=100, mtime_ns=2, chunks=[[0, 50, cid, v]])
    assert fs.ns.chunk(cid)["length"] == 50
    fs.ns.check_invariants()


def test_version_bump_fences_the_writer_of_the_old_version(fs: Fs) -> None:
    cs = fs.register(3)
    f = fs.create(ROOT_INO, b"f")
    h = fs.ok("write_handle", ino=f, index=0, replicas=cs[:2])
    cid, v = h["chunk_id"], h["version"]
    fs.ok("commit", ino=f, size=10, mtime_ns=1, chunks=ce(fs, f, [[0, 10]]))
    assert fs.err("version_bump", chunk_id=cid, version=v, length=0) is E.STALE
    assert fs.err("version_bump", chunk_id=cid, version=v + 1, length=10) is E.STALE
    r = fs.ok("version_bump", chunk_id=cid, version=v, length=10)
    assert (r["version"], r["length"], r["replicas"]) == (v + 1, 10, cs[:2])
    # The writer of the old version can no longer commit, even an overwrite that keeps the
    # length (a copy made at the new version may have read those bytes already).
    assert fs.err("commit", ino=f, size=10, mtime_ns=2, chunks=[[0, 10, cid, v]]) is E.STALE
    # A copy made at the bumped version joins; one made before the bump does not.
    assert fs.err("replica_add", chunk_id=cid, version=v, length=10, cs_id=cs[2]) is E.STALE
    assert fs.ok("replica_add", chunk_id=cid, version=v + 1, length=10, cs_id=cs[2])["ok"]
    assert fs.err("version_bump", chunk_id=12345, version=1, length=0) is E.NOT_FOUND
    assert fs.err("version_bump", chunk_id=cid, version=v + 2, length=10, x=1) is E.PROTOCOL
    fs.ns.check_invariants()


def test_replica_drop_keeps_the_last_unless_it_is_bad(fs: Fs) -> None:
    cs = fs.register(2)
    f = fs.create(ROOT_INO, b"f")
    h = fs.ok("write_handle", ino=f, index=0, replicas=cs)
    cid, v = h["chunk_id"], h["version"]
    r = fs.ok("replica_drop", chunk_id=cid, cs_id=cs[0])
    assert (r["version"], r["replicas"]) == (v, [cs[1]])  # no bump
    assert fs.err("replica_drop", chunk_id=cid, cs_id=cs[0]) is E.NOT_FOUND
    assert fs.err("replica_drop", chunk_id=cid, cs_id=cs[1]) is E.INVALID
    assert fs.ok("replica_drop", chunk_id=cid, cs_id=cs[1], keep_one=False)["replicas"] == []
    assert fs.err("replica_drop", chunk_id=999, cs_id=cs[1]) is E.NOT_FOUND
    fs.ns.check_invariants()


def test_no_write_handle_for_a_chunk_with_data_and_no_replica(fs: Fs) -> None:
    """A chunk with bytes whose last member left the set (reported bad) waits for a copy
    at its version to be adopted: a version bump then (a write handle's, or a writer
    recovery's fence) would make that copy stale and the bytes lost for good (found by the
    chunk simulation, seed 558)."""
    cs = fs.register(2)
    f = fs.create(ROOT_INO, b"f")
    fs.ok("write_handle", ino=f, index=0, replicas=[cs[0]])
    fs.ok("commit", ino=f, size=10, mtime_ns=1, chunks=ce(fs, f, [[0, 10]]))
    cid = fs.ns.chunks(f, 0, 1)[0]["chunk_id"]
    fs.ok("replica_drop", chunk_id=cid, cs_id=cs[0], keep_one=False)
    assert fs.err("write_handle", ino=f, index=0, replicas=[cs[1]]) is E.UNAVAILABLE
    chunk = fs.ns.chunk(cid)  # nor a fence's bump (a writer recovery's, a copy's)
    assert fs.err("version_bump", chunk_id=cid, version=chunk["version"], length=10) is (
        E.UNAVAILABLE
    )
    fs.ns.check_invariants()


def test_gc_done_forgets_garbage_once(fs: Fs) -> None:
    cs = fs.register(1)
    f = fs.create(ROOT_INO, b"f")
    cid = fs.ok("write_handle", ino=f, index=0, replicas=cs)["chunk_id"]
    fs.ok("unlink", parent=ROOT_INO, name=b"f")
    assert cid in fs.ns.garbage
    assert fs.ok("gc_done", chunk_ids=[cid, 4242])["forgotten"] == 1
    assert cid not in fs.ns.garbage
    assert fs.ok("gc_done", chunk_ids=[cid])["forgotten"] == 0
    assert fs.err("gc_done", chunk_ids=list(range(5000))) is E.INVALID
    fs.ns.check_invariants()


def test_unlink_keep_makes_an_orphan_until_released(fs: Fs) -> None:
    cs = fs.register(1)
    f = fs.create(ROOT_INO, b"f")
    g = fs.create(ROOT_INO, b"g")
    cid = fs.ok("write_handle", ino=f, index=0, replicas=cs)["chunk_id"]
    fs.ok("unlink", parent=ROOT_INO, name=b"f", keep=True)
    assert fs.names(ROOT_INO) == [b"g"]
    assert fs.attr(f)["nlink"] == 0 and f in fs.ns.orphans  # fstat still works
    h = fs.ok("write_handle", ino=f, index=0, replicas=cs)  # so do writes
    fs.ok("commit", ino=f, size=10, mtime_ns=5, chunks=[[0, 10, cid, h["version"]]])
    assert cid not in fs.ns.garbage
    fs.ns.check_invariants()
    restored = Namespace(chunk_size_bytes=CHUNK)
    restored.restore(fs.ns.snapshot())
    restored.check_invariants()
    assert list(restored.orphans) == [f]
    # Renamed over while held: the replaced file is kept too; without keep it goes.
    fs.ok("rename", parent=ROOT_INO, name=b"g", new_parent=ROOT_INO, new_name=b"h", keep=True)
    fs.create(ROOT_INO, b"g2")
    fs.ok("rename", parent=ROOT_INO, name=b"g2", new_parent=ROOT_INO, new_name=b"h", keep=True)
    assert g in fs.ns.orphans
    assert fs.ok("release_orphans", inos=[f, g, 9999])["released"] == 2
    assert fs.ok("release_orphans", inos=[f])["released"] == 0
    assert cid in fs.ns.garbage and f not in fs.ns.inodes and g not in fs.ns.inodes
    assert query_error(fs.ns.getattr, f) is E.NOT_FOUND
    fs.ns.check_invariants()


def test_keep_never_orphans_what_is_not_a_regular_file(fs: Fs) -> None:
    fs.ok("symlink", parent=ROOT_INO, name=b"l", target=b"t", uid=0, gid=0)
    fs.ok("unlink", parent=ROOT_INO, name=b"l", keep=True)
    assert not fs.ns.orphans
    fs.ns.check_invariants()


def test_a_version_1_snapshot_still_loads(fs: Fs) -> None:
    fs.create(ROOT_INO, b"f")
    blob = msgpack.unpackb(fs.ns.snapshot(), raw=False)
    old = msgpack.packb([1, *blob[1:8]], use_bin_type=True)
    restored = Namespace(chunk_size_bytes=CHUNK)
    restored.restore(old)
    assert restored.lookup(ROOT_INO, b"f")["ino"] >= 2 and not restored.orphans
    restored.check_invariants()


def test_write_handle_errors(fs: Fs) -> None:
    cs = fs.register(2)
    f = fs.create(ROOT_INO, b"f")
    d = fs.mkdir(ROOT_INO, b"d")
    link = fs.ok("symlink", parent=ROOT_INO, name=b"l", target=b"t", uid=0, gid=0)["attr"]
    assert fs.err("write_handle", ino=f, index=0, replicas=[]) is E.NO_SPACE
    assert fs.err("write_handle", ino=f, index=0, replicas=[cs[0], cs[0]]) is E.INVALID
    assert fs.err("write_handle", ino=f, index=0, replicas=[99]) is E.INVALID
    assert fs.err("write_handle", ino=d, index=0, replicas=cs) is E.IS_DIR
    assert fs.err("write_handle", ino=link["ino"], index=0, replicas=cs) is E.INVALID
    assert fs.err("write_handle", ino=999, index=0, replicas=cs) is E.NOT_FOUND
    assert fs.err("write_handle", ino=f, index=-1, replicas=cs) is E.INVALID
    last = ((1 << 50) - 1) // CHUNK
    assert fs.err("write_handle", ino=f, index=last + 1, replicas=cs) is E.TOO_BIG
    assert fs.ok("write_handle", ino=f, index=last, replicas=cs)["version"] == 1
    assert fs.err("write_handle", ino=f, index=0, replicas=[1.5]) is E.PROTOCOL
    assert query_error(fs.ns.chunks, d, 0, 1) is E.IS_DIR
    for index, count in ((0, 0), (0, 1025), (-1, 1)):
        assert query_error(fs.ns.chunks, f, index, count) is E.INVALID
    assert query_error(fs.ns.chunk, 12345) is E.NOT_FOUND


def test_commit_takes_maxima(fs: Fs) -> None:
    cs = fs.register()
    f = fs.create(ROOT_INO, b"f")
    for i in range(2):
        fs.ok("write_handle", ino=f, index=i, replicas=cs)
    a = fs.ok(
        "commit", ino=f, size=CHUNK + 300, mtime_ns=77, chunks=ce(fs, f, [[0, CHUNK], [1, 300]])
    )
    assert (a["attr"]["size"], a["attr"]["mtime_ns"], a["attr"]["ctime_ns"]) == (
        CHUNK + 300,
        77,
        fs.now,
    )
    # a late commit of an older, shorter write shrinks nothing
    a = fs.ok("commit", ino=f, size=100, mtime_ns=78, chunks=ce(fs, f, [[0, 10], [1, 200]]))
    assert a["attr"]["size"] == CHUNK + 300 and a["attr"]["mtime_ns"] == 78
    assert [c["length"] for c in fs.ns.chunks(f, 0, 2)] == [CHUNK, 300]
    # lengths are capped at the chunk size
    fs.ok("commit", ino=f, size=0, mtime_ns=79, chunks=ce(fs, f, [[1, 10 * CHUNK]]))
    assert [c["length"] for c in fs.ns.chunks(f, 0, 2)] == [CHUNK, CHUNK]
    assert fs.ns.stats()["bytes"] == CHUNK + 300


def test_commit_errors_change_nothing(fs: Fs) -> None:
    cs = fs.register()
    f = fs.create(ROOT_INO, b"f")
    d = fs.mkdir(ROOT_INO, b"d")
    fs.ok("write_handle", ino=f, index=0, replicas=cs)
    # chunk 3 was never allocated (or a truncate dropped it): all or nothing
    assert (
        fs.err("commit", ino=f, size=10, mtime_ns=1, chunks=ce(fs, f, [[0, 10], [3, 5]])) is E.STALE
    )
    assert fs.attr(f)["size"] == 0 and fs.ns.chunks(f, 0, 1)[0]["length"] == 0
    assert fs.err("commit", ino=d, size=1, mtime_ns=1, chunks=ce(fs, d, [])) is E.IS_DIR
    assert fs.err("commit", ino=f, size=-1, mtime_ns=1, chunks=ce(fs, f, [])) is E.INVALID
    assert fs.err("commit", ino=f, size=1, mtime_ns=1, chunks=ce(fs, f, [[0, -1]])) is E.INVALID
    assert fs.err("commit", ino=f, size=1, mtime_ns=1, chunks=ce(fs, f, [[0]])) is E.PROTOCOL
    assert fs.err("commit", ino=f, size=1, mtime_ns=1, chunks=ce(fs, f, [(0, True)])) is E.PROTOCOL


def test_commit_refuses_data_written_under_an_older_version_or_chunk(fs: Fs) -> None:
    cs = fs.register()
    f = fs.create(ROOT_INO, b"f")
    a = fs.ok("write_handle", ino=f, index=0, replicas=cs)
    b = fs.ok("write_handle", ino=f, index=0, replicas=cs)  # another writer: version 2
    stale = [[0, 100, a["chunk_id"], a["version"]]]
    assert fs.err("commit", ino=f, size=100, mtime_ns=1, chunks=stale) is E.STALE
    assert fs.attr(f)["size"] == 0 and fs.ns.chunks(f, 0, 1)[0]["length"] == 0
    fs.ok("commit", ino=f, size=100, mtime_ns=1, chunks=[[0, 100, b["chunk_id"], 2]])
    # Truncated away and allocated again: the old chunk id no longer counts at index 0.
    fs.ok("setattr", ino=f, size=0)
    c = fs.ok("write_handle", ino=f, index=0, replicas=cs)
    assert c["chunk_id"] != b["chunk_id"]
    old = [[0, 100, b["chunk_id"], 2]]
    assert fs.err("commit", ino=f, size=100, mtime_ns=1, chunks=old) is E.STALE
    assert fs.attr(f)["size"] == 0


def test_truncate_inside_a_chunk_bumps_its_version_and_reports_the_cut(fs: Fs) -> None:
    cs = fs.register()
    f = fs.create(ROOT_INO, b"f")
    h = fs.ok("write_handle", ino=f, index=1, replicas=cs)
    fs.ok("commit", ino=f, size=2 * CHUNK, mtime_ns=1, chunks=[[1, CHUNK, h["chunk_id"], 1]])
    r = fs.ok("setattr", ino=f, size=CHUNK + 10)
    assert r["cut"] == {"chunk_id": h["chunk_id"], "version": 2, "length": 10, "replicas": cs}
    # A writer still holding version 1 can no longer commit into the cut chunk.
    late = [[1, CHUNK, h["chunk_id"], 1]]
    assert fs.err("commit", ino=f, size=2 * CHUNK, mtime_ns=2, chunks=late) is E.STALE
    assert fs.attr(f)["size"] == CHUNK + 10
    # Growing, or cutting exactly at a chunk boundary, cuts no chunk.
    assert "cut" not in fs.ok("setattr", ino=f, size=5 * CHUNK)
    assert "cut" not in fs.ok("setattr", ino=f, size=CHUNK)


def test_cs_register_is_stable_per_uuid(fs: Fs) -> None:
    a = fs.ok("cs_register", uuid="aaa", address="h1:1")["cs_id"]
    b = fs.ok("cs_register", uuid="bbb", address="h2:1")["cs_id"]
    assert a != b
    assert fs.ok("cs_register", uuid="aaa", address="h3:9")["cs_id"] == a
    assert fs.ns.chunkservers() == {
        a: {"uuid": "aaa", "address": "h3:9"},
        b: {"uuid": "bbb", "address": "h2:1"},
    }
    assert fs.err("cs_register", uuid="", address="h") is E.INVALID
    assert fs.err("cs_register", uuid=b"x", address="h") is E.PROTOCOL


# --- xattrs ---------------------------------------------------------------------------


def test_xattrs(fs: Fs) -> None:
    f = fs.create(ROOT_INO, b"f")
    assert fs.attr(f)["has_xattrs"] is False
    fs.ok("setxattr", ino=f, name=b"user.a", value=b"1", flags=0)
    assert fs.attr(f)["ctime_ns"] == fs.now and fs.attr(f)["has_xattrs"] is True
    fs.ok("setxattr", ino=f, name=b"user.b", value=b"", flags=1)
    assert fs.ns.getxattr(f, b"user.a") == b"1" and fs.ns.getxattr(f, b"user.b") == b""
    assert fs.ns.listxattr(f) == [b"user.a", b"user.b"]
    assert fs.err("setxattr", ino=f, name=b"user.a", value=b"2", flags=1) is E.EXISTS
    assert fs.err("setxattr", ino=f, name=b"user.c", value=b"2", flags=2) is E.NO_ATTR
    fs.ok("setxattr", ino=f, name=b"user.a", value=b"3", flags=2)
    assert fs.ns.getxattr(f, b"user.a") == b"3"
    fs.ok("removexattr", ino=f, name=b"user.a")
    assert fs.err("removexattr", ino=f, name=b"user.a") is E.NO_ATTR
    assert query_error(fs.ns.getxattr, f, b"user.a") is E.NO_ATTR
    assert fs.ns.listxattr(f) == [b"user.b"]
    fs.ok("removexattr", ino=f, name=b"user.b")
    assert fs.attr(f)["has_xattrs"] is False
    assert fs.err("setxattr", ino=f, name=b"", value=b"x", flags=0) is E.INVALID
    assert fs.err("setxattr", ino=f, name=b"a" * 256, value=b"x", flags=0) is E.NAME_TOO_LONG
    assert fs.err("setxattr", ino=f, name=b"a", value=b"x" * 65537, flags=0) is E.TOO_BIG
    assert fs.err("setxattr", ino=f, name=b"a", value=b"x", flags=3) is E.INVALID
    assert fs.err("setxattr", ino=999, name=b"a", value=b"x", flags=0) is E.NOT_FOUND
    fs.ok("setxattr", ino=ROOT_INO, name=b"user.dir", value=b"x" * 65536, flags=0)


def test_xattr_bytes_per_inode_cap(fs: Fs) -> None:
    f = fs.create(ROOT_INO, b"f")
    value = b"v" * 65536
    for i in range(3):
        fs.ok("setxattr", ino=f, name=b"user.%d" % i, value=value, flags=0)
    # 3 * (7 + 65536) + 7 + 65536 > 256 KiB
    assert fs.err("setxattr", ino=f, name=b"user.3", value=value, flags=0) is E.TOO_BIG
    fs.ok("setxattr", ino=f, name=b"user.0", value=value, flags=0)  # replacing costs nothing
    fs.ok("setxattr", ino=f, name=b"user.3", value=b"v" * 1000, flags=0)
    assert len(fs.ns.listxattr(f)) == 4


# --- sessions: exactly once -----------------------------------------------------------


def test_replay_returns_first_result_and_changes_nothing(fs: Fs) -> None:
    cmd = fs.command("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
    first = fs.ns.apply(cmd)
    assert first["ok"]
    snap = fs.ns.snapshot()
    first["extra"] = 1  # what a caller adds to its answer is not remembered
    del first["attr"]
    again = fs.ns.apply(cmd)
    assert again["ok"] and "attr" in again and "extra" not in again
    assert fs.ns.snapshot() == snap and fs.names(ROOT_INO) == [b"d"]


def test_replay_of_an_error_gives_the_same_error(fs: Fs) -> None:
    cmd = fs.command("rmdir", parent=ROOT_INO, name=b"d")
    first = fs.ns.apply(cmd)
    assert ErrorCode(first["err"]["code"]) is E.NOT_FOUND
    # another session creates d: a retry of the first rmdir must still be NOT_FOUND
    other = encode_command(
        "mkdir", 8, 1, 5, {"parent": 1, "name": b"d", "mode": 0o755, "uid": 0, "gid": 0}
    )
    assert fs.ns.apply(other)["ok"]
    before = without_sessions(fs.ns)
    assert fs.ns.apply(cmd) == first
    # (a replay only refreshes the session's place in the table's LRU order)
    assert without_sessions(fs.ns) == before and fs.names(ROOT_INO) == [b"d"]


def test_older_sequence_is_stale_and_no_session_applies_each_time(fs: Fs) -> None:
    old = fs.command("create", parent=ROOT_INO, name=b"a", mode=0o644, uid=0, gid=0)
    fs.ok("create", parent=ROOT_INO, name=b"b", mode=0o644, uid=0, gid=0)
    result = fs.ns.apply(old)
    assert not result["ok"] and ErrorCode(result["err"]["code"]) is E.STALE
    assert fs.names(ROOT_INO) == [b"b"]
    args = {"parent": ROOT_INO, "name": b"c", "mode": 0o644, "uid": 0, "gid": 0}
    anon = encode_command("create", 0, 1, 10, {**args, "exclusive": True})
    assert fs.ns.apply(anon)["ok"]
    assert ErrorCode(fs.ns.apply(anon)["err"]["code"]) is E.EXISTS  # applied again


# --- malformed commands ---------------------------------------------------------------

_GOOD_ARGS = {"parent": 1, "name": b"x", "mode": 0o755, "uid": 0, "gid": 0}


def _packed(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", E.PROTOCOL),
        (b"\xc1", E.PROTOCOL),
        (b"\x93\x01", E.PROTOCOL),
        (_packed(5), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1]), E.PROTOCOL),
        (_packed([2, "mkdir", 1, 1, 1, _GOOD_ARGS]), E.PROTOCOL),
        (_packed([True, "mkdir", 1, 1, 1, _GOOD_ARGS]), E.PROTOCOL),
        (_packed([1, b"mkdir", 1, 1, 1, _GOOD_ARGS]), E.PROTOCOL),
        (_packed([1, "mkdir", -1, 1, 1, _GOOD_ARGS]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, True, 1, _GOOD_ARGS]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, "now", _GOOD_ARGS]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, -5, _GOOD_ARGS]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1, [1, 2]]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1, {1: 2}]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1, {**_GOOD_ARGS, b"parent": 1}]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1, msgpack.ExtType(5, b"x")]), E.PROTOCOL),
        (_packed([1, "format_disk", 1, 1, 1, {}]), E.UNSUPPORTED),
        (_packed([1, "mkdir", 1, 1, 1, {**_GOOD_ARGS, "name": "x"}]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1, {**_GOOD_ARGS, "parent": True}]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1, {**_GOOD_ARGS, "parent": 1 << 63}]), E.INVALID),
        (_packed([1, "mkdir", 1, 1, 1, {**_GOOD_ARGS, "mode": None}]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1, {**_GOOD_ARGS, "timeout_ms": 5}]), E.PROTOCOL),
        (_packed([1, "mkdir", 1, 1, 1, {"parent": 1, "name": b"x"}]), E.PROTOCOL),
        (_packed([1, "commit", 1, 1, 1, {"ino": 1, "size": 0, "mtime_ns": 0, "chunks": 5}]),
         E.PROTOCOL),
    ],
)  # fmt: skip
def test_malformed_command_is_an_error_result(data: bytes, code: ErrorCode) -> None:
    ns = Namespace(CHUNK)
    before = without_sessions(ns)
    result = ns.apply(data)
    assert result["ok"] is False and ErrorCode(result["err"]["code"]) is code, result
    assert without_sessions(ns) == before


def test_fuzzed_commands_never_raise() -> None:
    rng = random.Random(1234)
    ns = Namespace(CHUNK)
    seeds = [
        encode_command("mkdir", 1, 1, 1, _GOOD_ARGS),
        encode_command(
            "rename",
            1,
            2,
            1,
            {"parent": 1, "name": b"x", "new_parent": 1, "new_name": b"y", "flags": 0},
        ),
        encode_command("commit", 1, 3, 1, {"ino": 1, "size": 0, "mtime_ns": 0, "chunks": []}),
    ]
    for i in range(3000):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(base))
            base[pos] = rng.randrange(256)
        if i % 3 == 0:
            base = bytearray(rng.randbytes(rng.randint(0, 40)))
        result = ns.apply(bytes(base))
        assert type(result) is dict and type(result["ok"]) is bool
        if not result["ok"]:
            assert ErrorCode(result["err"]["code"]) is not E.INTERNAL, result
    ns.check_invariants()


def test_a_bug_in_an_op_is_an_internal_error_result(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(st: Any, now_ns: int, args: dict[str, Any]) -> dict[str, Any]:
        raise KeyError(object())  # its repr holds an address: must not reach the result

    monkeypatch.setitem(ops_module.OPS, "set_goal", broken)
    ns = Namespace(CHUNK)
    cmd = encode_command("set_goal", 3, 1, 1, {"ino": 1, "goal": 2})
    result = ns.apply(cmd)
    assert ErrorCode(result["err"]["code"]) is E.INTERNAL
    assert "0x" not in result["err"]["msg"] and "KeyError" in result["err"]["msg"]
    assert ns.apply(cmd) == result  # recorded like any result


def test_chunk_size_is_checked() -> None:
    for bad in (0, 100, 4095, (1 << 30) + 1):
        with pytest.raises(ValueError):
            Namespace(bad)
    assert Namespace().chunk_size_bytes == 64 << 20


def test_command_limits_are_sane() -> None:
    assert commands_module.chunk_index_max(64 << 20) == (1 << 50) // (64 << 20) - 1
    assert commands_module.NAME_BYTES_MAX == 255


# --- readdir --------------------------------------------------------------------------


def test_readdir_pages_and_limits(fs: Fs) -> None:
    names = [b"f%03d" % i for i in range(25)]
    for name in names:
        fs.create(ROOT_INO, name)
    got: list[bytes] = []
    cookie = 0
    while True:
        page, more = fs.ns.readdir(ROOT_INO, cookie, 10)
        assert len(page) <= 10
        got += [e[0] for e in page]
        for name, a, _ in page:
            assert a == fs.ns.lookup(ROOT_INO, name)
        if not more:
            break
        cookie = page[-1][2]
    assert got == names
    full, more = fs.ns.readdir(ROOT_INO, 0, 25)
    assert len(full) == 25 and more is False
    _, more = fs.ns.readdir(ROOT_INO, 0, 24)
    assert more is True
    f = fs.ns.lookup(ROOT_INO, b"f000")["ino"]
    for ino, cookie, limit, code in (
        (ROOT_INO, 0, 0, E.INVALID),
        (ROOT_INO, 0, 4097, E.INVALID),
        (ROOT_INO, -1, 10, E.INVALID),
        (f, 0, 10, E.NOT_DIR),
        (999, 0, 10, E.NOT_FOUND),
    ):
        assert query_error(fs.ns.readdir, ino, cookie, limit) is code


def test_readdir_with_concurrent_inserts_and_deletes() -> None:
    fs = Fs()
    rng = random.Random(7)
    stable = [b"s%05d" % i for i in range(3000)]
    transient = [b"t%05d" % i for i in range(3000)]
    order = stable + transient
    rng.shuffle(order)
    for name in order:
        fs.create(ROOT_INO, name)
    present = set(order)
    seen: list[bytes] = []
    cookie, counter = 0, 0
    while True:
        page, more = fs.ns.readdir(ROOT_INO, cookie, rng.randint(1, 200))
        seen += [e[0] for e in page]
        if page:
            cookie = page[-1][2]
        # between pages: delete some transient names, add new ones, rename some
        for _ in range(rng.randint(0, 40)):
            victims = [n for n in transient if n in present]
            if victims and rng.random() < 0.6:
                name = rng.choice(victims)
                fs.ok("unlink", parent=ROOT_INO, name=name)
                present.discard(name)
            else:
                name = b"n%05d" % counter
                counter += 1
                fs.create(ROOT_INO, name)
                present.add(name)
        if not more:
            break
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    assert set(stable) <= set(seen), "an entry present the whole time was missed"
    assert set(seen) <= set(order) | {b"n%05d" % i for i in range(counter)}
    fs.ns.check_invariants()
    # tombstones were compacted along the way
    d = fs.ns.inodes[ROOT_INO].dir
    assert d is not None and d.dead <= max(64, len(d.entries))


def test_readdir_of_a_large_directory_does_not_rescan(fs: Fs) -> None:
    n = 100_000
    for i in range(n):
        fs.ns.apply(
            encode_command(
                "create",
                0,
                0,
                1,
                {"parent": 1, "name": b"%06d" % i, "mode": 0o644, "uid": 0, "gid": 0},
            )
        )
    d = fs.ns.inodes[ROOT_INO].dir
    assert d is not None
    calls = 0

    class CountingDict(dict[bytes, tuple[int, int]]):
        def get(self, key: Any, default: Any = None) -> Any:
            nonlocal calls
            calls += 1
            return dict.get(self, key, default)

    d.entries = CountingDict(d.entries)
    total, cookie = 0, 0
    while True:
        page, more = fs.ns.readdir(ROOT_INO, cookie, 1000)
        total += len(page)
        if not more:
            break
        cookie = page[-1][2]
    assert total == n
    assert calls <= n + 200  # each entry looked at about once, not once per page
    d.entries = dict(d.entries)


# --- snapshot / restore ---------------------------------------------------------------


def random_commands(rng: random.Random, fs: Fs, n: int) -> list[tuple[bytes, dict[str, Any]]]:
    """Apply ``n`` plausible commands over a small name space (many succeed, many fail);
    returns each command with its result."""
    names = [b"a", b"b", b"c", b"d"]
    out = []
    for _ in range(n):
        inos = [*fs.ns.inodes, 999]
        dirs = [i for i, x in fs.ns.inodes.items() if x.dir is not None]
        files = [i for i, x in fs.ns.inodes.items() if x.chunks is not None] or [999]
        cs = list(fs.ns.cs_table) or [1]
        p = rng.choice(dirs)
        op = rng.choice(
            [
                "mkdir",
                "create",
                "symlink",
                "link",
                "unlink",
                "rmdir",
                "rename",
                "setattr",
                "setxattr",
                "removexattr",
                "set_goal",
                "write_handle",
                "commit",
                "cs_register",
                "mknod",
            ]
        )
        name = rng.choice(names)
        ugid = {"uid": rng.randint(0, 3), "gid": rng.randint(0, 3)}
        args: dict[str, Any]
        if op == "mkdir":
            args = {"parent": p, "name": name, "mode": rng.choice([0o755, 0o2775]), **ugid}
        elif op == "create":
            args = {
                "parent": p,
                "name": name,
                "mode": 0o644,
                "exclusive": rng.random() < 0.5,
                **ugid,
            }
        elif op == "mknod":
            args = {"parent": p, "name": name, "mode": stat.S_IFIFO | 0o644, "rdev": 0, **ugid}
        elif op == "symlink":
            args = {"parent": p, "name": name, "target": b"t" * rng.randint(1, 9), **ugid}
        elif op == "link":
            args = {"ino": rng.choice(inos), "parent": p, "name": name}
        elif op in ("unlink", "rmdir"):
            args = {"parent": p, "name": name}
        elif op == "rename":
            args = {
                "parent": p,
                "name": name,
                "new_parent": rng.choice(dirs),
                "new_name": rng.choice(names),
                "flags": rng.choice([0, 0, 1, 2]),
            }
        elif op == "setattr":
            args = {"ino": rng.choice(inos)}
            if rng.random() < 0.5:
                args["mode"] = rng.choice([0o600, 0o2755, 0o1777])
            if rng.random() < 0.5:
                args["size"] = rng.randint(0, 5 * CHUNK)
            if rng.random() < 0.3:
                args["mtime_now"] = True
        elif op == "setxattr":
            args = {
                "ino": rng.choice(inos),
                "name": rng.choice([b"user.x", b"user.y"]),
                "value": rng.randbytes(rng.randint(0, 8)),
                "flags": rng.choice([0, 1, 2]),
            }
        elif op == "removexattr":
            args = {"ino": rng.choice(inos), "name": rng.choice([b"user.x", b"user.y"])}
        elif op == "set_goal":
            args = {"ino": rng.choice(inos), "goal": rng.randint(1, 5)}
        elif op == "write_handle":
            args = {
                "ino": rng.choice(files),
                "index": rng.randint(0, 5),
                "replicas": rng.sample(cs, min(len(cs), 2)),
            }
        elif op == "commit":
            ino = rng.choice(files)
            pairs = [[i, rng.randint(0, CHUNK)] for i in range(rng.randint(0, 2))]
            try:
                entries = ce(fs, ino, pairs)
            except DfsError:  # the file is gone: any ids will do
                entries = [[i, n, 1, 1] for i, n in pairs]
            args = {
                "ino": ino,
                "size": rng.randint(0, 6 * CHUNK),
                "mtime_ns": rng.randint(0, 100),
                "chunks": entries,
            }
        else:
            args = {"uuid": rng.choice(["u1", "u2", "u3"]), "address": f"h:{rng.randint(1, 3)}"}
        cmd = fs.command(op, **args)
        out.append((cmd, fs.ns.apply(cmd)))
    return out


def observe(ns: Namespace) -> Any:
    """Everything the queries can see, walked from the root."""
    seen: dict[int, Any] = {}

    def walk(ino: int) -> None:
        a = ns.getattr(ino)
        item: dict[str, Any] = {
            "attr": a,
            "xattrs": {n: ns.getxattr(ino, n) for n in ns.listxattr(ino)},
        }
        if stat.S_ISDIR(a["mode"]):
            entries, _ = ns.readdir(ino, 0, 4096)
            item["entries"] = entries
            for _, child, _ in entries:
                if child["ino"] not in seen:
                    seen[child["ino"]] = None
                    walk(child["ino"])
        elif stat.S_ISREG(a["mode"]):
            item["chunks"] = ns.chunks(ino, 0, 1024)
        elif stat.S_ISLNK(a["mode"]):
            item["target"] = ns.readlink(ino)
        seen[ino] = item

    walk(ROOT_INO)
    return seen, ns.stats(), ns.chunkservers(), dict(ns.garbage)


def test_snapshot_restore_round_trip() -> None:
    rng = random.Random(99)
    fs = Fs()
    random_commands(rng, fs, 600)
    fs.ns.check_invariants()
    assert fs.ns.stats()["inodes"] > 3 and fs.ns.chunk_table  # the run did build something
    blob = fs.ns.snapshot()
    copy = Namespace(CHUNK)
    copy.restore(blob)
    copy.check_invariants()
    assert copy.snapshot() == blob
    assert observe(copy) == observe(fs.ns)
    assert copy.sessions.to_wire() == fs.ns.sessions.to_wire()
    # both now behave identically: the same results, the same state, the same replays
    more = random_commands(rng, fs, 400)
    assert [copy.apply(cmd) for cmd, _ in more] == [result for _, result in more]
    assert copy.snapshot() == fs.ns.snapshot()
    last_cmd, last_result = more[-1]
    assert copy.apply(last_cmd) == fs.ns.apply(last_cmd) == last_result
    assert sum(r["ok"] for _, r in more) > 50  # the run was not all errors
    copy.check_invariants()


def test_restore_rules() -> None:
    fs = Fs()
    fs.mkdir(ROOT_INO, b"d")
    blob = fs.ns.snapshot()
    with pytest.raises(ValueError):
        Namespace(2 * CHUNK).restore(blob)
    with pytest.raises(ValueError):
        Namespace(CHUNK).restore(b"\x93garbage")
    with pytest.raises(ValueError):
        Namespace(CHUNK).restore(_packed([2, CHUNK]))
    broken = Namespace(CHUNK)
    with pytest.raises(ValueError):
        broken.restore(_packed([1, CHUNK, [2, 1, 1], [[1, 2, 3]], [], [], [], []]))
    broken.check_invariants()  # a failed restore leaves a usable (fresh) namespace
    fs.ns.restore(b"")
    assert fs.ns.snapshot() == Namespace(CHUNK, trash_s_default=0).snapshot()
    assert fs.names(ROOT_INO) == []
