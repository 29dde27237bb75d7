"""Open-file handles: what ``FsClient.open`` returns, and each handle's read-ahead.

What it owns: a handle's access mode and O_APPEND, its sequential-read detection and the
blocks it prefetched. What it must not do: hold file data of its own beyond prefetched
blocks: writes and reads go through the inode's shared state (``files.OpenInode``), so all
handles on one inode in one client see the same bytes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import anyio

from dfs.client import allocate
from dfs.client.files import OpenInode
from dfs.client.records import Attr
from dfs.wire.errors import Corrupt, DfsError, InternalError, Invalid, IsDir, PermissionDenied

log = logging.getLogger(__name__)


class ReadAhead:
    """Sequential-read detection and prefetch for one handle.

    A read is sequential when it starts where the furthest read so far ended (or at 0), or
    ends where the last read began, or starts inside a block already prefetched: the kernel
    sends a sequential reader's requests concurrently (its own readahead and the reader's),
    and they may arrive out of order. A request behind the stream but within the window
    (a straggler) is read directly and leaves the stream as it is.
    The blocks a sequential read needs and the next ``window`` bytes of blocks are fetched
    concurrently, the window doubling per sequential read from two blocks up to
    ``readahead_max_bytes``. Any other read goes straight to the chunkservers and drops the
    prefetched blocks. Blocks more than one behind the reader, or fetched before a write to
    the inode (older ``generation``), are dropped. A block some read is waiting for is never
    cancelled (only forgotten): a concurrent read behind this one still gets its bytes.
    """

    class _Block:
        __slots__ = ("data", "done", "error", "generation", "scope", "waiters")

        def __init__(self, generation: int) -> None:
            self.generation = generation
            self.done = anyio.Event()
            self.data = b""
            self.error: DfsError | None = None
            self.scope = anyio.CancelScope()
            self.waiters = 0

        def drop(self) -> None:
            if self.waiters == 0:
                self.scope.cancel()

    def __init__(self, inode: OpenInode) -> None:
        self.inode = inode
        options = inode.io.options
        self.block_bytes = options.readahead_block_bytes
        self.window_max_bytes = options.readahead_max_bytes
        self.next_offset = 0
        self.last_start = -1
        self.streak = 0
        self._blocks: dict[int, ReadAhead._Block] = {}

    def _sequential(self, start: int, end: int) -> bool:
        if start == self.next_offset or end == self.last_start:
            # Where the last read ended, or just before the last read: the kernel's first
            # two requests of a stream, swapped.
            return True
        blk = self._blocks.get(start // self.block_bytes)
        return blk is not None and blk.generation == self.inode.generation

    async def read(self, start: int, end: int) -> bytes | memoryview:
        inode = self.inode
        if self.window_max_bytes <= 0:
            return await inode.read(start, end)
        sequential = self._sequential(start, end)
        self.last_start = start
        if not sequential:
            if self.next_offset - self.window_max_bytes <= start < self.next_offset:
                # A straggler of this stream (the kernel's requests overtake each other),
                # behind the blocks kept: read it directly and leave the stream as it is.
                return await inode.read(start, end)
            self.next_offset = end
            self.streak = 0
            self.close()
            return await inode.read(start, end)
        self.next_offset = max(self.next_offset, end)
        self.streak += 1
        block = self.block_bytes
        first, last_needed = start // block, (end - 1) // block
        window = min(self.window_max_bytes, block << min(self.streak, 16))
        last_ahead = max(
            last_needed, min((self.next_offset - 1 + window) // block, (inode.size - 1) // block)
        )
        for index in [
            i for i, b in self._blocks.items() if i < first - 1 or b.generation != inode.generation
        ]:
            self._blocks.pop(index).drop()
        for index in range(first, last_ahead + 1):
            if index not in self._blocks:
                self._start(index)
        needed = [self._blocks[index] for index in range(first, last_needed + 1)]
        for blk in needed:
            blk.waiters += 1
        try:
            for blk in needed:
                await blk.done.wait()
        finally:
            for blk in needed:
                blk.waiters -= 1
        segments: list[memoryview] = []
        for index, blk in zip(range(first, last_needed + 1), needed, strict=True):
            base = index * block
            if blk.error is not None:
                # The block's read already failed over and retried until its deadline.
                self.close()
                if isinstance(blk.error, Corrupt):
                    # A lost block of a salvaged chunk (``dfs admin fsck --salvage``) may
                    # be in the block but not in [start, end): read just these bytes.
                    return await inode.read(start, end)
                raise blk.error
            if blk.generation != inode.generation or len(blk.data) < min(end, base + block) - base:
                # Overtaken by a write or a truncate: read directly.
                self.close()
                return await inode.read(start, end)
            a, b = max(start, base) - base, min(end, base + block) - base
            segments.append(memoryview(blk.data)[a:b])
        if len(segments) == 1:
            return segments[0]  # a view of the block: no copy
        return b"".join(segments)

    def _start(self, index: int) -> None:
        inode = self.inode
        blk = ReadAhead._Block(inode.generation)
        self._blocks[index] = blk
        start = index * self.block_bytes
        end = min(start + self.block_bytes, inode.size)
        inode.io.task_group.start_soon(
            self._fetch, blk, start, end, name=f"read-ahead ino {inode.ino}"
        )

    async def _fetch(self, blk: ReadAhead._Block, start: int, end: int) -> None:
        try:
            with blk.scope:
                try:
                    blk.data = await self.inode.read(start, end)
                except DfsError as e:
                    blk.error = e
                except Exception:
                    log.exception("ino %d: read-ahead failed", self.inode.ino)
                    blk.error = InternalError("read-ahead failed")
        finally:
            blk.done.set()

    def close(self) -> None:
        """Drop (and stop fetching, unless a read waits for it) every prefetched block."""
        blocks, self._blocks = self._blocks, {}
        for blk in blocks.values():
            blk.drop()


class File:
    """An open file: what ``FsClient.open`` returns. Reads, writes and truncates go through
    the inode's shared state; ``close`` puts everything on every replica and commits it,
    ``fsync`` makes it durable (files.py, CLOSE AND FSYNC).

    Methods: ``read(offset, size)``, ``write(offset, data)``, ``truncate(size)``,
    ``fallocate(mode, offset, length)``, ``flush()``, ``fsync()``, ``close()``; ``async
    with`` closes it.
    """

    def __init__(self, inode: OpenInode, flags: int, release: Callable[[OpenInode], None]) -> None:
        self.inode = inode
        self.ino = inode.ino
        self.flags = flags
        access = flags & os.O_ACCMODE
        self.readable = access in (os.O_RDONLY, os.O_RDWR)
        self.writable = access in (os.O_WRONLY, os.O_RDWR)
        self.append = bool(flags & os.O_APPEND)
        self._release = release
        self._readahead = ReadAhead(inode)
        self.closed = False
        if self.writable:
            inode.writers += 1

    def _check(self, *, write: bool) -> None:
        if self.closed:
            raise Invalid("file is closed")
        if write and not self.writable:
            raise PermissionDenied("file is not open for writing")
        if not write and not self.readable:
            raise PermissionDenied("file is not open for reading")

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; shorter (or empty) at the end of the file."""
        data = await self.read_buffer(offset, size)
        return data if isinstance(data, bytes) else bytes(data)

    async def read_buffer(self, offset: int, size: int) -> bytes | memoryview:
        """``read``, but the bytes may come as a read-only view of a prefetched block
        (no copy: the FUSE mount hands it to the kernel as it is)."""
        self._check(write=False)
        if offset < 0 or size < 0:
            raise Invalid("negative offset or size")
        end = min(offset + size, self.inode.size)
        if end <= offset:
            return b""
        return await self._readahead.read(offset, end)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Buffer ``data`` at ``offset`` (at the end with O_APPEND); returns its length.
        Raises the error of an earlier background upload, if one failed."""
        self._check(write=True)
        if self.append:
            return await self.inode.append(data)
        return await self.inode.write(offset, data)

    async def truncate(self, size: int) -> Attr:
        self._check(write=True)
        return await self.inode.truncate(size)

    async def fallocate(self, mode: int, offset: int, length: int) -> None:
        """``fallocate(2)``: ``mode`` 0 or ``FALLOC_FL_*`` flags (``allocate.py`` says
        what each means in dfs); an unsupported mode raises ``Unsupported``."""
        self._check(write=True)
        await allocate.fallocate(self.inode, mode, offset, length)

    async def flush(self, *, behind: bool = False) -> None:
        """Everything written so far on every replica (in its page cache) and committed
        (close-to-open: another client's ``open`` after this sees it); durable too under
        ``sync_on_close``. ``behind``: this is a mount's ``close(2)``, which FUSE's
        release follows without the caller waiting: a small new file may leave it all
        to later (files.py, CLOSE BEHIND)."""
        if self.closed:
            raise Invalid("file is closed")
        inode = self.inode
        io = inode.io
        if behind and io.close_behind is not None and io.close_behind(inode):
            return
        await inode.flush(sync=io.options.sync_on_close)

    async def fsync(self, datasync: bool = False) -> None:
        """Everything written so far durable on every replica, and committed. (The
        commit also carries the mtime: fdatasync costs the same, as the length must be
        committed anyway.)"""
        if self.closed:
            raise Invalid("file is closed")
        land = self.inode.io.land_commits
        if land is not None:
            # The file's create or an earlier close's commit, if queued: first, so that
            # one that failed is the error reported (not the commit that follows it).
            await land(self.ino)
        await self.inode.flush(sync=True)
        if land is not None:
            await land(self.ino)

    async def close(self) -> None:
        """``flush`` then release the handle (the handle is released even if the flush
        fails, and the flush's error is raised). Changes the flush could not commit stay
        with the inode, which the client keeps and commits in the background (a new open
        joins them): see ``FsClient._release``."""
        if self.closed:
            return
        self.closed = True
        self._readahead.close()
        if self.writable:
            # From here on, attribute changes are sent at once: this close commits only
            # those made before it.
            self.inode.writers -= 1
        inode = self.inode
        try:
            if self.writable:
                await inode.flush(sync=inode.io.options.sync_on_close)
        except DfsError as e:
            if inode.behind and inode.io.behind_failed is not None:
                inode.io.behind_failed(inode, e)  # nobody else hears of it (CLOSE BEHIND)
            raise
        finally:
            self._release(inode)

    async def __aenter__(self) -> File:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def check_open_flags(attr: Attr, flags: int) -> None:
    """Refuse opens a local file system refuses: writing a directory."""
    if attr.is_dir and flags & os.O_ACCMODE != os.O_RDONLY:
        raise IsDir("is a directory", ino=attr.ino)


__all__ = ["File", "ReadAhead", "check_open_flags"]
