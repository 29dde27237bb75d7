"""Rebalancing as a plan: which replicas move where so that every chunkserver's used
fraction comes within a threshold of the cluster's, counted in bytes (never in chunks).

Pure: the caller hands in the servers (bytes the namespace places on each, capacity, labels)
and the chunks that may move; the clock is passed in (``TokenBucket``).

The plan is greedy, as HDFS's balancer pairs over- and under-used datanodes: while some
server is out of the band ``[mean - threshold, mean + threshold]`` (mean: the sum of used
bytes over the sum of capacities), the pair (fuller source, emptier target) with the widest
gap, at least one of them out of the band, gets the largest chunk of the source that
- the target does not hold yet;
- leaves the target at or under ``mean + threshold`` and the source at or over
  ``mean - threshold``, and does not make the target fuller than the source is left
  (so no server is pushed out of the band, and every move strictly lowers the weighted
  squared distance from the mean: the plan ends);
- keeps the chunk's replicas on at least as many distinct hosts, then racks, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from metaserver.chunks.policy import Labels

# Moves a plan is computed to at most (a dry run reports the first ones and the total),
# and the candidate chunks it may look at in all: a bound on its cost on a big cluster (the
# plan is then the first part of the whole one; the rest is planned as these moves finish).
PLAN_MOVES_MAX = 5_000
PLAN_LOOKS_MAX = 500_000
# Moves a dry run lists.
PLAN_LIST_MAX = 1_000


@dataclass(slots=True)
class Server:
    cs_id: int
    used_bytes: int
    capacity_bytes: int
    labels: Labels

    @property
    def fraction(self) -> float:
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else 0.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A chunk that may move: at goal, quiet, no copy in flight. ``replicas``: the members
    that count toward its goal (live, not draining)."""

    chunk_id: int
    length: int
    replicas: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Move:
    chunk_id: int
    source: int
    target: int
    bytes: int


@dataclass(slots=True)
class Plan:
    threshold_pct: float
    moves: list[Move] = field(default_factory=list)
    spread_before_pct: float = 0.0
    spread_after_pct: float = 0.0
    before: dict[int, Server] = field(default_factory=dict)
    after: dict[int, Server] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(m.bytes for m in self.moves)

    def as_dict(self) -> dict[str, object]:
        """The answer of ``Repair.rebalance_plan`` (docs/PROTOCOL.md, ``admin.rebalance``)."""
        return {
            "threshold_pct": self.threshold_pct,
            "moves": [
                {"chunk_id": m.chunk_id, "from": m.source, "to": m.target, "bytes": m.bytes}
                for m in self.moves[:PLAN_LIST_MAX]
            ],
            "moves_total": len(self.moves),
            "bytes": self.bytes,
            "spread_before_pct": round(self.spread_before_pct, 3),
            "spread_after_pct": round(self.spread_after_pct, 3),
            "servers": [
                {
                    "cs_id": s.cs_id,
                    "used_bytes": s.used_bytes,
                    "capacity_bytes": s.capacity_bytes,
                    "used_pct": round(100 * s.fraction, 3),
                    "used_pct_after": round(100 * self.after[s.cs_id].fraction, 3),
                }
                for s in sorted(self.before.values(), key=lambda s: s.cs_id)
            ],
        }


def mean_fraction(servers: Iterable[Server]) -> float:
    used = cap = 0
    for s in servers:
        used += s.used_bytes
        cap += s.capacity_bytes
    return used / cap if cap else 0.0


def spread_pct(servers: dict[int, Server]) -> float:
    """The largest distance, in points, of a server's used fraction from the cluster's."""
    if not servers:
        return 0.0
    mean = mean_fraction(servers.values())
    return 100 * max(abs(s.fraction - mean) for s in servers.values())


def bytes_left(servers: dict[int, Server], threshold_pct: float) -> int:
    """The bytes that must still move for every server to be within ``threshold_pct``
    points of the mean (the larger of what lies above the band and what is missing below
    it): what a rebalance has left, without planning every move."""
    mean = mean_fraction(servers.values())
    t = threshold_pct / 100
    above = below = 0.0
    for s in servers.values():
        above += max(0.0, s.used_bytes - (mean + t) * s.capacity_bytes)
        below += max(0.0, (mean - t) * s.capacity_bytes - s.used_bytes)
    return int(max(above, below))


def _diversity(replicas: Iterable[int], servers: dict[int, Server]) -> tuple[int, int]:
    hosts: set[str] = set()
    racks: set[str] = set()
    for cs_id in replicas:
        s = servers.get(cs_id)
        if s is not None:
            hosts.add(s.labels.host)
            racks.add(s.labels.rack)
    return len(hosts), len(racks)


