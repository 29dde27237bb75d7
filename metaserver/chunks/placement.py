"""Chunkserver registry (soft state) and replica placement.

What it owns:
- ``Registry``: what the leader knows of each chunkserver from its heartbeats: address,
  capacity, usage, load, pid and when it was last heard from. This is soft state: it lives
  only on the leader, is rebuilt from heartbeats after an election (within one heartbeat
  interval), and never goes through Raft. Which chunkservers *exist* (id <-> uuid) and which
  hold which chunk is hard state, in the namespace.
- ``Placer``: the choice of distinct chunkservers for a new chunk's replicas, and of the
  target of a repair copy or a rebalance move (the chunk core's, ``metaserver/chunks/core.py``).

What it must not do: talk to the network or the disk. The clock is passed in (``now_s``,
monotonic seconds) and randomness is an injected ``random.Random``, so placement is tested
without processes.

Liveness: a chunkserver is *alive* when it was heard from within ``dead_timeout_s``. A leader
that has just taken over has heard from nobody yet; for one ``dead_timeout_s`` after it
started counting (``Registry(started_s=...)``) it treats a chunkserver it knows from the
namespace but has not heard from as alive, as a new HDFS NameNode waits out its safe mode
instead of declaring every datanode dead at once.

Placement policies (``PLACEMENT_POLICIES``):
- ``weighted`` (default): distinct servers drawn without replacement with probability
  proportional to free space, so new data flows to emptier servers without piling every
  chunk onto the single emptiest one (which is what a greedy "most free" rule does, and it
  makes that server a hot spot for every new write);
- ``random``: uniform among eligible servers;
- ``round_robin``: rotate through eligible servers by id.
A server is eligible when alive, not draining (``ClusterPolicy.draining``) and when its free
space exceeds ``reserve_bytes`` (one chunk by default: it must be able to take the chunk it is
given).

Labels (``ClusterPolicy.labels_of``): each pick first keeps to the eligible servers on a host
no replica of the chunk is on yet (``taken``, the chunk's other replicas), and among those to
a rack none is on yet; only when the cluster has no such server does it fall back to a
repeated rack, then to a repeated host. The policy then chooses within what is left.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from metaserver.chunks.policy import ClusterPolicy, Labels

PLACEMENT_POLICIES = ("weighted", "random", "round_robin")


@dataclass(slots=True)
class ChunkserverInfo:
    cs_id: int
    address: str
    capacity_bytes: int = 0
    used_bytes: int = 0
    chunks: int = 0
    load: int = 0
    pid: int = 0
    last_heard_s: float | None = None  # monotonic seconds; None: not heard since we lead
    back_s: float | None = None  # when heard after a silence (first in this term, or back)

    @property
    def free_bytes(self) -> int:
        return max(self.capacity_bytes - self.used_bytes, 0)


class Registry:
    def __init__(self, dead_timeout_s: float, started_s: float) -> None:
        self.dead_timeout_s = dead_timeout_s
        self.started_s = started_s
        self.servers: dict[int, ChunkserverInfo] = {}

    def restart(self, now_s: float) -> None:
        """Forget soft state (this node just became leader): wait for fresh heartbeats."""
        self.started_s = now_s
        for info in self.servers.values():
            # Capacity and usage too: a server that died while we followed must not look
            # placeable (alive by grace, with free space) before it heartbeats again.
            info.last_heard_s = info.back_s = None
            info.capacity_bytes = info.used_bytes = info.load = 0

    def known(self, cs_id: int, address: str) -> ChunkserverInfo:
        """The entry for a chunkserver the namespace knows, created unheard-from if new."""
        info = self.servers.get(cs_id)
        if info is None:
            info = self.servers[cs_id] = ChunkserverInfo(cs_id, address)
        elif address:
            info.address = address
        return info

    def heartbeat(
        self,
        cs_id: int,
        address: str,
        now_s: float,
        *,
        capacity_bytes: int,
        used_bytes: int,
        chunks: int,
        load: int,
        pid: int,
    ) -> ChunkserverInfo:
        info = self.known(cs_id, address)
        info.capacity_bytes = capacity_bytes
        info.used_bytes = used_bytes
        info.chunks = chunks
        info.load = load
        info.pid = pid
        if info.last_heard_s is None or now_s - info.last_heard_s >= self.dead_timeout_s:
            info.back_s = now_s
        info.last_heard_s = now_s
        return info

    def is_alive(self, cs_id: int, now_s: float) -> bool:
        info = self.servers.get(cs_id)
        if info is None:
            return False
        if info.last_heard_s is None:
            return now_s - self.started_s < self.dead_timeout_s
        return now_s - info.last_heard_s < self.dead_timeout_s

    def alive(self, now_s: float) -> list[ChunkserverInfo]:
        return [i for i in self.servers.values() if self.is_alive(i.cs_id, now_s)]


class Placer:
    """``place`` with the state a policy needs between calls (the round-robin cursor).
    ``policy`` gives the cluster's chunk policy at the time of each call (the namespace's)."""

    def __init__(
        self,
        policy: str = "weighted",
        rng: random.Random | None = None,
        cluster: Callable[[], ClusterPolicy] | None = None,
    ) -> None:
        if policy not in PLACEMENT_POLICIES:
            raise ValueError(f"placement policy must be one of {PLACEMENT_POLICIES}")
        self.policy = policy
        self.rng = rng or random.Random()
        self.cluster = cluster or ClusterPolicy
        self._cursor = 0

    def place(
        self,
        candidates: list[ChunkserverInfo],
        count: int,
        reserve_bytes: int,
        taken: Iterable[ChunkserverInfo | int] = (),
    ) -> list[int]:
        """Up to ``count`` distinct chunkserver ids for a chunk (fewer when fewer are
        eligible; the caller decides whether that is enough), none in ``taken`` (the
        chunk's replicas that stay, by info or id: their hosts and racks are avoided)."""
        cluster = self.cluster()
        taken_ids = {t if isinstance(t, int) else t.cs_id for t in taken}
        by_id = {c.cs_id: c for c in candidates}
        eligible = sorted(
            (
                c
                for c in candidates
                if c.free_bytes > reserve_bytes
                and c.cs_id not in cluster.draining
                and c.cs_id not in taken_ids
            ),
            key=lambda c: c.cs_id,
        )
        count = min(count, len(eligible))
        if count <= 0:
            return []

        def labels(c: ChunkserverInfo) -> Labels:
            return cluster.labels_of(c.cs_id, c.address)

        hosts: set[str] = set()
        racks: set[str] = set()
        for t in taken:
            if isinstance(t, int):
                info = by_id.get(t)
                lab = cluster.labels_of(t, "") if info is None else labels(info)
            else:
                lab = labels(t)
            hosts.add(lab.host)
            if lab.rack:
                racks.add(lab.rack)
        rotate = self.policy == "round_robin"
        start = self._cursor % len(eligible)
        if rotate:
            self._cursor += 1
            eligible = eligible[start:] + eligible[:start]
        chosen: list[int] = []
        pool = list(eligible)
        for _ in range(count):
            pick_from = [c for c in pool if labels(c).host not in hosts]
            fresh_rack = [c for c in pick_from if not labels(c).rack or labels(c).rack not in racks]
            pick_from = fresh_rack or pick_from or pool
            if rotate:
                pick = pick_from[0]
            elif self.policy == "random":
                pick = self.rng.choice(pick_from)
            else:
                weights = [float(c.free_bytes) for c in pick_from]
                pick = pick_from[self.rng.choices(range(len(pick_from)), weights=weights)[0]]
            pool.remove(pick)
            chosen.append(pick.cs_id)
            lab = labels(pick)
            hosts.add(lab.host)
            if lab.rack:
                racks.add(lab.rack)
        return chosen
