"""The chunk simulation's fault bound (``metaserver/chunks/sim.py``): invariant 1 promises
nothing once goal replicas of a chunk have failed, so the simulated faults stop short of
that, and any loss the checks then find is the system's. A member has failed when it is
down (or looks down to the leader: its heartbeats overdue), holds rotten bytes, missed a
version push, or is a chain member a fault made a writer drop; faults that would fail
the last healthy member, or make goal members fail unknown to the leader, are not made."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metaserver.chunks.simserver import BLOCK

if TYPE_CHECKING:
    import random

    from metaserver.chunks.sim import Link, SimNamespace
    from metaserver.chunks.simserver import Server

# The chunkservers' heartbeat period in the simulation.
HEARTBEAT_S = 1.0
# A bump's push (and the chunk.info confirming a lost answer) ends within this.
PUSH_WINDOW_S = 6.5


class FaultBound:
    """The fault bound's judgements, mixed into ``sim.Simulation``."""

    now: float
    ns: SimNamespace
    link: Link
    rng: random.Random
    servers: dict[int, Server]
    failing: dict[int, set[int]]
    bumped: dict[int, tuple[float, frozenset[int]]]
    missed_push: dict[tuple[int, int], int]
    dirty: set[int]

    # (The simulation's own, ``sim.Simulation``.)
    def log(self, text: str) -> None:
        raise NotImplementedError

    def _goal(self, chunk: Any) -> int:
        raise NotImplementedError

    def _good(self, chunk: Any, rep: Any, rot_known: bool = True) -> bool:
        raise NotImplementedError

    def _may_fail(self, chunk_id: int, cs_id: int) -> bool:
        """THE FAULT BOUND for a writer's chain write: a fault may make it fail (and so
        its member be dropped by the writer's next handle) only while another member
        stays healthy (see ``_healthy``)."""
        chunk = self.ns.chunk_table.get(chunk_id)
        if chunk is None or chunk.length == 0:
            return True
        return any(c != cs_id for c in self._healthy(chunk))

    def _may_miss_push(self, chunk_id: int, cs_id: int, version: int) -> bool:
        """THE FAULT BOUND for a version push: a member that misses it is left behind by
        the bump (failed), so a fault may lose it only while another member that is up
        and holds the chunk's bytes, not rotten, is at the version or the one before
        (``_healthy`` judges against the table, which the bump already moved on). Seen
        once the simulated store kept bit rot through a bump: rot on one member, a death,
        then a lost push to the last healthy one, which the push then dropped, are goal
        failures of three members."""
        chunk = self.ns.chunk_table.get(chunk_id)
        if chunk is None or chunk.length == 0:
            return True
        for c in chunk.replicas:
            s = self.servers[c]
            rep = s.replicas.get(chunk_id)
            if (
                c != cs_id and s.alive and rep is not None and rep.version >= version - 1
                and c not in self.failing.get(chunk_id, ()) and self._good(chunk, rep)
            ):  # fmt: skip
                return True
        return False

    def _healthy(self, chunk: Any) -> list[int]:
        """The members that are up, at the table's version and hold the chunk's bytes,
        but for those a writer will drop (``failing``).
        THE FAULT BOUND: no fault (a death, bit rot, a writer's chain write failed by a
        lost message or a full disk) takes the last of them, so fewer than goal replicas
        of a chunk fail (a member dead at a version bump, or left behind by one, has
        failed: by the version rules it is stale; a member a writer drops from its chain
        is left behind by the handle's bump, as HDFS's pipeline recovery leaves a datanode
        that failed a write) and any loss is the system's. A member whose heartbeat is
        overdue is not healthy (the leader may take it for dead), and a member back from
        the dead is healthy only once the leader knows it alive: until its first heartbeat the
        next bump finds it dead and leaves it behind (seed 1998: back, then bit rot on the
        other member, then a copy's fence dropped it as dead)."""
        failing = self.failing.get(chunk.chunk_id, ())
        # While a bump's push is on its way, a member not reached yet at the version before
        # has not failed (a kill or a lost push is what would fail it: seed 3352, a member
        # killed while the only healthy one, its push not there yet).
        bumped_s, pushed_to = self.bumped.get(chunk.chunk_id, (-1e9, frozenset()))
        pushing = self.now - bumped_s < PUSH_WINDOW_S
        out = []
        for cs_id in chunk.replicas:
            if cs_id in failing:
                continue
            s = self.servers[cs_id]
            rep = s.replicas.get(chunk.chunk_id)
            heard = self.link.registry.servers.get(cs_id)
            if (
                s.alive
                and self._leader_alive(cs_id)
                and (heard is None or heard.last_heard_s is None
                     or self.now - heard.last_heard_s <= HEARTBEAT_S + 0.01)
                and rep is not None
                and (rep.version == chunk.version or (
                    pushing and rep.version == chunk.version - 1 and cs_id in pushed_to
                    and self.missed_push.get((chunk.chunk_id, cs_id), 0) < chunk.version))
                and self._good(chunk, rep)
            ):  # fmt: skip
                out.append(cs_id)
        return out

    def _leader_alive(self, cs_id: int) -> bool:
        """Whether the leader counts the server alive, or will once it learns of it (a new
        leader knows every registered server, alive for its grace, at its first step)."""
        registry = self.link.registry
        if cs_id not in registry.servers:
            return self.now - registry.started_s < registry.dead_timeout_s
        return registry.is_alive(cs_id, self.now)

    def _may_go_dark(self, cs_id: int) -> bool:
        """THE FAULT BOUND for a death, or a lost heartbeat (a step toward the leader
        taking the server for dead): not the last healthy member of any chunk."""
        for c in self.ns.chunk_table.values():
            healthy = self._healthy(c) if c.length else []
            if cs_id in healthy and (len(healthy) < 2 or self._unfound(c) + 1 >= self._goal(c)):
                return False
        return True

    def _unfound(self, chunk: Any) -> int:
        """Members that failed unknown to the leader: bit rot nobody found yet, a chain
        write a fault failed (``failing``), or a death it has not noticed (seed 6648: a
        member dead, bit rot on another, and a drain's trim of the third, judged on what
        the leader knew). THE FAULT BOUND: fewer than goal of them, with
        bit rot added only below that; the leader may trim a set over its goal (a drain, a
        move) down to goal members it counts, and with goal of them failed unknown, goal
        replicas would have failed (seed 1305: bit rot on two members of three, goal two,
        then the drain's trim of the third)."""
        failing = self.failing.get(chunk.chunk_id, ())
        n = 0
        for cs_id in chunk.replicas:
            s = self.servers[cs_id]
            rep = s.replicas.get(chunk.chunk_id)
            dark = not s.alive and self._leader_alive(cs_id)
            n += cs_id in failing or dark or (rep is not None and rep.rotten)
        return n

    def _rot(self) -> None:
        chunks = [c for c in self.ns.chunk_table.values() if c.length]
        if not chunks:
            return
        chunk = self.rng.choice(chunks)
        good = self._healthy(chunk)
        if len(good) < 2 or self._unfound(chunk) + 1 >= self._goal(chunk):
            return  # the fault bound: see _healthy and _unfound
        s = self.servers[self.rng.choice(good)]
        rep = s.replicas[chunk.chunk_id]
        rep.rotten = True
        rep.rot_at = self.rng.randrange(chunk.length) // BLOCK * BLOCK
        self.dirty.add(chunk.chunk_id)
        self.log(f"FAULT bit rot: cs {s.cs_id} chunk {chunk.chunk_id}")
