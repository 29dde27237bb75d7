"""Small writes nobody waits for, several to one replica set in one ``chunk.write_many``.

What it owns: WRITE MANY's client side (``chunkserver/writes.py`` has the server's). The
writes a release makes for the small files a close left behind (CLOSE BEHIND in
``files.py``) go to the same few replica sets one after another. GROUP COMMIT, per replica
set: a write that finds no request of its set in flight goes at once, alone, as a plain
``chunk.write``; the writes that come while one is in flight wait for it, then go together,
at most ``WRITE_MANY_ITEMS_MAX`` and ``WRITE_MANY_BYTES_MAX`` at a time, along the chain of
the first of them (every write of the set names the same replicas; the order of a chain
only spreads the first hop's load). So an idle mount sends as before, and a busy one sends
one request where it sent several, each chunkserver handling one request and forwarding
one. Each writer is told what a ``chunk.write`` of its bytes alone would have told it: done,
or its own error (``files.py`` retries as it always did).

What it must not do: decide what is written or retry (``files.py`` does); hold a write
back when nothing is in flight.

Cancellation: a writer cancelled while it waits leaves the queue; one cancelled while it
sends a request for others too is cancelled once that request has ended (it is shielded,
and bounded by the I/O timeout), so the others are told what the chunkservers answered,
never a failure of a replica that did nothing wrong.

Mixed versions: when a chunkserver of the chain does not know ``chunk.write_many``
(``Unsupported``: one not yet upgraded, first in the chain or further down), the writes it
refused go again one by one as ``chunk.write``.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from dfs.client.pool import ConnectionPool, server_timeout_ms
from dfs.client.records import WriteHandle
from dfs.wire.errors import Busy, DfsError, Unsupported, errors_from_wire
from dfs.wire.limits import WRITE_MANY_BYTES_MAX, WRITE_MANY_ITEM_BYTES_MAX, WRITE_MANY_ITEMS_MAX

log = logging.getLogger(__name__)

_PENDING: Any = object()
# ``ChunkIo.along_chain``: (handle, offset, data, expect_length=) -> None
Alone = Callable[..., Awaitable[None]]


class _Write:
    __slots__ = ("data", "error", "handle", "item", "offset")

    def __init__(self, handle: WriteHandle, offset: int, item: dict[str, Any], data: bytes) -> None:
        self.handle = handle
        self.offset = offset
        self.item = item  # the write's fields in a chunk.write_many
        self.data = data
        self.error: DfsError | None = _PENDING


class _Set:
    """One replica set's queue (GROUP COMMIT)."""

    __slots__ = ("busy", "queue", "turn")

    def __init__(self) -> None:
        self.queue: deque[_Write] = deque()
        self.busy = False  # a request of this set is in flight
        self.turn = anyio.Event()  # set when it ends


class WriteMany:
    """Group commit of small, unsynced chunk writes per replica set."""

    def __init__(self, pool: ConnectionPool, *, io_timeout_s: float, alone: Alone) -> None:
        self._pool = pool
        self.io_timeout_s = io_timeout_s
        self._alone = alone  # a write as a chunk.write of its own (ChunkIo.along_chain)
        self._sets: dict[tuple[str, ...], _Set] = {}
        self.requests = 0  # chunk.write_many requests sent (for tests and the stats)

    @staticmethod
    def takes(data: bytes | memoryview) -> bool:
        """Whether a write of ``data`` may go in a batch."""
        return len(data) <= WRITE_MANY_ITEM_BYTES_MAX

    async def write(
        self,
        handle: WriteHandle,
        offset: int,
        data: bytes | memoryview,
        *,
        expect_length: int | None = None,
    ) -> None:
        """Write ``data`` at ``offset`` of the chunk on every replica of ``handle``'s chain,
        unsynced; done when every replica has it. Raises what a ``chunk.write`` of it alone
        would have raised."""
        item: dict[str, Any] = {
            "chunk_id": handle.chunk_id,
            "version": handle.version,
            "length": handle.length,
            "offset": offset,
            "size": len(data),
            "token": handle.token,
            "expiry_ms": handle.expiry_ms,
        }
        if expect_length is not None:
            item["expect_length"] = expect_length
        key = tuple(sorted(r.address for r in handle.chain))
        group = self._sets.get(key)
        if group is None:
            group = self._sets[key] = _Set()
        w = _Write(handle, offset, item, bytes(data))
        group.queue.append(w)
        try:
            while w.error is _PENDING:
                if group.busy:
                    await group.turn.wait()
                    continue
                group.busy = True
                try:
                    await self._send(self._take(group.queue))
                finally:
                    group.busy = False
                    turn, group.turn = group.turn, anyio.Event()
                    turn.set()
                    if not group.queue and self._sets.get(key) is group:
                        del self._sets[key]
        except BaseException:
            if w.error is _PENDING and w in group.queue:
                group.queue.remove(w)
            raise
        if w.error is not None:
            raise w.error

    @staticmethod
    def _take(queue: deque[_Write]) -> list[_Write]:
        """The writes of the next request: from the front of ``queue``, within the limits."""
        batch = [queue.popleft()]
        size = len(batch[0].data)
        while queue and len(batch) < WRITE_MANY_ITEMS_MAX:
            size += len(queue[0].data)
            if size > WRITE_MANY_BYTES_MAX:
                break
            batch.append(queue.popleft())
        return batch

    async def _send(self, batch: list[_Write]) -> None:
        """One request for ``batch`` (shielded: see Cancellation above); every write's
        outcome set, whatever happens."""
        with anyio.CancelScope(shield=True):
            try:
                if len(batch) == 1:
                    errors = [await self._one(batch[0])]
                else:
                    errors = await self._many(batch)
            except BaseException as e:
                # A bug, not an answer: the writers try again, blaming no replica.
                for w in batch:
                    w.error = Busy(f"a write sent with others failed here: {e!r}")
                raise
        for w, error in zip(batch, errors, strict=True):
            w.error = error

    async def _many(self, batch: list[_Write]) -> list[DfsError | None]:
        chain = batch[0].handle.chain
        self.requests += 1
        try:
            reply, _ = await self._pool.call(
                chain[0].address, "chunk.write_many", b"".join(w.data for w in batch),
                timeout_s=self.io_timeout_s, chain=[r.address for r in chain[1:]],
                timeout_ms=server_timeout_ms(self.io_timeout_s), writes=[w.item for w in batch],
            )  # fmt: skip
        except Unsupported:
            log.info("%s does not know chunk.write_many: writes one by one", chain[0].address)
            return [await self._one(w) for w in batch]
        except DfsError as e:
            e.details.setdefault("address", chain[0].address)
            return [e, *(copy.copy(e) for _ in batch[1:])]
        errors = errors_from_wire(reply.get("errors"), len(batch))
        for i, error in enumerate(errors):
            if isinstance(error, Unsupported):  # a later replica does not know the op
                errors[i] = await self._one(batch[i])
        return errors

    async def _one(self, w: _Write) -> DfsError | None:
        """``w`` as a ``chunk.write`` of its own; its error, or None."""
        try:
            await self._alone(w.handle, w.offset, w.data, expect_length=w.item.get("expect_length"))
        except DfsError as e:
            e.details.setdefault("address", w.handle.chain[0].address)
            return e
        return None


__all__ = ["WriteMany"]
