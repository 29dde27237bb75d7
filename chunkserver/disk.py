"""The event loop's side of the chunk store: a bounded thread pool and per-chunk locks.

What it owns: the threads that run ``ChunkStore``'s blocking calls, the bound on how many
run at once (``disk_jobs_max``), one more thread for early-writeback hints (never awaited:
``_hint_writeback``), and one readers-writer lock per chunk (readers share a
chunk; a write, sync or delete has it alone), so that ``ChunkStore`` sees its per-chunk
operations serialised as it requires. A copy coming in (``chunk.replicate``) is written in
its own file outside any chunk lock; only its install takes the chunk's lock, alone.

What it must not do: block the event loop, or touch a file itself. (Two exceptions, for
speed. A small read is first tried on the loop with ``RWF_NOWAIT``, which takes the bytes
from the page cache or gives up at once; only opening the chunk file may then touch the
disk, for its inode, once after the caches were dropped. And a small write that syncs
nothing and reads nothing already on disk (a new replica, an append from a block
boundary, whole blocks overwritten: no partial old block to verify), to a chunk no job
holds or waits for, runs on the loop (``write_now``): it fills the page cache and touches
only the file's metadata (an open, a preallocation); it can block when the kernel
throttles writers for dirty pages, when the disk is the bottleneck anyway. A write that
must read an old block goes to the pool: a cold block there would hold up the loop for a
disk read, and a failing disk for much longer.)

Why the lock is released by the thread job and not by the awaiting task: a request can be
cancelled (its connection closed, its deadline passed) while its disk job is running, and a
thread cannot be stopped. If the lock went with the cancelled task, the next write to the
chunk would run beside the orphaned one and interleave their checksum updates. So the job
holds the lock (and its pool slot) until the thread returns; the caller only stops waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from chunkserver import salvage as salvaging
from chunkserver.blocks import reads_old_blocks
from chunkserver.copies import Incoming
from chunkserver.pagecache import WRITEBACK_BYTES_MIN
from chunkserver.store import ChunkStore, WouldBlock
from dfs.wire.errors import DfsError
from dfs.wire.replicafile import ReplicaInfo

T = TypeVar("T")

# Disk jobs running at once. A few overlap the waits of the disk (and the hashing, when the
# hash library releases the GIL) without letting a burst of requests queue hundreds of
# threads on a two-core machine; further jobs wait on the event loop, which costs nothing.
DISK_JOBS_MAX = 4
# Early-writeback hints queued at once (``AsyncChunkStore._hint_writeback``): a few 4 MiB
# uploads' worth; past it the disk is behind anyway and a hint would only queue.
WRITEBACK_PENDING_MAX = 8
# Reads up to this size try the page cache on the event loop first (``AsyncChunkStore.read``):
# a 4 KiB random read then costs no hop to a thread and back, which is most of its time on
# the chunkserver. Larger reads go to the pool: copying and hashing megabytes on the loop
# would hold up every other request.
INLINE_READ_BYTES_MAX = 256 * 1024
# Writes up to this size that sync nothing may run on the event loop (``write_now``): a new
# small file's bytes then cost no thread hop and no task on any replica of its chain.
INLINE_WRITE_BYTES_MAX = 256 * 1024
# Chunks one disk job of ``delete_many`` removes (DELETES IN BULK): about 25 ms of unlinks
# on this kind of disk, so a delete job holds a slot no longer than a big write does.
DELETE_JOB_CHUNKS = 256


class ChunkLock:
    """A FIFO readers-writer lock for one chunk, on the event loop.

    Granted in arrival order: a writer waits for the readers before it, and readers that come
    after a waiting writer wait for it (no writer starvation).
    """

    def __init__(self) -> None:
        self.readers = 0
        self.writer = False
        self._waiters: deque[tuple[bool, asyncio.Future[None]]] = deque()

    @property
    def idle(self) -> bool:
        return self.readers == 0 and not self.writer and not self._waiters

    @property
    def free_for_reader(self) -> bool:
        """A reader would be let in at once (no writer holds it or waits for it)."""
        return not self.writer and not self._waiters

    def _can(self, exclusive: bool) -> bool:
        return not self.writer and (self.readers == 0 if exclusive else True)

    def take_now(self) -> None:
        """Take a new, idle lock exclusively, at once."""
        assert self.idle
        self._take(True)

    def _take(self, exclusive: bool) -> None:
        if exclusive:
            self.writer = True
        else:
            self.readers += 1

    async def acquire(self, exclusive: bool) -> None:
        if not self._waiters and self._can(exclusive):
            self._take(exclusive)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (exclusive, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(exclusive)  # granted just as we were cancelled: hand it on
            else:
                # A ``release`` between our cancellation and this line may have dropped the
                # cancelled entry already (``_wake`` pops done futures): nothing to remove.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, exclusive: bool) -> None:
        if exclusive:
            assert self.writer
            self.writer = False
        else:
            assert self.readers > 0
            self.readers -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            exclusive, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._can(exclusive):
                return
            self._waiters.popleft()
            self._take(exclusive)
            future.set_result(None)


class AsyncChunkStore:
    """``ChunkStore`` for the event loop. ``info``, ``list_chunks`` and the counters answer
    from memory at once; everything that touches the disk runs in the pool."""

    def __init__(self, store: ChunkStore, *, disk_jobs_max: int = DISK_JOBS_MAX) -> None:
        assert disk_jobs_max >= 1
        self.store = store
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=disk_jobs_max, thread_name_prefix="chunk-disk"
        )
        self._slots = asyncio.Semaphore(disk_jobs_max)
        self._locks: dict[int, ChunkLock] = {}
        self._jobs: set[asyncio.Future[Any]] = set()
        # Early-writeback hints (``_hint_writeback``), outside the bound of disk jobs.
        self._writeback = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="chunk-writeback"
        )
        self._writeback_pending = 0
        self._inline = True  # cleared if the file system cannot read without waiting

    @classmethod
    async def open(
        cls,
        root: Path,
        *,
        capacity_bytes: int = 0,
        fsync: bool = True,
        log_prefix: str = "chunkserver",
        disk_jobs_max: int = DISK_JOBS_MAX,
    ) -> AsyncChunkStore:
        """Open (and scan) a ``ChunkStore`` in a thread: a big scan must not stall the loop."""
        store = await asyncio.to_thread(
            functools.partial(
                ChunkStore, root, capacity_bytes=capacity_bytes, fsync=fsync, log_prefix=log_prefix
            )
        )
        return cls(store, disk_jobs_max=disk_jobs_max)

    # ------------------------------------------------------------------ from memory

    def info(self, chunk_id: int) -> ReplicaInfo | None:
        return self.store.info(chunk_id)

    def list_chunks(self) -> list[ReplicaInfo]:
        return self.store.list_chunks()

    @property
    def jobs_running(self) -> int:
        return len(self._jobs)

    # ------------------------------------------------------------------ disk jobs

    async def write(
        self,
        chunk_id: int,
        version: int,
        length: int,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        sync: bool = False,
        expect_length: int | None = None,
    ) -> ReplicaInfo:
        info = await self._run(
            chunk_id,
            True,
            lambda: self.store.write(
                chunk_id, version, length, offset, data, sync=sync, expect_length=expect_length
            ),
        )
        if (
            not sync
            and len(data) >= WRITEBACK_BYTES_MIN
            and not self.store.writes_direct(offset, len(data))
        ):
            self._hint_writeback(chunk_id, offset, len(data))
        return info

    def write_now(
        self,
        chunk_id: int,
        version: int,
        length: int,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        expect_length: int | None = None,
    ) -> ReplicaInfo | None:
        """``write`` here, on the event loop, when it is small, syncs nothing (neither
        asked nor a version bump's), reads no old block (``blocks.reads_old_blocks``) and
        no job holds or waits for the chunk's lock, so nothing else touches the replica
        while it runs; None when it cannot be (use ``write``). Raises what the store's
        write raises."""
        if len(data) > INLINE_WRITE_BYTES_MAX or chunk_id in self._locks:
            return None
        info = self.store.info(chunk_id)
        if info is not None and (
            version > info.version  # a bump: fsynced
            or reads_old_blocks(info.length, offset, len(data))  # a disk read, maybe
        ):
            return None
        return self.store.write(
            chunk_id, version, length, offset, data, sync=False, expect_length=expect_length
        )

    def _hint_writeback(self, chunk_id: int, offset: int, length: int) -> None:
        """``ChunkStore.start_writeback`` on a thread of its own, not awaited: a disk whose
        queue is full makes the hint wait, and the write's answer must not wait with it.
        Hints past ``WRITEBACK_PENDING_MAX`` are dropped (the disk is busy anyway)."""
        if self._writeback_pending >= WRITEBACK_PENDING_MAX:
            return
        self._writeback_pending += 1
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(
                self._writeback, self.store.start_writeback, chunk_id, offset, length
            )
        except RuntimeError:  # shut down: the server is stopping
            self._writeback_pending -= 1
            return

        def done(f: asyncio.Future[None]) -> None:
            self._writeback_pending -= 1
            if not f.cancelled():
                f.exception()  # a hint's failure is nobody's business

        future.add_done_callback(done)

    async def read(self, chunk_id: int, version: int, offset: int, size: int) -> memoryview:
        """``read_cached`` if it can, else ``read_pooled``."""
        data = self.read_cached(chunk_id, version, offset, size)
        if data is not None:
            return data
        return await self.read_pooled(chunk_id, version, offset, size)

    def read_cached(self, chunk_id: int, version: int, offset: int, size: int) -> memoryview | None:
        """A small read whose bytes are all in the page cache, served here, on the event
        loop (the chunk's lock is free of writers: nothing can change it meanwhile, as the
        loop is busy with us); None when it cannot be (use ``read_pooled``). Raises what
        the store's read raises."""
        lock = self._locks.get(chunk_id)
        if (
            self._inline
            and size <= INLINE_READ_BYTES_MAX
            and (lock is None or lock.free_for_reader)
        ):
            try:
                return self.store.read(chunk_id, version, offset, size, cached_only=True)
            except WouldBlock as e:
                self._inline = not e.unsupported
        return None

    async def read_pooled(self, chunk_id: int, version: int, offset: int, size: int) -> memoryview:
        """A read in the disk pool, sharing the chunk with other readers."""
        return await self._run(
            chunk_id, False, lambda: self.store.read(chunk_id, version, offset, size)
        )

    async def sync(
        self, chunk_id: int, version: int | None = None, expect_length: int | None = None
    ) -> ReplicaInfo:
        return await self._run(
            chunk_id, True, lambda: self.store.sync(chunk_id, version, expect_length)
        )

    async def delete(self, chunk_id: int, version: int | None = None) -> bool:
        return await self._run(chunk_id, True, lambda: self.store.delete(chunk_id, version))

    async def delete_many(self, entries: list[tuple[int, int | None]]) -> list[bool]:
        """``delete`` of each (chunk_id, version), in order; raises the first error, once
        every delete has ended. DELETES IN BULK: a chunk that nothing holds or waits for is
        locked at once, and such chunks are deleted one after another in one disk job of up
        to ``DELETE_JOB_CHUNKS``; a thread hop, a task and a lock per chunk cost several
        times its unlink (about 0.5 ms of CPU a chunk, measured, against under 0.1 ms). A
        chunk someone holds waits for its lock, as ``delete``."""
        bulk: list[tuple[int, int | None, ChunkLock]] = []
        singles: dict[int, Awaitable[bool]] = {}
        for i, (chunk_id, version) in enumerate(entries):
            if chunk_id in self._locks:
                singles[i] = self.delete(chunk_id, version)
                continue
            lock = self._locks[chunk_id] = ChunkLock()
            lock.take_now()
            bulk.append((chunk_id, version, lock))
        groups = [bulk[k : k + DELETE_JOB_CHUNKS] for k in range(0, len(bulk), DELETE_JOB_CHUNKS)]
        started: set[int] = set()  # the groups whose job owns their locks (by id)
        try:
            in_jobs, alone = await asyncio.gather(
                asyncio.gather(
                    *(self._delete_locked(g, started) for g in groups), return_exceptions=True
                ),
                asyncio.gather(*singles.values(), return_exceptions=True),
            )
        finally:
            # Cancelled before a group's job took its first step: nothing else releases
            # the locks taken above.
            for group in groups:
                if id(group) not in started:
                    self._release_all(group)
        flat: list[bool | BaseException] = []
        for group, outcome in zip(groups, in_jobs, strict=True):
            if isinstance(outcome, BaseException):
                flat.extend([outcome] * len(group))
            else:
                flat.extend(outcome)
        in_bulk, by_one = iter(flat), iter(alone)
        results = [next(by_one) if i in singles else next(in_bulk) for i in range(len(entries))]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [bool(r) for r in results]

    def _release_all(self, chunks: list[tuple[int, int | None, ChunkLock]]) -> None:
        for chunk_id, _, lock in chunks:
            lock.release(True)
            self._forget_if_idle(chunk_id, lock)

    async def _delete_locked(
        self, chunks: list[tuple[int, int | None, ChunkLock]], started: set[int]
    ) -> list[bool | DfsError]:
        """Delete ``chunks``, each already locked here (exclusive), in one disk job; from
        its first step (``started``) this owns the locks, released when the job ends,
        whoever still waits for it."""
        started.add(id(chunks))

        def job() -> list[bool | DfsError]:
            done: list[bool | DfsError] = []
            for chunk_id, version, _ in chunks:
                try:
                    done.append(self.store.delete(chunk_id, version))
                except DfsError as e:
                    done.append(e)
            return done

        try:
            await self._slots.acquire()
        except BaseException:
            self._release_all(chunks)
            raise
        future = asyncio.get_running_loop().run_in_executor(self._pool, job)

        def finished() -> None:
            self._slots.release()
            self._release_all(chunks)

        self._track(future, finished)
        return await asyncio.shield(future)

    async def quarantined(self, chunk_id: int) -> list[salvaging.CopyJudged]:
        return await self._run(chunk_id, True, lambda: salvaging.quarantined(self.store, chunk_id))

    async def salvage(
        self, chunk_id: int, name: str, version: int, length: int, zero: bool
    ) -> tuple[ReplicaInfo, int]:
        return await self._run(
            chunk_id,
            True,
            lambda: salvaging.salvage(self.store, chunk_id, name, version, length, zero),
        )

    async def verify(self, chunk_id: int, version: int, offset: int, size: int) -> int:
        """Read and verify a range as ``read`` does (the scrubber), sharing the chunk with
        other readers; returns the bytes verified (0 at or past the replica's end)."""
        return await self._run(
            chunk_id,
            False,
            lambda: len(self.store.read(chunk_id, version, offset, size, from_disk=True)),
        )

    # A copy in (chunk.replicate) is written in tmp/, outside the chunk's lock: readers and
    # writers of the replica in place go on meanwhile. Only the install takes the lock.

    async def begin_incoming(self, chunk_id: int, version: int, length: int) -> Incoming:
        return await self._run_unlocked(
            lambda: self.store.begin_incoming(chunk_id, version, length)
        )

    async def write_incoming(
        self, incoming: Incoming, data: bytes | bytearray | memoryview
    ) -> None:
        await self._run_unlocked(lambda: self.store.write_incoming(incoming, data))

    async def install_incoming(self, incoming: Incoming) -> ReplicaInfo:
        return await self._run(
            incoming.chunk_id, True, lambda: self.store.install_incoming(incoming)
        )

    def abort_incoming(self, incoming: Incoming) -> asyncio.Future[None]:
        """Start dropping the copy now, without waiting for a pool slot (the caller may be
        being cancelled); the returned future may be awaited or left (``close`` waits for
        it). The store waits for a write job of the copy still running in its thread."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, self.store.abort_incoming, incoming)
        except RuntimeError:
            # The pool is shut down (a request cancelled while the server stops): no job of
            # the copy runs any more, and dropping it is a close and an unlink.
            self.store.abort_incoming(incoming)
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        self._track(future)
        return future

    async def _run_unlocked(self, job: Callable[[], T]) -> T:
        await self._slots.acquire()
        future = asyncio.get_running_loop().run_in_executor(self._pool, job)
        self._track(future, self._slots.release)
        return await asyncio.shield(future)

    def _track(self, future: asyncio.Future[Any], then: Callable[[], None] | None = None) -> None:
        self._jobs.add(future)

        def done(_: asyncio.Future[Any]) -> None:
            self._jobs.discard(future)
            if then is not None:
                then()
            if not future.cancelled():
                future.exception()  # retrieved: an abandoned job's error is not "unhandled"

        future.add_done_callback(done)

    async def _run(self, chunk_id: int, exclusive: bool, job: Callable[[], T]) -> T:
        lock = self._locks.get(chunk_id)
        if lock is None:
            lock = self._locks[chunk_id] = ChunkLock()
        try:
            await lock.acquire(exclusive)
            try:
                await self._slots.acquire()
            except BaseException:
                lock.release(exclusive)
                raise
        except BaseException:
            self._forget_if_idle(chunk_id, lock)
            raise
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, job)
        self._jobs.add(future)

        def done(_: asyncio.Future[T]) -> None:
            # Runs when the thread returns, whether or not anyone still awaits the result.
            self._jobs.discard(future)
            self._slots.release()
            lock.release(exclusive)
            self._forget_if_idle(chunk_id, lock)
            if not future.cancelled():
                future.exception()  # retrieved: an abandoned job's error is not "unhandled"

        future.add_done_callback(done)
        return await asyncio.shield(future)

    def _forget_if_idle(self, chunk_id: int, lock: ChunkLock) -> None:
        # Bounded memory: a lock lives only while someone holds or waits for it.
        if lock.idle and self._locks.get(chunk_id) is lock:
            del self._locks[chunk_id]

    async def close(self) -> None:
        """Wait for the running jobs (their requests may be gone) and stop the threads."""
        if self._jobs:
            await asyncio.wait(list(self._jobs))
        await asyncio.to_thread(self._pool.shutdown, wait=True)
        await asyncio.to_thread(self._writeback.shutdown, wait=True, cancel_futures=True)
        self.store.close()


__all__ = ["DISK_JOBS_MAX", "AsyncChunkStore", "ChunkLock"]
