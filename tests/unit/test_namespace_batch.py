"""The namespace's ``batch`` command and the expected-inode check of removals
(metaserver/namespace/batch.py; docs/ARCHITECTURE.md, "Directory leases")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_namespace import Fs, without_sessions

from dfs.types import BATCH_OPS_MAX
from dfs.wire.errors import ErrorCode
from metaserver.namespace import ROOT_INO, encode_command

E = ErrorCode


@pytest.fixture
def fs() -> Iterator[Fs]:
    f = Fs()
    yield f
    f.ns.check_invariants()


def codes(result: dict[str, Any]) -> list[object]:
    return [r["ok"] or ErrorCode(r["err"]["code"]) for r in result["results"]]


def test_batch_applies_in_order_each_to_its_own_result(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    sub = fs.mkdir(d, b"sub")
    a = fs.create(d, b"a")
    inner = fs.create(sub, b"inner")
    result = fs.ok(
        "batch",
        ops=[
            ["rmdir", {"parent": d, "name": b"sub"}],  # not empty yet: fails, changes nothing
            ["unlink", {"parent": sub, "name": b"inner", "ino": inner}],
            ["unlink", {"parent": d, "name": b"missing"}],
            ["rmdir", {"parent": d, "name": b"sub"}],  # empty now: the order counts
            ["unlink", {"parent": d, "name": b"a", "ino": a}],
            ["unlink", {"parent": d, "name": b"a"}],  # gone already
        ],
    )
    assert codes(result) == [E.NOT_EMPTY, True, E.NOT_FOUND, True, True, E.NOT_FOUND]
    assert fs.names(d) == []
    assert a not in fs.ns.inodes and inner not in fs.ns.inodes and sub not in fs.ns.inodes
    assert fs.attr(d)["nlink"] == 2


def test_batch_is_applied_once_under_retry(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    fs.create(d, b"x")
    command = encode_command(
        "batch",
        fs.client,
        fs.seq + 1,
        fs.now + 10,
        {"ops": [["unlink", {"parent": d, "name": b"x"}]]},
    )
    first = fs.ns.apply(command)
    assert first["ok"] and codes(first) == [True]
    fs.seq += 1
    # The same name again, by another client's session.
    other = {"parent": d, "name": b"x", "mode": 0o644, "uid": 0, "gid": 0, "exclusive": True}
    assert fs.ns.apply(encode_command("create", 99, 1, fs.now + 20, other))["ok"]
    again = fs.ns.apply(command)  # a retry of the batch: the first answer, nothing applied
    assert again == first
    assert fs.names(d) == [b"x"]


@pytest.mark.parametrize(
    "ops",
    [
        [],
        [["rename", {"parent": 1, "name": b"y", "new_parent": 1, "new_name": b"z"}]],
        [["unlink", [1, b"x"]]],
        [["unlink"]],
        [["unlink", {"parent": 1, "name": b"x"}]] * (BATCH_OPS_MAX + 1),
    ],
)
def test_malformed_batches_are_refused_whole(fs: Fs, ops: list[object]) -> None:
    fs.create(ROOT_INO, b"x")
    ops = [*ops, ["unlink", {"parent": ROOT_INO, "name": b"x"}]] if ops else ops
    before = without_sessions(fs.ns)
    result = fs.do("batch", ops=ops)
    assert not result["ok"]
    assert without_sessions(fs.ns) == before


def test_removal_with_another_expected_inode_is_stale(fs: Fs) -> None:
    d = fs.mkdir(ROOT_INO, b"d")
    old = fs.create(d, b"x")
    fs.ok("unlink", parent=d, name=b"x")
    new = fs.create(d, b"x")  # another client's new file under the same name
    assert fs.err("unlink", parent=d, name=b"x", ino=old) == E.STALE
    sub = fs.mkdir(d, b"s")
    assert fs.err("rmdir", parent=d, name=b"s", ino=sub + 1000) == E.STALE
    result = fs.ok("batch", ops=[["unlink", {"parent": d, "name": b"x", "ino": old}]])
    assert codes(result) == [E.STALE]
    assert fs.names(d) == [b"x", b"s"]
    fs.ok("unlink", parent=d, name=b"x", ino=new)
    fs.ok("rmdir", parent=d, name=b"s", ino=sub)
    assert fs.names(d) == []
