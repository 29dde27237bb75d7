"""Open-file holds: which clients have which inodes open (leader soft state).

What it owns: the table of holds the clients announce (``fs.open``, ``fs.release``,
``fs.keepalive``) and the answer to one question: may an inode that loses its last name
be freed now, or must it stay an orphan (POSIX unlink-while-open, across clients)?

Why soft state: a hold in the Raft log would cost a commit (an fsync on a majority) per
open and per close; MooseFS's master logs them, JuiceFS keeps them in its session table.
Here the holds live on the leader only, and what must survive a failover goes through
Raft by itself: the *orphan* (the namespace keeps a nameless inode when the unlink or
rename that dropped its last name carried ``keep``). A new leader knows no holds: for
``grace_s`` after it takes over it keeps every inode that loses its last name, and frees
no orphan, while the clients announce their holds again (every client with open files
sends them with its keepalive, at most ``grace_s / 3`` apart). A client that stops
announcing (crashed, partitioned) loses its holds after ``ttl_s``, and the orphans it
held are freed.

What it must not do: talk to the network or read a clock (``now`` is passed in).
"""

from __future__ import annotations

# A client with files open announces its holds this often (fs.keepalive); the leader
# forgets them after HOLD_TTL_S without an announcement.
KEEPALIVE_S = 5.0
HOLD_TTL_S = 30.0
# After a leader change, the time clients get to announce their holds again.
HOLD_GRACE_S = 3 * KEEPALIVE_S


class Holds:
    def __init__(self, *, ttl_s: float = HOLD_TTL_S, grace_s: float = HOLD_GRACE_S) -> None:
        self.ttl_s = ttl_s
        self.grace_s = grace_s
        self._by_ino: dict[int, dict[int, float]] = {}  # ino -> client -> last announced
        self._by_client: dict[int, set[int]] = {}
        self._grace_until = 0.0

    def restart(self, now: float) -> None:
        """A new term of leadership: forget every hold, wait for announcements."""
        self._by_ino.clear()
        self._by_client.clear()
        self._grace_until = now + self.grace_s

    def in_grace(self, now: float) -> bool:
        return now < self._grace_until

    def hold(self, client: int, inos: list[int], now: float) -> None:
        mine = self._by_client.setdefault(client, set())
        for ino in inos:
            self._by_ino.setdefault(ino, {})[client] = now
            mine.add(ino)

    def release(self, client: int, inos: list[int]) -> None:
        mine = self._by_client.get(client)
        for ino in inos:
            holders = self._by_ino.get(ino)
            if holders is not None:
                holders.pop(client, None)
                if not holders:
                    del self._by_ino[ino]
            if mine is not None:
                mine.discard(ino)

    def keepalive(self, client: int, inos: list[int], now: float) -> None:
        """The client's whole set of holds: any it no longer names are released."""
        gone = self._by_client.get(client, set()) - set(inos)
        self.release(client, sorted(gone))
        self.hold(client, inos, now)

    def expire(self, now: float) -> None:
        for ino in list(self._by_ino):
            holders = self._by_ino[ino]
            for client, seen in list(holders.items()):
                if now - seen > self.ttl_s:
                    del holders[client]
                    self._by_client.get(client, set()).discard(ino)
            if not holders:
                del self._by_ino[ino]

    def held(self, ino: int, now: float) -> bool:
        """Must ``ino`` outlive its last name? (Always yes during the grace.)"""
        if self.in_grace(now):
            return True
        holders = self._by_ino.get(ino)
        if not holders:
            return False
        return any(now - seen <= self.ttl_s for seen in holders.values())

    def count(self) -> int:
        return sum(len(h) for h in self._by_ino.values())
