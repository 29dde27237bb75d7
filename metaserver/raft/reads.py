"""Linearizable reads on a Raft leader: heartbeat rounds, the reads that wait for them, and
the leader lease. Pure, like the core it belongs to.

What it owns: the numbering of heartbeat rounds and the tick each left at; the ReadIndex
reads queued until a quorum acknowledges a round sent after they arrived (and, before that,
until an entry of the leader's term commits); the lease's floor (``void``) and its
surrender for the rest of a term (``lease_given_up``). Each voter's latest acknowledged
round and the send tick of it that counts for the lease live on its ``Progress``.

What it must not do: send messages, or know terms and roles. ``core.py`` asks it for a
round's context when it broadcasts heartbeats, tells it of acknowledgements and commits,
resets it on every change of role or term, and keeps rule 1 of the lease (below: the
followers' promise) itself, in ``step`` and ``_hup``.

Linearizable reads (``read_index``): the leader notes its commit index, then confirms with
a heartbeat round that a quorum still follows it; a read may be served once the state
machine has applied that index. Reads arriving together share one heartbeat round.

LEADER LEASES (``Config.read_lease``; ``RawNode.lease_read_index``)
A leader that a quorum acknowledged recently may serve a read at its commit index without
a round (the Raft thesis §6.4.1; etcd's ReadOnlyLeaseBased, here with the lease measured
from when the acknowledged heartbeats were *sent*). Why it is safe:
- Rule 1 (the followers' promise): a node that accepted an append, heartbeat or snapshot
  from a leader grants no vote and no pre-vote, and starts no election, for
  ``election_ticks`` of its own ticks after that (``lease_elapsed``), whatever happens to
  its term meanwhile; nor for ``election_ticks`` after it starts, since it may have
  acknowledged a leader just before a crash. Only a leadership transfer's vote is exempt,
  so a leader that sent ``TIMEOUT_NOW`` gives up its lease for the rest of its term.
- Rule 2 (the leader's side): every heartbeat carries a round number; the leader notes the
  tick each round left at. A voter's acknowledgement of round r proves it accepted the
  heartbeat after that tick. The lease starts at the send tick of the latest round that a
  quorum (the leader included, at its current tick) acknowledged, and holds for
  ``lease_ticks`` of the leader's ticks from there.
- A new leader needs a quorum of votes, so one vote from a voter bound by rule 1; it cannot
  have one before that voter's promise ends, which is at least ``election_ticks - 1`` of
  its tick periods after the send (its first tick may come at once). With tick periods
  within a ratio rho of each other (``clock_rate_ratio_max``: no clock runs more than rho
  times as fast as another), ``lease_ticks = floor((election_ticks - 1) / rho)`` of the
  leader's ticks end no later than that. So while the lease holds, no other leader exists,
  and the commit index (once an entry of this term committed) covers every committed write.
- What the caller must guarantee: the tick count never lags real time (a leader whose
  ticks stalled calls ``void_lease``), and every voter runs with ``read_lease`` on (rule 1
  is what the leases of the others rest on).
The simulator runs nodes whose clocks differ within the bound and checks that no lease read
is served while a leader of a later term exists; with a clock beyond the bound, or a lease
longer than the formula, it finds violations (``tests/sim``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

from dfs.types import LogIndex, NodeId
from metaserver.raft.progress import Progress
from metaserver.raft.types import ReadState


class LeaseConfig(Protocol):
    """The two settings of ``core.Config`` this module reads."""

    @property
    def read_lease(self) -> bool: ...

    @property
    def lease_ticks(self) -> int: ...


class ReadTracker:
    """Rounds, reads and the lease of one node while it leads (``reset`` between terms)."""

    __slots__ = (
        "_cfg",
        "_lease_floor",
        "_pending",
        "_round_ticks",
        "_waiting_commit",
        "lease_given_up",
        "round",
    )  # fmt: skip

    def __init__(self, cfg: LeaseConfig) -> None:
        self._cfg = cfg
        # Every broadcast is a new round, numbered for the whole life of the node. Reads
        # wait for a quorum to acknowledge a round sent after they arrived; the lease
        # counts from the send tick of acknowledged rounds.
        self.round = 0  # the last round broadcast
        self._round_ticks: deque[tuple[int, int]] = deque()  # (round, tick sent), recent
        self._pending: deque[tuple[int, LogIndex, bytes]] = deque()  # (round, index, ctx)
        self._waiting_commit: list[bytes] = []  # until an entry of our term commits
        self._lease_floor = 0  # rounds sent before this tick do not count for the lease
        self.lease_given_up = False  # TIMEOUT_NOW sent in this term: no lease until its end

    def reset(self) -> None:
        """A new term or role: no read waits any more (the node fails its readers)."""
        self._pending.clear()
        self._waiting_commit.clear()
        self.lease_given_up = False

    # -------------------------------------------------------------------- ReadIndex

    def wait_for_commit(self, ctx: bytes) -> None:
        """Our commit index may lag the real one until an entry of our term commits (Raft
        thesis §6.4): the read waits for the no-op a new leader appends."""
        self._waiting_commit.append(ctx)

    def take_waiting_for_commit(self) -> list[bytes]:
        waiting, self._waiting_commit = self._waiting_commit, []
        return waiting

    def queue(self, index: LogIndex, ctx: bytes) -> None:
        """A read at ``index``, served once a quorum acknowledges the next round."""
        self._pending.append((self.round + 1, index, ctx))

    def round_wanted(self) -> bool:
        """A read waits for a round not sent yet."""
        return bool(self._pending) and self._pending[-1][0] > self.round

    def start_round(self, tick: int) -> bytes:
        """Number a new round leaving at ``tick``; returns the context its heartbeats carry
        (the number when a read waits for it or leases are on, else empty)."""
        self.round += 1
        context = b""
        if self._pending or self._cfg.read_lease:
            context = self.round.to_bytes(8, "big")
        if self._cfg.read_lease:
            # Every round is numbered, so the deque holds consecutive rounds. A round sent
            # longer ago than a lease lasts is of no use to it.
            ticks = self._round_ticks
            ticks.append((self.round, tick))
            while ticks[0][1] < tick - self._cfg.lease_ticks:
                ticks.popleft()
        return context

    def acknowledge(
        self,
        pr: Progress,
        round_: int,
        voters: Sequence[NodeId],
        me: NodeId,
        progress: Mapping[NodeId, Progress],
    ) -> list[ReadState]:
        """A voter (its ``pr``) answered round ``round_``; returns the reads it confirms."""
        if round_ > self.round:
            return []
        if round_ > pr.acked_round:
            pr.acked_round = round_
            tick = self._round_tick(round_)
            if tick is not None and tick >= self._lease_floor:
                pr.lease_tick = max(pr.lease_tick, tick)
        if not self._pending or pr.acked_round < self._pending[0][0]:
            return []
        # Each voter of a quorum answered a round at least r: it still followed us after
        # round r left, so every read queued before round r was sent may be served at the
        # index noted for it.
        acked = sorted(
            (
                self.round if v == me else (p.acked_round if p is not None else 0)
                for v in voters
                for p in (progress.get(v),)
            ),
            reverse=True,
        )
        confirmed = acked[len(voters) // 2]
        out = []
        while self._pending and self._pending[0][0] <= confirmed:
            _, index, ctx = self._pending.popleft()
            out.append(ReadState(index, ctx))
        return out

    def release_all(self) -> list[ReadState]:
        """Every queued read, at its index: we became the only voter."""
        out = [ReadState(index, ctx) for _, index, ctx in self._pending]
        self._pending.clear()
        return out

    def _round_tick(self, round_: int) -> int | None:
        """The tick at which ``round_`` was sent, if it is still remembered."""
        ticks = self._round_ticks
        if not ticks:
            return None
        k = round_ - ticks[0][0]
        if 0 <= k < len(ticks):
            r, tick = ticks[k]
            assert r == round_
            return tick
        return None

    # -------------------------------------------------------------------- the lease

    def lease_start(
        self, now: int, voters: Sequence[NodeId], me: NodeId, progress: Mapping[NodeId, Progress]
    ) -> int | None:
        """The send tick of the latest round a quorum of voters acknowledged (we count at
        our current tick, ``now``), or None."""
        ticks = sorted(
            (
                now if v == me else (pr.lease_tick if pr is not None else -1)
                for v in voters
                for pr in (progress.get(v),)
            ),
            reverse=True,
        )
        q = len(voters) // 2 + 1
        if len(ticks) < q or ticks[q - 1] < 0:
            return None
        return ticks[q - 1]

    def void(self, now: int, progress: Mapping[NodeId, Progress]) -> None:
        """Acknowledgements of rounds sent before tick ``now`` no longer count."""
        self._lease_floor = now
        for pr in progress.values():
            if pr.lease_tick < self._lease_floor:
                pr.lease_tick = -1
