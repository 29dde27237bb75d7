"""``fallocate(2)`` on an open file, with what the client library can do.

What it owns: the meaning of each mode, as ext4 gives it, in terms of the inode's
``write`` and ``truncate``. What it must not do: hold state (the inode does) or decide
metadata (the metaserver does).

MODES (``FALLOC_FL_*``, the flags Linux's FUSE passes on; anything else is
``Unsupported``, EOPNOTSUPP):

- ``0``: allocate ``[offset, offset + length)``; the size grows to ``offset + length`` if
  it was smaller. Bytes already there stay; the new range is a hole, which reads as zeros
  and takes no space on the chunkservers (a chunk exists only where something was
  written).
- ``KEEP_SIZE``: the same, without changing the size.
- ``PUNCH_HOLE | KEEP_SIZE``: bytes ``[offset, offset + length)`` that lie inside the
  file read as zeros afterwards; the size stays. (``PUNCH_HOLE`` alone is refused, as
  by every Linux file system.)
- ``ZERO_RANGE`` (``| KEEP_SIZE``): the range reads as zeros; without ``KEEP_SIZE`` the
  size grows to ``offset + length`` if it was smaller.

SPACE. ext4 sets blocks aside, so that a later write into the range cannot fail with
ENOSPC. dfs has no reservations: modes 0 and ``KEEP_SIZE`` check that the cluster has
the bytes the range adds past the end of the file free (the free space ``df`` shows) and
fail with ``NoSpace`` (ENOSPC) otherwise, which is what ``posix_fallocate`` callers test
for; another writer can still take that space later. ``st_blocks`` follows the size in
dfs (a hole a truncate or this mode left counts), so ``du`` shows the allocated range as
on ext4; but chunks punched out of the file (below) take no space, and when the file has
some (``OpenInode.punched``, from the attributes last seen), ``fs.allocate`` makes those
the range touches count again, as ext4 allocates a punched range again.

ZEROING (punch, zero range), in two steps. First ``fs.punch`` (the inode commits what it
holds, then the metaserver drops every chunk whose bytes inside the file all lie in the
range: ``metaserver/namespace/holes.py``): those chunks become holes, which read as zeros,
and their replicas are deleted as garbage, so a punched chunk takes no space. Then the
pieces of the range in chunks only partly inside it (at most one at each end) are
overwritten with zeros, as ordinary writes. ``st_blocks`` drops by the punched chunks'
bytes inside the file (``du`` shows it, as on ext4), and they count again when written
(metaserver/namespace/sparse.py). ``fs.punch`` is not sent when no chunk
starts inside the range (the range is then all zeros written) nor when the range lies
wholly past the end of the file.
ZERO_RANGE drops whole chunks the same way (their replicas are collected), but sends
``zero``: the range counts as allocated afterwards, punched chunks in it included, as
ext4 leaves a zeroed range allocated (unwritten extents), so ``du`` does not drop after
``fallocate -z``, there as here.
"""

from __future__ import annotations

from dfs.client.files import OpenInode
from dfs.client.records import StatFs
from dfs.wire.errors import Invalid, NoSpace, Unsupported

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# Zeros are written in pieces of this size (one immutable buffer, sent without a copy).
ZERO_PIECE_BYTES = 1 << 20
_ZEROS = bytes(ZERO_PIECE_BYTES)


async def fallocate(inode: OpenInode, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` of ``[offset, offset + length)`` on ``inode`` (see the module
    docstring for the modes)."""
    if offset < 0 or length <= 0:
        raise Invalid("fallocate: negative offset or empty range", offset=offset, length=length)
    end = offset + length
    keep_size = bool(mode & FALLOC_FL_KEEP_SIZE)
    if mode in (0, FALLOC_FL_KEEP_SIZE):
        await _check_space(inode, end - max(offset, inode.size))
        if inode.punched:  # the range may cover punched chunks: they take space again
            await inode.allocate(offset, length)
        if not keep_size and end > inode.size:
            await inode.truncate(end)  # a hole: reads as zeros, no chunk
        return
    if mode == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
        await _punch(inode, offset, end, zero=False)
        return
    if mode & ~FALLOC_FL_KEEP_SIZE == FALLOC_FL_ZERO_RANGE:
        size = inode.size
        await _punch(inode, offset, end, zero=True)
        if not keep_size and end > size:
            await inode.truncate(end)
        return
    raise Unsupported("fallocate mode not supported", mode=mode)


async def _check_space(inode: OpenInode, added: int) -> None:
    if added <= 0:
        return
    statfs = StatFs.from_wire(await inode.io.meta.read("fs.statfs"))
    if added > statfs.bytes_free:
        raise NoSpace("fallocate: not that much space free", bytes=added, free=statfs.bytes_free)


async def _punch(inode: OpenInode, offset: int, end: int, *, zero: bool) -> None:
    """``[offset, end)`` reads as zeros where it lies inside the file (ZEROING above);
    ``zero``: it counts as allocated afterwards (ZERO_RANGE), else as punched."""
    end = min(end, inode.size)
    if end <= offset:
        return  # wholly past the end of the file: nothing to zero
    chunk_size = inode.io.chunk_size
    if -(-offset // chunk_size) * chunk_size >= end:
        # No chunk starts inside the range, so none lies wholly in it: only zeros to write.
        await _zero(inode, offset, end)
        return
    first, stop = await inode.punch(offset, end - offset, zero=zero)
    if stop <= first:
        await _zero(inode, offset, end)
        return
    await _zero(inode, offset, min(end, first * chunk_size))
    await _zero(inode, max(offset, stop * chunk_size), end)


async def _zero(inode: OpenInode, start: int, end: int) -> None:
    """Zeros over ``[start, end)`` (nothing when ``end <= start``)."""
    pos = start
    while pos < end:
        n = min(end - pos, ZERO_PIECE_BYTES)
        await inode.write(pos, _ZEROS if n == ZERO_PIECE_BYTES else _ZEROS[:n])
        pos += n


__all__ = ["FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE", "FALLOC_FL_ZERO_RANGE", "fallocate"]
