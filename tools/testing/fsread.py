"""Reading a whole file through ``FsClient`` as ``cat`` does, for tests and test tools."""

from __future__ import annotations

import os

from dfs.client import FsClient

READ_PIECE_BYTES = 4 << 20


async def read_to_eof(fs: FsClient, parent: int, name: bytes) -> bytes:
    """Look ``name`` up in ``parent`` and read it to EOF (the size seen at lookup may be
    older than the open)."""
    attr = await fs.lookup(parent, name)
    f = await fs.open(attr.ino, os.O_RDONLY)
    out = bytearray()
    try:
        while piece := await f.read(len(out), READ_PIECE_BYTES):
            out += piece
    finally:
        await f.close()
    return bytes(out)
