"""``Attr.punched_blocks`` / ``Attr.blocks_at`` (dfs/client/records.py): the blocks a
client shows for a size it changed itself (a commit queued under a directory lease) keep
the metaserver's punched chunks out, as the namespace counts them (sparse.py). Pure."""

from __future__ import annotations

import pytest

from dfs.client.records import Attr
from dfs.wire.limits import size_blocks

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def attr(mode: int, size: int, blocks: int) -> Attr:
    return Attr(ino=5, mode=mode, nlink=1, uid=0, gid=0, size=size, atime_ns=0, mtime_ns=0,
                ctime_ns=0, blocks=blocks)  # fmt: skip


def test_blocks_at_a_new_size_keep_the_punched_ones_out() -> None:
    assert size_blocks(0) == 0 and size_blocks(1) == 1 and size_blocks(1024) == 2
    full = attr(0o100644, 1 << 20, size_blocks(1 << 20))
    assert full.punched_blocks == 0 and full.blocks_at(2 << 20) == size_blocks(2 << 20)
    # 256 KiB of the 1 MiB punched: 512 blocks fewer, at any later size.
    holed = attr(0o100644, 1 << 20, size_blocks(1 << 20) - 512)
    assert holed.punched_blocks == 512
    assert holed.blocks_at(2 << 20) == size_blocks(2 << 20) - 512
    assert holed.blocks_at(0) == 0  # never negative
    # Directories and symlinks count their own way: nothing is punched in them.
    assert attr(0o040755, 4096, 8).punched_blocks == 0
    assert attr(0o120777, 10, 0).punched_blocks == 0
