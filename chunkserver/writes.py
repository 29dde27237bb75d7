"""A chunkserver's writes: ``chunk.write`` and ``chunk.write_many`` (docs/PROTOCOL.md),
checked, applied to the store in arrival order per chunk, and sent down the chain.

What it owns: the order of one chunk's writes on this server (FIFO PER CHUNK below), which
writes run on the event loop and which in the disk pool, and how a ``chunk.write_many``'s
writes fail one by one. What it must not do: touch chunk files (the store does), or know
how the chain is reached (the server forwards: ``ChunkServer.forward``).

FIFO PER CHUNK. Writes of one chunk take their first step here in arrival order; one that
finds another write of its chunk still running goes behind it (the disk pool's chunk
lock), never past it on the event loop. So a small write runs on the loop
(``AsyncChunkStore.write_now``) only when no write of its chunk is running.

WRITE MANY. A mount leaves a small file's bytes to its release (CLOSE BEHIND in
``dfs/client/files.py``), and the writes of many such files go to the same replicas, one
after another. ``chunk.write_many`` carries several of them along one chain in one request
each hop: each write is checked and applied as a ``chunk.write`` of it alone would be (its
own token, version rules and limits; never synced), and fails alone: the answer lists, in
order, the error each write would have had, the nearer replica's when both this one and a
later one failed. The batch as a whole goes down the chain whatever failed here, so a
write refused here may still land on later replicas (a lone ``chunk.write`` refused here
is not forwarded): harmless, as its writer asks for a new handle, which bumps the version,
and writes again. At most a single write's worth of a batch (``INLINE_WRITE_BYTES_MAX``)
is written on the event loop; the rest goes to the disk pool.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chunkserver.disk import INLINE_WRITE_BYTES_MAX
from dfs import rpc
from dfs.wire.errors import DfsError, Invalid, TooBig, errors_from_wire, errors_to_wire
from dfs.wire.limits import CHUNK_BYTES_MAX, WRITE_MANY_BYTES_MAX
from dfs.wire.token import WRITE

if TYPE_CHECKING:
    from chunkserver.server import ChunkServer


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A write's checked fields."""

    chunk_id: int
    version: int
    length: int
    offset: int
    sync: bool
    expect_length: int | None


