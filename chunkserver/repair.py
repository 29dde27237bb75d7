"""Repair work of a chunkserver: copying a replica in from others, and the scrubber.

What it owns: the pacing of both (``Throttle``), the copy of one replica from a list of
sources (``copy_in``: the chunkserver side of ``chunk.replicate``), and the scrubber's
round-robin re-reading of every replica (``Scrubber``).

What it must not do: touch files (``store.py`` does, through ``disk.py``), or talk to the
metaserver. A bad replica found here is marked bad by the store itself, whose ``on_bad``
hook tells ``server.py``, which reports it.

HOW A COPY WORKS (``copy_in``). The target reserves and preallocates the whole length first
(a full disk says ``NoSpace`` before any byte moves), then reads ``[0, length)`` in pieces
with ``chunk.read`` from the first source, writing each piece into a file in ``tmp/``. A
source that fails (any error, ``Corrupt`` included: a source never hands out bytes that
failed their checksum) or answers short is dropped, and the next source goes on from the
same offset: every replica of one version holds the same bytes below the chunk's length.
Only when all of it is written is the copy fsynced and renamed into place (store.py rule
9), so a crash or an error mid-copy leaves nothing that a scan would take for a replica.

HOW THE SCRUBBER WORKS. One pass takes the list of replicas (id order) and reads each in
steps of up to 1 MiB through ``AsyncChunkStore.verify``: the store's own verified read, in
the disk pool, holding the chunk's read lock only for that step, so client reads share the
chunk and a client write waits for one step at most. The store makes a replica bad on the
first mismatch (store.py rule 6). Each replica is verified as it is at its turn (its
version and length then, not as listed: a pass lasts days), once more at its new version
if it is rewritten during its turn (``Stale``), and skipped if deleted. Pacing: a pass is spread over
``scrub_period_ms`` (default 7 days, as Ceph's deep scrub; HDFS's block scanner takes three
weeks): its rate is the pass's cost over the period, never more than ``scrub_bytes_per_s``
(``pass_rate``; a period of 0 runs at that rate). A replica costs its length, and at least
``SCRUB_REPLICA_COST_BYTES``: verifying one has a fixed cost (a thread hop, an open, a
direct read), and at full rate a store of small replicas took a third of a core per
chunkserver for good. The first pass after a start resumes where the last run's pass got
(``scrub_cursor`` in the data directory, written at most once a minute and at each pass's
end) and goes round; with no record, at a random replica; a pass that verified nothing is followed by a pause of at least
``SCRUB_IDLE_PAUSE_S``. Each step reads past the page cache (``from_disk``: ``O_DIRECT``,
which first writes the range's dirty pages back), so the bytes checked are the disk's and
the pages clients read stay cached. LIMITATIONS: a replica written during its turn is
checked up to the length it had when its turn began; on a file system that refuses
``O_DIRECT`` the step drops the range's clean pages instead (dirty ones are then checked
in memory, and cached ones are evicted).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

from chunkserver.config import write_small_file
from chunkserver.disk import AsyncChunkStore
from chunkserver.peers import PeerPool
from dfs.ratelog import RateLimitedLog
from dfs.wire.errors import DfsError, NotFound, Stale, Timeout, Unavailable
from dfs.wire.replicafile import BLOCK_BYTES, ReplicaInfo

log = logging.getLogger("chunkserver")
# A source that cannot be reached fails every copy from it, each retry: one line per
# source per interval.
_source_log = RateLimitedLog(log)

# chunk.replicate reads its sources in pieces of at most this: large enough to amortise a
# round trip, small enough to bound the memory of ``replicate_jobs`` copies at once.
COPY_PIECE_BYTES_MAX = 4 * 1024 * 1024
# One piece read from a source: 4 MiB takes milliseconds on a LAN, so a source that has not
# answered in 10 s is hung; the copy moves on to the next source rather than spend the whole
# request's time on it.
COPY_PIECE_TIMEOUT_S = 10.0
# The scrubber's step: one verified read under the chunk's read lock.
SCRUB_STEP_BYTES_MAX = 1024 * 1024
# Pause after a pass that found nothing to read (no replicas, or all empty), so that an
# idle scrubber with scrub_interval_ms = 0 does not spin.
SCRUB_IDLE_PAUSE_S = 1.0
# A pass takes at least this long: over a store of tiny replicas a pass is over in
# milliseconds, and passes back to back spun at hundreds a second, relisting the store each
# time, for bytes the previous pass had just verified.
SCRUB_PASS_MIN_S = 1.0
# How often the scrubber records how far its pass got (``scrub_cursor`` in the data
# directory), so that a restart resumes the pass instead of starting a new one.
SCRUB_CURSOR_SAVE_S = 60.0
# What verifying a replica costs the scrubber's throttle at least, whatever its length.
SCRUB_REPLICA_COST_BYTES = 256 * 1024
# Steps per second a throttled stream aims at: pieces of rate / STEPS_PER_S keep it smooth
# rather than one large burst and a long pause.
STEPS_PER_S = 4


class Throttle:
    """Paces a byte stream (or several sharing it) to ``bytes_per_s``; 0: no limit.

    ``take(n)`` returns when ``n`` more bytes may go: a caller goes at once when the stream
    is idle, and the next one waits ``n / bytes_per_s`` after it. No burst accumulates
    while idle, so the rate is never exceeded over any window longer than one piece.
    """

    def __init__(self, bytes_per_s: int, clock: Callable[[], float] | None = None) -> None:
        assert bytes_per_s >= 0
        self.bytes_per_s = bytes_per_s
        self._clock = clock
        self._next = 0.0  # clock time when the next bytes may go

    def piece_bytes(self, limit: int) -> int:
        """The step to take at this rate: about 1/STEPS_PER_S of a second, whole blocks,
        one block at least, ``limit`` at most."""
        if self.bytes_per_s == 0:
            return limit
        step = self.bytes_per_s // STEPS_PER_S // BLOCK_BYTES * BLOCK_BYTES
        return min(max(step, BLOCK_BYTES), limit)

    def set_rate(self, bytes_per_s: int) -> None:
        """Change the rate; what is still owed for bytes already let through is owed at the
        new rate (a pass of a few replicas at a slow rate must not hold up the next, larger
        pass by its last booking at the old rate)."""
        assert bytes_per_s >= 0
        old, self.bytes_per_s = self.bytes_per_s, bytes_per_s
        if old == 0 or bytes_per_s == 0:
            self._next = 0.0
            return
        now = self._now()
        if self._next > now:
            self._next = now + (self._next - now) * old / bytes_per_s

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def reserve(self, n: int) -> float:
        """Book ``n`` bytes; returns the seconds to wait before sending them (pure but for
        the clock)."""
        if self.bytes_per_s == 0 or n <= 0:
            return 0.0
        now = self._now()
        start = max(now, self._next)
        self._next = start + n / self.bytes_per_s
        return start - now

    async def take(self, n: int) -> None:
        delay_s = self.reserve(n)
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # pacing, not a wait for a condition


async def copy_in(
    store: AsyncChunkStore,
    peers: PeerPool,
    throttle: Throttle,
    *,
    chunk_id: int,
    version: int,
    length: int,
    sources: list[str],
    token: bytes,
    expiry_ms: int,
    deadline: float,
) -> ReplicaInfo:
    """Copy ``[0, length)`` of (chunk_id, version) from ``sources`` into a new replica (see
    the module docstring). Raises ``NotFound`` when every source lacks that version,
    ``Unavailable`` when no source could supply it otherwise, ``NoSpace``, ``Stale`` (a
    newer replica is here), ``Timeout`` past ``deadline`` (loop time)."""
    loop = asyncio.get_running_loop()
    incoming = await store.begin_incoming(chunk_id, version, length)
    try:
        offset = 0
        failures: list[str] = []  # "source: what went wrong", for the error's details
        absent = True  # every source failed with NotFound or Stale: none has this version
        piece_max = throttle.piece_bytes(COPY_PIECE_BYTES_MAX)
        for source in sources:
            while offset < length:
                size = min(piece_max, length - offset)
                await throttle.take(size)
                remaining_s = deadline - loop.time()
                if remaining_s <= 0:
                    raise Timeout("chunk.replicate out of time", chunk_id=chunk_id, copied=offset)
                remaining_s = min(remaining_s, COPY_PIECE_TIMEOUT_S)
                try:
                    _, data = await peers.call(
                        source,
                        "chunk.read",
                        timeout_s=remaining_s,
                        timeout_ms=max(int(remaining_s * 900), 1),
                        chunk_id=chunk_id,
                        version=version,
                        offset=offset,
                        size=size,
                        token=token,
                        expiry_ms=expiry_ms,
                    )
                except DfsError as e:
                    failures.append(f"{source}: {e.code.name}")
                    absent = absent and isinstance(e, (NotFound, Stale))
                    _source_log.log(logging.INFO, (source, e.code),
                                    "chunkserver event=replicate_source_failed chunk=%d "
                                    "source=%s offset=%d error=%r", chunk_id, source, offset,
                                    str(e))  # fmt: skip
                    break
                if len(data) != size:
                    # Short: that replica is shorter than the chunk's length (or, longer, a
                    # peer that breaks the protocol). Either way not a source for this copy.
                    failures.append(f"{source}: {len(data)} bytes of {size}")
                    absent = False
                    log.info("chunkserver event=replicate_source_failed chunk=%d source=%s "
                             "offset=%d error=short_read got=%d", chunk_id, source, offset,
                             len(data))  # fmt: skip
                    break
                await store.write_incoming(incoming, data)
                offset += size
            if offset == length:
                break
        if offset < length:
            error = NotFound if absent else Unavailable
            raise error(
                "no source could supply the chunk", chunk_id=chunk_id, copied=offset,
                sources=failures,
            )  # fmt: skip
        return await store.install_incoming(incoming)
    except Exception:
        # The part-copy goes before the error is answered, so that a caller who sees the
        # error finds no trace of the copy. Idempotent: a failed install has closed it.
        await asyncio.shield(store.abort_incoming(incoming))
        raise
    except BaseException:
        # Cancelled (the request's deadline, or the server stopping): start the drop and
        # go; the store's close waits for it.
        store.abort_incoming(incoming)
        raise


class Scrubber:
    """Re-reads every replica, each pass spread over ``period_s`` at ``bytes_per_s`` (> 0)
    at most, pausing ``interval_s`` between passes; see the module docstring. Counters for
    ``cs.status``: ``bytes_verified``, ``passes`` (completed)."""

    def __init__(
        self,
        store: AsyncChunkStore,
        bytes_per_s: int,
        interval_s: float,
        *,
        period_s: float = 0.0,
        rng: random.Random | None = None,
        cursor_path: Path | None = None,
    ) -> None:
        assert bytes_per_s > 0 and interval_s >= 0 and period_s >= 0
        self.store = store
        self.bytes_per_s = bytes_per_s
        self.throttle = Throttle(bytes_per_s)
        self.interval_s = interval_s
        self.period_s = period_s
        self._rng = rng if rng is not None else random.Random()
        self._first_pass = True
        self._cursor_path = cursor_path
        self._cursor_saved_at = time.monotonic()
        self.bytes_verified = 0
        self.passes = 0

    async def run(self) -> None:
        """Pass after pass, for the life of the server (cancel to stop)."""
        while True:
            started = time.monotonic()
            try:
                verified = await self.scrub_pass()
            except Exception:
                # A bug: keep the server serving, try again after a pause.
                log.exception("chunkserver event=scrub_failed")
                verified = 0
            self.passes += 1
            # the pause between passes
            await asyncio.sleep(self.pause_s(verified, time.monotonic() - started))

    def pause_s(self, verified: int, elapsed_s: float) -> float:
        """The pause after a pass of ``elapsed_s`` that verified ``verified`` bytes."""
        pause = self.interval_s if verified else max(self.interval_s, SCRUB_IDLE_PAUSE_S)
        return max(pause, SCRUB_PASS_MIN_S - elapsed_s)

    def pass_rate(self, cost_bytes: int) -> int:
        """Bytes per second for a pass costing ``cost_bytes``: over the period, and never
        more than ``bytes_per_s`` (all of it when the period is 0)."""
        if self.period_s <= 0:
            return self.bytes_per_s
        return max(1, min(self.bytes_per_s, math.ceil(cost_bytes / self.period_s)))

    async def scrub_pass(self) -> int:
        """One pass over the replicas listed at its start; returns the bytes verified."""
        verified = 0
        replicas = await asyncio.to_thread(self.store.list_chunks)
        if self._first_pass and replicas:
            self._first_pass = False
            start = self._start_index(replicas, await asyncio.to_thread(self._load_cursor))
            replicas = replicas[start:] + replicas[:start]
        costs = [max(r.length, SCRUB_REPLICA_COST_BYTES) for r in replicas]
        self.throttle.set_rate(self.pass_rate(sum(costs)))
        step_max = self.throttle.piece_bytes(SCRUB_STEP_BYTES_MAX)
        for listed, cost in zip(replicas, costs, strict=True):
            offset = 0
            # the fixed part of the replica's cost goes with its first step
            overhead = cost - listed.length
            # As it is at its turn, not as listed: over a pass of days a chunk written
            # meanwhile has a newer version (a bump keeps the bytes below its cut).
            replica = self.store.store.info(listed.chunk_id)
            refreshed = False
            while replica is not None:
                size = min(step_max, replica.length - offset)
                await self.throttle.take(max(size, 0) + overhead)
                overhead = 0
                if size <= 0:
                    break
                try:
                    n = await self.store.verify(replica.chunk_id, replica.version, offset, size)
                except Stale:
                    if refreshed:
                        break  # rewritten again and again: the next pass
                    refreshed = True  # rewritten since its turn began: go on at its version
                    replica = self.store.store.info(listed.chunk_id)
                    continue
                except NotFound:
                    break  # deleted since the pass began
                except DfsError:
                    # Corrupt (the store has made it bad and logged why), or a disk error.
                    break
                if n == 0:
                    break
                offset += n
                verified += n
                self.bytes_verified += n
            await self._save_cursor(listed.chunk_id)
        await self._save_cursor(0, now=True)  # the next pass starts at the first id
        return verified

    def _start_index(self, replicas: list[ReplicaInfo], cursor: int | None) -> int:
        """Where the first pass after a start begins: after the replica the last run
        verified last (``scrub_cursor``), or, with none recorded, at a random one."""
        if cursor is None:
            return self._rng.randrange(len(replicas))
        after = [i for i, r in enumerate(replicas) if r.chunk_id > cursor]
        return after[0] if after else 0

    def _load_cursor(self) -> int | None:
        if self._cursor_path is None:
            return None
        try:
            return int(self._cursor_path.read_text().strip())
        except (OSError, ValueError):
            return None  # none yet, or unreadable: start at random

    async def _save_cursor(self, chunk_id: int, *, now: bool = False) -> None:
        """Record the last replica verified, at most every ``SCRUB_CURSOR_SAVE_S`` (a lost
        record only makes a restart verify some replicas again)."""
        if self._cursor_path is None:
            return
        clock = time.monotonic()
        if not now and clock - self._cursor_saved_at < SCRUB_CURSOR_SAVE_S:
            return
        self._cursor_saved_at = clock
        try:
            await asyncio.to_thread(write_small_file, self._cursor_path, str(chunk_id))
        except OSError as e:
            log.warning("chunkserver event=scrub_cursor_failed reason=%r", str(e))


__all__ = [
    "COPY_PIECE_BYTES_MAX",
    "SCRUB_REPLICA_COST_BYTES",
    "SCRUB_STEP_BYTES_MAX",
    "Scrubber",
    "Throttle",
    "copy_in",
]
