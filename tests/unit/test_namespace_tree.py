"""metaserver/namespace/tree.py: the paged walk of a subtree (every entry once, whatever
the page size; resumed across changes as readdir is), path resolution, and the
``set_goal_tree`` command (pages, counts, ctime, sessions, determinism, refusals)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dfs.wire.errors import ErrorCode, Invalid, NotDir, NotFound
from metaserver.namespace import ROOT_INO, Namespace, encode_command
from metaserver.namespace.state import Inode
from metaserver.namespace.tree import resolve, walk

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


class Tree:
    def __init__(self) -> None:
        self.ns = Namespace(4096)
        self.seq = 0

    def do(self, op: str, **args: Any) -> dict[str, Any]:
        self.seq += 1
        return self.ns.apply(encode_command(op, 7, self.seq, 1000 + self.seq, args))

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        result = self.do(op, **args)
        assert result["ok"], result
        return result

    def mkdir(self, parent: int, name: bytes) -> int:
        attr = self.ok("mkdir", parent=parent, name=name, mode=0o755, uid=0, gid=0)["attr"]
        return int(attr["ino"])

    def create(self, parent: int, name: bytes) -> int:
        attr = self.ok("create", parent=parent, name=name, mode=0o100644, uid=0, gid=0,
                       exclusive=True)["attr"]  # fmt: skip
        return int(attr["ino"])


def build(rng: random.Random, t: Tree, dirs: int = 12, files: int = 40) -> list[int]:
    """A random tree under the root; returns the directories (the root first)."""
    all_dirs = [ROOT_INO]
    for i in range(dirs):
        all_dirs.append(t.mkdir(rng.choice(all_dirs), b"d%d" % i))
    for i in range(files):
        t.create(rng.choice(all_dirs), b"f%d" % i)
    t.ok("symlink", parent=rng.choice(all_dirs), name=b"link", target=b"f0", uid=0, gid=0)
    return all_dirs


def reference(ns: Namespace, ino: int, prefix: bytes = b"") -> list[bytes]:
    """Pre-order paths, the root as b"", entries in cookie order."""
    out: list[bytes] = []
    d = ns.inodes[ino].dir
    assert d is not None
    for name, (child, _) in d.entries.items():
        path = prefix + b"/" + name if prefix else name
        out.append(path)
        if ns.inodes[child].dir is not None:
            out += reference(ns, child, path)
    return out


def pages(ns: Namespace, root: int, limit: int) -> tuple[list[bytes], int]:
    seen: list[bytes] = []

    def visit(path: bytes, _inode: Inode) -> bool:
        seen.append(path)
        return False

    cursor = walk(ns, root, None, limit, visit)
    count = 1
    while cursor is not None:
        assert len(cursor) <= 1 + 13  # never deeper than the tree
        cursor = walk(ns, root, cursor, limit, visit)
        count += 1
    return seen, count


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 1000])
def test_a_walk_visits_every_entry_once_in_pre_order_whatever_the_page(limit: int) -> None:
    t = Tree()
    dirs = build(random.Random(limit), t)
    want = [b"", *reference(t.ns, ROOT_INO)]
    seen, count = pages(t.ns, ROOT_INO, limit)
    assert seen == want
    assert count >= len(want) // limit
    sub = dirs[3]
    seen, _ = pages(t.ns, sub, limit)
    assert seen == [b"", *reference(t.ns, sub)]


def test_a_file_is_a_walk_of_one() -> None:
    t = Tree()
    f = t.create(ROOT_INO, b"f")
    seen, count = pages(t.ns, f, 5)
    assert (seen, count) == ([b""], 1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_walk_resumes_across_changes_as_readdir_does(seed: int) -> None:
    """Entries that stay where they are for the whole walk are visited exactly once,
    while directories are created, removed and renamed between pages."""
    rng = random.Random(seed)
    t = Tree()
    dirs = build(rng, t, dirs=10, files=30)
    keep = t.mkdir(ROOT_INO, b"keep")  # never changed: its subtree is seen whole
    for i in range(10):
        t.create(keep, b"k%d" % i)
    stable = {b"keep", *(b"keep/k%d" % i for i in range(10))}
    seen: list[bytes] = []
    cursor = walk(t.ns, ROOT_INO, None, 3, lambda p, _i: seen.append(p) or False)
    n = 0
    while cursor is not None:
        n += 1
        assert n < 500
        if n > 20:  # a walk chased by renames into its future may go on: changes end
            cursor = walk(t.ns, ROOT_INO, cursor, 3, lambda p, _i: seen.append(p) or False)
            continue
        # A change between pages: a new directory, a removal, a rename of a directory.
        parent = rng.choice([d for d in dirs if d in t.ns.inodes])
        t.mkdir(parent, b"new%d" % n)
        victim = rng.choice(dirs[1:])
        if victim in t.ns.inodes:
            d = t.ns.inodes[victim].dir
            assert d is not None
            if not d.entries:
                t.ok("rmdir", parent=d.parent, name=_name_of(t.ns, victim))
            else:
                t.ok("rename", parent=d.parent, name=_name_of(t.ns, victim),
                     new_parent=ROOT_INO, new_name=b"moved%d" % n)  # fmt: skip
        cursor = walk(t.ns, ROOT_INO, cursor, 3, lambda p, _i: seen.append(p) or False)
    for path in stable:
        assert seen.count(path) == 1, path


def _name_of(ns: Namespace, ino: int) -> bytes:
    d = ns.inodes[ino].dir
    assert d is not None
    parent = ns.inodes[d.parent].dir
    assert parent is not None
    return next(name for name, (i, _) in parent.entries.items() if i == ino)


def test_a_cursor_of_another_walk_or_malformed_is_refused() -> None:
    t = Tree()
    a = t.mkdir(ROOT_INO, b"a")
    for i in range(5):
        t.create(a, b"f%d" % i)
    cursor = walk(t.ns, a, None, 2, lambda p, i: False)
    assert cursor is not None
    with pytest.raises(Invalid):
        walk(t.ns, ROOT_INO, cursor, 2, lambda p, i: False)
    for bad in ([], [[a, "x", 0]], [[a, b"", -1]], "x", [[a, b""]]):
        with pytest.raises(Invalid):
            walk(t.ns, a, bad, 2, lambda p, i: False)


def test_resolve() -> None:
    t = Tree()
    a = t.mkdir(ROOT_INO, b"a")
    f = t.create(a, b"f")
    assert resolve(t.ns, b"/").ino == ROOT_INO
    assert resolve(t.ns, b"/a//f").ino == f
    assert resolve(t.ns, b"/a/./f/").ino == f
    assert resolve(t.ns, b"/a/../a").ino == a
    with pytest.raises(NotFound):
        resolve(t.ns, b"/a/g")
    with pytest.raises(NotDir):
        resolve(t.ns, b"/a/f/x")
    with pytest.raises(Invalid):
        resolve(t.ns, b"a")


def _goals(ns: Namespace, root: int) -> dict[bytes, int]:
    out = {}

    def visit(path: bytes, inode: Inode) -> bool:
        out[path] = inode.goal
        return False

    cursor = walk(ns, root, None, 1 << 16, visit)
    assert cursor is None
    return out


def set_goal_pages(t: Tree, ino: int, goal: int, limit: int) -> tuple[int, int, list[int]]:
    changed = unchanged = 0
    dirs: list[int] = []
    cursor = None
    while True:
        args: dict[str, Any] = {"ino": ino, "goal": goal, "recursive": True, "limit": limit}
        if cursor is not None:
            args["cursor"] = cursor
        r = t.ok("set_goal_tree", **args)
        changed += r["changed"]
        unchanged += r["unchanged"]
        dirs += r["dirs"]
        cursor = r["cursor"]
        if cursor is None:
            return changed, unchanged, dirs


def test_set_goal_tree_changes_every_inode_below_in_pages() -> None:
    t = Tree()
    all_dirs = build(random.Random(5), t)
    sub = all_dirs[2]
    outside = {p: g for p, g in _goals(t.ns, ROOT_INO).items()}
    total = len(_goals(t.ns, sub))
    before = {ino: i.ctime_ns for ino, i in t.ns.inodes.items()}
    changed, unchanged, dirs = set_goal_pages(t, sub, 2, limit=4)
    assert (changed, unchanged) == (total, 0)
    assert set(_goals(t.ns, sub).values()) == {2}
    below = {ino for ino, i in t.ns.inodes.items() if i.goal == 2}
    assert sorted(dirs) == sorted(i for i in below if t.ns.inodes[i].dir is not None)
    assert all(t.ns.inodes[i].ctime_ns > before[i] for i in below)
    # Nothing outside the subtree moved.
    for path, goal in _goals(t.ns, ROOT_INO).items():
        if t.ns.inodes[resolve(t.ns, b"/" + path).ino].goal != 2:
            assert goal == outside[path]
    # Again: nothing changes, ctimes stay.
    stamp = {i: t.ns.inodes[i].ctime_ns for i in below}
    assert set_goal_pages(t, sub, 2, limit=3)[:2] == (0, total)
    assert {i: t.ns.inodes[i].ctime_ns for i in below} == stamp
    # A file created afterwards inherits its directory's new goal.
    f = t.create(sub, b"new")
    assert t.ns.inodes[f].goal == 2
    t.ns.check_invariants()


def test_set_goal_tree_not_recursive_is_the_inode_alone() -> None:
    t = Tree()
    a = t.mkdir(ROOT_INO, b"a")
    f = t.create(a, b"f")
    r = t.ok("set_goal_tree", ino=a, goal=5, recursive=False, limit=10)
    assert (r["changed"], r["unchanged"], r["dirs"], r["cursor"]) == (1, 0, [a], None)
    assert t.ns.inodes[f].goal != 5
    r = t.ok("set_goal_tree", ino=f, goal=5, recursive=True, limit=10)
    assert (r["changed"], r["dirs"], r["cursor"]) == (1, [], None)


def test_set_goal_tree_refusals_change_nothing_and_a_retry_gets_its_answer() -> None:
    t = Tree()
    a = t.mkdir(ROOT_INO, b"a")
    for i in range(6):
        t.create(a, b"f%d" % i)
    for args, code in (
        ({"ino": a, "goal": 0, "limit": 5}, ErrorCode.INVALID),
        ({"ino": a, "goal": 17, "limit": 5}, ErrorCode.INVALID),
        ({"ino": 999, "goal": 2, "limit": 5}, ErrorCode.NOT_FOUND),
        ({"ino": a, "goal": 2, "limit": 5, "recursive": True, "cursor": [[ROOT_INO, b"", 0]]},
         ErrorCode.INVALID),
        ({"ino": a, "goal": 2, "limit": 5, "cursor": [[a, b"", 0]]}, ErrorCode.INVALID),
        ({"ino": a, "goal": 2, "limit": 0}, ErrorCode.INVALID),
    ):  # fmt: skip
        goals = _goals(t.ns, ROOT_INO)
        r = t.do("set_goal_tree", **args)
        assert not r["ok"] and ErrorCode(r["err"]["code"]) == code, (args, r)
        assert _goals(t.ns, ROOT_INO) == goals
    # The same command (session, seq) applied again: the first answer, nothing changes.
    t.seq += 1
    cmd = encode_command("set_goal_tree", 7, t.seq, 5000,
                         {"ino": a, "goal": 2, "recursive": True, "limit": 3})  # fmt: skip
    first = t.ns.apply(cmd)
    goals = _goals(t.ns, ROOT_INO)
    assert t.ns.apply(cmd) == first
    assert _goals(t.ns, ROOT_INO) == goals


def test_two_replicas_applying_the_same_pages_end_alike() -> None:
    a, b = Tree(), Tree()
    for t in (a, b):
        build(random.Random(9), t)
        set_goal_pages(t, ROOT_INO, 4, limit=5)
    assert a.ns.snapshot() == b.ns.snapshot()
