"""The asyncio driver of one Raft node: disk, network and clock around the pure core.

What it owns:
- the ``RawNode`` (``core.py``), the ``RaftStorage`` (``storage.py``) and the application's
  state machine, and the one loop that moves Ready batches between them;
- the peer transport: one persistent, authenticated ``dfs.rpc`` connection to each peer
  (``peer.py``), carrying one-way ``raft`` frames (defined below);
- the waiters: proposers waiting for their entry to apply, readers waiting for a ReadIndex
  or for the applied index a lease read needs, callers of membership changes and leadership
  transfer;
- the clock: ticks on a fixed schedule (``_tick_loop``), which the core's leader lease
  relies on.

What it must not do: know what the state machine means (commands are bytes), decide Raft
questions (the core does), or block the event loop on the leader's disk under load (a
leader's big writes and fsyncs run on one dedicated thread, ``_disk``; a follower's, and a
lightly loaded leader's, run inline: see below).

HOW THE LOOP WORKS (``_run``)
Inputs (``tick``, ``step`` of peer messages, ``propose``, ``read_index``) are fed to the core
as they arrive, on the event loop, and set ``_wakeup``. The loop then takes one Ready and
handles it as written on ``types.Ready``:

    1. snapshot -> storage.install_snapshot (disk thread), then state machine restore;
    2. entries + hard state -> storage.append (one write for both), then ONE sync when
       ``must_sync`` (disk thread; inline on a follower and for a small Ready): group
       commit;
    3. messages -> peers (batched: one frame per peer per Ready, written at once);
    4. committed entries -> state machine apply, in order; wake their proposers;
    5. read states -> wake readers once the applied index reaches theirs;
    6. core.advance(ready); maybe take a snapshot (every ``snapshot_entries`` applied).

Peer messages do not wait for the loop task (``ready_now``): the ``raft`` frames of one
read from a peer's connection are stepped in the read callback (``take_frame``), and once
they all are (``rpc.Connection.after_read``), the Ready they made is handled right there
when the loop task is idle and the Ready needs no wait: no snapshot, and nothing to write or
a write made inline (below). That is a follower's append and acknowledgement, and a leader's
commit with its proposers' answers: the commit's path then waits for no wake-up of the loop
task on either. Proposals made in a client's read callback (``propose_nowait``, whose
proposers are called back from the apply instead of awaiting) are taken the same way, once
per read: the leader's new entries, its appends and its small inline write.
Any other Ready, and every Ready of the other inputs, goes to the loop task.

Only one Ready is in flight. While its disk work runs on the thread, the loop stays free to
receive (and while it runs inline, what arrives waits in the sockets):
proposals and acknowledgements accumulate in the core and leave together in the next Ready,
so one fsync covers every proposal that arrived during the previous one. That is where the
throughput comes from; nothing waits for a timer to form a batch.

Two steps overlap the disk work instead of following it, each for a stated reason:
- Step 4 runs while step 2's write is in progress. The core hands out as committed only
  entries that an earlier Ready made durable here (``_next_committed_hi``), and they are
  durable on a quorum, so nothing about them waits for this Ready's write; answering their
  proposers then does not cost one more fsync. (A Ready with a snapshot keeps the strict
  order: the snapshot replaces the state the entries are applied to.)
- Step 3, for the leader only (Raft thesis §10.2.1; etcd: "messages may be sent while
  entries from the same batch are being persisted"): when a Ready changes neither term nor
  vote and we lead, its messages (appends and heartbeats) leave before the fsync, so that the
  followers write in parallel with us. It is safe with this core because the leader counts
  its own log towards a quorum only in ``advance``, after its write is durable
  (``core.RawNode.advance``): an entry still needs a quorum of durable copies to commit. A
  follower's acknowledgements and any vote always wait for the fsync.

A follower (any node that does not lead) writes and fsyncs inline, on the event loop, and
sends its acknowledgements straight after (``follower_sync_inline``). Its acknowledgement
waits for the fsync anyway, so the disk thread bought it nothing but two thread wake-ups on
the commit's critical path: the hand-off to the thread and the call back to the loop. On
the project's 2-core VMs each wake-up of an idle or busy vCPU costs from tens of
microseconds to milliseconds (a trace of one commit at one client showed the call back
taking 4 ms under load). What the follower receives during the fsync waits in the socket
and is stepped right after it, into the next Ready: the same group commit.

The leader writes inline too when its Ready is small (at most
``leader_inline_sync_entries_max`` new entries) and has nothing to apply: the light load of
a few clients, where the commit's latency is what matters. Its appends have left before the
write, so its fsync overlaps the followers' anyway, and no acknowledgement can commit an
entry before that fsync ends (the core counts the leader's own log only in ``advance``): a
loop kept free meanwhile would gain nothing for this commit, while the hop to the thread
and back cost two thread wake-ups plus a wait for the GIL on it (a trace of one client on
the 2-core VM: 0.2-0.5 ms from the send to the thread's first write, 0.2-0.3 ms from its
fsync's end back to the loop). A Ready with entries to apply keeps the thread, since their
proposers' answers would otherwise wait for the fsync; and under a heavy load (big Readies)
the thread lets the loop parse and answer requests while the disk works.

Reads (``read_index``): when leases are on (``read_lease``, reads.py "LEADER LEASES") and the
lease holds, a read waits for nothing but the state machine to reach the leader's commit
index, usually already there: no heartbeat round, no loop turn. The lease is counted in
ticks, so the tick loop keeps a fixed schedule (a tick late by less than an interval does not
move the next) and a read trusts the lease only while the next tick is not yet due; a tick
that comes a whole interval late (a stalled process) voids the lease until a round sent after
it is acknowledged. Otherwise, and whenever the lease does not hold, the read takes a
ReadIndex round.
Proposals and lost entries: ``propose`` notes (index, term) of its entry. When the entry at
that index is applied with the same term, the proposer gets the state machine's result; with
another term (a new leader overwrote it) it gets ``Unavailable`` and retries. A node that
loses leadership fails every pending proposal and read with ``NotLeader``: the entries may
still commit, which is why clients retry with the same (client id, sequence number).

Peer traffic: one-way ``raft`` frames on ``dfs.rpc``, their format defined in ``peer.py``.

Snapshot data format (version 1): the core's ``Snapshot.data`` is, for this driver,
``msgpack([1, [[node_id, "host:port"], ...], app_bytes])``: the state machine's image plus
the peer address map, so that a node restored from a snapshot can still reach members that
joined in the compacted part of the log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import msgpack

from dfs import rpc
from dfs.credentials import Credential
from dfs.types import LogIndex, NodeId, Term
from dfs.wire.errors import (
    DfsError,
    InternalError,
    NotLeader,
    Timeout,
    Unavailable,
)
from metaserver.raft.core import Config, NotLeaderError, ProposalDroppedError, RawNode, Status
from metaserver.raft.peer import RAFT_OP, Peer, frames_to_peers, messages_of_frame
from metaserver.raft.seed import NODE_SNAPSHOT_VERSION, snapshot_data
from metaserver.raft.storage import PREALLOCATE_BYTES, RaftStorage, StorageFailedError
from metaserver.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    HardState,
    Message,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    conf_change_from_bytes,
)
from metaserver.raft.waiters import Answer, Waiter

log = logging.getLogger(__name__)

# How long stop() waits for the disk thread to finish the write it is doing.
STOP_DISK_TIMEOUT_S = 10.0


class Replication(NamedTuple):
    """How the leader replicates to one member (``RaftNode.replication``)."""

    match: LogIndex  # the highest index known to match the leader's log
    sending: str  # "probe", "replicate" or "snapshot"
    active: bool  # it answered since the leader's last quorum check (every election timeout)


class StateMachine(Protocol):
    """What the node drives. ``apply`` must be deterministic: every replica applies the same
    commands in the same order and must end in the same state."""

    def apply(self, data: bytes) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


@dataclass(slots=True)
class NodeConfig:
    id: NodeId
    data_dir: Path
    # Initial members and their "host:port" (this node included). Later members are learned
    # from the log (ConfChange context) and from snapshots.
    peers: dict[NodeId, str]
    tick_ms: int = 100  # with election_ticks=10: elections after 1-2 s of silence
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = 10_000  # take a snapshot after this many applied entries
    fsync: bool = True  # False only for tests and benchmarks of everything but the disk
    # A node that joins an existing cluster (added with add_member) starts empty and waits
    # for the leader; an initial member bootstraps the membership of ``peers``.
    join: bool = False
    leader_sends_before_persist: bool = True  # see the module docstring
    follower_sync_inline: bool = True  # see the module docstring
    # A leader writes a Ready of at most this many entries (and none to apply) inline: see
    # the module docstring. One client proposes one at a time; a few, a few.
    leader_inline_sync_entries_max: int = 8
    # Reads on the leader's lease (reads.py, "LEADER LEASES") instead of a heartbeat round
    # each. The same on every member: a lease rests on the other members' promise.
    read_lease: bool = True
    seed: int | None = None  # election timeout randomness; None: from the OS
    core: dict[str, Any] = field(default_factory=dict)  # other core.Config fields


class RaftNode:
    """One Raft member. ``await start()``, serve ``receive`` for the peers' ``raft`` frames,
    use ``propose`` / ``read_index`` / membership calls, ``await stop()``."""

    def __init__(
        self, config: NodeConfig, state_machine: StateMachine, credentials: Credential
    ) -> None:
        assert config.id != NONE, "node ids start at 1"
        self.config = config
        self.id = config.id
        self.state_machine = state_machine
        self._credentials = credentials
        self._addresses: dict[NodeId, str] = dict(config.peers)
        self._raw: RawNode | None = None
        self._storage: RaftStorage | None = None
        self._disk = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"raft-disk-{config.id}"
        )
        self._wakeup = asyncio.Event()
        # The loop task is handling a Ready (it may be waiting for the disk thread): nobody
        # else takes one. A Ready taken in a read callback that needs waiting is handed to
        # the loop task in ``_handed``.
        self._busy = False
        self._handed: Ready | None = None
        # A hard state that changed only its commit index, not written yet: it goes with
        # the next write (``_persist``), or the loop task writes it when idle.
        self._hs_unwritten: HardState | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._peers: dict[NodeId, Peer] = {}
        self._stopped = False
        self._failed: BaseException | None = None
        self.failed = asyncio.Event()  # set when the node hit a fatal (disk) error
        # Waiters.
        self._proposals: dict[int, tuple[Term, Waiter]] = {}
        self._reads: dict[bytes, asyncio.Future[LogIndex]] = {}
        self._reads_applying: list[tuple[LogIndex, asyncio.Future[LogIndex]]] = []
        self._read_seq = 0
        self._soft_waiters: list[asyncio.Future[None]] = []
        # The waiters above that are waiting, with their deadlines; see _expire_at.
        self._deadlines: dict[Waiter, tuple[float, str]] = {}
        # What we know without asking the core.
        self.applied_index = LogIndex(0)
        self._applied_term = Term(0)
        self._snapshot_index = LogIndex(0)
        self._role = Role.FOLLOWER
        self._leader = NONE
        self.leader_changes = 0  # times this node saw a new leader (metrics)
        self._term = Term(0)
        self._persisted_term_vote: tuple[Term, NodeId] = (Term(0), NONE)
        self._next_tick_at = 0.0  # loop time of the next tick (see _tick_loop)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Open (and recover) the storage, restore the state machine, start the loop."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        self._storage = await loop.run_in_executor(
            self._disk,
            lambda: RaftStorage.open(
                cfg.data_dir, sync=cfg.fsync, preallocate_bytes=PREALLOCATE_BYTES
            ),
        )
        hard_state, snapshot, entries = self._storage.initial_state()
        fresh = hard_state == HardState() and snapshot is None and not entries
        bootstrap = None
        if fresh and not cfg.join:
            bootstrap = ConfState(voters=tuple(sorted(cfg.peers)))
        if snapshot is not None:
            self._restore(snapshot)
        core_cfg = Config(
            id=cfg.id,
            election_ticks=cfg.election_ticks,
            heartbeat_ticks=cfg.heartbeat_ticks,
            read_lease=cfg.read_lease,
            **cfg.core,
        )
        rng = random.Random(cfg.seed)
        self._raw = RawNode(
            core_cfg,
            rng,
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            bootstrap=bootstrap,
        )
        self._term = hard_state.term
        self._persisted_term_vote = (hard_state.term, hard_state.vote)
        log.info(
            "raft node=%d event=start term=%d commit=%d snapshot=%d entries=%d bootstrap=%s",
            cfg.id, hard_state.term, hard_state.commit, self._snapshot_index, len(entries),
            bootstrap is not None,
        )  # fmt: skip
        # Connect to every member now, not at the first message: a message to a peer whose
        # connection is still being made is dropped, and an election (after a leadership
        # transfer, for one) must not lose its first votes that way.
        for node_id in self._addresses:
            self._peer(node_id)
        self._next_tick_at = loop.time() + cfg.tick_ms / 1000
        self._tasks = [
            asyncio.create_task(self._run(), name=f"raft-run-{cfg.id}"),
            asyncio.create_task(self._tick_loop(), name=f"raft-tick-{cfg.id}"),
        ]
        self._wakeup.set()

    async def stop(self) -> None:
        """Cancel the loop, close the peer connections, fail every waiter, close storage."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for peer in self._peers.values():
            await peer.close()
        self._peers.clear()
        self._fail_waiters(Unavailable("raft node stopped"))
        self._deadlines.clear()
        storage = self._storage
        self._storage = None
        if storage is not None:
            # Runs after whatever write the disk thread is still doing: the storage is
            # thread-confined, and a write cut short by a crash is what recovery handles.
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(STOP_DISK_TIMEOUT_S):
                    hs = self._take_unwritten_hs()
                    await loop.run_in_executor(self._disk, _close_storage, storage, hs)
            except TimeoutError:
                log.error("raft node=%d event=stop disk thread did not finish", self.id)
        self._disk.shutdown(wait=False)
        log.info("raft node=%d event=stopped", self.id)

    # ------------------------------------------------------------------ public API

    @property
    def is_leader(self) -> bool:
        return self._role == Role.LEADER

    @property
    def leader_id(self) -> NodeId:
        return self._leader

    @property
    def term(self) -> Term:
        """The latest term this node has made durable (its current term)."""
        return self._term

    @property
    def snapshot_index(self) -> LogIndex:
        """The index of this node's latest snapshot: its log holds only the entries after
        it, so a member that needs earlier ones gets the snapshot."""
        return self._snapshot_index

    def address_of(self, node_id: NodeId) -> str | None:
        return self._addresses.get(node_id) if node_id != NONE else None

    def status(self) -> Status:
        return self._core().status()

    def replication(self) -> dict[NodeId, Replication]:
        """On the leader: how it replicates to each member (``Replication``), this node
        included; empty on any other node. What a membership change waits on before it
        promotes a learner, and ranks the voters by before it hands leadership over
        (metaserver/membership.py)."""
        raw = self._core()
        if raw.role != Role.LEADER:
            return {}
        return {
            n: Replication(pr.match, pr.state.name.lower(), pr.recent_active)
            for n, pr in raw.progress.items()
        }

    async def propose(self, data: bytes, timeout_s: float) -> Any:
        """Replicate ``data`` and return what the state machine's ``apply`` returned.

        Raises ``NotLeader`` (with the leader's address when known), ``Unavailable`` (the
        entry was lost to a leader change, the proposal was dropped, or the node stopped:
        retry) or ``Timeout`` (it may still commit: retry with the same sequence number)."""
        return await self._wait_applied(self._propose(data), timeout_s)

    def _propose(self, data: bytes) -> LogIndex:
        """The index ``data`` is proposed at; ``NotLeader``/``Unavailable`` as ``propose``."""
        try:
            return self._core().propose(data)
        except NotLeaderError as e:
            raise self._not_leader(e.leader) from None
        except ProposalDroppedError as e:
            raise Unavailable(f"proposal dropped: {e}") from None

    def propose_nowait(
        self, data: bytes, timeout_s: float, on_done: Callable[[Any, DfsError | None], None]
    ) -> None:
        """``propose`` without a task: ``on_done(result, None)`` once the entry is applied, or
        ``on_done(None, error)`` with ``propose``'s errors, called from whatever applies the
        entry (a read callback, the loop task) or gives up on it (a tick past the deadline,
        a lost leadership). Refusals (``NotLeader``, ``Unavailable``) are raised at once.
        The caller has the Ready taken: ``ready_now`` at the end of its read
        (``rpc.Connection.after_read``); nothing else wakes the loop task for it."""
        raw = self._core()
        index = self._propose(data)
        waiter = Answer(self._proposals, self._deadlines, index, on_done)
        self._proposals[index] = (raw.term, waiter)
        loop = asyncio.get_running_loop()
        self._expire_at(loop.time() + timeout_s, waiter, f"entry {index} not applied")

    async def read_index(self, timeout_s: float) -> None:
        """Return once the local state machine may serve a linearizable read: this node leads
        on a lease that holds, or it confirmed with a quorum that it still leads; and we
        applied its commit index."""
        raw = self._core()
        loop = asyncio.get_running_loop()
        # The lease is in ticks; it may be trusted only while our ticks keep up with real
        # time. The next tick not due yet says they do (a late one voids the lease). The
        # clock is read afresh: uvloop's loop.time() is the time its iteration began.
        index = raw.lease_read_index() if time.monotonic() < self._next_tick_at else None
        if index is not None:
            if self.applied_index >= index:
                return
            applying: asyncio.Future[LogIndex] = loop.create_future()
            self._reads_applying.append((index, applying))
            self._expire_at(loop.time() + timeout_s, applying, "read index not applied")
            try:
                await applying
            finally:
                self._deadlines.pop(applying, None)
            return
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        future: asyncio.Future[LogIndex] = loop.create_future()
        try:
            raw.read_index(ctx)
        except NotLeaderError as e:
            raise self._not_leader(e.leader) from None
        self._reads[ctx] = future
        self._expire_at(loop.time() + timeout_s, future, "read index not confirmed")
        self._wakeup.set()
        try:
            await future
        finally:
            self._reads.pop(ctx, None)
            self._deadlines.pop(future, None)

    async def add_member(
        self, node_id: NodeId, address: str, *, learner: bool = False, timeout_s: float = 10.0
    ) -> None:
        """Add ``node_id`` (reachable at ``address``) as a voter or a learner; returns once
        the change is applied here. The new node starts with ``join`` set."""
        kind = ConfChangeType.ADD_LEARNER if learner else ConfChangeType.ADD_VOTER
        await self._change_membership(ConfChange(kind, node_id, address.encode()), timeout_s)

    async def remove_member(self, node_id: NodeId, *, timeout_s: float = 10.0) -> None:
        await self._change_membership(ConfChange(ConfChangeType.REMOVE, node_id), timeout_s)

    async def transfer_leadership(self, to: NodeId, *, timeout_s: float = 10.0) -> None:
        """Ask the leader (this node) to hand over to ``to``; returns once ``to`` leads (as far
        as this node knows). ``Timeout`` if it did not happen in time."""
        raw = self._core()
        try:
            raw.transfer_leader(to)
        except NotLeaderError as e:
            raise self._not_leader(e.leader) from None
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout_s):
                while self._leader != to:
                    await self._soft_state_changed()
        except TimeoutError:
            raise Timeout(f"leadership did not move to {to} in {timeout_s} s") from None

    def take_frame(self, conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> bool:
        """The ``oneway_handler`` for ``rpc.serve``: takes the ``raft`` frames at once, in the
        read callback, and leaves any other one-way frame to the server's handler. Once every
        frame of the read is stepped, the Ready they make is handled in the same callback
        when it needs no wait (``ready_now``)."""
        if header.get("op") != RAFT_OP:
            return False
        if self._step_frame(header, payload):
            conn.after_read(self.ready_now)
        return True

    def receive(self, header: dict[str, Any], payload: bytes) -> None:
        """Handle one ``raft`` frame from a peer (the server's handler calls this)."""
        if self._step_frame(header, payload):
            self._wakeup.set()

    def _step_frame(self, header: dict[str, Any], payload: bytes) -> bool:
        """Step the messages of one ``raft`` frame; False when the node is not running."""
        if self._raw is None or self._stopped:
            return False
        step = self._raw.step
        for m in messages_of_frame(header, payload):
            step(m)
        return True

    # ------------------------------------------------------------------ the loop

    async def _tick_loop(self) -> None:
        interval_s = self.config.tick_ms / 1000
        raw = self._core()
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, self._next_tick_at - loop.time()))
            now = loop.time()
            # Ticks keep to a fixed schedule (a tick late by less than an interval does not
            # move the next one), so that the core's count of ticks keeps up with real time,
            # which its leader lease relies on. After a stall of a whole interval or more,
            # the missed ticks are not replayed in a burst (that would be an election
            # storm): the schedule moves on and the lease, measured in ticks that did not
            # happen, is voided.
            slipped = now >= self._next_tick_at + interval_s
            self._next_tick_at = (now if slipped else self._next_tick_at) + interval_s
            raw.tick()
            if slipped:
                raw.void_lease()
            self._wakeup.set()
            self._expire_deadlines(now)

    async def _run(self) -> None:
        raw = self._core()
        storage = self._storage
        assert storage is not None
        try:
            while self._failed is None:
                rd, self._handed = self._handed, None
                if rd is None:
                    if self._snapshot_due(raw):
                        self._busy = True
                        try:
                            await self._take_snapshot(raw, storage)
                        finally:
                            self._busy = False
                        continue
                    if not raw.has_ready():
                        hs = self._take_unwritten_hs()
                        if hs is not None:
                            storage.set_hard_state(hs)  # idle: the disk thread is too
                        self._wakeup.clear()
                        await self._wakeup.wait()
                        continue
                    rd = raw.ready()
                self._busy = True
                try:
                    await self._handle_ready(raw, rd)
                finally:
                    self._busy = False
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a disk error (storage refuses further calls) or a bug
            self._fatal(e)

    def ready_now(self) -> None:
        """After a read's ``raft`` frames (``take_frame``) or proposals (``propose_nowait``):
        handle the Ready they made here, in the read callback, when the loop task is idle
        and the Ready needs no wait (no snapshot to install, its write made inline: see the
        module docstring). That saves the loop turn of waking the loop task on the commit's
        path: a leader's appends, a follower's write and acknowledgement, a leader's commit
        and its proposers' answers. Anything else goes to the loop task."""
        raw = self._raw
        if raw is None or self._stopped or self._failed is not None:
            return
        if self._busy or self._handed is not None:
            self._wakeup.set()  # the loop task takes it after the Ready it is on
            return
        if not raw.has_ready():
            return
        rd = raw.ready()
        if not self._writes_inline(rd):
            self._handed = rd
            self._wakeup.set()
            return
        try:
            self._handle_ready_now(raw, rd)
        except Exception as e:  # as in _run: the node stops serving
            self._fatal(e)
            return
        if raw.has_ready() or self._snapshot_due(raw):
            self._wakeup.set()

    def _fatal(self, e: Exception) -> None:
        log.exception("raft node=%d event=fatal error=%s", self.id, e)
        self._failed = e
        self._fail_waiters(Unavailable(f"raft node failed: {e}"))
        self.failed.set()
        self._wakeup.set()  # the loop task ends

    def _leading(self, rd: Ready) -> bool:
        role = rd.soft_state.role if rd.soft_state is not None else self._role
        return role == Role.LEADER

    def _writes_inline(self, rd: Ready) -> bool:
        """Whether ``rd`` is handled on the event loop without waiting: it has no snapshot,
        and nothing to write or a write made inline (a follower's; a leader's small one
        with nothing to apply: see the module docstring)."""
        if rd.snapshot is not None:
            return False
        if not (rd.entries or rd.must_sync):
            return True
        if self._leading(rd):
            return (
                not rd.committed_entries
                and len(rd.entries) <= self.config.leader_inline_sync_entries_max
            )
        return self.config.follower_sync_inline

    def _snapshot_due(self, raw: RawNode) -> bool:
        # Only when the core and the state machine stand at the same index: right after
        # the core accepted a snapshot that the next Ready installs, its membership is
        # the snapshot's, not the one at our applied index.
        return (
            raw.applied == self.applied_index
            and self.applied_index - self._snapshot_index >= self.config.snapshot_entries
        )

    def _take_unwritten_hs(self) -> HardState | None:
        hs, self._hs_unwritten = self._hs_unwritten, None
        return hs

    def _term_vote_changed(self, rd: Ready) -> bool:
        """Whether ``rd`` changes the durable term or vote; notes its term."""
        hs = rd.hard_state
        changed = hs is not None and (hs.term, hs.vote) != self._persisted_term_vote
        if hs is not None:
            self._term = hs.term
        return changed

    def _handle_ready_now(self, raw: RawNode, rd: Ready) -> None:
        """A Ready that ``_writes_inline``: every step in this call."""
        storage = self._storage
        assert storage is not None
        changed = self._term_vote_changed(rd)
        early = self.config.leader_sends_before_persist and self._leading(rd) and not changed
        if early:
            self._send(rd.messages)
        if rd.entries or rd.must_sync:
            # See the module docstring: the commit waits for this write anyway, and a hop
            # to the disk thread and back would cost two thread wake-ups.
            _persist(storage, rd, self._take_unwritten_hs())
            if not early:
                self._send(rd.messages)
            self._apply(rd.committed_entries)
        else:
            self._apply(rd.committed_entries)
            if not early:
                self._send(rd.messages)
            if rd.hard_state is not None:
                # Only the commit index moved: it is written later, with the next write or
                # by the idle loop task (never fsynced: a lost commit index is relearned
                # from the leader). Written here, it would delay the proposers' answers.
                self._hs_unwritten = rd.hard_state
        self._finish_ready(raw, rd)

    async def _handle_ready(self, raw: RawNode, rd: Ready) -> None:
        if self._writes_inline(rd):
            self._handle_ready_now(raw, rd)
            return
        storage = self._storage
        assert storage is not None
        loop = asyncio.get_running_loop()
        if rd.snapshot is not None:
            self._term_vote_changed(rd)
            # The rare path, strictly in order: the snapshot replaces the state that any
            # entry of this Ready would be applied to.
            hs_before = self._take_unwritten_hs()
            await loop.run_in_executor(self._disk, _persist, storage, rd, hs_before)
            self._restore(rd.snapshot)
            log.info(
                "raft node=%d event=snapshot_installed index=%d term=%d",
                self.id, rd.snapshot.meta.index, rd.snapshot.meta.term,
            )  # fmt: skip
            self._send(rd.messages)
            self._apply(rd.committed_entries)
        else:
            changed = self._term_vote_changed(rd)
            early = self.config.leader_sends_before_persist and self._leading(rd) and not changed
            if early:
                self._send(rd.messages)
            hs_before = self._take_unwritten_hs()
            disk = loop.run_in_executor(self._disk, _persist, storage, rd, hs_before)
            # Committed entries are durable here already (the core hands out only entries
            # that an earlier Ready persisted) and on a quorum: apply them, and answer
            # their proposers, while this Ready's new entries are being written.
            self._apply(rd.committed_entries)
            await disk
            if not early:
                self._send(rd.messages)
        self._finish_ready(raw, rd)

    def _finish_ready(self, raw: RawNode, rd: Ready) -> None:
        """Steps 5 and 6 of a Ready, once its write is durable."""
        hs = rd.hard_state
        if hs is not None:
            self._persisted_term_vote = (hs.term, hs.vote)
        if rd.soft_state is not None:
            # After applying: what this Ready committed still answers its proposers.
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
        for rs in rd.read_states:
            future = self._reads.pop(rs.context, None)
            if future is None or future.done():
                continue
            if self.applied_index >= rs.index:
                future.set_result(rs.index)
            else:
                self._reads_applying.append((rs.index, future))
        if self._reads_applying:
            self._wake_reads()
        raw.advance(rd)

    def _apply(self, entries: Sequence[Any]) -> None:
        sm = self.state_machine
        proposals = self._proposals
        for e in entries:
            result: Any = None
            error: DfsError | None = None
            if e.type == EntryType.NORMAL:
                try:
                    result = sm.apply(e.data)
                except Exception:
                    # Deterministic: every replica fails the same way on the same entry.
                    log.exception("raft node=%d event=apply_failed index=%d", self.id, e.index)
                    error = InternalError(f"state machine failed on entry {e.index}")
            elif e.type == EntryType.CONF_CHANGE:
                self._on_conf_change(conf_change_from_bytes(e.data), e.index)
            self.applied_index = e.index
            self._applied_term = e.term
            waiter = proposals.pop(e.index, None)
            if waiter is None:
                continue
            term, future = waiter
            if future.done():
                continue
            if term != e.term:
                future.set_exception(
                    Unavailable("the entry was lost to a leader change; retry", index=e.index)
                )
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _wake_reads(self) -> None:
        still = []
        for index, future in self._reads_applying:
            if future.done():
                continue
            if self.applied_index >= index:
                future.set_result(index)
            else:
                still.append((index, future))
        self._reads_applying = still

    async def _take_snapshot(self, raw: RawNode, storage: RaftStorage) -> None:
        index = self.applied_index
        meta = SnapshotMeta(index, self._applied_term, raw.status().conf)
        snap = Snapshot(meta, self._snapshot_data())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._disk, storage.save_snapshot, snap)
        raw.compact(snap)
        self._snapshot_index = index
        log.info(
            "raft node=%d event=snapshot_saved index=%d term=%d bytes=%d",
            self.id, index, meta.term, len(snap.data),
        )  # fmt: skip

    # ------------------------------------------------------------------ state changes

    def _on_soft_state(self, role: Role, leader: NodeId) -> None:
        was_leader = self._role == Role.LEADER
        changed = role != self._role or leader != self._leader
        if leader != self._leader and leader != NONE:
            self.leader_changes += 1
        self._role = role
        self._leader = leader
        if changed and role in (Role.LEADER, Role.FOLLOWER):
            log.info(
                "raft node=%d event=role role=%s leader=%d term=%d",
                self.id, role.name.lower(), leader, self._term,
            )  # fmt: skip
        elif changed:
            log.debug("raft node=%d event=role role=%s term=%d", self.id, role.name, self._term)
        if was_leader and role != Role.LEADER:
            # The entries may still commit under the next leader; the clients retry with
            # their sequence numbers, and the sessions drop the duplicates.
            self._fail_waiters(self._not_leader(leader))
        waiters, self._soft_waiters = self._soft_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _on_conf_change(self, cc: ConfChange, index: int) -> None:
        if cc.type == ConfChangeType.REMOVE:
            self._addresses.pop(cc.node_id, None)
            peer = self._peers.pop(cc.node_id, None)
            if peer is not None:
                asyncio.get_running_loop().create_task(peer.close())
        elif cc.context:
            self._set_address(cc.node_id, cc.context.decode("utf-8", "replace"))
        log.info(
            "raft node=%d event=conf_change index=%d type=%s member=%d address=%s",
            self.id, index, cc.type.name.lower(), cc.node_id,
            self._addresses.get(cc.node_id, "-"),
        )  # fmt: skip

    async def _change_membership(self, cc: ConfChange, timeout_s: float) -> None:
        raw = self._core()
        try:
            index = raw.propose_conf_change(cc)
        except NotLeaderError as e:
            raise self._not_leader(e.leader) from None
        except ProposalDroppedError as e:
            raise Unavailable(f"membership change dropped: {e}") from None
        await self._wait_applied(index, timeout_s)

    async def _wait_applied(self, index: LogIndex, timeout_s: float) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # The term the entry was proposed in: the term we lead in, which is the core's now.
        self._proposals[index] = (self._core().term, future)
        self._expire_at(loop.time() + timeout_s, future, f"entry {index} not applied")
        self._wakeup.set()
        try:
            return await future
        finally:
            self._deadlines.pop(future, None)
            waiter = self._proposals.get(index)
            if waiter is not None and waiter[1] is future:
                del self._proposals[index]

    def _expire_at(self, deadline: float, future: Waiter, what: str) -> None:
        """Fail ``future`` with ``Timeout`` unless it is done by ``deadline``; the caller
        removes it from ``_deadlines`` once it no longer waits (``finally``).

        Why not ``asyncio.timeout`` per call: that is a timer handle scheduled and cancelled
        per proposal, a measurable share of the leader's CPU at tens of thousands of
        proposals a second. Nor a heap of every deadline set: it held each proposal's for
        its whole 5 s, done or not (50,000 entries at 10,000 commits a second, each keeping
        its future alive, which the garbage collector then walked: py-spy put 4-6% of the
        leader's samples there). Only waiters that still wait are here, a few hundred at
        most; each tick fails those whose deadline has passed: never early, and up to one
        tick late, which callers with second-long deadlines do not see.
        """
        self._deadlines[future] = (deadline, what)

    def _expire_deadlines(self, now: float) -> None:
        expired = [(f, what) for f, (deadline, what) in self._deadlines.items() if deadline <= now]
        for future, what in expired:
            if not future.done():
                future.set_exception(Timeout(f"{what} in time"))

    async def _soft_state_changed(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._soft_waiters.append(future)
        await future

    def _fail_waiters(self, error: DfsError) -> None:
        # The same table, emptied: an Answer holds it (waiters.py).
        proposals = list(self._proposals.values())
        self._proposals.clear()
        for _, future in proposals:
            if not future.done():
                future.set_exception(_copy(error))
        reads, self._reads = self._reads, {}
        for future in reads.values():
            if not future.done():
                future.set_exception(_copy(error))
        applying, self._reads_applying = self._reads_applying, []
        for _, future in applying:
            if not future.done():
                future.set_exception(_copy(error))

    def _not_leader(self, leader: NodeId) -> NotLeader:
        return NotLeader(self.address_of(leader), leader_id=int(leader))

    def _core(self) -> RawNode:
        if self._stopped or self._raw is None:
            raise Unavailable("raft node is not running")
        if self._failed is not None:
            raise Unavailable(f"raft node failed: {self._failed}")
        return self._raw

    # ------------------------------------------------------------------ snapshots

    def image(self) -> tuple[LogIndex, Term, bytes]:  # (applied index, its term, snapshot)
        return self.applied_index, self._applied_term, self.state_machine.snapshot()

    def _snapshot_data(self) -> bytes:
        return snapshot_data(dict(self._addresses), self.state_machine.snapshot())

    def _restore(self, snap: Snapshot) -> None:
        """Load the state machine (and the address map) from a snapshot."""
        if snap.data:
            version, members, app = msgpack.unpackb(snap.data, raw=False)
            if version != NODE_SNAPSHOT_VERSION:
                raise ValueError(f"unknown node snapshot version {version}")
            for node_id, address in members:
                self._set_address(NodeId(int(node_id)), str(address))
            self.state_machine.restore(app)
        else:
            self.state_machine.restore(b"")
        self.applied_index = snap.meta.index
        self._applied_term = snap.meta.term
        self._snapshot_index = snap.meta.index
        # Proposals at or below the snapshot are decided, but their results are not known
        # here: let them retry (the sessions answer a duplicate with the first result).
        for index in [i for i in self._proposals if i <= snap.meta.index]:
            _, future = self._proposals.pop(index)
            if not future.done():
                future.set_exception(Unavailable("superseded by a snapshot; retry"))
        self._wake_reads()

    # ------------------------------------------------------------------ transport

    def _send(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        frames = frames_to_peers(self.id, messages)
        for to, header, payload in frames:
            peer = self._peer(to)
            if peer is None:
                log.debug("raft node=%d event=drop to=%d reason=no_address", self.id, to)
                continue
            peer.send(header, payload)
        # The Ready is complete: write now rather than at the end of this loop iteration,
        # which may hold a blocking fsync (a follower's) or a long apply.
        for to in {to for to, _, _ in frames}:
            peer = self._peers.get(to)
            if peer is not None:
                peer.flush()

    def _set_address(self, node_id: NodeId, address: str) -> None:
        if self._addresses.get(node_id) != address:
            self._addresses[node_id] = address
            peer = self._peers.pop(node_id, None)
            if peer is not None:
                asyncio.get_running_loop().create_task(peer.close())
        if self._raw is not None:  # running: connect now (see start)
            self._peer(node_id)

    def _peer(self, node_id: NodeId) -> Peer | None:
        """The connection to ``node_id``, made on first use; None without an address."""
        peer = self._peers.get(node_id)
        if peer is None and node_id != self.id and not self._stopped:
            address = self._addresses.get(node_id)
            if address is None:
                return None
            peer = self._peers[node_id] = Peer(self.id, node_id, address, self._credentials)
        return peer


def _persist(storage: RaftStorage, rd: Ready, hs_before: HardState | None) -> None:
    """Step 1 and 2 of a Ready (on the disk thread, or inline). ``hs_before``: an earlier
    hard state not written yet (``_hs_unwritten``); the Ready's own supersedes it."""
    if rd.snapshot is not None:
        storage.install_snapshot(rd.snapshot)
    storage.append(rd.entries, rd.hard_state or hs_before)  # one write for both
    if rd.must_sync:
        storage.sync()


def _close_storage(storage: RaftStorage, hs: HardState | None) -> None:
    """Write a commit index not written yet, then close (on the disk thread)."""
    try:
        if hs is not None:
            storage.set_hard_state(hs)
    except (StorageFailedError, OSError):
        pass  # a lost commit index is relearned from the leader; close anyway
    storage.close()


def _copy(error: DfsError) -> DfsError:
    return copy.copy(error)  # one instance per raiser: tracebacks attach to the instance


__all__ = ["NodeConfig", "RaftNode", "Replication", "StateMachine"]
