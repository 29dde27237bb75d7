"""What a leader knows of each follower's log: the replication progress (etcd's tracker).

What it owns: per peer, the highest index known to match ours (``match``), the next index
to send (``next``), how appends are sent (``ProgressState``: probing one at a time,
streaming within an in-flight window, or sending a snapshot), the window itself, and the
heartbeat round and lease tick that peer last acknowledged (read by ``core.py``'s reads and
leases).

What it must not do: decide anything about commits, terms or roles (``core.py`` does), or
any I/O. It is pure data with the small state changes etcd's ``Progress`` has.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from dfs.types import LogIndex
from metaserver.raft.types import Snapshot


class ProgressState(enum.IntEnum):
    PROBE = 0  # one append at a time until we find where the follower's log matches
    REPLICATE = 1  # stream appends optimistically, up to the in-flight window
    SNAPSHOT = 2  # sending a snapshot, chunk by chunk


@dataclass(slots=True)
class Progress:
    match: LogIndex = LogIndex(0)
    next: LogIndex = LogIndex(1)
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    acked_round: int = 0  # the highest heartbeat round this voter acknowledged
    lease_tick: int = -1  # the send tick of that round, if it counts for the lease
    inflight: deque[LogIndex] = field(default_factory=deque)
    snapshot: Snapshot | None = None  # being sent
    snapshot_offset: int = 0  # next byte to send
    snapshot_sent_tick: int = 0  # when a chunk last left, for retransmission

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT and self.snapshot is not None:
            self.next = LogIndex(max(self.match + 1, self.snapshot.meta.index + 1))
        else:
            self.next = LogIndex(self.match + 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.snapshot = None

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = LogIndex(self.match + 1)
        self.probe_sent = False
        self.inflight.clear()

    def maybe_update(self, n: LogIndex) -> bool:
        updated = n > self.match
        if updated:
            self.match = n
            self.probe_sent = False
        if self.next < n + 1:
            self.next = LogIndex(n + 1)
        return updated

    def maybe_decr_to(self, rejected: LogIndex, match_hint: LogIndex) -> bool:
        """A rejection of the append after ``rejected``; False when it is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = LogIndex(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False
        self.next = LogIndex(max(min(rejected, match_hint + 1), self.match + 1, 1))
        self.probe_sent = False
        return True

    def is_paused(self, inflight_max: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= inflight_max
        return True
