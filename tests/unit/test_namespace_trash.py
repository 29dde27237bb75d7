"""The trash and the recursive statistics of the namespace (metaserver/namespace/trash.py,
rstats.py), applied as the metaservers apply them: removal into the trash, restore into a
removed directory, a name taken, expiry through a snapshot and restore of the state."""

from __future__ import annotations

import random

import pytest

from metaserver.namespace import ROOT_INO, Namespace
from tools.testing.nsdriver import NamespaceDriver, S

pytestmark = pytest.mark.timeout(30)
CHUNK = 1 << 16


class Fs(NamespaceDriver):
    def __init__(self, trash_s: int = 100) -> None:
        super().__init__(CHUNK, trash_s)

    def mkdir(self, parent: int, name: bytes) -> int:
        return int(
            self.ok("mkdir", parent=parent, name=name, mode=0o755, uid=0, gid=0)["attr"]["ino"]
        )

    def create(self, parent: int, name: bytes, size: int) -> int:
        r = self.ok("create", parent=parent, name=name, mode=0o644, uid=5, gid=6, replicas=[1])
        ino, chunk = int(r["attr"]["ino"]), r["chunk"]
        self.ok("commit", ino=ino, size=size, chunks=[[0, min(size, CHUNK), chunk["chunk_id"], 1]])
        return ino


def test_unlink_keeps_the_file_and_its_chunks_and_restore_remakes_a_removed_directory() -> None:
    fs = Fs()
    a = fs.mkdir(ROOT_INO, b"a")
    f = fs.create(a, b"f", 1000)
    chunk_id = fs.ns.inodes[f].chunks[0]
    fs.ok("unlink", parent=a, name=b"f")
    fs.ok("rmdir", parent=ROOT_INO, name=b"a")
    assert chunk_id in fs.ns.chunk_table and not fs.ns.garbage  # kept: not collectable
    assert list(fs.ns.trash) == [f] and fs.ns.trash[f][2] == b"/a/f"
    assert fs.ns.usage(ROOT_INO) == {
        "bytes": 0,
        "physical_bytes": 0,
        "files": 0,
        "dirs": 1,
        "trash_files": 1,
        "trash_bytes": 1000,
        "garbage_chunks": 0,
    }
    r = fs.ok("trash_restore", inos=[f])
    assert r["restored"] == [[f, b"/a/f"]] and r["failed"] == []
    a2 = fs.ns.lookup(ROOT_INO, b"a")
    assert a2["uid"] == 5 and a2["ino"] != a  # made again, owned as the file
    assert fs.ns.lookup(a2["ino"], b"f")["ino"] == f and fs.ns.getattr(f)["nlink"] == 1
    assert fs.ns.usage(ROOT_INO)["bytes"] == 1000 and fs.ns.usage(ROOT_INO)["dirs"] == 2
    assert not fs.ns.trash and fs.ns.trash_bytes == 0


def test_restore_refuses_a_taken_name_and_to_names_another_place() -> None:
    fs = Fs()
    f = fs.create(ROOT_INO, b"f", 10)
    fs.ok("unlink", parent=ROOT_INO, name=b"f")
    g = fs.create(ROOT_INO, b"f", 20)
    r = fs.ok("trash_restore", inos=[f])
    assert r["restored"] == [] and r["failed"][0][0] == f and f in fs.ns.trash
    d = fs.mkdir(ROOT_INO, b"d")
    r = fs.ok("trash_restore", inos=[f], to=b"/d")  # a directory: into it, same name
    assert r["restored"] == [[f, b"/d/f"]]
    assert fs.ns.lookup(d, b"f")["ino"] == f and fs.ns.lookup(ROOT_INO, b"f")["ino"] == g


def test_expiry_survives_a_snapshot_and_frees_through_the_orphans() -> None:
    fs = Fs(trash_s=5)
    f = fs.create(ROOT_INO, b"f", 100)
    sub = fs.mkdir(ROOT_INO, b"keep")
    fs.ok("set_trash_tree", ino=sub, trash_s=1000, recursive=True, limit=100)
    g = fs.create(sub, b"g", 50)
    fs.ok("unlink", parent=ROOT_INO, name=b"f")
    fs.ok("unlink", parent=sub, name=b"g")
    copy = Namespace(CHUNK)
    copy.restore(fs.ns.snapshot())
    copy.check_invariants()
    assert copy.snapshot() == fs.ns.snapshot() and copy.trash_bytes == 150
    fs.ns = copy
    assert fs.ok("trash_expire", limit=10)["expired"] == 0  # 2 s later: not yet
    fs.now += 10 * S
    assert fs.ok("trash_expire", limit=10) == {"ok": True, "expired": 1, "more": False}
    assert list(fs.ns.trash) == [g] and list(fs.ns.orphans) == [f]
    chunk_id = fs.ns.inodes[f].chunks[0]
    fs.ok("release_orphans", inos=[f])
    assert chunk_id in fs.ns.garbage and f not in fs.ns.inodes
    assert fs.ok("trash_purge", inos=[g, 999])["purged"] == 1 and not fs.ns.trash


