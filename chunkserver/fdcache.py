"""Open descriptors of replica files, kept between requests: a bounded LRU by chunk id.

What it owns: at most ``FDS_MAX`` descriptors (opened read-write), each shared by the
operations using it at the moment (a count of users), and the rule for closing them. What
it must not do: decide when a replica's file changes; the store tells it (``forget``) each
time a file leaves its path (delete, quarantine, a copy renamed over it, a file found gone).

Why: opening the file per request was a path lookup, an ``open`` and a ``close`` for every
4 KiB read, a good part of a small read's cost on the chunkserver.

Rules:
1. A descriptor is closed only when no operation uses it: ``forget`` and eviction mark the
   entry dropped, and the last ``release`` closes it. A closed descriptor's number can be
   reused at once by any ``open`` in the process, so closing one still in use could make a
   reader read, or a writer write, another file.
2. A hit checks that the file still has a name (``st_nlink``): a file unlinked or replaced
   behind the store's back (an operator, a test) is opened again by its path, so what the
   store reads is what the path names now, as when every request opened it.
3. Keeping a descriptor open changes nothing on the disk: what a crash keeps is decided by
   the writes and fsyncs the store makes, as before (the crash model in ``store.py``). An
   fsync reports a writeback error to every descriptor open when it happened, so a cached
   descriptor still sees it.
Thread-safe: the store's disk threads and the event loop (inline reads) share it; the mutex
is held for the table only, never around a system call that may wait.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Descriptors kept open. Each 64 MiB chunk read or written recently holds one; a chunkserver
# has 1,024 descriptors by default (RLIMIT_NOFILE), its connections included.
FDS_MAX = 256


@dataclass(slots=True)
class OpenFile:
    """One open replica file. ``fd`` stays valid until the holder calls ``release``."""

    chunk_id: int
    fd: int
    users: int = 0
    dropped: bool = False


class FdCache:
    def __init__(self, capacity: int = FDS_MAX) -> None:
        assert capacity >= 0
        self.capacity = capacity
        self._mutex = threading.Lock()
        self._open: OrderedDict[int, OpenFile] = OrderedDict()
        self.opened = 0  # files opened through the cache (a miss each)

    def __len__(self) -> int:
        return len(self._open)

    def acquire(self, chunk_id: int, path_of: Callable[[int], Path]) -> OpenFile:
        """The open file of ``chunk_id``, opening ``path_of(chunk_id)`` on a miss; the
        caller must ``release`` it. Raises what ``os.open`` raises (``FileNotFoundError``...)."""
        with self._mutex:
            entry = self._open.get(chunk_id)
            if entry is not None:
                entry.users += 1
                self._open.move_to_end(chunk_id)
        if entry is not None:
            try:
                named = os.fstat(entry.fd).st_nlink > 0
            except OSError:
                named = False
            if named:
                return entry
            self.release(entry)
            self.forget(chunk_id, entry)  # rule 2: open the path again
        fd = os.open(path_of(chunk_id), os.O_RDWR)
        self.opened += 1
        entry = OpenFile(chunk_id, fd, users=1)
        evicted: list[int] = []
        with self._mutex:
            if chunk_id in self._open or self.capacity == 0:
                entry.dropped = True  # another thread cached one first: ours is private
            else:
                self._open[chunk_id] = entry
                while len(self._open) > self.capacity:
                    _, old = self._open.popitem(last=False)
                    old.dropped = True
                    if old.users == 0:
                        evicted.append(old.fd)
        for old_fd in evicted:
            os.close(old_fd)
        return entry

    def release(self, entry: OpenFile) -> None:
        with self._mutex:
            entry.users -= 1
            assert entry.users >= 0
            close = entry.dropped and entry.users == 0
        if close:
            os.close(entry.fd)

    def forget(self, chunk_id: int, entry: OpenFile | None = None) -> None:
        """The file of ``chunk_id`` left its path (or is about to): keep no descriptor of it
        (closed now, or by its last user). With ``entry``, only if that one is cached."""
        with self._mutex:
            cached = self._open.get(chunk_id)
            if cached is None or (entry is not None and cached is not entry):
                return
            del self._open[chunk_id]
            cached.dropped = True
            close = cached.users == 0
        if close:
            os.close(cached.fd)

    def __del__(self) -> None:
        # As a file object closes its descriptor when collected: a store dropped without
        # ``close`` (tests make many) must not leak its descriptors. Nobody uses them now.
        for entry in self._open.values():
            with contextlib.suppress(OSError):
                os.close(entry.fd)

    def clear(self) -> None:
        """Forget every file (the store is closing)."""
        with self._mutex:
            ids = list(self._open)
        for chunk_id in ids:
            self.forget(chunk_id)


__all__ = ["FDS_MAX", "FdCache", "OpenFile"]
