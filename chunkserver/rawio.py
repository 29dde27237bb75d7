"""The system calls the chunk store makes on a replica file's descriptor, whole.

What it owns: writing a range completely (``pwrite_all``: the kernel may do less than
asked; reading one whole is ``dfs/rawio.py``'s ``pread_into``, shared with the client's
short-circuit reads), reading and writing past the page cache (``pread_direct`` and
``pwrite_direct``, for a descriptor opened with ``O_DIRECT``), dropping a range's clean pages from the page cache, starting a
range's writeback without waiting (``sync_file_range``, which Python's ``os`` lacks), and
writing a range back then dropping its pages (``write_back_and_drop``). What it must not
do: know the replica format or decide what an error means (``store.py`` maps errors onto
``dfs.wire.errors``).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections.abc import Callable, Iterable

from dfs.rawio import pread_into


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WAIT_BEFORE = 1  # wait for the range's writeback already under way
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages; do not wait
_SYNC_FILE_RANGE_WAIT_AFTER = 4  # wait for the range's writeback to end


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Hand the dirty pages of the file range to the disk now, without waiting for them
    (a hint: nothing happens where ``sync_file_range`` is missing, and its result, which
    durability does not depend on, is ignored)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def write_back_and_drop(fd: int, offset: int, length: int) -> None:
    """Write the range's dirty pages back, wait for them, and drop its pages from the page
    cache: the write is then on the disk (not durable: no cache flush, no metadata; an
    fdatasync still decides that) and takes no memory. Raises ``OSError`` when the
    writeback failed: the error is the file's, and the next fdatasync must fail for it
    (the caller remembers it: the kernel reports a writeback error to each descriptor
    once). Nothing happens where ``sync_file_range`` is missing."""
    if _sync_file_range is None:
        return
    flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
    if _sync_file_range(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def drop_cached(fd: int, ranges: Iterable[tuple[int, int]]) -> None:
    """Drop the clean pages of ``(offset, length)`` ranges from the page cache."""
    for offset, length in ranges:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


# O_DIRECT's alignment of offsets, lengths and buffers: the page, a multiple of every
# logical block size Linux file systems use.
DIRECT_ALIGN_BYTES = 4096


def pread_direct(fd: int, buf: memoryview, pos: int) -> int:
    """``pread_into`` for a descriptor opened with ``O_DIRECT``: the range, rounded out to
    ``DIRECT_ALIGN_BYTES``, is read into a page-aligned buffer (an anonymous mapping) and
    copied into ``buf``. Returns the bytes of ``buf`` filled (fewer only at end of file)."""
    lo = pos - pos % DIRECT_ALIGN_BYTES
    hi = -(-(pos + len(buf)) // DIRECT_ALIGN_BYTES) * DIRECT_ALIGN_BYTES
    with mmap.mmap(-1, hi - lo) as bounce:
        view = memoryview(bounce)
        try:
            got = pread_into(fd, view, lo)
            n = max(0, min(got - (pos - lo), len(buf)))
            buf[:n] = view[pos - lo : pos - lo + n]
        finally:
            view.release()
    return n


# A direct write goes through a page-aligned buffer of this size per thread (the bytes a
# request hands over sit wherever the frame decoder put them): the largest piece one
# pwrite sends to the disk. The copy into it holds the GIL (~0.3 ms a MiB here), the
# pwrite does not: a small piece lets the event loop run between the two.
DIRECT_PIECE_BYTES = 1024 * 1024
_bounce = threading.local()


def pwrite_direct(fd: int, data: memoryview, pos: int) -> None:
    """``pwrite_all`` for a descriptor opened with ``O_DIRECT``: ``pos`` and ``len(data)``
    are multiples of ``DIRECT_ALIGN_BYTES``. The bytes are copied into this thread's
    page-aligned buffer (an anonymous mapping, kept for the thread's next writes) and
    written from there, a piece of at most ``DIRECT_PIECE_BYTES`` at a time."""
    assert pos % DIRECT_ALIGN_BYTES == 0 and len(data) % DIRECT_ALIGN_BYTES == 0
    bounce: memoryview | None = getattr(_bounce, "view", None)
    if bounce is None:
        bounce = _bounce.view = memoryview(mmap.mmap(-1, DIRECT_PIECE_BYTES))
    done = 0
    while done < len(data):
        n = min(DIRECT_PIECE_BYTES, len(data) - done)
        bounce[:n] = data[done : done + n]
        pwrite_all(fd, bounce[:n], pos + done)
        done += n


def pwrite_all(fd: int, data: memoryview | bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


__all__ = [
    "DIRECT_ALIGN_BYTES",
    "drop_cached",
    "pread_direct",
    "pwrite_all",
    "pwrite_direct",
    "start_writeback",
    "write_back_and_drop",
]
