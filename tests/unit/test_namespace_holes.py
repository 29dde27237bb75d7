"""The ``punch`` command (metaserver/namespace/holes.py, ``fs.punch``): which chunks a
punched range drops, what they become (garbage), what stays (size, rstats, the trash's
bytes, chunks past the size), a writer of a dropped chunk fenced off, and the refusals.
The invariants are checked after every command."""

from __future__ import annotations

from typing import Any

import pytest

from dfs.wire.errors import (
    DfsError,
    Invalid,
    IsDir,
    NotFound,
    ProtocolError,
    Stale,
    TooBig,
)
from dfs.wire.limits import FILE_SIZE_BYTES_MAX
from dfs.wire.ops_meta import COMMANDS
from metaserver.namespace import ROOT_INO, Namespace, encode_command
from metaserver.namespace.commands import GOAL_DEFAULT
from metaserver.namespace.holes import whole_chunks
from tools.testing.nsdriver import NamespaceDriver

pytestmark = pytest.mark.timeout(30)

CHUNK = 1 << 16


class Fs(NamespaceDriver):
    def __init__(self, trash_s: int = 0) -> None:
        super().__init__(CHUNK, trash_s)

    def file(self, name: bytes, size: int, indexes: list[int] | None = None) -> int:
        """A file of ``size`` bytes with a full chunk at each of ``indexes`` (default:
        every chunk below the size)."""
        r = self.ok("create", parent=ROOT_INO, name=name, mode=0o644, uid=0, gid=0)
        ino = int(r["attr"]["ino"])
        self.write(ino, range(-(-size // CHUNK)) if indexes is None else indexes, size)
        return ino

    def chunks(self, ino: int) -> dict[int, int]:
        chunks = self.ns.inodes[ino].chunks
        assert chunks is not None
        return dict(chunks)


def test_the_chunks_wholly_inside_leave_for_the_garbage_and_the_size_stays() -> None:
    fs = Fs()
    ino = fs.file(b"f", 4 * CHUNK + 100)  # chunks 0..4
    before = fs.chunks(ino)
    usage = fs.ns.usage(ROOT_INO)
    r = fs.ok("punch", ino=ino, offset=CHUNK - 10, length=2 * CHUNK + 20)
    # [CHUNK - 10, 3 CHUNK + 10): chunks 1 and 2 lie wholly inside, 0 and 3 only partly.
    assert (r["first"], r["stop"], r["dropped"]) == (1, 3, 2)
    assert fs.chunks(ino) == {i: before[i] for i in (0, 3, 4)}
    assert list(fs.ns.garbage) == [before[1], before[2]]
    assert before[1] not in fs.ns.chunk_table and before[2] not in fs.ns.chunk_table
    attr = r["attr"]
    assert attr["size"] == 4 * CHUNK + 100 and fs.ns.getattr(ino)["size"] == attr["size"]
    assert attr["mtime_ns"] == attr["ctime_ns"] == fs.now  # as ext4's punch
    after = fs.ns.usage(ROOT_INO)
    # The bytes stay (the size); the physical bytes drop by the punched chunks at goal
    # (test_namespace_sparse.py has the space accounting).
    phys = usage["physical_bytes"] - 2 * CHUNK * GOAL_DEFAULT
    assert after == {**usage, "garbage_chunks": usage["garbage_chunks"] + 2,
                     "physical_bytes": phys}  # fmt: skip
    assert fs.ns.stats()["chunks"] == 3
    # The chunks the namespace answers for the file: holes are absent.
    assert [c["index"] for c in fs.ns.chunks(ino, 0, 8)] == [0, 3, 4]
    # Again: nothing more to drop, the answer's span is the same.
    r = fs.ok("punch", ino=ino, offset=CHUNK - 10, length=2 * CHUNK + 20)
    assert (r["first"], r["stop"], r["dropped"]) == (1, 3, 0)


def test_a_range_to_the_end_drops_the_chunk_holding_the_end_but_none_past_the_size() -> None:
    fs = Fs()
    ino = fs.file(b"f", 2 * CHUNK + 100)  # chunk 2 holds the end: 100 bytes
    # An upload not committed yet: chunk 5, past the size.
    late = fs.ok("write_handle", ino=ino, index=5, replicas=[1])["chunk_id"]
    r = fs.ok("punch", ino=ino, offset=2 * CHUNK, length=100)  # exactly to the end
    assert (r["first"], r["stop"], r["dropped"]) == (2, 3, 1)
    r = fs.ok("punch", ino=ino, offset=1, length=FILE_SIZE_BYTES_MAX)
    assert (r["first"], r["stop"], r["dropped"]) == (1, 3, 1)
    assert fs.chunks(ino) == {0: fs.chunks(ino)[0], 5: late}
    # A range short of the end leaves the chunk holding it.
    ino2 = fs.file(b"g", 2 * CHUNK + 100)
    r = fs.ok("punch", ino=ino2, offset=0, length=2 * CHUNK + 99)
    assert (r["first"], r["stop"], r["dropped"]) == (0, 2, 2) and list(fs.chunks(ino2)) == [2]
    # Wholly past the end: nothing.
    r = fs.ok("punch", ino=ino2, offset=3 * CHUNK, length=CHUNK)
    assert r["dropped"] == 0 and r["stop"] <= r["first"]


def test_holes_inside_the_span_are_skipped_and_a_huge_sparse_file_costs_its_chunks() -> None:
    fs = Fs()
    ino = fs.file(b"sparse", 10 * CHUNK, indexes=[0, 4, 9])
    r = fs.ok("punch", ino=ino, offset=0, length=9 * CHUNK)
    assert (r["first"], r["stop"], r["dropped"]) == (0, 9, 2) and list(fs.chunks(ino)) == [9]
    big = fs.file(b"big", CHUNK, indexes=[0])
    fs.ok("setattr", ino=big, size=FILE_SIZE_BYTES_MAX)  # a hole of 2^50 / 64 KiB chunks
    r = fs.ok("punch", ino=big, offset=0, length=FILE_SIZE_BYTES_MAX)
    assert r["dropped"] == 1 and r["stop"] == FILE_SIZE_BYTES_MAX // CHUNK


def test_a_writer_of_a_dropped_chunk_is_stale_at_its_commit() -> None:
    fs = Fs()
    ino = fs.file(b"f", 3 * CHUNK)
    h = fs.ok("write_handle", ino=ino, index=1, replicas=[1])
    assert h["chunk_id"] in fs.ns.writes
    fs.ok("punch", ino=ino, offset=CHUNK, length=CHUNK)
    assert h["chunk_id"] not in fs.ns.writes
    with pytest.raises(Stale):
        fs.ok("commit", ino=ino, size=3 * CHUNK, chunks=[[1, 10, h["chunk_id"], h["version"]]])
    # A later write there allocates a new chunk, as in any hole.
    h2 = fs.ok("write_handle", ino=ino, index=1, replicas=[1])
    assert h2["allocated"] and h2["chunk_id"] != h["chunk_id"]


def test_a_file_in_the_trash_keeps_its_bytes_counted_and_a_snapshot_holds_the_holes() -> None:
    fs = Fs(trash_s=100)
    ino = fs.file(b"f", 3 * CHUNK)
    fs.ok("unlink", parent=ROOT_INO, name=b"f")  # in the trash; a client may hold it open
    assert fs.ns.trash_bytes == 3 * CHUNK
    r = fs.ok("punch", ino=ino, offset=0, length=2 * CHUNK)
    assert r["dropped"] == 2 and fs.ns.trash_bytes == 3 * CHUNK
    assert fs.ns.usage(ROOT_INO)["trash_bytes"] == 3 * CHUNK
    copy = Namespace(CHUNK)
    copy.restore(fs.ns.snapshot())
    copy.check_invariants()
    assert copy.snapshot() == fs.ns.snapshot() and list(copy.inodes[ino].chunks or {}) == [2]
    assert fs.ok("trash_restore", inos=[ino])["restored"] == [[ino, b"/f"]]
    assert fs.ns.usage(ROOT_INO)["bytes"] == 3 * CHUNK  # the size, holes included


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"offset": 0, "length": 0}, Invalid),  # fallocate(2): EINVAL for an empty range
        ({"offset": -1, "length": 10}, Invalid),
        ({"offset": FILE_SIZE_BYTES_MAX + 1, "length": 10}, TooBig),  # EFBIG
        ({"offset": 0}, ProtocolError),
        ({"offset": True, "length": 10}, ProtocolError),
        ({"offset": 0, "length": 10, "size": 1}, ProtocolError),  # an unknown field
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(
    args: dict[str, Any], error: type[DfsError]
) -> None:
    fs = Fs()
    ino = fs.file(b"f", 2 * CHUNK)
    snapshot = fs.ns.snapshot()
    with pytest.raises(error):
        fs.ok("punch", ino=ino, **args)
    assert fs.chunks(ino) and not fs.ns.garbage
    assert fs.ns.snapshot() != snapshot  # only the session table moved (the error is kept)
    assert fs.ns.getattr(ino)["mtime_ns"] == 1


def test_only_a_regular_file_is_punched() -> None:
    fs = Fs()
    d = int(fs.ok("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)["attr"]["ino"])
    link = fs.ok("symlink", parent=ROOT_INO, name=b"l", target=b"x", uid=0, gid=0)
    with pytest.raises(IsDir):
        fs.ok("punch", ino=d, offset=0, length=1)
    with pytest.raises(Invalid):
        fs.ok("punch", ino=link["attr"]["ino"], offset=0, length=1)
    with pytest.raises(NotFound):
        fs.ok("punch", ino=999, offset=0, length=1)


def test_a_retry_gets_the_first_answer() -> None:
    fs = Fs()
    ino = fs.file(b"f", 3 * CHUNK)
    cmd = encode_command("punch", 7, 1, fs.now, {"ino": ino, "offset": 0, "length": 2 * CHUNK})
    first = fs.ns.apply(cmd)
    assert first["ok"] and first["dropped"] == 2
    assert fs.ns.apply(cmd) == first and len(fs.ns.garbage) == 2


def test_the_rule_of_whole_chunks() -> None:
    c = 100
    assert whole_chunks(0, 100, 1000, c) == (0, 1)
    assert whole_chunks(1, 100, 1000, c) == (1, 1)  # none
    assert whole_chunks(50, 310, 1000, c) == (1, 3)
    assert whole_chunks(50, 310, 250, c) == (1, 3)  # chunk 2 holds the end (bytes 200-249)
    assert whole_chunks(50, 240, 250, c) == (1, 2)  # short of the end: chunk 2 stays
    assert whole_chunks(500, 900, 250, c) == (5, 5)  # past the end: none
    assert COMMANDS["fs.punch"] == "punch"
