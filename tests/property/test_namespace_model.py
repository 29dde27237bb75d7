"""The namespace against a model file system (after JuiceFS's ``random_test.go``).

The model is a plain dict of inodes with a children map per directory; it derives what the
namespace keeps as bookkeeping (nlink, a directory's parent, which inodes are still named)
from the tree itself, so a bookkeeping slip in the namespace shows up as a difference.
Every step compares the op's result (ok, or the error code) and then the whole tree, the
chunk lengths and the counters. A snapshot/restore and a replay of the last command may
happen between any two steps and must change nothing.

The order in which the model checks error conditions is the one ``metaserver/namespace/
ops.py`` documents (arguments first, then the state in Linux's order).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dfs.wire.errors import ErrorCode
from metaserver.namespace import ROOT_INO, Namespace, encode_command

pytestmark = [pytest.mark.timeout(120)]

CHUNK = 4096
E = ErrorCode
MISSING_INO = 10**9

# Few names, so that names collide often; now and then an invalid one.
NAMES = st.sampled_from([b"a", b"b", b"c"] * 6 + [b".", b"x/y", b"n" * 256])
PICK = st.integers(0, 1000)
MODES = st.sampled_from([0o644, 0o755, 0o4711, 0o2775, 0o1777, stat.S_IFDIR | 0o600])


@dataclass
class MInode:
    kind: str  # "dir", "file", "symlink"
    mode: int
    size: int = 0
    children: dict[bytes, int] = field(default_factory=dict)
    chunks: dict[int, int] = field(default_factory=dict)  # index -> length
    versions: dict[int, int] = field(default_factory=dict)  # index -> chunk version
    punched: set[int] = field(default_factory=set)  # chunk indexes that take no space

    def blocks(self) -> int:
        """st_blocks as ext4 would count the file: the size's, less the punched chunks'
        bytes inside the size (metaserver/namespace/sparse.py)."""
        gone = sum(min((i + 1) * CHUNK, self.size) - i * CHUNK for i in self.punched)
        return -(-(self.size - gone) // 512)


class ModelError(Exception):
    def __init__(self, code: ErrorCode) -> None:
        self.code = code


def fail(code: ErrorCode) -> ModelError:
    return ModelError(code)


def check_name(name: bytes) -> None:
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise fail(E.INVALID)
    if len(name) > 255:
        raise fail(E.NAME_TOO_LONG)


class NamespaceModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ns = Namespace(CHUNK, trash_s_default=0)  # the trash: test_namespace_trash.py
        self.model: dict[int, MInode] = {ROOT_INO: MInode("dir", stat.S_IFDIR | 0o755)}
        self.seq = 0
        self.now = 0
        self.last: tuple[bytes, dict[str, Any]] | None = None
        self.cs: list[int] = []

    # --- helpers ----------------------------------------------------------------------

    def apply(self, op: str, **args: Any) -> dict[str, Any]:
        self.seq += 1
        self.now += 1
        cmd = encode_command(op, 1, self.seq, self.now, args)
        result = self.ns.apply(cmd)
        self.last = (cmd, result)
        return result

    def run(self, op: str, expect: Any, **args: Any) -> dict[str, Any]:
        """Apply ``op``; ``expect`` is the model's ErrorCode, or None for success."""
        result = self.apply(op, **args)
        got = None if result["ok"] else ErrorCode(result["err"]["code"])
        assert got == expect, f"{op} {args}: namespace {got}, model {expect}; {result}"
        event(f"{op} {'ok' if got is None else got.name}")  # --hypothesis-show-statistics
        return result

    def pick(self, n: int, kinds: tuple[str, ...] | None = None) -> int:
        """An inode of the model (of ``kinds``), or sometimes one that does not exist."""
        inos = sorted(i for i, m in self.model.items() if kinds is None or m.kind in kinds)
        if n % 7 == 0:
            return MISSING_INO
        return inos[n % len(inos)] if inos else MISSING_INO

    def pick_parent(self, n: int) -> int:
        """Mostly a directory; one time in five anything, a missing inode included."""
        if n % 5:
            return self.pick(n // 5, ("dir",))
        return self.pick(n // 5)

    def directory(self, ino: int) -> MInode:
        m = self.model.get(ino)
        if m is None:
            raise fail(E.NOT_FOUND)
        if m.kind != "dir":
            raise fail(E.NOT_DIR)
        return m

    def parent_of(self, ino: int) -> int:
        if ino == ROOT_INO:
            return ROOT_INO
        (parent,) = [p for p, m in self.model.items() if ino in m.children.values()]
        return parent

    def is_ancestor_or_self(self, ancestor: int, ino: int) -> bool:
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.parent_of(ino)

    def collect(self) -> None:
        """Drop model inodes no entry names any more (the model's notion of nlink == 0)."""
        named = {ROOT_INO} | {c for m in self.model.values() for c in m.children.values()}
        for ino in list(self.model):
            if ino not in named:
                del self.model[ino]

    def expect(self, step: Any) -> ErrorCode | None:
        try:
            step()
        except ModelError as e:
            return e.code
        return None

    # --- rules ------------------------------------------------------------------------

    @initialize()
    def register_chunkservers(self) -> None:
        for i in range(3):
            self.cs.append(self.run("cs_register", None, uuid=f"u{i}", address=f"h:{i}")["cs_id"])

    @initialize(
        shape=st.lists(
            st.tuples(PICK, st.sampled_from([b"a", b"b", b"c"]), st.sampled_from("dfl")),
            max_size=15,
        )
    )
    def seed_tree(self, shape: list[tuple[int, bytes, str]]) -> None:
        """Start from a random tree, so that short runs still meet deep and full ones."""
        for n, name, kind in shape:
            parent = self.pick(n, ("dir",))
            if kind == "d":
                self.make_dir(parent, name, 0o755)
            elif kind == "f":
                self.make_file(parent, name, True)
            else:
                self.make_link(self.pick(n // 3, ("file",)), parent, name)

    @rule(p=PICK, name=NAMES, mode=MODES)
    def mkdir(self, p: int, name: bytes, mode: int) -> None:
        self.make_dir(self.pick_parent(p), name, mode)

    def make_dir(self, parent: int, name: bytes, mode: int) -> None:
        def check() -> None:
            check_name(name)
            if stat.S_IFMT(mode) not in (0, stat.S_IFDIR):
                raise fail(E.INVALID)
            if name in self.directory(parent).children:
                raise fail(E.EXISTS)

        code = self.expect(check)
        r = self.run("mkdir", code, parent=parent, name=name, mode=mode, uid=1, gid=2)
        if code is None:
            pm = self.model[parent]
            new_mode = stat.S_IFDIR | (mode & 0o1777) | (pm.mode & stat.S_ISGID)
            ino = r["attr"]["ino"]
            assert ino not in self.model and r["attr"]["mode"] == new_mode
            self.model[ino] = MInode("dir", new_mode)
            pm.children[name] = ino

    @rule(p=PICK, name=NAMES, exclusive=st.booleans())
    def create(self, p: int, name: bytes, exclusive: bool) -> None:
        self.make_file(self.pick_parent(p), name, exclusive)

    def make_file(self, parent: int, name: bytes, exclusive: bool) -> None:
        existing: list[int] = []

        def check() -> None:
            check_name(name)
            child = self.directory(parent).children.get(name)
            if child is not None:
                if exclusive:
                    raise fail(E.EXISTS)
                if self.model[child].kind == "dir":
                    raise fail(E.IS_DIR)
                existing.append(child)

        code = self.expect(check)
        r = self.run(
            "create", code, parent=parent, name=name, mode=0o640, uid=1, gid=2,
            exclusive=exclusive,
        )  # fmt: skip
        if code is None:
            assert r["created"] is (not existing)
            if existing:
                assert r["attr"]["ino"] == existing[0]
            else:
                ino = r["attr"]["ino"]
                assert ino not in self.model
                self.model[ino] = MInode("file", stat.S_IFREG | 0o640)
                self.model[parent].children[name] = ino

    @rule(p=PICK, name=NAMES, length=st.integers(1, 20))
    def symlink(self, p: int, name: bytes, length: int) -> None:
        parent = self.pick_parent(p)

        def check() -> None:
            check_name(name)
            if name in self.directory(parent).children:
                raise fail(E.EXISTS)

        code = self.expect(check)
        r = self.run("symlink", code, parent=parent, name=name, target=b"t" * length, uid=0, gid=0)
        if code is None:
            ino = r["attr"]["ino"]
            self.model[ino] = MInode("symlink", stat.S_IFLNK | 0o777, size=length)
            self.model[parent].children[name] = ino

    @rule(s=PICK, p=PICK, name=NAMES)
    def link(self, s: int, p: int, name: bytes) -> None:
        self.make_link(self.pick(s), self.pick_parent(p), name)

    def make_link(self, src: int, parent: int, name: bytes) -> None:
        def check() -> None:
            check_name(name)
            if src not in self.model:
                raise fail(E.NOT_FOUND)
            if name in self.directory(parent).children:
                raise fail(E.EXISTS)
            if self.model[src].kind == "dir":
                raise fail(E.PERMISSION)

        code = self.expect(check)
        self.run("link", code, ino=src, parent=parent, name=name)
        if code is None:
            self.model[parent].children[name] = src

    @rule(p=PICK, name=NAMES)
    def unlink(self, p: int, name: bytes) -> None:
        parent = self.pick_parent(p)

        def check() -> None:
            check_name(name)
            child = self.directory(parent).children.get(name)
            if child is None:
                raise fail(E.NOT_FOUND)
            if self.model[child].kind == "dir":
                raise fail(E.IS_DIR)

        code = self.expect(check)
        self.run("unlink", code, parent=parent, name=name)
        if code is None:
            del self.model[parent].children[name]
            self.collect()

    @rule(p=PICK, name=NAMES)
    def rmdir(self, p: int, name: bytes) -> None:
        parent = self.pick_parent(p)

        def check() -> None:
            check_name(name)
            child = self.directory(parent).children.get(name)
            if child is None:
                raise fail(E.NOT_FOUND)
            if self.model[child].kind != "dir":
                raise fail(E.NOT_DIR)
            if self.model[child].children:
                raise fail(E.NOT_EMPTY)

        code = self.expect(check)
        self.run("rmdir", code, parent=parent, name=name)
        if code is None:
            del self.model[parent].children[name]
            self.collect()

    @rule(
        p=PICK,
        n=PICK,
        name=NAMES,
        np=PICK,
        new_name=NAMES,
        flags=st.sampled_from([0, 0, 0, 0, 1, 1, 2, 2, 3]),
    )
    def rename(self, p: int, n: int, name: bytes, np: int, new_name: bytes, flags: int) -> None:
        parent = self.pick_parent(p)
        new_parent = self.pick_parent(np)
        existing = sorted(self.model[parent].children) if parent in self.model else []
        if existing and n % 4:  # mostly a name that is there, so most renames get far
            name = existing[n % len(existing)]
        targets = sorted(self.model[new_parent].children) if new_parent in self.model else []
        if targets and n % 2:  # and often onto one, to replace or exchange it
            new_name = targets[(n // 2) % len(targets)]
        noop: list[bool] = []

        def check() -> None:
            check_name(name)
            check_name(new_name)
            if flags not in (0, 1, 2):
                raise fail(E.INVALID)
            pm = self.directory(parent)
            npm = self.directory(new_parent)
            src = pm.children.get(name)
            if src is None:
                raise fail(E.NOT_FOUND)
            dst = npm.children.get(new_name)
            if flags == 1 and dst is not None:
                raise fail(E.EXISTS)
            if flags == 2 and dst is None:
                raise fail(E.NOT_FOUND)
            sk = self.model[src].kind
            if sk == "dir" and self.is_ancestor_or_self(src, new_parent):
                raise fail(E.INVALID)
            if (
                dst is not None
                and self.model[dst].kind == "dir"
                and self.is_ancestor_or_self(dst, parent)
            ):
                raise fail(E.INVALID if flags == 2 else E.NOT_EMPTY)
            if src == dst:
                noop.append(True)
                return
            if flags == 0 and dst is not None:
                dk = self.model[dst].kind
                if sk == "dir" and dk != "dir":
                    raise fail(E.NOT_DIR)
                if sk == "dir" and self.model[dst].children:
                    raise fail(E.NOT_EMPTY)
                if sk != "dir" and dk == "dir":
                    raise fail(E.IS_DIR)

        code = self.expect(check)
        self.run(
            "rename", code, parent=parent, name=name, new_parent=new_parent,
            new_name=new_name, flags=flags,
        )  # fmt: skip
        if code is None and not noop:
            pm, npm = self.model[parent], self.model[new_parent]
            src = pm.children[name]
            if flags == 2:
                dst = npm.children[new_name]
                pm.children[name] = dst
                npm.children[new_name] = src
            else:
                del pm.children[name]
                npm.children[new_name] = src
                self.collect()

    @rule(i=PICK, mode=MODES)
    def chmod(self, i: int, mode: int) -> None:
        ino = self.pick(i)
        code = None if ino in self.model else E.NOT_FOUND
        r = self.run("setattr", code, ino=ino, mode=mode)
        if code is None:
            m = self.model[ino]
            m.mode = stat.S_IFMT(m.mode) | (mode & 0o7777)
            assert r["attr"]["mode"] == m.mode

    @rule(
        i=PICK, size=st.integers(0, 6 * CHUNK) | st.sampled_from([0, CHUNK, 2 * CHUNK, 3 * CHUNK])
    )
    def truncate(self, i: int, size: int) -> None:
        ino = self.pick(i, ("file", "dir", "symlink"))
        m = self.model.get(ino)
        code = None
        if m is None:
            code = E.NOT_FOUND
        elif m.kind == "dir":
            code = E.IS_DIR
        elif m.kind != "file":
            code = E.INVALID
        self.run("setattr", code, ino=ino, size=size)
        if m is not None and code is None:
            m.size = size
            m.punched = {i for i in m.punched if i * CHUNK < size}
            for index, length in list(m.chunks.items()):
                start = index * CHUNK
                if start >= size:
                    del m.chunks[index]
                    del m.versions[index]
                elif size < start + CHUNK:
                    # The chunk the size falls inside is cut: a new version, so that a
                    # writer of the old one can no longer write or commit into it.
                    m.chunks[index] = min(length, size - start)
                    m.versions[index] += 1

    @rule(i=PICK, index=st.integers(0, 5), length=st.integers(0, CHUNK + 10))
    def write(self, i: int, index: int, length: int) -> None:
        ino = self.pick(i, ("file", "dir", "symlink"))
        m = self.model.get(ino)
        code = None
        if m is None:
            code = E.NOT_FOUND
        elif m.kind == "dir":
            code = E.IS_DIR
        elif m.kind != "file":
            code = E.INVALID
        h = self.run("write_handle", code, ino=ino, index=index, replicas=self.cs[:2])
        size = index * CHUNK + length
        entry = [index, length, h.get("chunk_id", 1), h.get("version", 1)]
        self.run("commit", code, ino=ino, size=size, mtime_ns=5, chunks=[entry])
        if m is not None and code is None:
            m.versions[index] = m.versions.get(index, 0) + 1
            assert h["version"] == m.versions[index]
            m.chunks[index] = max(m.chunks.get(index, 0), min(length, CHUNK))
            m.size = max(m.size, size)
            m.punched.discard(index)  # a chunk there again: it takes space

    @rule(
        i=PICK,
        offset=st.integers(0, 6 * CHUNK) | st.sampled_from([0, CHUNK, 2 * CHUNK]),
        length=st.integers(0, 4 * CHUNK) | st.sampled_from([CHUNK, 2 * CHUNK, 10**12]),
        zero=st.booleans(),
    )
    def punch(self, i: int, offset: int, length: int, zero: bool) -> None:
        ino = self.pick(i, ("file", "dir", "symlink"))
        m = self.model.get(ino)
        code = None
        if length < 1:
            code = E.INVALID
        elif m is None:
            code = E.NOT_FOUND
        elif m.kind == "dir":
            code = E.IS_DIR
        elif m.kind != "file":
            code = E.INVALID
        args = {"zero": True} if zero else {}
        r = self.run("punch", code, ino=ino, offset=offset, length=length, **args)
        if m is not None and code is None:
            # A chunk goes when its bytes inside the file all lie in the range.
            end = offset + length
            gone = [
                index
                for index in m.chunks
                if offset <= index * CHUNK < m.size and min((index + 1) * CHUNK, m.size) <= end
            ]
            for index in gone:
                del m.chunks[index]
                del m.versions[index]
            assert r["dropped"] == len(gone) and r["attr"]["size"] == m.size
            # Every whole chunk of the range inside the file counts as punched; with
            # zero (ZERO_RANGE), every chunk the range touches counts as allocated.
            if zero:
                m.punched = {i for i in m.punched if not offset // CHUNK <= i < -(-end // CHUNK)}
            else:
                m.punched |= {
                    index
                    for index in range(-(-offset // CHUNK), -(-m.size // CHUNK))
                    if min((index + 1) * CHUNK, m.size) <= end
                }
            assert r["attr"]["blocks"] == m.blocks()

    @rule(
        i=PICK,
        offset=st.integers(0, 6 * CHUNK),
        length=st.integers(1, 4 * CHUNK) | st.sampled_from([10**12]),
    )
    def allocate(self, i: int, offset: int, length: int) -> None:
        ino = self.pick(i, ("file", "dir"))
        m = self.model.get(ino)
        code = (
            None if m is not None and m.kind == "file" else E.NOT_FOUND if m is None else E.IS_DIR
        )
        r = self.run("allocate", code, ino=ino, offset=offset, length=length)
        if m is not None and code is None:
            end = offset + length
            m.punched = {i for i in m.punched if not offset // CHUNK <= i < -(-end // CHUNK)}
            assert r["attr"]["blocks"] == m.blocks()

    @rule()
    def snapshot_restore(self) -> None:
        blob = self.ns.snapshot()
        fresh = Namespace(CHUNK)
        fresh.restore(blob)
        assert fresh.snapshot() == blob
        self.ns = fresh

    @rule()
    def replay_last(self) -> None:
        if self.last is None:
            return
        cmd, result = self.last
        before = self.ns.snapshot()
        assert self.ns.apply(cmd) == result
        assert self.ns.snapshot() == before  # one session: not even the LRU order moves

    # --- the whole tree, after every step ---------------------------------------------

    @invariant()
    def same_tree(self) -> None:
        ns = self.ns
        event(f"size {len(self.model) // 5 * 5}")
        ns.check_invariants()
        links: dict[int, int] = {}
        for m in self.model.values():
            for child in m.children.values():
                links[child] = links.get(child, 0) + 1
        for ino, m in self.model.items():
            a = ns.getattr(ino)
            assert a["mode"] == m.mode, (ino, a, m)
            if m.kind == "dir":
                subdirs = sum(self.model[c].kind == "dir" for c in m.children.values())
                assert a["nlink"] == 2 + subdirs, (ino, a)
                listed: dict[bytes, int] = {}
                cookie = 0
                while True:  # small pages, to page through every directory
                    page, more = ns.readdir(ino, cookie, 3)
                    for entry_name, entry_attr, entry_cookie in page:
                        assert entry_cookie > cookie and entry_name not in listed
                        listed[entry_name] = entry_attr["ino"]
                        cookie = entry_cookie
                    if not more:
                        break
                assert listed == m.children, ino
            else:
                assert a["nlink"] == links[ino] and a["size"] == m.size, (ino, a, m)
            if m.kind == "file":
                assert a["blocks"] == m.blocks(), (ino, a, m)
            if m.kind == "file":
                got = ns.chunks(ino, 0, 16)
                assert {c["index"]: c["length"] for c in got} == m.chunks, (ino, got, m)
                assert {c["index"]: c["version"] for c in got} == m.versions, (ino, got, m)
        stats = ns.stats()
        assert stats["inodes"] == len(self.model)
        assert stats["bytes"] == sum(m.size for m in self.model.values() if m.kind == "file")
        assert stats["chunks"] == sum(len(m.chunks) for m in self.model.values())


TestNamespaceModel = NamespaceModel.TestCase
TestNamespaceModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