class Writes:
    """The write path of one ``ChunkServer`` (it owns the store, tokens and peers)."""

    def __init__(self, server: ChunkServer) -> None:
        self._server = server
        # Writes of each chunk id running in tasks here (FIFO PER CHUNK).
        self._running: dict[int, int] = {}

    def request(
        self, h: dict[str, Any], size: int, client: str, *, item: bool = False
    ) -> WriteRequest:
        """A write's fields (checked at the edge), its token and what its definition cannot
        say checked here. ``h``: a ``chunk.write``'s header or (``item``) a
        ``chunk.write_many``'s write, never synced; ``size``: its bytes; ``client``: whom
        the token must name."""
        chunk_id: int = h["chunk_id"]
        version: int = h["version"]
        self._server.check_token(h["token"], h["expiry_ms"], client, chunk_id, version, WRITE)
        offset: int = h["offset"]
        # A writer may send ``size``; then it must match the payload.
        if h.get("size", size) != size:
            raise Invalid("payload length differs from size", size=size)
        if offset + size > CHUNK_BYTES_MAX:
            raise TooBig("write past the maximum chunk size", limit=CHUNK_BYTES_MAX)
        return WriteRequest(
            chunk_id, version, h["length"], offset,
            not item and h.get("sync", False) is True, h.get("expect_length"),
        )  # fmt: skip

    def now(self, w: WriteRequest, data: bytes | memoryview) -> bool:
        """The write on the event loop (``AsyncChunkStore.write_now``), if it can be: no
        write of its chunk running here, not synced, small. False when it must go to the
        disk pool (``later``)."""
        if w.sync or w.chunk_id in self._running:
            return False
        try:
            done = self._server.store_now().write_now(
                w.chunk_id, w.version, w.length, w.offset, data, expect_length=w.expect_length
            )
        except DfsError as e:
            e.details.setdefault("address", self._server.address)
            raise
        return done is not None

    def later(
        self, w: WriteRequest, data: bytes | memoryview, deadline: float
    ) -> asyncio.Task[None]:
        """The write in the disk pool, behind the chunk's writes already running here
        (FIFO PER CHUNK): counted as running from this call, before any await, until its
        task ends, however it ends (cancelled before its first step too)."""
        chunk_id = w.chunk_id
        self._running[chunk_id] = self._running.get(chunk_id, 0) + 1

        async def run() -> None:
            store = self._server.store_now()
            await self._server.local(
                store.write(
                    chunk_id, w.version, w.length, w.offset, data,
                    sync=w.sync, expect_length=w.expect_length,
                ),
                deadline,
                "chunk.write",
            )  # fmt: skip

        task = asyncio.ensure_future(run())

        def ended(_: asyncio.Task[None]) -> None:
            left = self._running[chunk_id] - 1
            if left:
                self._running[chunk_id] = left
            else:
                del self._running[chunk_id]

        task.add_done_callback(ended)
        return task

    async def write(self, h: dict[str, Any], payload: bytes, timeout_s: float) -> None:
        """``chunk.write``: here and down the chain at once; done when both are."""
        client = h.get("client_name", "")
        w = self.request(h, len(payload), client)
        chain = self._server.chain_of(h)
        deadline = asyncio.get_running_loop().time() + timeout_s
        fields = {
            "chunk_id": w.chunk_id, "version": w.version, "length": w.length,
            "offset": w.offset, "token": h["token"], "expiry_ms": h["expiry_ms"],
            "sync": w.sync, "client_name": client,
        }  # fmt: skip
        if w.expect_length is not None:
            fields["expect_length"] = w.expect_length
        if self.now(w, payload):
            # Done here (a small write, in the page cache): only the chain is left.
            if chain:
                await self._server.forward(chain, "chunk.write", payload, deadline, fields)
            return
        await self._server.with_chain(
            self.later(w, payload, deadline), chain, "chunk.write", payload, deadline, fields
        )

    async def write_many(
        self, h: dict[str, Any], payload: bytes, timeout_s: float
    ) -> rpc.HandlerResult:
        """``chunk.write_many`` (WRITE MANY above)."""
        items: list[dict[str, Any]] = h["writes"]
        sizes = [item["size"] for item in items]
        total = sum(sizes)
        if total != len(payload):
            raise Invalid("payload length differs from the writes' sizes", size=len(payload))
        if total > WRITE_MANY_BYTES_MAX:
            raise TooBig("chunk.write_many over its bytes", limit=WRITE_MANY_BYTES_MAX)
        client = h.get("client_name", "")
        chain = self._server.chain_of(h)
        deadline = asyncio.get_running_loop().time() + timeout_s
        errors: list[DfsError | None] = [None] * len(items)
        slow: list[Awaitable[None]] = []
        view = memoryview(payload)
        start = 0
        on_loop = 0  # bytes written on the event loop: at most a single write's
        for i, (item, size) in enumerate(zip(items, sizes, strict=True)):
            data = view[start : start + size]
            start += size
            try:
                w = self.request(item, size, client, item=True)
                if on_loop + size <= INLINE_WRITE_BYTES_MAX and self.now(w, data):
                    on_loop += size
                    continue
                # Counted as running now, before the next item looks (FIFO PER CHUNK).
                slow.append(self._one_later(self.later(w, data, deadline), errors, i))
            except DfsError as e:
                e.details.setdefault("address", self._server.address)
                errors[i] = e
        if chain:
            slow.append(self._forward(chain, items, payload, deadline, client, errors))
        if slow:
            await asyncio.gather(*slow)
        wire = errors_to_wire(errors)
        return None if wire is None else ({"errors": wire}, b"")

    async def _one_later(
        self, write: Awaitable[None], errors: list[DfsError | None], i: int
    ) -> None:
        try:
            await write
        except DfsError as e:
            e.details.setdefault("address", self._server.address)
            errors[i] = e

    async def _forward(
        self,
        chain: list[str],
        items: list[dict[str, Any]],
        payload: bytes,
        deadline: float,
        client: str,
        errors: list[DfsError | None],
    ) -> None:
        """The whole batch to the next replica; its errors where this replica had none
        (the nearer replica's error wins)."""
        try:
            reply = await self._server.forward(
                chain, "chunk.write_many", payload, deadline,
                {"writes": items, "client_name": client},
            )  # fmt: skip
            later = errors_from_wire(reply.get("errors"), len(items))
        except DfsError as e:
            later = [e] * len(items)
        for i, error in enumerate(later):
            if error is not None and errors[i] is None:
                errors[i] = copy.copy(error)


__all__ = ["WriteRequest", "Writes"]