def plan(
    servers: dict[int, Server],
    candidates: Iterable[Candidate],
    threshold_pct: float,
    limit: int = PLAN_MOVES_MAX,
) -> Plan:
    """The moves that bring ``servers`` within ``threshold_pct`` points of their mean (as
    far as whole chunks allow), at most ``limit``. ``servers`` is not changed."""
    before = {k: Server(s.cs_id, s.used_bytes, s.capacity_bytes, s.labels)
              for k, s in servers.items() if s.capacity_bytes > 0}  # fmt: skip
    work = {k: Server(s.cs_id, s.used_bytes, s.capacity_bytes, s.labels) for k, s in before.items()}
    result = Plan(threshold_pct, before=before, after=work)
    result.spread_before_pct = spread_pct(before)
    t = threshold_pct / 100
    mean = mean_fraction(work.values())
    on: dict[int, list[Candidate]] = {k: [] for k in work}
    members: dict[int, list[int]] = {}
    for c in candidates:
        members[c.chunk_id] = list(c.replicas)
        for cs_id in c.replicas:
            if cs_id in on and c.length > 0:
                on[cs_id].append(c)
    for lst in on.values():  # largest first from the end, so that moved ones pop off
        lst.sort(key=lambda c: (c.length, -c.chunk_id))
    # (chunk, server) pairs a move took the replica off. A chunk may move more than once
    # in a plan, from another of its servers: with goal 3 on three full servers and two
    # empty ones, evening them out takes two moves of most chunks.
    moved: set[tuple[int, int]] = set()
    budget = [PLAN_LOOKS_MAX]
    while len(result.moves) < limit and budget[0] > 0:
        move = _next_move(work, on, members, moved, mean, t, budget)
        if move is None:
            break
        result.moves.append(move)
        moved.add((move.chunk_id, move.source))
        work[move.source].used_bytes -= move.bytes
        work[move.target].used_bytes += move.bytes
        reps = members[move.chunk_id]
        reps[reps.index(move.source)] = move.target
    result.spread_after_pct = spread_pct(work)
    return result


def _next_move(
    work: dict[int, Server],
    on: dict[int, list[Candidate]],
    members: dict[int, list[int]],
    moved: set[tuple[int, int]],
    mean: float,
    t: float,
    budget: list[int],
) -> Move | None:
    eps = 1e-12
    pairs = []
    for src in work.values():
        for dst in work.values():
            fs, fd = src.fraction, dst.fraction
            if fs <= fd or not (fs > mean + t + eps or fd < mean - t - eps):
                continue
            out = (fs > mean + t + eps) + (fd < mean - t - eps)
            pairs.append((-out, -(fs - fd), src.cs_id, dst.cs_id))
    pairs.sort()
    for _, _, src_id, dst_id in pairs:
        src, dst = work[src_id], work[dst_id]
        lst = on[src_id]
        while lst and (lst[-1].chunk_id, src_id) in moved:
            lst.pop()  # (kept smallest first at the end: see plan)
        for c in reversed(lst):
            budget[0] -= 1
            if budget[0] <= 0:
                return None
            if (c.chunk_id, src_id) in moved:
                continue
            reps = members[c.chunk_id]
            if dst_id in reps:
                continue
            new_s = (src.used_bytes - c.length) / src.capacity_bytes
            new_d = (dst.used_bytes + c.length) / dst.capacity_bytes
            if new_d > new_s + eps or new_d > mean + t + eps or new_s < mean - t - eps:
                continue
            after = [dst_id if r == src_id else r for r in reps]
            if _diversity(after, work) < _diversity(reps, work):
                continue
            return Move(c.chunk_id, src_id, dst_id, c.length)
    return None


class TokenBucket:
    """At most ``rate`` bytes a second on average, on the clock the caller passes in. A
    move may start while the bucket holds anything (it then owes its bytes), so a chunk
    larger than one second's worth still moves; 0: no limit."""

    def __init__(self, rate_bps: int, now: float) -> None:
        self.rate = rate_bps
        self.tokens = float(rate_bps)
        self.last = now

    def set_rate(self, rate_bps: int) -> None:
        self.rate = rate_bps
        self.tokens = min(self.tokens, float(rate_bps))

    def take(self, n: int, now: float) -> bool:
        if self.rate <= 0:
            return True
        self.tokens = min(float(self.rate), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens <= 0:
            return False
        self.tokens -= n
        return True
