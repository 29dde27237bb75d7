"""Directory leases: which client may answer removals in which directory by itself
(leader soft state).

What it owns: the table of leases the leader granted (``fs.dir_lease``), the recalls in
progress, and the bookkeeping of mutations in flight per directory; the answer to "must
this request wait for a lease to end first?". The protocol is in docs/PROTOCOL.md, the
promise it makes in docs/ARCHITECTURE.md ("Directory leases").

A lease on directory D, held by one client (its random ``holder`` id), lets that client
answer ``unlink``/``rmdir`` in D at once from the complete listing it was given, and ship
them later in one ``fs.batch``. So every request of another client that reads or changes
D's entries must wait until the holder has flushed what it queued and let go: the leader
*recalls* the lease (a one-way ``fs.recall`` on the connection it was granted on), the
holder answers ``fs.lease_release``, and the waiting request proceeds; a holder that does
not answer (gone, partitioned) is waited for until the lease expires, no longer.

Why soft state: a lease lives for seconds and costs nothing to lose. A new leader knows
none (``restart``): the clients' leases on the old leader end with its term, and a
client that still believes in one only sends removals the namespace checks again
(each carries the inode it expects, so a late one never removes someone else's file).

What it must not do: talk to the network or read a clock (``now`` is passed in, seconds
of a monotonic clock). The connection a lease was granted on is kept as an opaque object
for the caller's recall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# How long a lease lasts: long enough that an ``rm -rf`` of a big directory needs one or
# two, short enough that a request of another client waits at most this long for a
# holder that died without releasing.
LEASE_MS = 5000
# Entries a directory may have to be leased: the lease's answer carries the whole
# listing, in one answer (fs.readdir's page limit).
LEASE_ENTRIES_MAX = 4096


@dataclass(slots=True)
class Lease:
    ino: int
    holder: int
    expiry_s: float
    conn: Any = None  # where to send the recall (opaque here)
    recalled: bool = False
    released: bool = False
    waiters: list[Any] = field(default_factory=list)  # opaque wake-ups, for the caller


class DirLeases:
    """The leader's leases, by directory inode."""

    def __init__(self, *, lease_ms: int = LEASE_MS) -> None:
        self.lease_ms = lease_ms
        self.by_ino: dict[int, Lease] = {}
        self._busy: dict[int, int] = {}  # ino -> mutations of its entries in flight

    def __bool__(self) -> bool:
        """Whether any lease exists: the cheap test every request makes first."""
        return bool(self.by_ino)

    def restart(self) -> list[Lease]:
        """A new term: forget every lease; returns them (their waiters must be woken)."""
        gone = list(self.by_ino.values())
        self.by_ino.clear()
        for lease in gone:
            lease.released = True
        return gone

    def grant(self, ino: int, holder: int, conn: Any, now: float) -> Lease:
        """Grant (or renew) ``holder``'s lease on ``ino``. The caller has recalled any
        other holder's lease first (``blocking``)."""
        lease = self.by_ino.get(ino)
        if lease is not None and lease.holder == holder and not lease.released:
            lease.expiry_s = now + self.lease_ms / 1000
            lease.conn = conn
            lease.recalled = False
            return lease
        lease = Lease(ino, holder, now + self.lease_ms / 1000, conn)
        self.by_ino[ino] = lease
        return lease

    def renew(self, holder: int, conn: Any, inos: list[int], now: float) -> list[int]:
        """Extend ``holder``'s leases on ``inos`` granted on ``conn`` (where a recall would
        go) that are neither recalled nor expired, as a grant would; returns those."""
        renewed = []
        for ino in inos:
            lease = self.by_ino.get(ino)
            if (
                lease is not None
                and lease.holder == holder
                and lease.conn is conn
                and not lease.recalled
                and not lease.released
                and now < lease.expiry_s
            ):
                lease.expiry_s = now + self.lease_ms / 1000
                renewed.append(ino)
        return renewed

    def blocking(self, ino: int, holder: int, now: float) -> Lease | None:
        """The lease on ``ino`` that a request of ``holder`` must wait for: another
        holder's, unexpired. An expired one is dropped here."""
        lease = self.by_ino.get(ino)
        if lease is None or lease.holder == holder:
            return None
        if lease.released or now >= lease.expiry_s:
            self._drop(lease)
            return None
        return lease

    def release(self, holder: int, inos: list[int]) -> list[Lease]:
        """``holder`` lets go of its leases on ``inos``; returns the leases that ended."""
        ended = []
        for ino in inos:
            lease = self.by_ino.get(ino)
            if lease is not None and lease.holder == holder:
                self._drop(lease)
                ended.append(lease)
        return ended

    def end(self, lease: Lease) -> None:
        """A recall is over (answered or timed out): the lease is gone."""
        self._drop(lease)

    def _drop(self, lease: Lease) -> None:
        lease.released = True
        if self.by_ino.get(lease.ino) is lease:
            del self.by_ino[lease.ino]

    def expire(self, now: float) -> list[Lease]:
        gone = [lease for lease in self.by_ino.values() if now >= lease.expiry_s]
        for lease in gone:
            self._drop(lease)
        return gone

    # --- mutations in flight, for a consistent listing at grant time -------------------

    def enter(self, inos: list[int]) -> None:
        """A mutation of these directories' entries passed its recall check and is on its
        way to the log: a lease granted now must not list the directory before it lands."""
        for ino in inos:
            self._busy[ino] = self._busy.get(ino, 0) + 1

    def leave(self, inos: list[int]) -> None:
        for ino in inos:
            left = self._busy.get(ino, 0) - 1
            if left > 0:
                self._busy[ino] = left
            else:
                self._busy.pop(ino, None)

    def busy(self, ino: int) -> bool:
        return ino in self._busy
