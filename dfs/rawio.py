"""Reading a file range whole: what the chunk store (``chunkserver/rawio.py``) and the
client's short-circuit reads (``dfs/client/localread.py``) both need of a replica file.

What it owns: one ``pread`` loop (the kernel may return less than asked). What it must not
do: know the replica format or decide what an error means.
"""

from __future__ import annotations

import os


def pread_into(fd: int, buf: memoryview, pos: int, flags: int = 0) -> int:
    """Fill ``buf`` from ``pos``; returns the bytes read (fewer only at end of file).
    With ``os.RWF_NOWAIT`` in ``flags``, ``BlockingIOError`` when a byte is not in the page
    cache."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], pos + got, flags)
        if n == 0:
            break
        got += n
    return got


__all__ = ["pread_into"]
