"""Deterministic simulation of a Raft group: many cores over a faulty network, one seed each.

    python -m metaserver.raft.sim --seeds 1-1000 [--nodes 5] [--verbose]

One seed is one run in virtual time. Everything random comes from ``random.Random(seed)``
and nothing reads a clock, so a failing seed replays exactly (``--seeds 4711``).

WHAT A RUN DOES
    3 or 5 voters (and one spare node that may join later) run the real ``RawNode`` core
    with a replicated key-value state machine (``kv.py``). Each node's clock ticks at its
    own rate: a period drawn between ``TICK_MS`` and ``TICK_MS`` times the drift bound
    (``--clock-ratio``, by default the cores' ``clock_rate_ratio_max``), so leases are tested
    at the edges of the bound they assume. A driver per node handles each
    Ready as the asyncio node does: one at a time, its fsync taking simulated disk time
    while the core keeps stepping messages, committed entries applied during the write,
    and (on some nodes) a leader sending before its own fsync; it takes snapshots every
    few dozen entries. 5-20 clients put, append and read (through the leader's lease when it
    holds, else ReadIndex; ``--no-lease``: ReadIndex only) a few keys, retrying on timeouts
    with the same session sequence number.
    Faults, chosen at random: messages dropped, duplicated, delayed and so reordered;
    partitions (symmetric, one-way, the leader isolated); crashes that lose everything not
    fsynced, keeping a random prefix of the unsynced writes (a torn last record is found
    by its checksum and cut, which is the same as losing it); restarts; membership
    changes (add a learner, promote it, remove a voter); leadership transfers.

WHAT IT CHECKS
    After every event: at most one leader per term; every entry any node applies equals
    the entry every other node applied at that index (so committed entries never change
    and all nodes apply one sequence); a new leader holds every entry known committed
    (leader completeness); a message leaves only after the term and vote it depends on
    are durable; a leader serves a lease read only while no leader of a later term has been
    elected (the lease's promise, checked directly, not only through the history). Every 64
    events: log matching between every pair of nodes.
    At the end: the faults stop, crashed nodes restart, partitions heal; the group must
    converge (a leader, every member applied to the same index, every client operation
    answered); each (client, seq) is applied once; and the client history must be
    linearizable (``linearizability.check``).

LIMITATIONS
    The simulated disk keeps the core's records, not the bytes of ``storage.py``; the byte
    format is tested against the same crash model in ``tests/unit/test_raft_storage.py``.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dfs.types import LogIndex, NodeId, Term
from metaserver.raft import linearizability
from metaserver.raft.core import Config, NotLeaderError, ProposalDroppedError, RawNode
from metaserver.raft.kv import KvStateMachine, encode_command
from metaserver.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)

TICK_MS = 10
ELECTION_TICKS = 10


class Violation(Exception):
    pass


# ----------------------------------------------------------------------------------------
# Simulated disk: durable records plus writes not yet fsynced.


@dataclass
class SimDisk:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    unsynced: list[tuple[str, Any]] = field(default_factory=list)

    def write(self, kind: str, value: Any) -> None:
        self.unsynced.append((kind, value))

    def sync(self) -> None:
        for kind, value in self.unsynced:
            self._apply(kind, value)
        self.unsynced.clear()

    def crash(self, rng: random.Random) -> None:
        # Each write since the last sync is written, lost or garbage; garbage is detected
        # by its checksum and, with everything after it, cut on recovery. What remains is
        # a prefix of the unsynced writes.
        keep = rng.randint(0, len(self.unsynced))
        for kind, value in self.unsynced[:keep]:
            self._apply(kind, value)
        self.unsynced.clear()

    def _apply(self, kind: str, value: Any) -> None:
        if kind == "entries":
            first = value[0].index
            base = self.snapshot.meta.index if self.snapshot else 0
            del self.entries[first - base - 1 :]
            self.entries.extend(value)
        elif kind == "hard":
            self.hard_state = value
        elif kind == "snapshot":  # durable at once (temp file, fsync, rename)
            snap, discard_all = value
            if discard_all:
                self.entries = []
            else:
                base = self.snapshot.meta.index if self.snapshot else 0
                del self.entries[: snap.meta.index - base]
            self.snapshot = snap

    def durable_term_vote(self) -> tuple[Term, NodeId]:
        return self.hard_state.term, self.hard_state.vote


# ----------------------------------------------------------------------------------------


@dataclass
class Request:
    client: int
    seq: int
    kind: str  # put | append | get
    key: str
    value: str


@dataclass
class SimNode:
    id: NodeId
    disk: SimDisk
    core: RawNode | None = None
    sm: KvStateMachine = field(default_factory=KvStateMachine)
    up: bool = False
    proposals: dict[LogIndex, tuple[Term, Request]] = field(default_factory=dict)
    reads: dict[bytes, Request] = field(default_factory=dict)
    pending_reads: list[tuple[LogIndex, Request]] = field(default_factory=list)
    applied_since_snapshot: int = 0
    snapshot_every: int = 30
    tick_ms: int = 10  # this node's clock: one tick every tick_ms of simulated time
    in_flight: Ready | None = None  # a Ready whose fsync is under way
    disk_delay_ms_max: int = 0  # 0: the fsync completes within the event
    early_send: bool = False  # leader sends before its own fsync, as node.py does


@dataclass
class Client:
    id: int
    seq: int = 0
    op: Request | None = None
    op_call: int = 0
    target: NodeId = NodeId(1)
    deadline: int = 0
    history_index: int = -1


class Simulation:
    def __init__(
        self,
        seed: int,
        nodes: int | None = None,
        verbose: bool = False,
        *,
        read_lease: bool = True,
        clock_ratio: float | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        rng = self.rng
        self.n = nodes if nodes is not None else rng.choice((3, 3, 5))
        self.verbose = verbose
        self.read_lease = read_lease
        # Clocks run at rates within this ratio of each other (by default exactly the bound
        # the cores assume, so that the lease is tested at its edge).
        ratio = clock_ratio if clock_ratio is not None else Config(NodeId(1)).clock_rate_ratio_max
        tick_ms_max = int(TICK_MS * ratio)
        self.now = 0
        self.events: list[tuple[int, int, Callable[[], None]]] = []
        self._event_seq = 0
        self.event_count = 0
        voters = tuple(NodeId(i) for i in range(1, self.n + 1))
        self.initial = ConfState(voters=voters)
        self.spare = NodeId(self.n + 1)
        self.nodes: dict[NodeId, SimNode] = {}
        for i in (*voters, self.spare):
            self.nodes[i] = SimNode(
                i,
                SimDisk(),
                snapshot_every=rng.randint(8, 60),
                disk_delay_ms_max=rng.choice((0, 1, 3)),
                early_send=rng.random() < 0.5,
                tick_ms=rng.choice((TICK_MS, tick_ms_max, rng.randint(TICK_MS, tick_ms_max))),
            )
        # Network faults.
        self.drop_p = rng.choice((0.0, 0.01, 0.05, 0.15))
        self.dup_p = rng.choice((0.0, 0.02, 0.1))
        self.delay_max_ms = rng.choice((2, 5, 20, 60))
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.faults_on = True
        self.fault_count = 0
        # Checks.
        self.leaders: dict[Term, NodeId] = {}
        self.elected_at: dict[Term, int] = {}  # when a node first led in each term
        self.lease_reads = 0  # reads served on a lease, and by a ReadIndex round
        self.index_reads = 0
        self.applied_log: dict[int, tuple[Term, int, bytes]] = {}
        self.history: list[linearizability.Operation] = []
        self.clients = [Client(c + 1) for c in range(rng.randint(5, 20))]
        self.keys = [f"k{i}" for i in range(rng.randint(2, 6))]
        self.ops_done = 0

    # -- event queue ---------------------------------------------------------------

    def at(self, t: int, fn: Callable[[], None]) -> None:
        self._event_seq += 1
        heapq.heappush(self.events, (t, self._event_seq, fn))

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[{self.now:7d}] {msg}", file=sys.stderr)

    # -- nodes -----------------------------------------------------------------------

    def start(self, n: SimNode) -> None:
        d = n.disk
        bootstrap = self.initial if n.id in self.initial.voters else None
        cfg = Config(
            id=n.id,
            election_ticks=ELECTION_TICKS,
            inflight_msgs_max=self.rng.choice((1, 4, 64)),
            bytes_per_msg_max=self.rng.choice((64, 4096, 1 << 20)),
            snapshot_chunk_bytes=self.rng.choice((16, 256, 1 << 20)),
            read_lease=self.read_lease,
        )
        n.core = RawNode(
            cfg,
            random.Random(self.rng.getrandbits(32)),
            hard_state=d.hard_state,
            snapshot=d.snapshot,
            entries=list(d.entries),
            bootstrap=bootstrap,
        )
        n.sm = KvStateMachine()
        if d.snapshot is not None:
            n.sm.restore(d.snapshot.data)
        n.proposals.clear()
        n.reads.clear()
        n.pending_reads.clear()
        n.applied_since_snapshot = 0
        n.in_flight = None
        n.up = True
        phase = self.rng.randrange(n.tick_ms)
        self.at(self.now + phase + 1, lambda: self.tick(n, n.core))
        self.process(n)

    def crash(self, n: SimNode) -> None:
        self.log(f"crash {n.id}")
        n.up = False
        n.core = None
        n.disk.crash(self.rng)

    def tick(self, n: SimNode, core: RawNode | None) -> None:
        if not n.up or n.core is not core or core is None:
            return  # a tick scheduled for an incarnation that crashed
        core.tick()
        self.process(n)
        self.at(self.now + n.tick_ms, lambda: self.tick(n, core))

    def process(self, n: SimNode) -> None:
        """Handle Readies as ``node.py`` does: one at a time, the fsync taking disk time.

        While a Ready's fsync is in flight the core keeps stepping messages and ticks (so
        entries handed out may be replaced before ``advance``), committed entries (durable
        here already) are applied at once, and a leader whose Ready changes neither term
        nor vote may send before its own fsync (Raft thesis §10.2.1), as ``node.py`` does.
        """
        core = n.core
        assert core is not None
        if core.role == Role.LEADER and core.term not in self.elected_at:
            self.elected_at[core.term] = self.now
        while n.in_flight is None and core.has_ready():
            rd = core.ready()
            early = self.start_ready(n, core, rd)
            if rd.must_sync and n.disk_delay_ms_max > 0:
                n.in_flight = rd
                delay = self.rng.randint(0, n.disk_delay_ms_max)
                self.at(self.now + delay, functools.partial(self.finish_ready, n, core, rd, early))
                return
            self.finish_ready(n, core, rd, early)

    def start_ready(self, n: SimNode, core: RawNode, rd: Ready) -> bool:
        """Write the Ready (not yet synced) and apply; return whether messages left early."""
        d = n.disk
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            self.on_new_leader(n, core)
        if rd.snapshot is not None:
            d.write("snapshot", (rd.snapshot, True))
            d.sync()
            n.sm.restore(rd.snapshot.data)
            n.applied_since_snapshot = 0
        if rd.entries:
            d.write("entries", list(rd.entries))
        if rd.hard_state is not None:
            d.write("hard", rd.hard_state)
        for e in rd.committed_entries:
            self.apply(n, e)
        term, vote = d.durable_term_vote()
        early = (
            n.early_send
            and rd.snapshot is None
            and core.role == Role.LEADER
            and (rd.hard_state is None or (rd.hard_state.term, rd.hard_state.vote) == (term, vote))
        )
        if early:
            self.send_all(n, rd)
        return early

    def finish_ready(self, n: SimNode, core: RawNode, rd: Ready, early: bool) -> None:
        if n.core is not core:
            return  # the node crashed while its disk was busy
        n.in_flight = None
        if rd.must_sync:
            n.disk.sync()
        if not early:
            self.send_all(n, rd)
        for rs in rd.read_states:
            req = n.reads.pop(rs.context, None)
            if req is not None:
                n.pending_reads.append((rs.index, req))
        core.advance(rd)
        self.after_advance(n, core)
        self.process(n)

    def send_all(self, n: SimNode, rd: Ready) -> None:
        term, vote = n.disk.durable_term_vote()
        for m in rd.messages:
            # A pre-vote carries the term its sender would take, not one it holds.
            pre = m.type in (MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP)
            if not pre and m.term > term:
                raise Violation(f"node {n.id} sent {m.type.name} of term {m.term} > durable {term}")
            if m.type == MessageType.VOTE_RESP and not m.reject and vote != m.to:
                raise Violation(f"node {n.id} granted a vote to {m.to} not durable")
            if m.type == MessageType.APP_RESP and not m.reject:
                self.check_durable_prefix(n, m.index)
            self.send(m)

    def check_durable_prefix(self, n: SimNode, index: int) -> None:
        d = n.disk
        base = d.snapshot.meta.index if d.snapshot else 0
        if index > base + len(d.entries):
            raise Violation(f"node {n.id} acked index {index} not on its disk")

    def after_advance(self, n: SimNode, core: RawNode) -> None:
        applied = core.applied
        still = []
        for index, req in n.pending_reads:
            if applied >= index:
                self.respond(n, req, n.sm.get(req.key))
            else:
                still.append((index, req))
        n.pending_reads = still
        if n.applied_since_snapshot >= n.snapshot_every and applied > core.log.offset:
            term = core.log.term(applied)
            assert term is not None
            snap = Snapshot(SnapshotMeta(applied, term, core.conf), n.sm.snapshot())
            n.disk.sync()  # storage.save_snapshot syncs the log first
            n.disk.write("snapshot", (snap, False))
            n.disk.sync()
            core.compact(snap)
            n.applied_since_snapshot = 0

    def apply(self, n: SimNode, e: Entry) -> None:
        prev = self.applied_log.get(e.index)
        fp = (e.term, int(e.type), e.data)
        if prev is None:
            self.applied_log[e.index] = fp
        elif prev != fp:
            raise Violation(f"node {n.id} applied {fp} at {e.index}, another applied {prev}")
        n.applied_since_snapshot += 1
        if e.type != EntryType.NORMAL:
            return
        result = n.sm.apply(e.data)
        p = n.proposals.pop(e.index, None)
        if p is not None:
            term, req = p
            if term == e.term:
                self.respond(n, req, result)

    def on_new_leader(self, n: SimNode, core: RawNode) -> None:
        prev = self.leaders.get(core.term)
        if prev is not None and prev != n.id:
            raise Violation(f"two leaders in term {core.term}: {prev} and {n.id}")
        self.leaders[core.term] = n.id
        for index, (term, _, data) in self.applied_log.items():
            if index > core.log.offset and core.log.term(index) != term:
                raise Violation(f"leader {n.id} of term {core.term} lacks committed entry {index}")
            del data

    def check_lease(self, n: SimNode, core: RawNode) -> None:
        """A lease read is about to be served: no later term may have a leader yet."""
        self.lease_reads += 1
        later = [t for t in self.elected_at if t > core.term]
        if later:
            t = min(later)
            raise Violation(
                f"node {n.id} served a lease read in term {core.term} at {self.now} ms, "
                f"but term {t} has had a leader since {self.elected_at[t]} ms"
            )

    def check_log_matching(self) -> None:
        cores = [(n.id, n.core) for n in self.nodes.values() if n.core is not None]
        for i, (a_id, a) in enumerate(cores):
            for b_id, b in cores[i + 1 :]:
                lo = max(a.log.offset, b.log.offset) + 1
                hi = min(a.log.last_index(), b.log.last_index())
                # Find the highest index where both have the same term; all before must match.
                for idx in range(hi, lo - 1, -1):
                    if a.log.term(idx) == b.log.term(idx):
                        ea = a.log.slice(lo, idx + 1)
                        eb = b.log.slice(lo, idx + 1)
                        if ea != eb:
                            raise Violation(f"log matching broken between {a_id} and {b_id}")
                        break

    # -- network -----------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if (m.frm, m.to) in self.blocked:
            return
        if self.faults_on and self.rng.random() < self.drop_p:
            return
        copies = 2 if self.faults_on and self.rng.random() < self.dup_p else 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.delay_max_ms if self.faults_on else 2)
            self.at(self.now + delay, functools.partial(self.deliver, m))

    def deliver(self, m: Message) -> None:
        n = self.nodes.get(m.to)
        if n is None or not n.up or n.core is None or (m.frm, m.to) in self.blocked:
            return
        n.core.step(m)
        self.process(n)

    # -- clients -----------------------------------------------------------------------

    def client_next(self, c: Client) -> None:
        if not self.running_clients:
            return
        c.seq += 1
        kind = self.rng.choice(("put", "append", "append", "get", "get"))
        key = self.rng.choice(self.keys)
        value = f"{c.id}.{c.seq};" if kind != "get" else ""
        c.op = Request(c.id, c.seq, kind, key, value)
        c.op_call = self.now
        self.history.append(
            linearizability.Operation(c.id, kind, key, value or None, None, self.now, None)
        )
        c.history_index = len(self.history) - 1
        self.client_send(c)

    def client_send(self, c: Client) -> None:
        req = c.op
        assert req is not None
        c.deadline = self.now + 300
        seq_at_send = req.seq
        self.at(self.now + self.rng.randint(1, 5), lambda: self.node_receive(c, req))
        self.at(c.deadline, lambda: self.client_timeout(c, seq_at_send))

    def client_timeout(self, c: Client, seq: int) -> None:
        if c.op is None or c.op.seq != seq or self.now < c.deadline:
            return
        c.target = NodeId(self.rng.choice(list(self.nodes)))
        self.client_send(c)  # same seq: exactly-once comes from the session table

    def node_receive(self, c: Client, req: Request) -> None:
        n = self.nodes[c.target]
        if not n.up or n.core is None:
            return  # lost; the client times out
        core = n.core
        try:
            if req.kind == "get":
                index = core.lease_read_index()
                if index is not None:
                    self.check_lease(n, core)
                    if core.applied >= index:
                        self.respond(n, req, n.sm.get(req.key))
                    else:
                        n.pending_reads.append((index, req))
                    return
                ctx = f"{req.client}:{req.seq}:{self.now}".encode()
                core.read_index(ctx)
                n.reads[ctx] = req
                self.index_reads += 1
            else:
                data = encode_command(req.client, req.seq, req.kind, req.key, req.value)
                index = core.propose(data)
                n.proposals[index] = (core.term, req)
        except NotLeaderError as e:
            hint = e.leader
            self.at(self.now + 1, lambda: self.client_redirect(c, req, hint))
            return
        except ProposalDroppedError:
            return
        self.process(n)

    def client_redirect(self, c: Client, req: Request, hint: NodeId) -> None:
        if c.op is not req:
            return
        c.target = hint if hint else NodeId(self.rng.choice(list(self.nodes)))
        self.at(self.now + (1 if hint else 20), lambda: self.node_receive(c, req))

    def respond(self, n: SimNode, req: Request, result: Any) -> None:
        def arrive() -> None:
            c = self.clients[req.client - 1]
            if c.op is None or c.op.seq != req.seq:
                return  # a duplicate answer to a retried request
            if isinstance(result, dict):
                raise Violation(f"client {c.id} got an error: {result}")
            op = self.history[c.history_index]
            output = result if req.kind == "get" else None
            self.history[c.history_index] = linearizability.Operation(
                op.client, op.kind, op.key, op.value, output, op.call, self.now
            )
            c.op = None
            self.ops_done += 1
            self.at(self.now + self.rng.randint(5, 80), lambda: self.client_next(c))

        self.at(self.now + self.rng.randint(1, 5), arrive)

    # -- faults ------------------------------------------------------------------------

    def leader(self) -> SimNode | None:
        for n in self.nodes.values():
            if n.up and n.core is not None and n.core.role == Role.LEADER:
                return n
        return None

    def fault(self) -> None:
        if not self.faults_on:
            return
        rng = self.rng
        self.fault_count += 1
        kind = rng.choice(
            ("crash", "crash", "partition", "oneway", "isolate_leader", "heal", "heal",
             "member", "transfer", "restart")
        )  # fmt: skip
        up = [n for n in self.nodes.values() if n.up]
        down = [n for n in self.nodes.values() if not n.up]
        ids = list(self.nodes)
        if kind == "crash" and up:
            n = rng.choice(up)
            self.crash(n)
            self.at(self.now + rng.randint(10, 800), functools.partial(self.restart, n))
        elif kind == "restart" and down:
            self.restart(rng.choice(down))
        elif kind == "partition":
            side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
            for a in ids:
                for b in ids:
                    if (a in side) != (b in side):
                        self.blocked.add((a, b))
            self.log(f"partition {sorted(side)}")
        elif kind == "oneway":
            a, b = rng.sample(ids, 2)
            self.blocked.add((a, b))
        elif kind == "isolate_leader":
            ld = self.leader()
            if ld is not None:
                for b in ids:
                    if b != ld.id:
                        self.blocked.add((ld.id, b))
                        self.blocked.add((b, ld.id))
                self.log(f"isolate leader {ld.id}")
        elif kind == "heal":
            self.blocked.clear()
        elif kind == "transfer":
            ld = self.leader()
            if ld is not None and ld.core is not None:
                to = NodeId(rng.choice(ld.core.conf.voters))
                ld.core.transfer_leader(to)
                self.process(ld)
        elif kind == "member":
            self.membership_change()
        self.at(self.now + rng.randint(20, 400), self.fault)

    def membership_change(self) -> None:
        ld = self.leader()
        if ld is None or ld.core is None:
            return
        conf = ld.core.conf
        rng = self.rng
        if self.spare in conf.learners:
            cc = ConfChange(ConfChangeType.ADD_VOTER, self.spare)
        elif self.spare not in conf.members():
            cc = ConfChange(ConfChangeType.ADD_LEARNER, self.spare)
        elif len(conf.voters) > 3:
            victim = rng.choice([v for v in conf.voters])
            cc = ConfChange(ConfChangeType.REMOVE, victim)
            self.spare = victim  # it may come back later, with its old disk
        else:
            return
        try:
            ld.core.propose_conf_change(cc)
        except (NotLeaderError, ProposalDroppedError):
            return
        self.log(f"conf change {cc.type.name} {cc.node_id}")
        self.process(ld)

    def restart(self, n: SimNode) -> None:
        if n.up:
            return
        self.log(f"restart {n.id}")
        self.start(n)

    # -- run ---------------------------------------------------------------------------

    def run(self, fault_ms: int = 2000, settle_ms: int = 3000) -> None:
        self.running_clients = True
        for n in self.nodes.values():
            self.start(n)
        for c in self.clients:
            c.target = NodeId(self.rng.randint(1, self.n))
            self.at(self.rng.randint(0, 200), functools.partial(self.client_next, c))
        self.at(self.rng.randint(100, 500), self.fault)
        self.at(fault_ms, self.stop_faults)
        self.at(fault_ms + settle_ms // 2, self.stop_clients)
        end = fault_ms + settle_ms
        while self.events and self.events[0][0] <= end:
            t, _, fn = heapq.heappop(self.events)
            self.now = t
            fn()
            self.event_count += 1
            if self.event_count % 64 == 0:
                self.check_log_matching()
        self.check_end()

    def stop_faults(self) -> None:
        self.faults_on = False
        self.blocked.clear()
        for n in self.nodes.values():
            if not n.up:
                self.start(n)

    def stop_clients(self) -> None:
        self.running_clients = False

    def check_end(self) -> None:
        self.check_log_matching()
        ld = self.leader()
        if ld is None or ld.core is None:
            raise Violation("no leader after healing (liveness)")
        members = ld.core.conf.members()
        for i in members:
            core = self.nodes[i].core
            assert core is not None
            if core.applied != ld.core.committed:
                raise Violation(
                    f"node {i} applied {core.applied}, leader committed {ld.core.committed}"
                )
        pending = [c.id for c in self.clients if c.op is not None]
        if pending:
            raise Violation(f"clients {pending} never answered after healing (liveness)")
        # Each (client, seq) once: appended tokens are unique per client and seq.
        for k, v in ld.sm.data.items():
            tokens = [t for t in v.split(";") if t]
            if len(tokens) != len(set(tokens)):
                raise Violation(f"key {k}: an append was applied twice: {v}")
        result = linearizability.check(self.history, time_budget_steps=2_000_000)
        if result.violation:
            raise Violation(f"history not linearizable: {result.explanation}")


@dataclass(frozen=True)
class Options:
    """How reads are served and how far apart the clocks run (see ``Simulation``)."""

    read_lease: bool = True
    clock_ratio: float | None = None

    def flags(self) -> str:
        text = "" if self.read_lease else " --no-lease"
        return text + (f" --clock-ratio {self.clock_ratio}" if self.clock_ratio else "")


def run_seed(
    seed: int, nodes: int | None = None, verbose: bool = False, options: Options = Options()
) -> tuple[int, int]:
    """Run one seed; return (client ops completed, faults). Raises Violation."""
    sim = Simulation(
        seed, nodes, verbose, read_lease=options.read_lease, clock_ratio=options.clock_ratio
    )
    sim.run()
    return sim.ops_done, sim.fault_count


def parse_seeds(text: str) -> range:
    if "-" in text:
        a, b = text.split("-", 1)
        return range(int(a), int(b) + 1)
    return range(int(text), int(text) + 1)


def run_seeds(
    first: int,
    last: int,
    nodes: int | None = None,
    verbose: bool = False,
    options: Options = Options(),
) -> tuple[int, int, list[str]]:
    """Run seeds first..last; return (ops, faults, one report per violating seed)."""
    ops = faults = 0
    reports = []
    for seed in range(first, last + 1):
        try:
            o, f = run_seed(seed, nodes, verbose, options)
            ops += o
            faults += f
        except (Violation, AssertionError) as e:
            reports.append(
                f"seed {seed}: VIOLATION: {type(e).__name__}: {e}\n"
                f"  replay: python -m metaserver.raft.sim --seeds {seed}{options.flags()} --verbose"
            )
    return ops, faults, reports


CHUNK_SEEDS = 250  # seeds per unit of work with --jobs: progress is reported per chunk


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m metaserver.raft.sim", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seeds", default="1-100", help="A-B or one seed")
    p.add_argument("--nodes", type=int, choices=(3, 5), default=None)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (long runs)")
    p.add_argument("--no-lease", action="store_true", help="reads by ReadIndex only")
    p.add_argument(
        "--clock-ratio",
        type=float,
        default=None,
        help="clock rates differ up to this ratio (default: the bound the cores assume)",
    )
    args = p.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    options = Options(read_lease=not args.no_lease, clock_ratio=args.clock_ratio)
    violations = ops = faults = 0
    if args.jobs <= 1:
        ops, faults, reports = run_seeds(
            seeds.start, seeds.stop - 1, args.nodes, args.verbose, options
        )
        for r in reports:
            print(r, flush=True)
        violations = len(reports)
    else:
        # Imported here: the simulator itself stays free of processes and clocks.
        from concurrent.futures import ProcessPoolExecutor, as_completed

        chunks = [
            (a, min(a + CHUNK_SEEDS - 1, seeds.stop - 1))
            for a in range(seeds.start, seeds.stop, CHUNK_SEEDS)
        ]
        done = 0
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {
                pool.submit(run_seeds, a, b, args.nodes, False, options): (a, b) for a, b in chunks
            }
            for fut in as_completed(futures):
                a, b = futures[fut]
                o, f, reports = fut.result()
                ops, faults, done = ops + o, faults + f, done + (b - a + 1)
                for r in reports:
                    print(r, flush=True)
                violations += len(reports)
                print(
                    f"progress: seeds {done}/{len(seeds)}, violations {violations}",
                    file=sys.stderr,
                    flush=True,
                )
    print(f"faults {faults}")
    print(f"seeds {len(seeds)}, violations {violations}, ops {ops}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