def test_trash_time_zero_frees_at_once_and_a_rename_over_a_file_trashes_it() -> None:
    fs = Fs(trash_s=0)
    f = fs.create(ROOT_INO, b"f", 10)
    fs.ok("unlink", parent=ROOT_INO, name=b"f")
    assert f not in fs.ns.inodes and fs.ns.garbage
    fs.ok("set_trash_tree", ino=ROOT_INO, trash_s=60, limit=10)
    old = fs.create(ROOT_INO, b"old", 7)
    fs.create(ROOT_INO, b"new", 3)
    fs.ok("rename", parent=ROOT_INO, name=b"new", new_parent=ROOT_INO, new_name=b"old")
    assert list(fs.ns.trash) == [old] and fs.ns.usage(ROOT_INO)["bytes"] == 3


def test_rstats_follow_moves_hard_links_and_size_changes() -> None:
    fs = Fs(trash_s=0)
    a, b = fs.mkdir(ROOT_INO, b"a"), fs.mkdir(ROOT_INO, b"b")
    f = fs.create(a, b"f", 1000)
    fs.ok("link", ino=f, parent=b, name=b"f2")
    assert fs.ns.usage(a)["bytes"] == 1000 and fs.ns.usage(b)["bytes"] == 0  # primary: a
    fs.ok("unlink", parent=a, name=b"f")
    assert fs.ns.usage(a)["bytes"] == 0 and fs.ns.usage(b)["bytes"] == 1000
    fs.ok("rename", parent=ROOT_INO, name=b"b", new_parent=a, new_name=b"b")
    fs.ok("setattr", ino=f, size=10)
    fs.ok("set_goal", ino=f, goal=2)
    assert fs.ns.usage(a) | {"trash_files": 0} == {
        "bytes": 10,
        "physical_bytes": 20,
        "files": 1,
        "dirs": 2,
        "trash_files": 0,
        "trash_bytes": 0,
        "garbage_chunks": 0,
    }


@pytest.mark.parametrize("seed", range(0, 300, 3))
def test_random_ops_keep_the_invariants_and_the_snapshot(seed: int) -> None:
    """Random creates, links, renames (exchanges too), removals, truncates, restores,
    expiries and purges over three names in a few directories: after each, the invariants
    hold (trash, rstats recomputed from scratch) and a restored snapshot is the same."""
    rng = random.Random(seed)
    fs = Fs(trash_s=rng.choice([0, 3]))
    names = [b"a", b"b", b"c"]
    for _ in range(40):
        ns = fs.ns
        dirs = [i for i, n in ns.inodes.items() if n.dir is not None]
        p, q = rng.choice(dirs), rng.choice(dirs)
        name, other = rng.choice(names), rng.choice(names)
        k = rng.randrange(12)
        if k == 0:
            fs.apply("mkdir", parent=p, name=name, mode=0o755, uid=0, gid=0)
        elif k == 1:
            fs.apply("create", parent=p, name=name, mode=0o644, uid=0, gid=0, replicas=[1])
        elif k == 2:
            fs.apply("symlink", parent=p, name=name, target=b"x", uid=0, gid=0)
        elif k == 3:
            fs.apply("link", ino=rng.choice(list(ns.inodes)), parent=p, name=name)
        elif k == 4:
            fs.apply("unlink", parent=p, name=name)
        elif k == 5:
            fs.apply("rmdir", parent=p, name=name)
        elif k == 6:
            flags = rng.choice([0, 0, 2])
            fs.apply("rename", parent=p, name=name, new_parent=q, new_name=other, flags=flags)
        elif k == 7:
            files = [i for i, n in ns.inodes.items() if n.chunks is not None]
            if files:
                fs.apply("setattr", ino=rng.choice(files), size=rng.randrange(0, 200_000))
        elif k == 8 and ns.trash:
            fs.apply("trash_restore", inos=[rng.choice(list(ns.trash))])
        elif k == 9:
            fs.apply("trash_expire", limit=2)
        elif k == 10 and ns.trash:
            fs.apply("trash_purge", inos=[rng.choice(list(ns.trash))])
        elif k == 11 and ns.orphans:
            fs.apply("release_orphans", inos=list(ns.orphans))
        copy = Namespace(CHUNK)
        copy.restore(fs.ns.snapshot())
        copy.check_invariants()
        assert copy.snapshot() == fs.ns.snapshot()
