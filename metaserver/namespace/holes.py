"""Holes punched in a regular file: the ``punch`` and ``allocate`` commands (``fs.punch``,
``fs.allocate``). Pure.

What it owns: which chunks a punched byte range frees, the op that drops them, and the
op that gives a punched range its space back (``allocate``). What it must not do: touch
the bytes of the chunks the range only partly covers (the client zeros those with
ordinary writes, ``dfs/client/allocate.py``), change the size, or keep the punched spans
itself (sparse.py holds them, ``State.set_holes`` changes them).

WHICH CHUNKS. ``fallocate(PUNCH_HOLE)`` (and ``ZERO_RANGE``) of ``[offset, offset +
length)`` makes the range read as zeros; a missing chunk reads as zeros (a hole, as after
a truncate that grew the file), so every chunk whose bytes *inside the file* all lie in
the range can simply leave the file: chunk ``i`` when ``offset <= i * chunk_size`` and
``min((i + 1) * chunk_size, size) <= offset + length``, for ``i * chunk_size < size``. So
the chunk holding the end of the file goes too when the range reaches the end, and a
chunk wholly past the size (an upload not committed yet) is never touched. The answer's
``[first, stop)`` is that span of chunk indexes (empty when ``stop <= first``): the
client zeros the rest of the range inside the file itself, after this command.

SPACE. The span ``[first, stop)`` is remembered as punched (sparse.py), whether a chunk
was there or not: the file's ``st_blocks`` and its physical bytes in the recursive
statistics drop by the span's bytes inside the file, as ext4's do, and come back when a
chunk is written there again, when ``allocate`` (``fallocate`` mode 0 or ``KEEP_SIZE``,
below) covers it, or go with the span when a truncate cuts it away.

``allocate`` (``fs.allocate``): the punched chunks ``[offset, offset + length)`` touches
count as allocated again: ext4's ``fallocate`` gives a punched range its blocks back. Only
the accounting changes (dfs reserves nothing: dfs/client/allocate.py, SPACE); no chunk is
made, the range still reads as zeros, the size and times stay.

``ZERO_RANGE`` is a punch with ``zero``: its chunks are dropped all the same (zeros need
no replica), but the range counts as allocated afterwards, as ``allocate`` leaves it:
ext4 keeps a zeroed range allocated (unwritten extents) and even allocates the holes in
it, so ``du`` does not drop after ``fallocate -z``.

What the dropped chunks become is what a truncate's do: ``garbage``, whose replicas the
leader deletes after its grace time (``metaserver/repair.py``); a writer still holding a
handle of one gets ``Stale`` at its commit, as after a truncate. The size, and with it the
recursive statistics' ``bytes`` (``rstats.py``) and the trash's bytes, stay as they are
(the physical bytes drop: SPACE); mtime and ctime move, as ext4's punch moves them. The file may be in the trash or an orphan (a
client still has it open): its chunks go all the same.
"""

from __future__ import annotations

from typing import Any

from dfs.wire.limits import INT63_MAX
from metaserver.namespace import sparse
from metaserver.namespace.commands import arg_bool, arg_ino, arg_int, arg_size, check_fields
from metaserver.namespace.state import Inode, State, attr

Result = dict[str, Any]


def whole_chunks(offset: int, end: int, size: int, chunk_size_bytes: int) -> tuple[int, int]:
    """``(first, stop)``: the chunk indexes whose bytes inside a file of ``size`` bytes
    all lie in ``[offset, end)`` (see WHICH CHUNKS); ``stop <= first`` when none do."""
    first = -(-offset // chunk_size_bytes)
    # Up to the end of the file, the chunk holding the end goes too.
    stop = end // chunk_size_bytes if end < size else -(-size // chunk_size_bytes)
    return first, max(first, stop)


_PUNCH = frozenset({"ino", "offset", "length", "zero"})
_ALLOCATE = frozenset({"ino", "offset", "length"})


def punch(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Drop the chunks wholly inside ``[offset, offset + length)`` from file ``ino``; they
    count as punched (SPACE), or, with ``zero`` (``ZERO_RANGE``), the range counts as
    allocated.
    ``offset`` as a size (EFBIG past the largest file), ``length`` >= 1 (EINVAL, as
    fallocate(2) gives for an empty range); EISDIR/EINVAL on anything but a regular file."""
    check_fields(a, _PUNCH)
    ino = arg_ino(a, "ino")
    offset = arg_size(a, "offset")
    length = arg_int(a, "length", 1, INT63_MAX)
    zero = arg_bool(a, "zero", False)
    inode = st.regular(ino)
    # --- checked: change the state ---
    chunks = inode.chunks
    assert chunks is not None
    first, stop = whole_chunks(offset, offset + length, inode.size, st.chunk_size_bytes)
    if len(chunks) <= stop - first:  # walk the file's chunks or the span, the fewer
        dropped = sorted(i for i in chunks if first <= i < stop)
    else:
        dropped = [i for i in range(first, stop) if i in chunks]
    st.drop_chunks(inode, dropped)
    if zero:
        _fill(st, inode, offset, length)
    elif stop > first:
        st.set_holes(inode, sparse.add(inode.holes, first, stop))
    inode.mtime_ns = now_ns
    inode.ctime_ns = now_ns
    return {"ok": True, "attr": attr(inode), "first": first, "stop": stop,
            "dropped": len(dropped)}  # fmt: skip


def allocate(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """The punched chunks of file ``ino`` that ``[offset, offset + length)`` touches take
    space again (see SPACE). Arguments and refusals as ``punch``'s."""
    check_fields(a, _ALLOCATE)
    ino = arg_ino(a, "ino")
    offset = arg_size(a, "offset")
    length = arg_int(a, "length", 1, INT63_MAX)
    inode = st.regular(ino)
    # --- checked: change the state ---
    filled = _fill(st, inode, offset, length)
    return {"ok": True, "attr": attr(inode), "filled_bytes": filled}


def _fill(st: State, inode: Inode, offset: int, length: int) -> int:
    """The punched chunks ``[offset, offset + length)`` touches count as allocated
    again; returns the bytes of the file they cover."""
    chunk_size = st.chunk_size_bytes
    first, stop = offset // chunk_size, -(-(offset + length) // chunk_size)
    before = sparse.allocated_bytes(inode)
    if sparse.overlaps(inode.holes, first, stop):
        st.set_holes(inode, sparse.remove(inode.holes, first, stop))
    return sparse.allocated_bytes(inode) - before


HOLE_OPS = {"punch": punch, "allocate": allocate}

__all__ = ["HOLE_OPS", "allocate", "punch", "whole_chunks"]
