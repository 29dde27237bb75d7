"""metaserver.namespace: the fields that make a small file cheap (docs/PROTOCOL.md):
``create`` with ``replicas`` (the first chunk in the same command), ``commit`` with
attributes and without ``mtime_ns``, and the ``parent_attr`` of mutations that add a name.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Any

import pytest
from test_namespace import Fs

from dfs.wire.errors import ErrorCode
from metaserver.namespace import ROOT_INO

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

E = ErrorCode


@pytest.fixture
def fs() -> Iterator[Fs]:
    f = Fs()
    yield f
    f.ns.check_invariants()


def create(fs: Fs, name: bytes, **extra: Any) -> dict[str, Any]:
    return fs.ok(
        "create", parent=ROOT_INO, name=name, mode=0o644, uid=0, gid=0, exclusive=False, **extra
    )


def test_create_with_replicas_allocates_chunk_zero(fs: Fs) -> None:
    cs = fs.register(3)
    r = create(fs, b"f", replicas=cs)
    ino = r["attr"]["ino"]
    chunk = r["chunk"]
    assert chunk == {"index": 0, "chunk_id": chunk["chunk_id"], "version": 1, "length": 0,
                     "replicas": cs}  # fmt: skip
    assert fs.ns.chunks(ino, 0, 1) == [chunk]
    # What write_handle gives next is that chunk, one version on.
    h = fs.ok("write_handle", ino=ino, index=0, replicas=[])
    assert (h["chunk_id"], h["version"]) == (chunk["chunk_id"], 2)
    # Opening the existing file allocates nothing and answers no chunk.
    again = create(fs, b"f", replicas=cs)
    assert again["created"] is False and "chunk" not in again
    assert fs.ns.stats()["chunks"] == 1
    # Without replicas: no chunk, as before.
    plain = create(fs, b"g")
    assert "chunk" not in plain and fs.ns.chunks(plain["attr"]["ino"], 0, 1) == []


def test_create_with_bad_replicas_changes_nothing(fs: Fs) -> None:
    cs = fs.register(2)
    for bad in ([cs[0], cs[0]], [99]):
        assert (
            fs.err("create", parent=ROOT_INO, name=b"f", mode=0o644, uid=0, gid=0, replicas=bad)
            is E.INVALID
        )
    assert fs.names(ROOT_INO) == []


def test_mutations_that_add_a_name_answer_the_parent(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    r = fs.ok("mkdir", parent=d, name=b"sub", mode=0o755, uid=0, gid=0)
    assert r["parent_attr"] == fs.attr(d) and r["parent_attr"]["nlink"] == 3
    assert r["parent_attr"]["mtime_ns"] == r["attr"]["ctime_ns"] == fs.now
    c = fs.ok("create", parent=d, name=b"f", mode=0o644, uid=0, gid=0)
    assert c["parent_attr"] == fs.attr(d)
    s = fs.ok("symlink", parent=d, name=b"l", target=b"t", uid=0, gid=0)
    assert s["parent_attr"] == fs.attr(d)
    m = fs.ok("mknod", parent=d, name=b"p", mode=stat.S_IFIFO | 0o644, uid=0, gid=0)
    assert m["parent_attr"] == fs.attr(d)
    k = fs.ok("link", ino=c["attr"]["ino"], parent=ROOT_INO, name=b"hard")
    assert k["parent_attr"] == fs.attr(ROOT_INO)


def test_commit_sets_attributes_in_the_same_command(fs: Fs) -> None:
    cs = fs.register(3)
    r = create(fs, b"f", replicas=cs)
    ino, chunk = r["attr"]["ino"], r["chunk"]
    entry = [0, 100, chunk["chunk_id"], chunk["version"]]
    a = fs.ok(
        "commit", ino=ino, size=100, mtime_ns=5, chunks=[entry],
        mode=stat.S_IFDIR | 0o4755, uid=7, gid=8, atime_ns=4,
    )["attr"]  # fmt: skip
    # The mode's type bits are never changed; permission bits (setuid included) are.
    assert a["mode"] == stat.S_IFREG | 0o4755
    assert (a["uid"], a["gid"], a["atime_ns"], a["mtime_ns"]) == (7, 8, 4, 5)
    assert (a["size"], a["ctime_ns"]) == (100, fs.now)
    # Attributes alone, without mtime_ns: the mtime stays.
    b = fs.ok("commit", ino=ino, size=0, chunks=[], mode=0o600)["attr"]
    assert b["mode"] == stat.S_IFREG | 0o600 and b["mtime_ns"] == 5 and b["size"] == 100
    assert b["ctime_ns"] == fs.now


def test_commit_attribute_errors_change_nothing(fs: Fs) -> None:
    f = fs.create(ROOT_INO, b"f")
    assert fs.err("commit", ino=f, size=0, chunks=[], uid=1 << 40) is E.INVALID
    assert fs.err("commit", ino=f, size=0, chunks=[], mode="x") is E.PROTOCOL
    assert fs.err("commit", ino=f, size=0, chunks=[], colour=1) is E.PROTOCOL
