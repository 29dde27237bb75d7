"""The namespace's record of writes not settled yet (``State.writes``, ``write_marks``):
what lets a new leader recover a chunk whose writer died under its predecessor."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from dfs.wire.errors import error_from_wire
from metaserver.namespace import ROOT_INO, Namespace, encode_command

pytestmark = pytest.mark.timeout(30)

CHUNK = 1 << 20


class Fs:
    def __init__(self) -> None:
        self.ns = Namespace(CHUNK, trash_s_default=0)  # the trash: test_namespace_trash.py
        self.seq = 0
        for i in range(3):
            self.ok("cs_register", uuid=f"u{i}", address=f"h:{i + 1}")

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        self.seq += 1
        result = self.ns.apply(encode_command(op, 0, 0, self.seq, args))
        if not result["ok"]:
            raise error_from_wire(result["err"])
        return result

    def file(self, name: bytes) -> int:
        return int(self.ok("create", parent=ROOT_INO, name=name, mode=0o100644, uid=0,
                           gid=0)["attr"]["ino"])  # fmt: skip


def test_a_handle_marks_its_chunk_and_only_a_settle_at_its_version_unmarks_it() -> None:
    fs = Fs()
    ino = fs.file(b"f")
    h = fs.ok("write_handle", ino=ino, index=0, replicas=[1, 2])
    cid = h["chunk_id"]
    assert fs.ns.writes == {cid: 1}  # a new chunk: its first handle
    fs.ok("commit", ino=ino, size=10, mtime_ns=1, chunks=[[0, 10, cid, 1]])
    assert fs.ns.writes == {cid: 1}  # a commit does not tell that the writer is done
    fs.ok("write_handle", ino=ino, index=0, replicas=[])
    assert fs.ns.writes == {cid: 2}
    fs.ok("write_marks", settled=[[cid, 1]])  # decided before the new handle: kept
    assert fs.ns.writes == {cid: 2}
    assert fs.ok("write_marks", settled=[[cid, 3]])["settled"] == 1  # a recovery's fence
    assert fs.ns.writes == {}
    fs.ok("write_marks", open=[[cid, 9]])  # a keepalive named it: marked, at most at its version
    assert fs.ns.writes == {cid: 2}
    fs.ns.check_invariants()
    fs.ok("unlink", parent=ROOT_INO, name=b"f")
    assert fs.ns.writes == {}  # gone with its chunk
    fs.ns.check_invariants()


def test_the_marks_survive_a_snapshot_and_an_old_snapshot_has_none() -> None:
    fs = Fs()
    ino = fs.file(b"f")
    cid = fs.ok("write_handle", ino=ino, index=0, replicas=[1])["chunk_id"]
    blob = fs.ns.snapshot()
    copy = Namespace(CHUNK)
    copy.restore(blob)
    copy.check_invariants()
    assert copy.writes == {cid: 1} and copy.snapshot() == blob
    old = msgpack.unpackb(blob, raw=False)
    old = msgpack.packb([4, *old[1:11]], use_bin_type=True)
    copy.restore(old)
    assert copy.writes == {}


def test_malformed_marks_are_refused() -> None:
    fs = Fs()
    for args in ({"open": [[1]]}, {"settled": [["x", 1]]}, {"open": 3}, {"other": []}):
        result = fs.ns.apply(encode_command("write_marks", 0, 0, 99, args))
        assert not result["ok"], args
