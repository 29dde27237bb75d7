"""Reserved inode numbers and first chunks, and the creates that use them
(metaserver/namespace/pools.py; docs/ARCHITECTURE.md, "Directory leases")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_namespace import Fs

from dfs.wire.errors import ErrorCode
from metaserver.namespace import ROOT_INO, Namespace
from metaserver.namespace.pools import POOL_ENTRIES_MAX, POOL_TTL_NS, RESERVE_ENTRIES_MAX

E = ErrorCode
HOLDER = 99


@pytest.fixture
def fs() -> Iterator[Fs]:
    f = Fs()
    yield f
    f.ns.check_invariants()


def reserve(fs: Fs, count: int, holder: int = HOLDER) -> list[list[Any]]:
    cs = sorted(fs.ns.cs_table) or fs.register()
    result = fs.ok("reserve", holder=holder, replicas=[cs[:3]] * count)
    return list(result["entries"])


def create(fs: Fs, parent: int, name: bytes, ino: int, pool: int = HOLDER) -> dict[str, Any]:
    fields = {"parent": parent, "name": name, "mode": 0o644, "uid": 5, "gid": 6, "ino": ino}
    return fs.do("batch", ops=[["create", {**fields, "pool": pool}]])


def test_reserved_numbers_are_fresh_and_a_create_takes_one_with_its_chunk(fs: Fs) -> None:
    before = fs.create(ROOT_INO, b"before")
    entries = reserve(fs, 3)
    inos = [e[0] for e in entries]
    chunks = [e[1] for e in entries]
    assert all(i > before for i in inos) and len(set(inos)) == 3
    after = fs.create(ROOT_INO, b"after")  # the counter moved past the reservation
    assert after > max(inos)
    ino, chunk_id, replicas = entries[1]
    result = create(fs, ROOT_INO, b"leased", ino)["results"][0]
    assert result["ok"] and result["created"]
    assert result["attr"]["ino"] == ino and result["attr"]["uid"] == 5
    assert result["chunk"] == {"index": 0, "chunk_id": chunk_id, "version": 1, "length": 0,
                               "replicas": replicas}  # fmt: skip
    assert fs.ns.lookup(ROOT_INO, b"leased")["ino"] == ino
    assert chunk_id in fs.ns.chunk_table and chunk_id not in fs.ns.reserved_chunks
    assert set(fs.ns.reserved_chunks) == {chunks[0], chunks[2]}


def test_an_entry_is_used_once_by_its_holder_only(fs: Fs) -> None:
    ino = reserve(fs, 1)[0][0]
    other = create(fs, ROOT_INO, b"x", ino, pool=HOLDER + 1)["results"][0]
    assert not other["ok"] and ErrorCode(other["err"]["code"]) is E.STALE
    assert create(fs, ROOT_INO, b"x", ino)["results"][0]["ok"]
    again = create(fs, ROOT_INO, b"y", ino)["results"][0]
    assert not again["ok"] and ErrorCode(again["err"]["code"]) is E.STALE
    assert fs.names(ROOT_INO) == [b"x"]


def test_a_leased_create_of_an_existing_name_fails_and_keeps_the_entry(fs: Fs) -> None:
    fs.create(ROOT_INO, b"x")
    ino = reserve(fs, 1)[0][0]
    result = create(fs, ROOT_INO, b"x", ino)["results"][0]
    assert not result["ok"] and ErrorCode(result["err"]["code"]) is E.EXISTS
    assert ino in fs.ns.pools[HOLDER]


def test_entries_expire_and_the_next_reserve_sweeps_them(fs: Fs) -> None:
    ino = reserve(fs, 2)[0][0]
    fs.now += POOL_TTL_NS
    result = create(fs, ROOT_INO, b"late", ino)["results"][0]
    assert not result["ok"] and ErrorCode(result["err"]["code"]) is E.STALE
    reserve(fs, 1, holder=HOLDER + 1)
    assert HOLDER not in fs.ns.pools and len(fs.ns.reserved_chunks) == 1


def test_reservations_are_bounded_and_checked(fs: Fs) -> None:
    cs = fs.register()
    assert fs.err("reserve", holder=HOLDER, replicas=[]) is E.INVALID
    too_many = [cs] * (RESERVE_ENTRIES_MAX + 1)
    assert fs.err("reserve", holder=HOLDER, replicas=too_many) is E.INVALID
    assert fs.err("reserve", holder=HOLDER, replicas=[[cs[0], cs[0]]]) is E.INVALID
    assert fs.err("reserve", holder=HOLDER, replicas=[[12345]]) is E.INVALID
    for _ in range(POOL_ENTRIES_MAX // RESERVE_ENTRIES_MAX):
        fs.ok("reserve", holder=HOLDER, replicas=[cs] * RESERVE_ENTRIES_MAX)
    assert fs.err("reserve", holder=HOLDER, replicas=[cs]) is E.NO_SPACE


def test_pools_survive_a_snapshot(fs: Fs) -> None:
    entries = reserve(fs, 4)
    copy = Namespace(fs.ns.chunk_size_bytes)
    copy.restore(fs.ns.snapshot())
    copy.check_invariants()
    assert copy.pools == fs.ns.pools and copy.reserved_chunks == fs.ns.reserved_chunks
    assert copy.snapshot() == fs.ns.snapshot()
    fs.ns = copy
    assert create(fs, ROOT_INO, b"after-restore", entries[3][0])["results"][0]["ok"]


def test_a_leased_mkdir_and_symlink_take_entries_and_leave_their_chunks_unused(fs: Fs) -> None:
    entries = reserve(fs, 3)
    (d_ino, d_chunk, _), (s_ino, s_chunk, _), (f_ino, _, _) = entries
    owner = {"uid": 5, "gid": 6, "pool": HOLDER}
    results = fs.do("batch", ops=[
        ["mkdir", {"parent": ROOT_INO, "name": b"d", "mode": 0o1755, "ino": d_ino, **owner}],
        ["symlink", {"parent": d_ino, "name": b"s", "target": b"f", "ino": s_ino, **owner}],
        ["create", {"parent": d_ino, "name": b"f", "mode": 0o644, "ino": f_ino, **owner}],
        # Used already: refused, the rest stands.
        ["mkdir", {"parent": ROOT_INO, "name": b"e", "mode": 0o755, "ino": d_ino, **owner}],
    ])["results"]  # fmt: skip
    assert [r["ok"] for r in results] == [True, True, True, False]
    assert ErrorCode(results[3]["err"]["code"]) is E.STALE
    d, s = results[0]["attr"], results[1]["attr"]
    assert (d["ino"], d["mode"], d["nlink"], d["size"]) == (d_ino, 0o41755, 2, 4096)
    assert (s["ino"], s["mode"], s["size"]) == (s_ino, 0o120777, 1)
    assert fs.ns.lookup(ROOT_INO, b"d")["ino"] == d_ino
    assert sorted(fs.names(d_ino)) == [b"f", b"s"]
    # The reserved chunks of the directory and the symlink are gone, never allocated.
    assert not fs.ns.reserved_chunks and HOLDER not in fs.ns.pools
    assert d_chunk not in fs.ns.chunk_table and s_chunk not in fs.ns.chunk_table


def test_a_reserved_number_needs_its_pool_in_mkdir_and_symlink(fs: Fs) -> None:
    ino = reserve(fs, 1)[0][0]
    owner = {"uid": 0, "gid": 0}
    assert fs.err("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, ino=ino, **owner) is E.INVALID
    assert fs.err("symlink", parent=ROOT_INO, name=b"s", target=b"t", ino=ino,
                  **owner) is E.INVALID  # fmt: skip
    other = fs.do("batch", ops=[["mkdir", {"parent": ROOT_INO, "name": b"d", "mode": 0o755,
                                           "ino": ino, "pool": HOLDER + 1, **owner}]])  # fmt: skip
    assert ErrorCode(other["results"][0]["err"]["code"]) is E.STALE
    assert fs.names(ROOT_INO) == [] and ino in fs.ns.pools[HOLDER]
