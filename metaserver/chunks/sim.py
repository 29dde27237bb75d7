"""Deterministic simulation of a whole cluster's chunks: the chunk core and its driver over
in-memory chunkservers and a faulty network, one seed each.

    python -m metaserver.chunks.sim --seeds 1-1000 [--verbose] [--jobs N]

One seed is one run in virtual time. Everything random comes from ``random.Random(seed)``
and nothing reads a clock, so a failing seed replays exactly (``--seeds 4711 --verbose``).

WHAT A RUN DOES
    The real ``Namespace`` (each proposal applied as Raft would: after a delay, its answer
    sometimes lost although it applied), the real driver ``metaserver.repair.Repair`` and so
    the real chunk core, on an asyncio loop that only the simulator's clock advances: every
    wait is on a future the simulator resolves at a virtual time. 4-7 in-memory
    chunkservers hold versioned bytes with the rules of ``chunkserver/store.py`` (a write of
    an older version is ``Stale``, a newer version cuts the replica to the handle's length
    and refuses to grow it, a copy is read from a source holding the version and installed
    later, a delete takes the version given or older, bit rot stays in its block through
    writes of any version until the block is cut away or rewritten whole, and a write or
    cut that keeps part of it finds the replica bad), heartbeat, send block reports and
    scrub. Writers create files, append and overwrite through the chain of a write handle
    (taken by the metaserver's own rules: ``metaserver/chunks/handles.py`` for placement and
    the drop of dead and failed members, ``Repair.settle_handle`` for the version push)
    and commit; readers read from any live member. The leader's upkeep runs every half
    second. Each seed picks a goal (2 or 3), host and rack labels (some hosts shared), and
    one of: plain, a drain of one chunkserver, a rebalance onto chunkservers added empty.
    Faults, chosen at random: chunkserver death and return, lost and delayed messages and
    answers, leader change (the driver and the core thrown away and rebuilt from the
    namespace, the old one's copies still running and its proposals refused), disk full,
    bit rot (found by reads and the scrubber), a writer dying mid-chain.

WHAT IT CHECKS
    After every event, for the chunks it touched (and all of them every 256 events): an
    acknowledged byte is never lost (some member of the chunk's set, up or down, holds
    the chunk's bytes as acknowledged, or as a write in progress may have left them;
    bytes an acknowledged write replaced are forgotten); members at the table's version
    hold the same bytes (not while a writer is between its handle and its commit, nor
    for ``WRITER_LEASE_S`` after a writer died or gave up mid-chain, or after a leader
    change: the upkeep's recovery, under this leader or the next, has that long); a replica that holds the chunk's bytes is never deleted while
    fewer than ``goal`` other live members hold them; a trim (over goal, a drain, a
    rebalance move's source) never leaves fewer than ``goal`` live members holding them.
    Faults are bounded so that fewer than goal replicas of a chunk fail, invariant 1's
    bound (``_healthy``, ``_unfound``): no fault takes a chunk's last healthy member, and
    bit rot nobody found yet stays on fewer than goal members. A member dead at a version
    bump, or left behind by one, counts as failed; so does a chain member whose write a
    fault (a lost message, a full disk) made fail, from the fault on, since the writer's
    next handle drops it (as HDFS's pipeline recovery drops a datanode). That bound was
    stated but not kept before: seven seeds in 10,000 lost a chunk to bit rot on one
    member and such a drop of the other, or to bit rot on two of three members (goal two)
    before a drain trimmed the third, beyond what the invariant promises. At the end: the
    faults stop, every chunkserver comes back, the network heals; after a while every
    chunk must be readable, at goal where the cluster has room, the drained chunkserver
    empty, and a rebalance stopped with every chunkserver within its threshold (as whole
    chunks allow).

LIMITATIONS
    Raft is one namespace applying proposals in order (``metaserver/raft/sim.py`` checks the
    log); a reader's locate is not timed; chunk data are a few KiB; no power loss.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import random
import sys
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, cast

from dfs.wire.errors import (
    Corrupt,
    DfsError,
    NoSpace,
    NotFound,
    NotLeader,
    Stale,
    Timeout,
    Unavailable,
    error_from_wire,
)
from metaserver.chunks import simclients
from metaserver.chunks.core import Trim
from metaserver.chunks.placement import Placer, Registry
from metaserver.chunks.policy import ClusterPolicy, Labels, Rebalance
from metaserver.chunks.simbound import HEARTBEAT_S, FaultBound
from metaserver.chunks.simserver import CHUNK, FileModel, Replica, Server, Violation
from metaserver.namespace import Namespace, encode_command
from metaserver.namespace.state import ROOT_INO
from metaserver.repair import Repair, ServerLink

DEAD_TIMEOUT_S = 3.0
QUIET_S = 2.0
STEP_S = 0.5
# Chunks the leader surveys between two turns of its loop (the core's default is 10,000:
# a simulated table is far smaller, and its events must land between the slices too).
SURVEY_SLICE = 3
GC_GRACE_S = 4.0
REPORT_S = 6.0
SCRUB_S = 5.0
FAULT_PHASE_S = 60.0
SETTLE_S = 60.0
# A chunk whose writer died is compared across replicas once this long has passed since
# its death and since the last leader change (a writer's lease: the upkeep's recovery may
# take this long, and a new leader gives writers their keepalives' time first).
WRITER_LEASE_S = 10.0
FULL_CHECK_EVERY = 256
# What a chunkserver finds reaches the leader within this (a message and a proposal).
KNOWN_S = 0.1


def _settle(fut: asyncio.Future[Any], outcome: BaseException | None) -> None:
    """Resolve ``fut`` with ``outcome`` (an exception, or None for a result), unless done."""
    if fut.done():
        return
    if outcome is None:
        fut.set_result(None)
    else:
        fut.set_exception(outcome)


class SimNamespace(Namespace):
    """The real namespace, with the cluster policy the scenario sets (the namespace ops
    that set it belong to the admin commands)."""

    def __init__(self) -> None:
        # Removals free at once: a trashed file's chunks are a live file's to the core.
        super().__init__(chunk_size_bytes=CHUNK, trash_s_default=0)
        self.sim_policy = ClusterPolicy()

    def policy(self) -> ClusterPolicy:
        return self.sim_policy


class Link:
    """The metaserver as one leader's ``Repair`` sees it (``repair.ServerLink``)."""

    def __init__(self, sim: Simulation, epoch: int) -> None:
        self.sim = sim
        self.epoch = epoch
        self.ns = sim.ns
        self.registry = Registry(DEAD_TIMEOUT_S, started_s=sim.now)
        self.placer = Placer("weighted", random.Random(sim.rng.random()), cluster=sim.ns.policy)

    @property
    def is_leader(self) -> bool:
        return self.sim.epoch == self.epoch

    async def propose_internal(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self.sim.propose(self.epoch, op, args)

    async def cs_call(self, cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        return await self.sim.cs_call(cs_id, op, timeout_s, f)

    def token(self, chunk_id: int, version: int) -> tuple[bytes, int]:
        return b"t", 0

    def know_all_chunkservers(self) -> None:
        for cs_id, entry in self.ns.chunkservers().items():
            self.registry.known(cs_id, entry["address"])


@dataclass
class Options:
    fault_rate: float = 1.0  # 0: no faults (a quiet run)
    bad_decision: str = ""  # tests: inject a known-bad decision ("trim_below_goal")
    # Compare the replicas of a chunk whose writer died or gave up mid-chain, once the
    # upkeep had time to recover it (``WRITER_LEASE_S``); off: never compare them.
    open_case: bool = True


class Simulation(FaultBound):
    def __init__(self, seed: int, verbose: bool = False, options: Options | None = None) -> None:
        self.seed = seed
        self.verbose = verbose
        self.options = options or Options()
        self.rng = rng = random.Random(seed)
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.loop = asyncio.new_event_loop()
        self.ns = SimNamespace()
        self.goal = rng.choice((2, 2, 3))
        self.scenario = rng.choice(("plain", "drain", "rebalance"))
        self.loss = rng.choice((0.0, 0.01, 0.05)) * self.options.fault_rate
        self.servers: dict[int, Server] = {}
        self.files: dict[int, FileModel] = {}
        self.epoch = 0
        self.link: Link
        self.repair: Repair
        self.stepping: asyncio.Task[None] | None = None
        self.faults = self.options.fault_rate > 0
        self.dirty: set[int] = set()
        self.pending_trims: dict[tuple[int, int], Trim] = {}
        self.events_done = 0
        self.counts: dict[str, int] = {}
        self.writes_acked = 0
        self.drained: int | None = None
        self.added: list[int] = []
        self.threshold_pct = 10.0
        self.rebalance_stopped: str | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.failed_tasks: list[asyncio.Task[Any]] = []
        # chunk id -> chain members whose write a fault made fail (a lost message, a full
        # disk): the writer's next handle drops them, left behind, so they count as failed
        # from the fault on (``_healthy``); cleared when the write ends.
        self.failing: dict[int, set[int]] = {}
        # chunk id -> {member that found its replica bad -> when} (``_good_live``)
        self.found_bad_members: dict[int, dict[int, float]] = {}
        # chunk id -> when a bump of it last committed, and the members its push goes to
        # (``_healthy``: on its way)
        self.bumped: dict[int, tuple[float, frozenset[int]]] = {}
        # (chunk id, member) -> the version a push of it did not deliver there
        self.missed_push: dict[tuple[int, int], int] = {}
        self._apply("set_goal", {"ino": ROOT_INO, "goal": self.goal})
        hosts = [f"h{i}" for i in range(rng.randint(3, 6))]
        for _ in range(rng.randint(max(4, self.goal + 1), 7)):
            self._add_server(rng.choice(hosts), capacity=rng.choice((64, 96, 128)) * CHUNK)
        self._new_leader()

    # ------------------------------------------------------------------ plumbing

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"[{self.now:8.3f}] {text}", flush=True)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def at(self, when: float, fn: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, fn))

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.at(self.now + delay, fn)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A spawned task ended: one that failed is kept for ``_raise_task_errors`` (the
        set dropped it before that looked: a reader's Violation went unseen)."""
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed_tasks.append(task)

    def sleep(self, delay: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        self.after(delay, partial(_settle, fut, None))
        return fut

    def _settle_loop(self) -> None:
        """Run the asyncio loop until nothing is ready (every task waits on the simulator)."""

        async def idle() -> None:
            ready = getattr(self.loop, "_ready", None)  # CPython's run queue
            for _ in range(10_000):
                await asyncio.sleep(0)
                if ready is not None and not ready:
                    return

        self.loop.run_until_complete(idle())

    def _apply(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        result = self.ns.apply(encode_command(op, 0, 0, self.seq, args))
        if not result["ok"]:
            raise error_from_wire(result["err"])
        return result

    def _add_server(self, host: str, capacity: int) -> int:
        n = len(self.servers) + 1
        address = f"{host}:{7000 + n}"
        cs_id = int(self._apply("cs_register", {"uuid": f"cs{n}", "address": address})["cs_id"])
        self.servers[cs_id] = Server(cs_id, address, capacity)
        rack = f"r{ord(host[-1]) % 2}"
        pol = self.ns.sim_policy
        labels = dict(pol.labels)
        labels[cs_id] = Labels(host, rack)
        self.ns.sim_policy = replace(pol, labels=labels)
        return cs_id

    def _new_leader(self) -> None:
        self.epoch += 1
        self.leader_since = self.now
        self.link = Link(self, self.epoch)
        self.repair = Repair(cast(ServerLink, self.link), interval_s=STEP_S, quiet_s=QUIET_S,
                             gc_grace_s=GC_GRACE_S, jobs=4, clock=lambda: self.now)  # fmt: skip
        self.repair.core.retry_after_s = 1.0
        self.repair.core.survey_slice = SURVEY_SLICE  # events land between its slices
        self.repair.restart()
        self._record_decisions(self.repair)
        self.stepping = None
        if self.epoch > 1:  # chunkservers report to each new leader at once
            for cs_id, server in self.servers.items():
                if server.alive:
                    self.after(self.rng.uniform(0.5, 1.5), partial(self._report_once, cs_id))
        self.pending_trims.clear()
        self.log(f"leader: epoch {self.epoch}")

    # ------------------------------------------------------------------ Raft, network

    async def propose(self, epoch: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()

        def deliver() -> None:
            if self.epoch != epoch:
                if not fut.done():
                    fut.set_exception(NotLeader(None))
                return
            try:
                result: dict[str, Any] | DfsError = self._commit(op, args)
            except DfsError as e:
                result = e
            if self.faults and self.rng.random() < self.loss:
                self.log(f"propose {op} {args}: applied, answer lost")
                self.after(1.0, partial(_settle, fut, Timeout("lost")))
                return
            if not fut.done():
                if isinstance(result, DfsError):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

        self.after(self.rng.uniform(0.001, 0.02), deliver)
        return await fut

    def _commit(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        chunk_id = args.get("chunk_id")
        if isinstance(chunk_id, int):
            self.dirty.add(chunk_id)
        if op == "rebalance_stop":
            self.ns.sim_policy = replace(self.ns.sim_policy, rebalance=None)
            self.rebalance_stopped = str(args.get("reason"))
            self.log(f"rebalance stopped: {self.rebalance_stopped}")
            return {"ok": True}
        trim = None
        if op == "replica_drop":
            trim = self.pending_trims.pop((args["chunk_id"], args["cs_id"]), None)
            holds_before = self._holds(args["chunk_id"], args["cs_id"])
        try:
            result = self._apply(op, args)
        except DfsError as e:
            self.log(f"propose {op} {args}: {type(e).__name__}")
            raise
        self.log(f"propose {op} {args}: ok")
        if op in ("version_bump", "replica_add") or (
            op == "write_handle" and not result["allocated"]
        ):
            # Its push is on its way, to the members the leader counts alive.
            reg = self.link.registry
            to = frozenset(c for c in result["replicas"] if reg.is_alive(c, self.now))
            self.bumped[int(result["chunk_id"])] = (self.now, to)
        if trim is not None and holds_before and trim.why != "dead" and self._has_data(args):
            chunk = self.ns.chunk_table.get(args["chunk_id"])
            if chunk is not None:
                left = self._good_live(chunk, exclude=-1, counted_only=False)
                if left < self._goal(chunk):
                    raise Violation(
                        f"trim ({trim.why}) of cs {trim.cs_id} left chunk {chunk.chunk_id} "
                        f"with {left} live good replicas, goal {self._goal(chunk)}"
                    )
        return result

    async def cs_call(
        self, cs_id: int, op: str, timeout_s: float, f: dict[str, Any]
    ) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        wait = min(timeout_s, 2.0)
        server = self.servers[cs_id]
        chain_write = op == "chunk.write" and bool(f.get("data"))  # a writer's, not a push
        # A version push, or a copy onto a member (a recovery's): lost, it leaves the
        # member behind the bump (seed 2012: a recovery's copy request lost, then bit rot
        # on its source, and the member dropped as not recovered held the last good bytes).
        push = (op == "chunk.write" and not f.get("data")) or op == "chunk.replicate"

        def fail_later(e: BaseException, delay: float) -> None:
            self.after(delay, partial(_settle, fut, e))

        def lost() -> bool:
            """Whether to lose this message; a writer's chain write is lost only within the
            fault bound (``_may_fail``), and its member then counts as failed."""
            if not (self.faults and self.rng.random() < self.loss):
                return False
            if chain_write:
                if not self._may_fail(f["chunk_id"], cs_id):
                    return False
                self.failing.setdefault(f["chunk_id"], set()).add(cs_id)
            return not push or self._may_miss_push(f["chunk_id"], cs_id, f["version"])

        def answer(result: dict[str, Any] | DfsError) -> None:
            if lost():
                self.log(f"cs {cs_id} {op}: answer lost")
                fail_later(TimeoutError(), wait)
                return

            def give() -> None:
                if fut.done():
                    return
                if isinstance(result, DfsError):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

            self.after(self.rng.uniform(0.001, 0.03), give)

        def deliver() -> None:
            if not server.alive:
                missed()
                fail_later(Unavailable("connection refused"), 0.001)
                return
            if op == "chunk.replicate":
                self._replicate(server, f, answer)
                return
            try:
                result = self._serve(server, op, f)
            except DfsError as e:
                missed()
                answer(e)
                return
            answer(result)

        def missed() -> None:
            if push:  # left behind at the version before (``_healthy``)
                self.missed_push[(f["chunk_id"], cs_id)] = f["version"]

        if lost():
            self.log(f"cs {cs_id} {op}: request lost")
            missed()
            fail_later(TimeoutError(), wait)
        else:
            self.after(self.rng.uniform(0.001, 0.03), deliver)
        return await fut

    def _has_data(self, args: dict[str, Any]) -> bool:
        chunk = self.ns.chunk_table.get(args["chunk_id"])
        return chunk is not None and chunk.length > 0

    def _serve(self, server: Server, op: str, f: dict[str, Any]) -> dict[str, Any]:
        chunk_id = f.get("chunk_id")
        if isinstance(chunk_id, int):
            self.dirty.add(chunk_id)
        if op == "chunk.write":
            if f.get("data") is None and self.options.bad_decision == "push_skips":
                return {}
            try:
                result = server.write(f)
            except Corrupt:
                self._found_bad(server, f["chunk_id"])  # the store marks it bad, as a read
                raise
            except NoSpace:
                if not f.get("data"):
                    raise
                if self._may_fail(f["chunk_id"], server.cs_id):
                    self.failing.setdefault(f["chunk_id"], set()).add(server.cs_id)
                    raise
                # The fault bound: a full disk does not fail the last healthy member.
                result = server.write(f, full_ok=True)
            self.log(f"cs {server.cs_id} write chunk {chunk_id} v{f['version']} "
                     f"len {f['length']} @{f['offset']}+{len(f.get('data', b''))}")  # fmt: skip
            return result
        if op == "chunk.info":
            return server.info(f["chunk_id"])
        if op == "chunk.delete":
            for chunk_id, version in f["chunks"]:
                self.dirty.add(chunk_id)
                self._check_delete(server, chunk_id, version)
            gone = server.delete(f["chunks"])
            self.log(f"cs {server.cs_id} deleted {gone}")
            return {}
        if op == "chunk.read":
            rep = server.replicas.get(f["chunk_id"])
            if rep is None:
                raise NotFound("no replica", chunk_id=f["chunk_id"])
            if rep.version != f["version"]:
                raise Stale("other version", chunk_id=f["chunk_id"])
            if rep.rotten:
                self._found_bad(server, f["chunk_id"])
                raise Corrupt("checksum mismatch", chunk_id=f["chunk_id"])
            return {"data": rep.data}
        raise AssertionError(op)

    def _replicate(self, server: Server, f: dict[str, Any], answer: Callable[[Any], None]) -> None:
        """A copy: read from a source now, installed a while later (a writer may act in
        between); the version rules are checked again at the install."""
        chunk_id, version, length = f["chunk_id"], f["version"], f["length"]
        self.dirty.add(chunk_id)
        have = server.replicas.get(chunk_id)
        if have is not None and (have.version > version):
            answer(Stale("a newer replica is here", chunk_id=chunk_id))
            return
        by_address = {s.address: s for s in self.servers.values()}
        data = None
        for address in f["sources"]:
            src = by_address.get(address)
            if src is None or not src.alive:
                continue
            rep = src.replicas.get(chunk_id)
            if rep is None or rep.version != version or len(rep.data) < length:
                continue
            if rep.rotten:
                self._found_bad(src, chunk_id)
                continue
            data = rep.data[:length]
            break
        if data is None:
            answer(Unavailable("no source could supply the chunk", chunk_id=chunk_id,
                               sources=list(f["sources"])))  # fmt: skip
            return

        def install() -> None:
            self.dirty.add(chunk_id)
            if not server.alive:
                answer(Timeout("the chunkserver died during the copy"))
                return
            cur = server.replicas.get(chunk_id)
            if cur is not None and cur.version > version:
                answer(Stale("a newer replica is here", chunk_id=chunk_id))
                return
            if cur is not None and cur.version == version and len(cur.data) >= length:
                answer({"length": length})
                return
            if len(data) > server.capacity - server.used():
                answer(NoSpace("disk full", chunk_id=chunk_id))
                return
            server.replicas[chunk_id] = Replica(version, data)
            self.log(f"cs {server.cs_id} copied chunk {chunk_id} v{version} len {length}")
            answer({"length": length})

        self.after(self.rng.uniform(0.01, 0.3), install)

    def _found_bad(self, server: Server, chunk_id: int) -> None:
        rep = server.replicas.pop(chunk_id, None)
        if rep is None:
            return
        server.quarantine[chunk_id] = rep
        server.found_bad_s[chunk_id] = self.now
        server.found_bad[chunk_id] = rep
        chunk = self.ns.chunk_table.get(chunk_id)
        if chunk is not None and server.cs_id in chunk.replicas:
            self.found_bad_members.setdefault(chunk_id, {})[server.cs_id] = self.now
        self.dirty.add(chunk_id)
        self.log(f"cs {server.cs_id}: chunk {chunk_id} v{rep.version} bad")
        entries = [[chunk_id, rep.version]]

        def report() -> None:
            if server.alive:
                self.spawn(self.repair.bad_replicas(server.cs_id, entries))

        self.after(self.rng.uniform(0.001, 0.05), report)

    # ------------------------------------------------------------------ the model

    def _goal(self, chunk: Any) -> int:
        return int(self.ns.inodes[chunk.ino].goal)

    def _good(self, chunk: Any, rep: Replica | None, rot_known: bool = True) -> bool:
        """Whether ``rep`` holds ``chunk``'s bytes (as the file model allows them). A
        decision is judged by what could be known: with ``rot_known`` false, bit rot not
        found yet does not count against a replica."""
        if rep is None or (rep.rotten and rot_known) or len(rep.data) < chunk.length:
            return False
        if rep.rotten:
            return True
        model = self.files.get(chunk.ino)
        if model is None:
            return True  # a file the run does not track (none: every file is tracked)
        return model.allowed(chunk.index * CHUNK, rep.data[: chunk.length])

    def _holds(self, chunk_id: int, cs_id: int) -> bool:
        chunk = self.ns.chunk_table.get(chunk_id)
        server = self.servers.get(cs_id)
        if chunk is None or server is None or not server.alive:
            return False
        return self._good(chunk, server.replicas.get(chunk_id), False)

    def _good_live(self, chunk: Any, exclude: int, counted_only: bool) -> int:
        draining = self.ns.sim_policy.draining
        n = 0
        # A member found bad counts as the leader knew it when it decided: as good for
        # KNOWN_S, also once its drop committed (a delete decided before the bad report
        # came, delivered after the drop: seed 9041).
        found = self.found_bad_members.get(chunk.chunk_id, {})
        dropped = [
            c for c, t in found.items() if self.now - t < KNOWN_S and c not in chunk.replicas
        ]
        for cs_id in list(chunk.replicas) + dropped:
            if cs_id == exclude or (counted_only and cs_id in draining):
                continue
            s = self.servers[cs_id]
            rep = s.replicas.get(chunk.chunk_id)
            if rep is None and self.now - s.found_bad_s.get(chunk.chunk_id, -1e9) < KNOWN_S:
                # Found bad: the leader cannot know yet (the copy in quarantine may be
                # deleted meanwhile, once the bad report came: seed 4134).
                rep = s.found_bad.get(chunk.chunk_id)
            if self._up(s) and self._good(chunk, rep, False):
                n += 1
        return n

    def _up(self, s: Server) -> bool:
        """Alive, or died so recently that the leader cannot know yet (its heartbeats
        lapse after ``DEAD_TIMEOUT_S``): the checks judge decisions by what could be known."""
        return s.alive or self.now - s.died_s < DEAD_TIMEOUT_S + 0.5

    def _check_delete(self, server: Server, chunk_id: int, version: int) -> None:
        chunk = self.ns.chunk_table.get(chunk_id)
        rep = server.replicas.get(chunk_id)
        if chunk is None or rep is None or rep.version > version or not self._good(chunk, rep):
            return
        if chunk.length == 0:
            return  # no data yet: nothing to lose
        if server.cs_id not in chunk.replicas and rep.version < chunk.version:
            return  # stale: never served again (a refused copy, a member dropped earlier)
        others = self._good_live(chunk, exclude=server.cs_id, counted_only=False)
        if others < self._goal(chunk):
            raise Violation(
                f"cs {server.cs_id} deleted a good replica of chunk {chunk_id} "
                f"(v{rep.version}) while {others} other live members hold it, goal "
                f"{self._goal(chunk)}"
            )

    def _held_outside(self, chunk: Any) -> bool:
        """Whether a copy outside the set holds the chunk's bytes at its version (the
        driver adopts it when no member is left: ``Repair.adopt``)."""
        for s in self.servers.values():
            rep = s.replicas.get(chunk.chunk_id)
            if rep is not None and rep.version == chunk.version and self._good(chunk, rep):
                return True
        return False

    def check(self, chunk_ids: Iterable[int]) -> None:
        table = self.ns.chunk_table
        for chunk_id in chunk_ids:
            chunk = table.get(chunk_id)
            if chunk is None or chunk.length == 0:
                continue
            reps = [self.servers[c].replicas.get(chunk_id) for c in chunk.replicas]
            if not any(self._good(chunk, r) for r in reps) and not self._held_outside(chunk):
                raise Violation(f"chunk {chunk_id} (v{chunk.version} len {chunk.length}) lost: "
                                f"no member holds its bytes; members {chunk.replicas}")  # fmt: skip
            model = self.files.get(chunk.ino)
            if model is not None and (
                model.writing
                or (model.abandoned_s is not None
                    and (not self.options.open_case or self.now - max(
                        model.abandoned_s, self.leader_since) < WRITER_LEASE_S))
            ):  # fmt: skip
                continue
            at = {
                r.data[: chunk.length]
                for r in reps
                if r is not None and not r.rotten and r.version == chunk.version
                and len(r.data) >= chunk.length
            }  # fmt: skip
            if len(at) > 1:
                raise Violation(f"chunk {chunk_id}: members at v{chunk.version} differ "
                                f"({len(at)} different contents)")  # fmt: skip

    # ------------------------------------------------------------------ cluster events

    def _heartbeats(self) -> None:
        for model in self.files.values():  # writers' keepalives name what they upload to
            if model.uploading is not None and model.abandoned_s is None:
                self.repair.writing(model.uploading)
        for s in self.servers.values():
            # A lost heartbeat is a step toward looking dead: within the fault bound, as a
            # death (seed 4681: three lost in a row, and the leader left the last healthy
            # member behind at a fence as dead while the other had bit rot).
            if s.alive and not (
                self.faults and self.rng.random() < self.loss and self._may_go_dark(s.cs_id)
            ):
                self.link.registry.heartbeat(
                    s.cs_id, s.address, self.now, capacity_bytes=s.capacity,
                    used_bytes=s.used(), chunks=len(s.replicas), load=0, pid=1,
                )  # fmt: skip
        self.after(HEARTBEAT_S, self._heartbeats)

    def _report(self, cs_id: int) -> None:
        self._report_once(cs_id)
        self.after(REPORT_S, lambda: self._report(cs_id))

    def _report_once(self, cs_id: int) -> None:
        s = self.servers[cs_id]
        if s.alive:
            entries = [[c, r.version, len(r.data)] for c, r in sorted(s.replicas.items())]

            def deliver() -> None:
                self.spawn(self.repair.report(cs_id, entries, 0, True))

            self.after(self.rng.uniform(0.001, 0.05), deliver)

    def _scrub(self, cs_id: int) -> None:
        s = self.servers[cs_id]
        if s.alive:
            for chunk_id in [c for c, r in s.replicas.items() if r.rotten]:
                self._found_bad(s, chunk_id)
        self.after(SCRUB_S, lambda: self._scrub(cs_id))

    def _step(self) -> None:
        if self.stepping is None or self.stepping.done():
            self.stepping = self.loop.create_task(self.repair.step())
        self.after(STEP_S, self._step)

    def _record_decisions(self, repair: Repair) -> None:
        """Note the core's trims (the checks judge them when their drop commits)."""
        decide_steps = repair.core.decide_steps  # what the driver runs, a slice at a time

        def recorded(*a: Any, **kw: Any) -> Any:
            out = yield from decide_steps(*a, **kw)
            # The step carries out its trims before the next decide: one whose drop was
            # skipped (no longer trimmable) must not be taken for a later drop of the same
            # member for another reason (a failed push's: seed 1833).
            self.pending_trims.clear()
            if self.options.bad_decision == "trim_below_goal":
                self._inject_bad_trim(out)
            for trim in out.trims:
                self.pending_trims[(trim.chunk_id, trim.cs_id)] = trim
            return out

        repair.core.decide_steps = recorded  # type: ignore[method-assign]

    def _inject_bad_trim(self, out: Any) -> None:
        """A known-bad decision (the checks must see it): trim a chunk at goal, carried
        out as a driver without the re-check of ``Repair._still_trimmable`` would."""
        for chunk in self.ns.chunk_table.values():
            if chunk.length and len(chunk.replicas) == self._goal(chunk) and self.now > 20:
                cs_id = chunk.replicas[0]
                trim = Trim(chunk.chunk_id, cs_id, chunk.version, True, "over_goal")
                self.pending_trims[(chunk.chunk_id, cs_id)] = trim
                self.spawn(self.repair._drop(chunk.chunk_id, cs_id, keep_one=True, why="bad"))
                return

    def _fault(self) -> None:
        if not self.faults:
            return
        rng = self.rng
        kind = rng.choice(("kill", "kill", "revive", "leader", "disk_full", "rot", "rot"))
        servers = list(self.servers.values())
        if kind == "kill":
            alive = [s for s in servers if s.alive]
            s = rng.choice(alive)
            if len(alive) > self.goal and self._may_go_dark(s.cs_id):
                s.alive = False
                s.died_s = self.now
                self.log(f"FAULT cs {s.cs_id} dies")
                self.after(rng.uniform(1, 15), lambda: self._revive(s))
        elif kind == "revive":
            for s in servers:
                if not s.alive:
                    self._revive(s)
                    break
        elif kind == "leader":
            self.log("FAULT leader change")
            self._new_leader()
        elif kind == "disk_full":
            s = rng.choice(servers)
            s.capacity = min(s.capacity, s.used() + rng.randint(0, CHUNK))
            self.log(f"FAULT cs {s.cs_id} disk full")

            def free() -> None:
                s.capacity = s.disk

            self.after(rng.uniform(2, 10), free)
        elif kind == "rot":
            self._rot()
        self.count(kind)
        self.after(rng.expovariate(1 / 2.5), self._fault)

    def _revive(self, s: Server) -> None:
        if not s.alive:
            s.alive = True
            self.log(f"cs {s.cs_id} returns")

    def _scenario(self) -> None:
        rng = self.rng
        if self.scenario == "drain":
            cs_id = rng.choice(sorted(self.servers))
            self.drained = cs_id
            pol = self.ns.sim_policy
            self.ns.sim_policy = replace(pol, draining=pol.draining | {cs_id})
            self.log(f"SCENARIO drain cs {cs_id}")
        elif self.scenario == "rebalance":
            for _ in range(rng.randint(1, 2)):
                cs_id = self._add_server(f"h{len(self.servers) + 10}", 128 * CHUNK)
                self.added.append(cs_id)
                self.after(rng.uniform(0, 1), partial(self._report, cs_id))
                self.after(rng.uniform(0, 1), partial(self._scrub, cs_id))

            def start() -> None:
                bw = rng.choice((0, 4 * CHUNK, 16 * CHUNK))
                self.ns.sim_policy = replace(
                    self.ns.sim_policy, rebalance=Rebalance(self.threshold_pct, bw)
                )
                self.log(f"SCENARIO rebalance threshold {self.threshold_pct} bw {bw}")

            self.after(2.0, start)

    # ------------------------------------------------------------------ the run

    def run(self) -> None:
        rng = self.rng
        self.log(f"seed {self.seed}: goal {self.goal}, {len(self.servers)} chunkservers, "
                 f"scenario {self.scenario}, loss {self.loss}")  # fmt: skip
        self.after(0.0, self._heartbeats)
        for cs_id in list(self.servers):
            self.after(rng.uniform(0, REPORT_S), partial(self._report, cs_id))
            self.after(rng.uniform(0, SCRUB_S), partial(self._scrub, cs_id))
        self.after(STEP_S, self._step)
        self.after(rng.uniform(1, 5), self._fault)
        self.after(rng.uniform(15, 30), self._scenario)
        for wid in range(rng.randint(2, 4)):
            self.spawn(simclients.writer(self, wid))
        self.spawn(simclients.reader(self))
        self.after(FAULT_PHASE_S, self._heal)
        end = FAULT_PHASE_S + SETTLE_S
        try:
            while self.events and self.events[0][0] <= end:
                when, _, fn = heapq.heappop(self.events)
                self.now = when
                fn()
                self._settle_loop()
                self._raise_task_errors()
                self.events_done += 1
                if self.events_done % FULL_CHECK_EVERY == 0:
                    self.check(list(self.ns.chunk_table))
                elif self.dirty:
                    self.check(self.dirty)
                self.dirty.clear()
            self.check(list(self.ns.chunk_table))
            self._final()
        finally:
            self._close()

    def _raise_task_errors(self) -> None:
        stepping = [self.stepping] if self.stepping else []
        for task in self.failed_tasks + stepping:
            if task.done() and not task.cancelled():
                e = task.exception()
                if isinstance(e, Violation):
                    raise e
                if e is not None:
                    raise Violation(f"task failed: {type(e).__name__}: {e}") from e

    def _heal(self) -> None:
        self.faults = False
        for s in self.servers.values():
            self._revive(s)
            s.capacity = s.disk
        self.log("faults stop")

    def _final(self) -> None:
        """After the settle phase: readable, at goal where there is room, drained, balanced."""
        pol = self.ns.sim_policy
        usable = [s for s in self.servers.values() if s.cs_id not in pol.draining]
        for chunk in self.ns.chunk_table.values():
            if chunk.length == 0:
                continue
            good = self._good_live(chunk, exclude=-1, counted_only=True)
            room = sum(1 for s in usable if s.cs_id not in chunk.replicas
                       and s.capacity - s.used() > chunk.length)  # fmt: skip
            if good < self._goal(chunk) and room + good >= self._goal(chunk):
                raise Violation(f"chunk {chunk.chunk_id} at {good} good replicas after "
                                f"settling, goal {self._goal(chunk)}")  # fmt: skip
        if self.drained is not None:
            held = [c.chunk_id for c in self.ns.chunk_table.values()
                    if self.drained in c.replicas and c.length]  # fmt: skip
            if held and len(usable) >= self.goal + 1:
                raise Violation(f"drained cs {self.drained} still holds chunks {held[:5]}")
        if self.scenario == "rebalance" and pol.rebalance is not None:
            raise Violation("the rebalance never finished")

    def _close(self) -> None:
        for _ in range(10):  # a cancelled task may spawn another in its clean-up
            tasks = asyncio.all_tasks(self.loop)
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()


def run_seed(seed: int, verbose: bool = False, options: Options | None = None) -> Simulation:
    sim = Simulation(seed, verbose, options)
    sim.run()
    return sim


def parse_seeds(text: str) -> range:
    if "-" in text:
        a, b = text.split("-", 1)
        return range(int(a), int(b) + 1)
    return range(int(text), int(text) + 1)


def run_seeds(first: int, last: int, verbose: bool = False) -> tuple[int, list[str]]:
    """Run seeds first..last; return (acknowledged writes, one report per violating seed)."""
    acked = 0
    reports = []
    for seed in range(first, last + 1):
        try:
            acked += run_seed(seed, verbose).writes_acked
        except (Violation, AssertionError) as e:
            reports.append(
                f"seed {seed}: VIOLATION: {type(e).__name__}: {e}\n"
                f"  replay: scripts/sim chunks --seeds {seed} --verbose"
            )
    return acked, reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/sim chunks", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="1-100", help="A-B or one seed")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (long runs)")
    args = p.parse_args(argv)
    # The driver's log: with --verbose among the simulator's lines, else only errors.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(message)s", stream=sys.stdout)  # fmt: skip
    seeds = parse_seeds(args.seeds)
    violations = acked = 0
    if args.jobs <= 1:
        acked, reports = run_seeds(seeds.start, seeds.stop - 1, args.verbose)
        for r in reports:
            print(r, flush=True)
        violations = len(reports)
    else:
        # Imported here: the simulator itself stays free of processes.
        from concurrent.futures import ProcessPoolExecutor, as_completed

        step = 100
        ranges = [
            (a, min(a + step - 1, seeds.stop - 1)) for a in range(seeds.start, seeds.stop, step)
        ]
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_seeds, a, b) for a, b in ranges]
            for fut in as_completed(futures):
                n, reports = fut.result()
                acked += n
                for r in reports:
                    print(r, flush=True)
                violations += len(reports)
    print(f"writes acknowledged {acked}")
    print(f"seeds {len(seeds)}, violations {violations}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
