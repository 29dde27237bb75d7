"""The space a file with punched chunks takes (metaserver/namespace/sparse.py): ``blocks``
drops by the punched chunks' bytes and comes back when they are written again or
``allocate``d, or goes with a truncate; the physical bytes of the recursive statistics
follow; the snapshot (version 7) keeps the spans and an older one loads without any. The
invariants (rstats recomputed, the spans' rules) are checked after every command."""

from __future__ import annotations

import msgpack
import pytest

from dfs.wire.errors import Invalid, IsDir
from dfs.wire.limits import FILE_SIZE_BYTES_MAX
from dfs.wire.ops_meta import COMMANDS
from metaserver.namespace import ROOT_INO, SNAPSHOT_VERSION, Namespace, sparse
from metaserver.namespace.commands import GOAL_DEFAULT
from tools.testing.nsdriver import NamespaceDriver

pytestmark = pytest.mark.timeout(30)

CHUNK = 1 << 16
BLOCKS = CHUNK // 512  # st_blocks of one chunk


class Fs(NamespaceDriver):
    def __init__(self, trash_s: int = 0) -> None:
        super().__init__(CHUNK, trash_s)

    def file(self, name: bytes, size: int, parent: int = ROOT_INO) -> int:
        """A file of ``size`` bytes, every chunk below the size written."""
        r = self.ok("create", parent=parent, name=name, mode=0o644, uid=0, gid=0)
        ino = int(r["attr"]["ino"])
        self.write(ino, range(-(-size // CHUNK)), size)
        return ino

    def blocks(self, ino: int) -> int:
        return int(self.ns.getattr(ino)["blocks"])

    def phys(self, ino: int = ROOT_INO) -> int:
        return self.ns.usage(ino)["physical_bytes"]


def test_a_punch_takes_its_chunks_blocks_away_and_a_rewrite_gives_them_back() -> None:
    fs = Fs()
    ino = fs.file(b"f", 4 * CHUNK + 100)
    full = (4 * CHUNK + 100 + 511) // 512
    assert fs.blocks(ino) == full and fs.phys() == (4 * CHUNK + 100) * GOAL_DEFAULT
    r = fs.ok("punch", ino=ino, offset=CHUNK - 10, length=2 * CHUNK + 20)  # chunks 1, 2
    assert r["attr"]["blocks"] == fs.blocks(ino) == full - 2 * BLOCKS
    assert fs.phys() == (2 * CHUNK + 100) * GOAL_DEFAULT
    assert fs.ns.usage(ROOT_INO)["bytes"] == 4 * CHUNK + 100  # the size stays
    # Listed attributes are the same map (the client's listing path).
    listed = {name: a for name, a, _ in fs.ns.readdir(ROOT_INO, 0, 10)[0]}
    assert listed[b"f"] == fs.ns.getattr(ino)
    # Writing chunk 1 again: it takes space from its write handle on.
    fs.write(ino, [1], 4 * CHUNK + 100)
    assert fs.blocks(ino) == full - BLOCKS
    fs.write(ino, [2], 4 * CHUNK + 100)
    assert fs.blocks(ino) == full and fs.ns.inodes[ino].holes is None
    assert fs.phys() == (4 * CHUNK + 100) * GOAL_DEFAULT


def test_a_punch_to_the_end_takes_the_partial_chunk_and_a_grown_file_keeps_it_punched() -> None:
    fs = Fs()
    ino = fs.file(b"f", 2 * CHUNK + 100)
    fs.ok("punch", ino=ino, offset=2 * CHUNK, length=100)
    assert fs.blocks(ino) == 2 * BLOCKS and fs.phys() == 2 * CHUNK * GOAL_DEFAULT
    # Growing by a truncate: the tail of the punched chunk is a hole as well; past it,
    # the new hole counts as allocated (as after fallocate -l).
    fs.ok("setattr", ino=ino, size=5 * CHUNK)
    assert fs.blocks(ino) == 4 * BLOCKS and fs.phys() == 4 * CHUNK * GOAL_DEFAULT


def test_a_truncate_cuts_the_punched_spans_away() -> None:
    fs = Fs()
    ino = fs.file(b"f", 6 * CHUNK)
    fs.ok("punch", ino=ino, offset=CHUNK, length=4 * CHUNK)  # chunks 1..4
    assert fs.blocks(ino) == 2 * BLOCKS
    fs.ok("setattr", ino=ino, size=3 * CHUNK + 7)  # into chunk 3: 1..3 stay punched
    holes = fs.ns.inodes[ino].holes
    assert holes is not None and holes.spans == [1, 4] and holes.bytes == 2 * CHUNK + 7
    assert fs.blocks(ino) == BLOCKS
    fs.ok("setattr", ino=ino, size=CHUNK)  # below the spans: none left
    assert fs.ns.inodes[ino].holes is None and fs.blocks(ino) == BLOCKS
    fs.ok("setattr", ino=ino, size=3 * CHUNK)  # growing again: a plain hole, allocated
    assert fs.blocks(ino) == 3 * BLOCKS


def test_a_punched_hole_that_was_never_written_takes_no_space_and_costs_two_integers() -> None:
    fs = Fs()
    r = fs.ok("create", parent=ROOT_INO, name=b"big", mode=0o644, uid=0, gid=0)
    ino = int(r["attr"]["ino"])
    fs.ok("setattr", ino=ino, size=FILE_SIZE_BYTES_MAX)  # fallocate -l: allocated
    assert fs.blocks(ino) == FILE_SIZE_BYTES_MAX // 512
    fs.ok("punch", ino=ino, offset=CHUNK, length=FILE_SIZE_BYTES_MAX)
    holes = fs.ns.inodes[ino].holes
    assert holes is not None and holes.spans == [1, FILE_SIZE_BYTES_MAX // CHUNK]
    assert fs.blocks(ino) == BLOCKS and fs.phys() == CHUNK * GOAL_DEFAULT
    # A write in the middle splits the span.
    fs.write(ino, [7], FILE_SIZE_BYTES_MAX)
    assert fs.ns.inodes[ino].holes.spans == [1, 7, 8, FILE_SIZE_BYTES_MAX // CHUNK]  # type: ignore[union-attr]
    assert fs.blocks(ino) == 2 * BLOCKS


def test_allocate_gives_a_punched_range_its_space_back() -> None:
    fs = Fs()
    ino = fs.file(b"f", 5 * CHUNK)
    fs.ok("punch", ino=ino, offset=0, length=5 * CHUNK)
    assert fs.blocks(ino) == 0 and fs.phys() == 0
    # Any chunk the range touches: bytes 1.5 to 2.5 chunks touch chunks 1 and 2.
    r = fs.ok("allocate", ino=ino, offset=CHUNK + CHUNK // 2, length=CHUNK)
    assert r["filled_bytes"] == 2 * CHUNK and r["attr"]["blocks"] == 2 * BLOCKS
    assert fs.ns.inodes[ino].holes.spans == [0, 1, 3, 5]  # type: ignore[union-attr]
    assert fs.ns.inodes[ino].chunks == {}  # nothing written: still reads as zeros
    r = fs.ok("allocate", ino=ino, offset=CHUNK, length=CHUNK)  # nothing punched there
    assert r["filled_bytes"] == 0 and r["attr"]["blocks"] == 2 * BLOCKS
    fs.ok("allocate", ino=ino, offset=0, length=FILE_SIZE_BYTES_MAX)
    assert fs.blocks(ino) == 5 * BLOCKS and fs.phys() == 5 * CHUNK * GOAL_DEFAULT
    assert fs.ns.inodes[ino].holes is None
    d = int(fs.ok("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)["attr"]["ino"])
    with pytest.raises(IsDir):
        fs.ok("allocate", ino=d, offset=0, length=1)
    with pytest.raises(Invalid):
        fs.ok("allocate", ino=ino, offset=0, length=0)
    assert COMMANDS["fs.allocate"] == "allocate"


def test_goal_links_and_the_trash_keep_the_physical_bytes_right() -> None:
    fs = Fs(trash_s=100)
    d = int(fs.ok("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)["attr"]["ino"])
    ino = fs.file(b"f", 4 * CHUNK, parent=d)
    fs.ok("punch", ino=ino, offset=0, length=3 * CHUNK)
    assert fs.phys(d) == CHUNK * GOAL_DEFAULT
    fs.ok("set_goal", ino=ino, goal=5)
    assert fs.phys(d) == 5 * CHUNK
    fs.ok("link", ino=ino, parent=ROOT_INO, name=b"g")
    fs.ok("unlink", parent=d, name=b"f")  # the primary name moves to the root
    assert fs.phys(d) == 0 and fs.phys() == 5 * CHUNK
    fs.ok("unlink", parent=ROOT_INO, name=b"g")  # to the trash: counts nowhere
    assert fs.phys() == 0 and fs.ns.trash_bytes == 4 * CHUNK
    fs.ok("write_handle", ino=ino, index=0, replicas=[1])  # a client holding it open
    fs.ok("trash_restore", inos=[ino])
    assert fs.phys() == 2 * CHUNK * 5


def test_a_snapshot_keeps_the_spans_and_an_old_one_loads_without_them() -> None:
    fs = Fs()
    a = fs.file(b"a", 3 * CHUNK + 5)
    b = fs.file(b"b", 2 * CHUNK)
    fs.ok("punch", ino=a, offset=CHUNK, length=3 * CHUNK)  # 1..3, 3 holding the end
    fs.ok("punch", ino=b, offset=0, length=CHUNK)
    blob = fs.ns.snapshot()
    rows = msgpack.unpackb(blob, raw=False)
    assert rows[0] == SNAPSHOT_VERSION == 7 and rows[14] == [[a, [1, 4]], [b, [0, 1]]]
    copy = Namespace(CHUNK)
    copy.restore(blob)
    copy.check_invariants()
    assert copy.snapshot() == blob
    assert copy.getattr(a) == fs.ns.getattr(a) and copy.getattr(a)["blocks"] == BLOCKS
    assert copy.usage(ROOT_INO) == fs.ns.usage(ROOT_INO)
    # Version 6 had no spans: every file's blocks follow its size, as they did then.
    old = msgpack.packb([6, *rows[1:14]], use_bin_type=True)
    copy.restore(old)
    copy.check_invariants()
    assert (
        copy.inodes[a].holes is None and copy.getattr(a)["blocks"] == (3 * CHUNK + 5 + 511) // 512
    )
    assert copy.usage(ROOT_INO)["physical_bytes"] == (5 * CHUNK + 5) * GOAL_DEFAULT
    # A malformed span list is refused, the state left as it was reset.
    bad = msgpack.packb([7, *rows[1:14], [[a, [1]]]], use_bin_type=True)
    with pytest.raises(ValueError, match="malformed"):
        copy.restore(bad)


def test_the_span_set() -> None:
    h = sparse.make(sparse.add(None, 2, 4), 10 * 100, 100)
    assert h is not None and h.spans == [2, 4] and h.bytes == 200
    h = sparse.make(sparse.add(h, 4, 6), 1000, 100)  # adjacent: one span
    assert h is not None and h.spans == [2, 6]
    h = sparse.make(sparse.add(h, 8, 9), 1000, 100)
    assert h is not None and h.spans == [2, 6, 8, 9] and h.bytes == 500
    assert [i for i in range(11) if sparse.contains(h, i)] == [2, 3, 4, 5, 8]
    assert sparse.overlaps(h, 6, 8) is False and sparse.overlaps(h, 6, 9) is True
    assert sparse.overlaps(h, 0, 3) is True and sparse.overlaps(h, 9, 20) is False
    assert sparse.remove(h, 3, 9) == [2, 3]
    assert sparse.make([2, 6, 8, 9], 850, 100) is not None  # chunk 8 holds the end
    cut = sparse.make([2, 6, 8, 9], 800, 100)
    assert cut is not None and cut.spans == [2, 6] and cut.bytes == 400
    assert sparse.make([2, 6, 8, 9], 150, 100) is None
    assert sparse.measure([8, 9], 850, 100) == 50


def test_a_zero_range_drops_the_chunks_but_keeps_the_range_allocated() -> None:
    fs = Fs()
    ino = fs.file(b"f", 6 * CHUNK)
    fs.ok("punch", ino=ino, offset=4 * CHUNK, length=CHUNK)  # chunk 4 punched
    assert fs.blocks(ino) == 5 * BLOCKS
    # ZERO_RANGE over chunks 1..4: 1..3 dropped, and the whole range counts (4 again too),
    # as ext4 leaves a zeroed range allocated.
    r = fs.ok("punch", ino=ino, offset=CHUNK, length=4 * CHUNK, zero=True)
    assert (r["first"], r["stop"], r["dropped"]) == (1, 5, 3)
    assert sorted(fs.ns.inodes[ino].chunks or {}) == [0, 5]
    assert r["attr"]["blocks"] == fs.blocks(ino) == 6 * BLOCKS
    assert fs.ns.inodes[ino].holes is None and fs.phys() == 6 * CHUNK * GOAL_DEFAULT


def test_past_the_cap_a_file_counts_whole_again() -> None:
    """Every other chunk punched, past ``SPANS_MAX`` spans: the file forgets its punched
    chunks (each apply stays O(SPANS_MAX)) and reports its whole size, never less."""
    fs = Fs()
    chunks = 2 * sparse.SPANS_MAX + 4
    ino = fs.file(b"f", 0)
    fs.ok("setattr", ino=ino, size=chunks * CHUNK)  # fallocate -l: counts whole
    for index in range(0, 2 * sparse.SPANS_MAX, 2):
        fs.ok("punch", ino=ino, offset=index * CHUNK, length=CHUNK)
    holes = fs.ns.inodes[ino].holes
    assert holes is not None and len(holes.spans) == 2 * sparse.SPANS_MAX
    assert fs.blocks(ino) == (chunks - sparse.SPANS_MAX) * BLOCKS
    fs.ok("punch", ino=ino, offset=2 * sparse.SPANS_MAX * CHUNK, length=CHUNK)  # one more
    assert fs.ns.inodes[ino].holes is None
    assert fs.blocks(ino) == chunks * BLOCKS
    assert fs.phys() == chunks * CHUNK * GOAL_DEFAULT
