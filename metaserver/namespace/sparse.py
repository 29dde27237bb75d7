"""The punched chunks of a regular file: which spans of it take no space. Pure.

What it owns: the set of a file's chunk indexes that ``fs.punch`` (holes.py) made holes
and nothing has filled since, the bytes of the file they cover, and so the space the
file takes (``st_blocks``, and the physical bytes of the recursive statistics,
rstats.py). What it must not do: change an inode (``State`` does, through
``State.set_holes`` and ``State.set_size``, which keep rstats right) or decide when a
hole is filled (holes.py and ``State.allocate_chunk`` do).

WHY A SET. ``st_blocks`` of a dfs file follows its size: a hole that a truncate or
``fallocate`` mode 0 made counts as allocated, so that ``fallocate -l 1G f`` shows 1 GiB
in ``du``, as on ext4 (dfs has no reservations; allocate.py). A punched range is the
opposite promise, "this takes no space", and ext4 keeps it: ``du`` drops after
``fallocate --punch-hole``. So the namespace remembers the chunks a punch covered,
whether a chunk existed there or not (punching a file that ``fallocate -l`` grew frees
its space on ext4 too), and ``attr`` subtracts them.

WHAT FILLS A HOLE. An index leaves the set when a chunk is allocated there again (the
first write handle of the index, ``State.allocate_chunk``: the write's bytes take space
from then on, as ext4 allocates at the write), when ``fs.allocate`` (holes.py,
``fallocate`` mode 0 over the range) covers it, and when a truncate cuts the file below
it. A file growing again past a punched chunk that held its end leaves it punched: the
grown part of that chunk is a hole as well.

SHAPE. ``Holes.spans`` is a flat sorted list ``[start0, stop0, start1, stop1, ...]`` of
disjoint, non-adjacent half-open chunk index ranges: a punch of a petabyte sparse file
costs two integers, not one per chunk (the set of indexes would be unbounded). An
inode without punched chunks has ``holes`` None (no memory). ``Holes.bytes`` is derived:
the bytes of the file the spans cover, the chunk holding the end counting only up to the
size; it is recomputed (``measure``) on every change of spans or size, O(spans).

CAP. Every change of a file's spans or size costs O(spans) on every metaserver's apply,
so a file keeps at most ``SPANS_MAX`` spans: a change that would leave more (punching
every other chunk of a huge file, or writing every other chunk of a punched range)
forgets the file's punched chunks instead, and it counts whole again, as every file did
before punches were counted: ``st_blocks`` over-reports its space, never under. The
chunks themselves stay dropped.

Invariants (``check``, called by ``State.check_invariants``): spans sorted, disjoint,
non-adjacent, non-empty, inside ``[0, ceil(size / chunk_size))``; no span holds an index
of the file's chunk map; ``bytes`` as ``measure`` computes it; ``holes`` None rather than
empty.

Why a punched chunk takes whole chunk bytes away: a chunk size is whole checksum blocks,
so a multiple of 512, and ``st_blocks`` of the rest is exact: blocks =
ceil((size - holes.bytes) / 512).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # state.py calls this module: it imports it
    from metaserver.namespace.state import Inode


SPANS_MAX = 1024  # punched spans a file keeps (CAP)


class Holes:
    """A file's punched chunk spans (see SHAPE)."""

    __slots__ = ("bytes", "spans")

    def __init__(self, spans: list[int], bytes_: int = 0) -> None:
        self.spans = spans
        self.bytes = bytes_


def _pairs(spans: list[int]) -> list[tuple[int, int]]:
    return list(zip(spans[::2], spans[1::2], strict=True))


def _flat(pairs: Iterable[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for start, stop in pairs:
        if stop <= start:
            continue
        if out and out[-1] >= start:  # touching or overlapping: one span
            out[-1] = max(out[-1], stop)
        else:
            out += (start, stop)
    return out


def add(holes: Holes | None, first: int, stop: int) -> list[int]:
    """The spans with ``[first, stop)`` added (``stop > first``)."""
    pairs = _pairs(holes.spans) if holes is not None else []
    pairs.append((first, stop))
    pairs.sort()
    return _flat(pairs)


def remove(holes: Holes | None, first: int, stop: int) -> list[int]:
    """The spans without ``[first, stop)``."""
    if holes is None:
        return []
    out: list[tuple[int, int]] = []
    for start, end in _pairs(holes.spans):
        out += ((start, min(end, first)), (max(start, stop), end))
    return _flat(out)


def contains(holes: Holes | None, index: int) -> bool:
    """Whether chunk ``index`` is punched. O(log spans)."""
    if holes is None:
        return False
    spans = holes.spans
    # An odd position: inside a [start, stop) pair.
    return bisect_right(spans, index) % 2 == 1


def overlaps(holes: Holes | None, first: int, stop: int) -> bool:
    """Whether any index of ``[first, stop)`` is punched."""
    if holes is None or stop <= first:
        return False
    return contains(holes, first) or bisect_right(holes.spans, first) < bisect_right(
        holes.spans, stop - 1
    )


def measure(spans: list[int], size: int, chunk_size_bytes: int) -> int:
    """The bytes of a file of ``size`` bytes that ``spans`` cover."""
    total = 0
    for start, stop in _pairs(spans):
        total += max(0, min(stop * chunk_size_bytes, size) - start * chunk_size_bytes)
    return total


def make(spans: list[int], size: int, chunk_size_bytes: int) -> Holes | None:
    """The ``holes`` of a file of ``size`` bytes punched at ``spans`` (None when none),
    cut to the file: spans at or past the chunk holding the end go."""
    spans = remove(Holes(spans), -(-size // chunk_size_bytes), 1 << 63) if spans else spans
    if not spans:
        return None
    return Holes(spans, measure(spans, size, chunk_size_bytes))


def allocated_bytes(inode: Inode) -> int:
    """The bytes a regular file takes: its size less its punched chunks' bytes (the
    figure ``st_blocks`` and the physical bytes of rstats.py are made from)."""
    holes = inode.holes
    return inode.size if holes is None else inode.size - holes.bytes


def check(holes: Holes | None, size: int, chunk_size_bytes: int, chunks: Iterable[int]) -> None:
    """Assert the invariants of the module docstring."""
    if holes is None:
        return
    spans = holes.spans
    assert spans and len(spans) % 2 == 0 and len(spans) <= 2 * SPANS_MAX, len(spans)
    assert all(a < b for a, b in pairwise(spans)), spans
    assert spans[0] >= 0 and spans[-1] <= -(-size // chunk_size_bytes), (spans, size)
    assert not any(contains(holes, i) for i in chunks), spans
    assert holes.bytes == measure(spans, size, chunk_size_bytes), spans


__all__ = ["SPANS_MAX", "Holes", "add", "allocated_bytes", "check", "contains", "make", "measure",
           "overlaps", "remove"]  # fmt: skip
