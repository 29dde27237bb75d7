"""Chunk data calls: ``chunk.read`` with replica choice and failover, ``chunk.write`` and
``chunk.sync`` along a replication chain (docs/PROTOCOL.md, chunkserver operations).

What it owns: which replica to read from and what to do when one fails. What it must not
do: decide what a chunk holds (``files.py`` maps file offsets to chunks, zero-fills holes
and asks for handles); retry writes (a failed write needs a new handle from the metaserver,
which ``files.py`` asks for).

Replica choice (design.md §5): REGION AFFINITY. Every read of one region of a chunk
(``AFFINITY_BYTES``, the read-ahead's block) goes to the same replica, the first of the
replicas ranked by a hash of (chunk, region, address) (rendezvous hashing: the same in
every client, spread evenly over the replicas, and only the regions of a replica that
leaves the set move). So the bytes a region's reads need sit in one chunkserver's page
cache, not in three: before, each read went to a replica drawn at random, and after a
sequential read (which cached each block on one replica) two random reads in three went
to a replica that had to read the disk. Load still counts: a replica with
``BUSY_IN_FLIGHT_MARGIN`` or more of this client's calls in flight
(``ConnectionPool.in_flight``) beyond the least loaded one's goes after the others; a
chunkserver that failed to answer (``Unavailable``, ``Timeout``) within the last
``SUSPECT_S`` goes last, so that one dead or hung server costs one timeout, not one per
read. A replica that fails (``Unavailable``, ``Timeout``, ``Busy``,
``Corrupt``, ``Stale``, ``NotFound``, ``PermissionDenied``, ``InternalError``) is passed
over for the next; a checksum mismatch never reaches the caller as data (the chunkserver
answers ``Corrupt``, never the bytes). A replica whose answer is shorter than the bytes
the chunk table says exist (``expect``: the caller's ``min(size, length - offset)``) lost
data (a crash, a write it missed): it is passed over too, never zero-filled. When every
replica failed, the caller gets ``Stale`` if any replica said the location is outdated
(the caller asks ``fs.locate`` again), ``Corrupt`` if all were corrupt or short, else
``Unavailable``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio
import sniffio

from dfs.client.localread import LocalReads
from dfs.client.pool import ConnectionPool, server_timeout_ms
from dfs.client.records import ChunkLocation, Replica, WriteHandle
from dfs.client.writemany import WriteMany
from dfs.wire.errors import (
    Busy,
    Corrupt,
    DfsError,
    InternalError,
    NotFound,
    PermissionDenied,
    Stale,
    Timeout,
    Unavailable,
)
from dfs.wire.limits import READ_BYTES_MAX  # callers split larger ranges

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a chunkserver that did not answer is tried last: the metaserver's default dead
# timeout, after which it stops listing a dead server anyway.
SUSPECT_S = 10.0
# REGION AFFINITY (above): the region every read of which goes to one replica, the size of
# a read-ahead block (ClientOptions.readahead_block_bytes' default), so that a sequential
# read's blocks spread over the replicas and a later read of any part of a block finds it
# where it was read.
AFFINITY_BYTES = 4 * 1024 * 1024
# Calls in flight past the least loaded replica's that make a replica busy: a whole read-ahead
# window (32 MiB of 4 MiB blocks). Measured: with 4, a sequential read's bursts moved about a
# block in five off its ranked replica, and the random reads after it missed those.
BUSY_IN_FLIGHT_MARGIN = 8
# Rankings remembered (REGION AFFINITY): one per (chunk, region, replica set) read lately.
RANKS_MAX = 4096

_READ_FAILOVER = (
    Unavailable,
    Timeout,
    Busy,
    Corrupt,
    Stale,
    NotFound,
    PermissionDenied,
    InternalError,
)
_OUTDATED = (Stale, NotFound, PermissionDenied)


async def gather(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` concurrently; their results in order. The first exception (in call
    order) is raised once all have ended, not wrapped in an ``ExceptionGroup``."""
    if len(calls) == 1:
        return [await calls[0]()]
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    async def run(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as e:
            errors[i] = e

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(run, i)
    for error in errors:
        if error is not None:
            raise error
    return results


class ChunkIo:
    """Reads, writes and syncs of chunk data through the client's connection pool."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        io_timeout_s: float,
        fanout_bytes_max: int = 0,
        local: LocalReads | None = None,
    ) -> None:
        self._pool = pool
        self.local = local  # SHORT-CIRCUIT READS, or None
        self.io_timeout_s = io_timeout_s
        self.fanout_bytes_max = fanout_bytes_max  # ClientOptions.fanout_write_bytes_max
        self._suspect_until: dict[str, float] = {}  # address -> the event loop's time
        self._ranks: dict[tuple[int, int, tuple[Replica, ...]], tuple[Replica, ...]] = {}
        self._clock: Callable[[], float] | None = None
        self.many = WriteMany(pool, io_timeout_s=io_timeout_s, alone=self.along_chain)

    def _now(self) -> float:
        """The event loop's time, as ``anyio.current_time()`` (the callers' deadlines are
        on it) without asking which loop runs at every call."""
        clock = self._clock
        if clock is None:
            clock = anyio.current_time
            if sniffio.current_async_library() == "trio":
                import trio

                clock = trio.current_time
            self._clock = clock
        return clock()

    def order(self, replicas: tuple[Replica, ...], chunk_id: int, offset: int) -> list[Replica]:
        """Replicas to try for a read at ``offset`` of the chunk: answering ones first, then
        those not busy, each group in the region's rank order (REGION AFFINITY)."""
        key = (chunk_id, offset // AFFINITY_BYTES, replicas)
        ranked = self._ranks.get(key)
        if ranked is None:
            region = chunk_id * _MIX_A + key[1] * _MIX_B
            ranked = tuple(
                sorted(replicas, key=lambda r: _mix64(region + zlib.crc32(r.address.encode())))
            )
            if len(self._ranks) >= RANKS_MAX:
                self._ranks.clear()
            self._ranks[key] = ranked
        load = self._pool.in_flight
        suspect = self._suspect_until
        if not suspect and (not load or max(load.values()) < BUSY_IN_FLIGHT_MARGIN):
            return list(ranked)  # nobody suspect, nobody busy: the rank order as it is
        now = self._now()
        least = min(load.get(r.address, 0) for r in replicas)
        # A stable sort of the ranked replicas: within each group, the rank order stays.
        return sorted(
            ranked,
            key=lambda r: (
                suspect.get(r.address, 0.0) > now,
                load.get(r.address, 0) - least >= BUSY_IN_FLIGHT_MARGIN,
            ),
        )

    def _failed(self, address: str) -> None:
        self._suspect_until[address] = self._now() + SUSPECT_S

    def _answered(self, address: str) -> None:
        if self._suspect_until:
            self._suspect_until.pop(address, None)

    async def read(
        self,
        location: ChunkLocation,
        offset: int,
        size: int,
        *,
        expect: int = 0,
        deadline: float | None = None,
    ) -> bytes:
        """Up to ``size`` bytes at ``offset`` of the chunk (shorter at the replica's end),
        at least ``expect`` of them (a replica with fewer lost data: the next is tried).
        Each replica gets ``io_timeout_s``, cut short by ``deadline`` (monotonic)."""
        assert 0 < size <= READ_BYTES_MAX and 0 <= expect <= size, (size, expect)
        if not location.replicas:
            raise Unavailable("no live replica", chunk_id=location.chunk_id)
        order = self.order(location.replicas, location.chunk_id, offset)
        if self.local is not None:
            data, missed = await self._read_local(location, offset, size, expect)
            if data is not None:
                return data
            if missed is not None:
                # Its chunkserver reads it first: a bad replica is found and reported there.
                order.sort(key=lambda r: r != missed)
        errors: list[DfsError] = []
        for replica in order:
            timeout_s = self.io_timeout_s
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - self._now())
                if timeout_s <= 0:
                    errors.append(Timeout("deadline passed"))
                    break
            try:
                _, payload = await self._pool.call(
                    replica.address,
                    "chunk.read",
                    timeout_s=timeout_s,
                    chunk_id=location.chunk_id,
                    version=location.version,
                    offset=offset,
                    size=size,
                    token=location.token,
                    expiry_ms=location.expiry_ms,
                    timeout_ms=server_timeout_ms(timeout_s),
                )
            except _READ_FAILOVER as e:
                if isinstance(e, (Unavailable, Timeout)):
                    self._failed(replica.address)
                if isinstance(e, Corrupt):
                    # The chunkserver's scrubber and the metaserver repair it; we read on.
                    log.info(
                        "chunk %d: replica on %s is corrupt; reading another",
                        location.chunk_id,
                        replica.address,
                    )
                errors.append(e)
                continue
            self._answered(replica.address)
            if len(payload) < expect:
                # The table says these bytes exist: this replica lost them.
                log.info(
                    "chunk %d: replica on %s returned %d of %d bytes at %d; reading another",
                    location.chunk_id,
                    replica.address,
                    len(payload),
                    expect,
                    offset,
                )
                errors.append(
                    Corrupt(
                        "replica shorter than the chunk table's length",
                        chunk_id=location.chunk_id,
                        address=replica.address,
                    )
                )
                continue
            return payload
        if any(isinstance(e, _OUTDATED) for e in errors):
            raise Stale("location is outdated", chunk_id=location.chunk_id, errors=_texts(errors))
        if all(isinstance(e, Corrupt) for e in errors):
            raise Corrupt(
                "every replica is corrupt or short",
                chunk_id=location.chunk_id,
                errors=_texts(errors),
            )
        raise Unavailable("no replica answered", chunk_id=location.chunk_id, errors=_texts(errors))

    async def _read_local(
        self, location: ChunkLocation, offset: int, size: int, expect: int
    ) -> tuple[bytes | None, Replica | None]:
        """SHORT-CIRCUIT READS: the range from the file of a replica on this machine, or
        None and the local replica that did not read back as it should (its chunkserver is
        then asked first: it judges the replica, as for any read)."""
        local = self.local
        assert local is not None
        started = self._now()
        for replica in location.replicas:
            data_dir = local.data_dir(replica.address)
            if data_dir is None:
                continue  # not on this machine
            try:
                data = await local.read(data_dir, location.chunk_id, location.version, offset, size)
            except PermissionError:
                local.forget(replica.address)  # its files are not ours to read
                continue
            if data is not None and len(data) >= expect:
                self._pool.stats.record("local.read", self._now() - started)
                return data, None  # type: ignore[return-value]  # bytes-like, as a payload
            self._pool.stats.record("local.miss", self._now() - started)
            return None, replica
        return None, None

    async def write(
        self,
        handle: WriteHandle,
        offset: int,
        data: bytes | memoryview,
        *,
        sync: bool,
        expect_length: int | None = None,
        fan_out: bool = True,
    ) -> None:
        """Write ``data`` at ``offset`` of the chunk on every replica of the chain: sent to
        the first, which forwards along the rest; or, for a write of at most
        ``fanout_bytes_max`` when ``fan_out``, to every replica at once, each with an empty
        chain (FAN-OUT below). Not ``fan_out``: no caller waits for this write (a close
        behind, files.py), so the chain's latency costs nothing and the client sends once
        instead of once per replica, a small one with the others of its replica set that
        come meanwhile (``WriteMany``). With ``sync`` the replicas fsync first.
        ``expect_length``: the highest end acknowledged under this version (PROTOCOL.md).
        Done when every replica has it."""
        if not fan_out and not sync and self.many.takes(data):
            await self.many.write(handle, offset, data, expect_length=expect_length)
            return
        chain = handle.chain
        if fan_out and len(chain) > 1 and len(data) <= self.fanout_bytes_max:
            await self._fan_out(
                chain, data, self._write_fields(handle, offset, sync, expect_length)
            )
            return
        await self.along_chain(handle, offset, data, sync=sync, expect_length=expect_length)

    async def along_chain(
        self,
        handle: WriteHandle,
        offset: int,
        data: bytes | memoryview,
        *,
        sync: bool = False,
        expect_length: int | None = None,
    ) -> None:
        """One ``chunk.write`` to the chain's first replica, which forwards it."""
        chain = handle.chain
        await self._pool.call(
            chain[0].address,
            "chunk.write",
            data,
            timeout_s=self.io_timeout_s,
            chain=[r.address for r in chain[1:]],
            **self._write_fields(handle, offset, sync, expect_length),
        )

    def _write_fields(
        self, handle: WriteHandle, offset: int, sync: bool, expect_length: int | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "chunk_id": handle.chunk_id,
            "version": handle.version,
            "length": handle.length,
            "offset": offset,
            "token": handle.token,
            "expiry_ms": handle.expiry_ms,
            "sync": sync,
            "timeout_ms": server_timeout_ms(self.io_timeout_s),
        }
        if expect_length is not None:
            fields["expect_length"] = expect_length
        return fields

    async def _fan_out(
        self, chain: tuple[Replica, ...], data: bytes | memoryview, fields: dict[str, Any]
    ) -> None:
        """FAN-OUT. A small write is latency, not bandwidth: along a chain of three it
        waits for three hops out and three back, one after the other; sent to each replica
        directly it waits for the slowest single round trip, and the client's bandwidth
        spent twice more is a few KiB. What the writer is told is the same: done when every
        replica acknowledged; else the error of the first replica (in chain order) that
        failed, with its ``address``, as a chain reports the member that failed."""

        async def one(replica: Replica) -> None:
            try:
                await self._pool.call(
                    replica.address,
                    "chunk.write",
                    data,
                    timeout_s=self.io_timeout_s,
                    chain=[],
                    **fields,
                )
            except DfsError as e:
                e.details.setdefault("address", replica.address)
                raise

        await gather([partial(one, replica) for replica in chain])

    async def sync(self, handle: WriteHandle, *, expect_length: int | None = None) -> None:
        """fsync the chunk on every replica of the chain (each at least ``expect_length``
        long, or ``Stale``)."""
        fields: dict[str, Any] = {} if expect_length is None else {"expect_length": expect_length}
        first, rest = handle.chain[0], handle.chain[1:]
        await self._pool.call(
            first.address,
            "chunk.sync",
            timeout_s=self.io_timeout_s,
            chunk_id=handle.chunk_id,
            version=handle.version,
            token=handle.token,
            expiry_ms=handle.expiry_ms,
            chain=[r.address for r in rest],
            timeout_ms=server_timeout_ms(self.io_timeout_s),
            **fields,
        )


_MIX_A = 0x9E3779B97F4A7C15
_MIX_B = 0xBF58476D1CE4E5B9
_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finalizer: every input bit moves every output bit, so ranks of nearby
    (chunk, region, address) triples are independent (a bare CRC of them is not)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _texts(errors: list[DfsError]) -> list[str]:
    return [str(e) for e in errors]


__all__ = ["READ_BYTES_MAX", "ChunkIo", "gather"]
