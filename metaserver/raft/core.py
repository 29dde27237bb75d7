"""The Raft core: a pure, deterministic state machine in the style of etcd's raft.

What it owns: the role (follower, pre-candidate, candidate, leader), the term and vote, the
commit and applied indexes, replication, pending linearizable reads and the leader lease,
leadership transfer and the membership (ConfState). Two parts live beside it, pure too:
the in-memory log since the last snapshot (``log.py``) and what the leader knows of each
follower's log (``progress.py``).

What it must not do: any I/O. No clock (time is ``tick()``), no socket, no disk, no thread,
no global random (the RNG is injected). The caller drives it:

    step(message) / tick() / propose(data) / read_index(ctx) / ...   inputs
    ready()  -> Ready                                                 outputs
    advance(ready)                                                    "done with that batch"

and handles each Ready in the order written on ``types.Ready``: persist (one fsync), then
send, then apply. Because nothing here waits or reads a clock, the simulator (``sim.py``)
runs many cores over a fake network and replays any run from its seed.

Invariants and where they are kept:
- One vote per term: ``_handle_vote`` grants only when ``vote`` is none or the same node,
  and the vote reaches disk (Ready.hard_state) before the reply leaves (Ready.messages).
- Log matching: ``_handle_append`` accepts entries only after the (index, term) before them
  matches; conflicting suffixes are cut, never committed entries (asserted).
- Leader completeness: votes go only to candidates whose log is at least as up to date.
- A leader commits by counting replicas only for entries of its own term (``_maybe_commit``).
- Entries are applied only once durable locally and committed (``_next_committed``).
- Membership: one change at a time, taking effect when applied (as etcd), and a new leader
  accepts none until the entries of earlier terms are applied (``pending_conf_index``).

Linearizable reads and the leader lease: ``reads.py`` keeps the rounds, the waiting reads
and the lease's bookkeeping, and says why a lease is safe; the core feeds it (heartbeats
sent and answered, commits, changes of role) and keeps rule 1 of the lease, the followers'
promise, itself (``step``, ``_hup``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from dfs.types import LogIndex, NodeId, Term
from metaserver.raft.log import RaftLog
from metaserver.raft.progress import Progress, ProgressState
from metaserver.raft.reads import ReadTracker
from metaserver.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    conf_change_from_bytes,
    conf_change_to_bytes,
)

TRANSFER_CONTEXT = b"transfer"  # a vote asked for by leadership transfer ignores leases
ENTRY_OVERHEAD_BYTES = 24  # rough per-entry cost on the wire, for message size budgets


class RaftError(Exception):
    pass


class NotLeaderError(RaftError):
    def __init__(self, leader: NodeId) -> None:
        super().__init__(f"not the leader (leader is {leader or 'unknown'})")
        self.leader = leader


class ProposalDroppedError(RaftError):
    """The leader will not take this proposal now (transfer, pending change, backlog)."""


@dataclass(slots=True)
class Config:
    id: NodeId
    election_ticks: int = 10  # a follower campaigns after [election, 2*election) silent ticks
    heartbeat_ticks: int = 1
    pre_vote: bool = True  # a partitioned node cannot inflate terms and depose a leader
    check_quorum: bool = True  # a leader without a quorum steps down; leases protect it
    inflight_msgs_max: int = 256  # appends in flight per follower before waiting for acks
    bytes_per_msg_max: int = 1 << 20  # entries bytes per append message (at least 1 entry)
    snapshot_chunk_bytes: int = 1 << 20  # InstallSnapshot chunk size
    uncommitted_entries_max: int = 100_000  # proposals beyond this backlog are dropped
    # Leader leases (reads.py, LEADER LEASES). Every voter must have the same setting.
    read_lease: bool = False
    # The drift bound: no node's tick clock runs more than this many times as fast as
    # another's. 1.1 is far beyond the drift of real clocks (parts per million); what it
    # really absorbs is timer granularity, since ticks that fire late only make a follower's
    # promise longer, and a leader's late ticks are the caller's to report (void_lease).
    clock_rate_ratio_max: float = 1.1

    def __post_init__(self) -> None:
        assert self.id != NONE, "node ids start at 1"
        assert self.heartbeat_ticks >= 1 and self.election_ticks > self.heartbeat_ticks
        assert self.clock_rate_ratio_max >= 1.0
        assert not self.read_lease or self.lease_ticks >= 1, "election_ticks too small"

    @property
    def lease_ticks(self) -> int:
        """How long a leader's lease lasts, in its own ticks from the send of the
        acknowledged heartbeat: floor((election_ticks - 1) / clock_rate_ratio_max)."""
        return math.floor((self.election_ticks - 1) / self.clock_rate_ratio_max)


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    term: Term
    role: Role
    leader: NodeId
    commit: LogIndex
    applied: LogIndex
    last_index: LogIndex
    conf: ConfState


class RawNode:
    def __init__(
        self,
        config: Config,
        rng: random.Random,
        *,
        hard_state: HardState,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
        bootstrap: ConfState | None = None,
    ) -> None:
        self.cfg = config
        self.id = config.id
        self.rng = rng
        meta = snapshot.meta if snapshot is not None else SnapshotMeta()
        self.snapshot = snapshot  # the latest snapshot, sent to followers that lag behind it
        self.log = RaftLog(meta.index, meta.term, entries)
        self.conf = meta.conf
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.committed = LogIndex(max(hard_state.commit, meta.index))
        self.applied = meta.index
        self._applying = meta.index  # last index handed out in committed_entries
        self._persisted = self.log.last_index()  # entries up to here are on our disk
        self._unstable_from = LogIndex(self._persisted + 1)  # first entry not yet handed out
        self._prev_hard = HardState(self.term, self.vote, self.committed)
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._pending_snapshot: Snapshot | None = None
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []

        fresh = hard_state == HardState() and snapshot is None and not entries
        if bootstrap is not None and fresh:
            # Every initial member writes the same membership entries at term 1, so they
            # are identical on all of them and a member added later learns the whole
            # membership by replaying the log from index 1.
            changes = [ConfChange(ConfChangeType.ADD_VOTER, v) for v in bootstrap.voters]
            changes += [ConfChange(ConfChangeType.ADD_LEARNER, v) for v in bootstrap.learners]
            self.log.entries = [
                Entry(Term(1), LogIndex(i + 1), EntryType.CONF_CHANGE, conf_change_to_bytes(c))
                for i, c in enumerate(changes)
            ]
            self._persisted = LogIndex(0)
            self._unstable_from = LogIndex(1)
            self.term = Term(1)
            self.committed = self.log.last_index()
            self.conf = bootstrap

        self.role = Role.FOLLOWER
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = 0
        self.votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, Progress] = {}
        self.lead_transferee = NONE
        self.pending_conf_index = LogIndex(0)
        self._bcast_pending = False
        self.reads = ReadTracker(config)  # heartbeat rounds, ReadIndex reads, the lease
        # Rule 1 of the lease: ticks since we accepted a leader's message; a node that
        # starts counts as having just heard one.
        self.lease_elapsed = 0
        self._snap_recv: tuple[SnapshotMeta, bytearray] | None = None
        # A snapshot received while a Ready is out (between ready() and advance()) waits:
        # restoring under it would let advance() replay that Ready's older membership
        # changes on top of the snapshot's newer membership.
        self._ready_out = False
        self._deferred_snapshot: tuple[Term, NodeId, Snapshot] | None = None
        self._ticks = 0  # a local clock in ticks, for retransmission timers only
        self._transfer_elapsed = 0
        self._reset_randomized_election()

    # ------------------------------------------------------------------------------
    # Inputs

    def tick(self) -> None:
        self._ticks += 1
        self.lease_elapsed += 1
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self._promotable() and self.election_elapsed >= self.randomized_election_ticks:
                self.election_elapsed = 0
                self._hup(transfer=False)

    def campaign(self) -> None:
        """Start an election now (tests and operators); pre-vote first when configured."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> LogIndex:
        return self._propose(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> LogIndex:
        if self.role == Role.LEADER:
            if self.pending_conf_index > self.applied:
                raise ProposalDroppedError("a membership change is still being applied")
            voters = set(self.conf.voters)
            if cc.type == ConfChangeType.REMOVE or cc.type == ConfChangeType.ADD_LEARNER:
                voters.discard(cc.node_id)
            else:
                voters.add(cc.node_id)
            if not voters:
                raise ProposalDroppedError("a cluster needs at least one voter")
        index = self._propose(EntryType.CONF_CHANGE, conf_change_to_bytes(cc))
        self.pending_conf_index = index
        return index

    def read_index(self, context: bytes) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.log.term(self.committed) != self.term:
            self.reads.wait_for_commit(context)
            return
        self._queue_read(context)

    def lease_read_index(self) -> LogIndex | None:
        """The index at which a read may be served now, without a heartbeat round, because
        this leader's lease holds (``reads.py``, LEADER LEASES); None when it does not (not
        leader, leases off, no entry of this term committed yet, a transfer begun, or no
        recent quorum): use ``read_index`` then."""
        if not self.cfg.read_lease or self.role != Role.LEADER or self.reads.lease_given_up:
            return None
        if self.log.term(self.committed) != self.term:
            return None
        start = self.reads.lease_start(self._ticks, self.conf.voters, self.id, self.progress)
        if start is None or self._ticks >= start + self.cfg.lease_ticks:
            return None
        return self.committed

    def void_lease(self) -> None:
        """The caller's clock slipped (its ticks fell behind real time, as after a stall of
        the process): acknowledgements of heartbeats sent before the latest tick no longer
        count toward the lease. Heartbeats sent from now on renew it."""
        self.reads.void(self._ticks, self.progress)

    def transfer_leader(self, to: NodeId) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if to == self.id or to not in self.conf.voters or self.lead_transferee == to:
            return
        self.lead_transferee = to
        # Abandoned after one election timeout, on its own timer: restarting the
        # check-quorum window here would let repeated transfer calls keep a cut-off
        # leader in office.
        self._transfer_elapsed = 0
        if self.progress[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def compact(self, snap: Snapshot) -> None:
        """The application saved a snapshot at ``snap.meta.index`` (<= applied)."""
        i = snap.meta.index
        assert i <= self.applied, "cannot snapshot beyond the applied index"
        if i <= self.log.offset:
            return
        t = self.log.term(i)
        assert t == snap.meta.term, "snapshot term does not match the log"
        self.log.compact_to(i, t)
        self.snapshot = snap

    def step(self, m: Message) -> None:
        if m.to != self.id:
            return
        if (
            self.cfg.read_lease
            and m.type in (MessageType.VOTE, MessageType.PRE_VOTE)
            and m.term >= self.term
            and m.context != TRANSFER_CONTEXT
            and self.lease_elapsed < self.cfg.election_ticks
        ):
            # Rule 1 of the lease, in any term: a leader we heard from recently may be
            # serving reads on the strength of our promise.
            return
        if m.term > self.term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                force = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self.cfg.check_quorum
                    and self.leader != NONE
                    and self.election_elapsed < self.cfg.election_ticks
                )
                if in_lease and not force:
                    # We heard from a live leader recently: a disruptive candidate (for
                    # example one that was partitioned away) must not depose it.
                    return
            if m.type == MessageType.PRE_VOTE:
                pass  # a pre-vote never changes anyone's term
            elif m.type == MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # granted for the term we would take; counted below
            elif m.type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MessageType.APP, MessageType.HEARTBEAT) and (
                self.cfg.check_quorum or self.cfg.pre_vote
            ):
                # A deposed leader cut off from us: tell it our term so that it steps
                # down. Without this it would never learn, since pre-vote keeps our
                # term from rising past it by elections.
                self._send(Message(MessageType.APP_RESP, m.frm, self.id, self.term))
            elif m.type == MessageType.PRE_VOTE:
                self._send(
                    Message(MessageType.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True)
                )
            return

        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    # ------------------------------------------------------------------------------
    # Outputs

    def has_ready(self) -> bool:
        self._flush()
        return bool(
            self._msgs
            or self._read_states
            or self._pending_snapshot is not None
            or self._unstable_from <= self.log.last_index()
            or self._next_committed_hi() > self._applying
            or self.term != self._prev_hard.term
            or self.vote != self._prev_hard.vote
            or self.committed != self._prev_hard.commit
            or self.leader != self._prev_soft.leader
            or self.role != self._prev_soft.role
        )

    def ready(self) -> Ready:
        self._flush()
        soft = self._soft_state()
        hard = self._hard_state()
        last = self.log.last_index()
        entries: tuple[Entry, ...] = ()
        if self._unstable_from <= last:
            entries = tuple(self.log.slice(self._unstable_from, last + 1))
        hi = self._next_committed_hi()
        committed: tuple[Entry, ...] = ()
        if hi > self._applying:
            committed = tuple(self.log.slice(self._applying + 1, hi + 1))
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            snapshot=self._pending_snapshot,
            messages=tuple(self._msgs),
            committed_entries=committed,
            read_states=tuple(self._read_states),
            must_sync=bool(entries)
            or self._pending_snapshot is not None
            or hard.term != self._prev_hard.term
            or hard.vote != self._prev_hard.vote,
        )
        self._prev_soft = soft
        self._prev_hard = hard
        self._unstable_from = LogIndex(last + 1)
        self._applying = max(self._applying, hi)
        self._pending_snapshot = None
        self._msgs = []
        self._read_states = []
        self._ready_out = True
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.entries:
            e = rd.entries[-1]
            # Entries handed out may have been replaced since (a new leader's log); what
            # is on disk then is only known up to the replacement.
            if self.log.match_term(e.index, e.term):
                self._persisted = max(self._persisted, e.index)
            if self.role == Role.LEADER:
                self.progress[self.id].maybe_update(self._persisted)
                if self._maybe_commit():
                    self._bcast_pending = True
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(conf_change_from_bytes(e.data))
        if rd.committed_entries:
            self.applied = max(self.applied, rd.committed_entries[-1].index)
        self._ready_out = False
        if self._deferred_snapshot is not None:
            term, frm, snap = self._deferred_snapshot
            self._deferred_snapshot = None
            # Only if the leader that sent it is still ours; otherwise it is stale and
            # the current leader will send what we need.
            if term == self.term and self.role == Role.FOLLOWER:
                self._install_received(frm, snap)

    def status(self) -> Status:
        return Status(
            self.id, self.term, self.role, self.leader, self.committed, self.applied,
            self.log.last_index(), self.conf,
        )  # fmt: skip

    # ------------------------------------------------------------------------------
    # Roles

    def _reset(self, term: Term) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_election()
        self.votes = {}
        self.lead_transferee = NONE
        self.progress = {}
        self.reads.reset()
        self._bcast_pending = False

    def _become_follower(self, term: Term, leader: NodeId) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        # Term and vote stay as they are: a pre-vote that fails changes nothing.
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader = NONE
        self.election_elapsed = 0
        self._reset_randomized_election()

    def _become_candidate(self) -> None:
        self._reset(Term(self.term + 1))
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self.log.last_index()
        for n in self.conf.members():
            pr = Progress(next=LogIndex(last + 1))
            pr.recent_active = True
            self.progress[n] = pr
        if self.id not in self.progress:  # leading while being removed; count our own log
            self.progress[self.id] = Progress(next=LogIndex(last + 1))
        self.progress[self.id].match = self._persisted
        # No membership change until everything before our term is applied: a change
        # must never overlap one that an earlier leader may have left half-done.
        self.pending_conf_index = last
        self._append([Entry(self.term, LogIndex(last + 1), EntryType.EMPTY)])
        self._bcast_pending = True

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self._promotable():
            return
        if self.cfg.read_lease and not transfer and self.lease_elapsed < self.cfg.election_ticks:
            return  # rule 1 of the lease: our own vote is bound too
        pending = self.log.slice(self.applied + 1, self.committed + 1)
        if any(e.type == EntryType.CONF_CHANGE for e in pending):
            return  # membership may be about to change: wait until it is applied
        if self.cfg.pre_vote and not transfer:
            self._campaign(MessageType.PRE_VOTE, b"")
        else:
            self._campaign(MessageType.VOTE, TRANSFER_CONTEXT if transfer else b"")

    def _campaign(self, kind: MessageType, context: bytes) -> None:
        if kind == MessageType.PRE_VOTE:
            self._become_pre_candidate()
            term = Term(self.term + 1)
        else:
            self._become_candidate()
            term = self.term
        self.votes[self.id] = True
        if self._tally() == "won":
            self._win(kind)
            return
        for n in self.conf.voters:
            if n != self.id:
                self._send(
                    Message(
                        kind,
                        n,
                        self.id,
                        term,
                        log_term=self.log.last_term(),
                        index=self.log.last_index(),
                        context=context,
                    )
                )

    def _win(self, kind: MessageType) -> None:
        if kind == MessageType.PRE_VOTE:
            self._campaign(MessageType.VOTE, b"")
        else:
            self._become_leader()

    def _tally(self) -> str:
        q = len(self.conf.voters) // 2 + 1
        granted = sum(1 for n, v in self.votes.items() if v and n in self.conf.voters)
        rejected = sum(1 for n, v in self.votes.items() if not v and n in self.conf.voters)
        if granted >= q:
            return "won"
        if rejected >= q:
            return "lost"
        return "pending"

    def _promotable(self) -> bool:
        return self.id in self.conf.voters

    def _reset_randomized_election(self) -> None:
        e = self.cfg.election_ticks
        self.randomized_election_ticks = e + self.rng.randrange(e)

    # ------------------------------------------------------------------------------
    # Message handling by role

    def _handle_vote(self, m: Message) -> None:
        pre = m.type == MessageType.PRE_VOTE
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.leader == NONE)
            or (pre and m.term > self.term)
        )
        up_to_date = (m.log_term, m.index) >= (self.log.last_term(), self.log.last_index())
        resp = MessageType.PRE_VOTE_RESP if pre else MessageType.VOTE_RESP
        if can_vote and up_to_date:
            # The reply carries the candidate's term: for a pre-vote that is the term it
            # would take, which we have not taken.
            self._send(Message(resp, m.frm, self.id, m.term))
            if not pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))

    def _step_follower(self, m: Message) -> None:
        if m.type == MessageType.APP:
            self.election_elapsed = 0
            self.lease_elapsed = 0
            self.leader = m.frm
            self._handle_append(m)
        elif m.type == MessageType.HEARTBEAT:
            self.election_elapsed = 0
            self.lease_elapsed = 0
            self.leader = m.frm
            self._commit_to(m.commit)
            self._send(
                Message(MessageType.HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context)
            )
        elif m.type == MessageType.SNAP:
            self.election_elapsed = 0
            self.lease_elapsed = 0
            self.leader = m.frm
            self._handle_snapshot(m)
        elif m.type == MessageType.TIMEOUT_NOW:
            self._hup(transfer=True)

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
            self._become_follower(self.term, m.frm)
            self._step_follower(m)
            return
        want = (
            MessageType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        )
        if m.type != want:
            return
        self.votes.setdefault(m.frm, not m.reject)
        result = self._tally()
        if result == "won":
            self._win(MessageType.PRE_VOTE if self.role == Role.PRE_CANDIDATE else MessageType.VOTE)
        elif result == "lost":
            self._become_follower(self.term, NONE)

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        if m.type == MessageType.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self._find_conflict_by_term(hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            if pr.maybe_update(m.index):
                if pr.state == ProgressState.PROBE:
                    pr.become_replicate()
                elif (
                    pr.state == ProgressState.SNAPSHOT
                    and pr.snapshot is not None
                    and pr.match >= pr.snapshot.meta.index
                ):
                    pr.become_probe()
                    pr.become_replicate()
                while pr.inflight and pr.inflight[0] <= m.index:
                    pr.inflight.popleft()
                if self._maybe_commit():
                    self._bcast_pending = True
                else:
                    self._send_append(m.frm, send_empty=False)
                if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                    self._send_timeout_now(m.frm)
        elif m.type == MessageType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if (
                pr.state == ProgressState.REPLICATE
                and len(pr.inflight) >= self.cfg.inflight_msgs_max
            ):
                # The follower is alive but the window is full: appends or their acks were
                # lost. Free one slot so that an append goes out and exposes the gap.
                pr.inflight.popleft()
            if pr.state == ProgressState.SNAPSHOT:
                # The chunk or its ack may be lost; resend only after some ticks without
                # progress, not on every heartbeat, so a slow link is not flooded with
                # copies of a chunk still in flight.
                if self._ticks - pr.snapshot_sent_tick >= max(1, self.cfg.election_ticks // 2):
                    self._send_snapshot_chunk(m.frm, pr)
            elif pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context and m.frm in self.conf.voters:
                self._read_states += self.reads.acknowledge(
                    pr, int.from_bytes(m.context, "big"), self.conf.voters, self.id, self.progress
                )
        elif m.type == MessageType.SNAP_RESP:
            pr.recent_active = True
            if pr.state != ProgressState.SNAPSHOT or pr.snapshot is None:
                return
            if m.done:
                pr.maybe_update(m.index)
                pr.become_probe()
                self._send_append(m.frm)
            elif m.reject:
                pr.snapshot_offset = 0
                self._send_snapshot_chunk(m.frm, pr)
            elif m.index == pr.snapshot.meta.index and m.offset <= len(pr.snapshot.data):
                # Only an ack that moves forward triggers the next chunk; any other offset
                # is remembered and served by the retransmission on the next heartbeat, so
                # stale or duplicated acks cannot start a storm of chunks.
                forward = m.offset > pr.snapshot_offset
                pr.snapshot_offset = m.offset
                if forward:
                    self._send_snapshot_chunk(m.frm, pr)

    # ------------------------------------------------------------------------------
    # Log replication

    def _handle_append(self, m: Message) -> None:
        if m.index < self.committed:
            self._send(
                Message(MessageType.APP_RESP, m.frm, self.id, self.term, index=self.committed)
            )
            return
        if self.log.match_term(m.index, m.log_term):
            last_new = LogIndex(m.index + len(m.entries))
            for k, e in enumerate(m.entries):
                if not self.log.match_term(e.index, e.term):
                    assert e.index > self.committed, "a committed entry would be overwritten"
                    self._append(list(m.entries[k:]))
                    break
            self._commit_to(LogIndex(min(m.commit, last_new)))
            self._send(Message(MessageType.APP_RESP, m.frm, self.id, self.term, index=last_new))
            return
        # Reject with a hint that lets the leader skip a whole term of mismatching entries
        # per round trip instead of one entry (etcd's findConflictByTerm).
        hint = self._find_conflict_by_term(
            LogIndex(min(m.index, self.log.last_index())), m.log_term
        )
        self._send(
            Message(
                MessageType.APP_RESP,
                m.frm,
                self.id,
                self.term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=self.log.term(hint) or Term(0),
            )
        )

    def _find_conflict_by_term(self, index: LogIndex, term: Term) -> LogIndex:
        """The largest index <= ``index`` whose term is <= ``term`` (as far as we know)."""
        i = index
        while i > self.log.offset:
            t = self.log.term(i)
            if t is None or t <= term:
                break
            i = LogIndex(i - 1)
        return i

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        last = self.log.last_index()
        assert first <= last + 1
        if first <= last:
            self.log.truncate_from(first)
            self._unstable_from = LogIndex(min(self._unstable_from, first))
            self._persisted = LogIndex(min(self._persisted, first - 1))
        self.log.entries.extend(entries)

    def _propose(self, kind: EntryType, data: bytes) -> LogIndex:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.lead_transferee != NONE:
            raise ProposalDroppedError("leadership is being transferred")
        index = LogIndex(self.log.offset + len(self.log.entries) + 1)
        if index - 1 - self.committed >= self.cfg.uncommitted_entries_max:
            raise ProposalDroppedError("too many uncommitted entries")
        self.log.entries.append(Entry(self.term, index, kind, data))
        # Sent at the next ready(): all proposals of one loop turn share one append.
        self._bcast_pending = True
        return index

    def _send_append(self, to: NodeId, send_empty: bool = True) -> None:
        pr = self.progress[to]
        if pr.is_paused(self.cfg.inflight_msgs_max):
            return
        prev = LogIndex(pr.next - 1)
        prev_term = self.log.term(prev)
        if prev_term is None:
            self._start_snapshot(to, pr)
            return
        entries = self._entries_from(pr.next)
        if not entries and not send_empty:
            return
        self._send(
            Message(
                MessageType.APP,
                to,
                self.id,
                self.term,
                log_term=prev_term,
                index=prev,
                entries=tuple(entries),
                commit=self.committed,
            )
        )
        if pr.state == ProgressState.REPLICATE:
            if entries:
                pr.next = LogIndex(entries[-1].index + 1)
                pr.inflight.append(entries[-1].index)
        else:
            pr.probe_sent = True

    def _entries_from(self, lo: LogIndex) -> list[Entry]:
        out: list[Entry] = []
        budget = self.cfg.bytes_per_msg_max
        last = self.log.last_index()
        i = lo
        while i <= last:
            e = self.log.entries[i - self.log.offset - 1]
            budget -= len(e.data) + ENTRY_OVERHEAD_BYTES
            if out and budget < 0:
                break
            out.append(e)
            i = LogIndex(i + 1)
        return out

    def _bcast_append(self) -> None:
        for n in self.progress:
            if n != self.id:
                self._send_append(n, send_empty=False)

    def _bcast_heartbeat(self) -> None:
        """One new round to every peer; answers echo its context (``reads.acknowledge``)."""
        context = self.reads.start_round(self._ticks)
        for n, pr in self.progress.items():
            if n != self.id:
                commit = LogIndex(min(pr.match, self.committed))
                self._send(
                    Message(
                        MessageType.HEARTBEAT, n, self.id, self.term, commit=commit, context=context
                    )
                )

    def _maybe_commit(self) -> bool:
        voters = self.conf.voters
        if not voters:
            return False
        matches = sorted(
            (self.progress[v].match for v in voters if v in self.progress), reverse=True
        )
        q = len(voters) // 2 + 1
        if len(matches) < q:
            return False
        n = matches[q - 1]
        # Only entries of our own term are committed by counting (Raft §5.4.2).
        if n > self.committed and self.log.term(n) == self.term:
            self._commit_to(n)
            return True
        return False

    def _commit_to(self, n: LogIndex) -> None:
        if n <= self.committed:
            return
        assert n <= self.log.last_index(), "commit beyond the log"
        first_of_term = self.role == Role.LEADER and self.log.term(self.committed) != self.term
        self.committed = n
        if first_of_term and self.log.term(n) == self.term:
            for ctx in self.reads.take_waiting_for_commit():
                self._queue_read(ctx)

    def _next_committed_hi(self) -> LogIndex:
        return LogIndex(min(self.committed, self._persisted))

    # ------------------------------------------------------------------------------
    # Snapshots

    def _start_snapshot(self, to: NodeId, pr: Progress) -> None:
        assert self.snapshot is not None, "log compacted without a snapshot"
        pr.state = ProgressState.SNAPSHOT
        pr.snapshot = self.snapshot
        pr.snapshot_offset = 0
        pr.inflight.clear()
        self._send_snapshot_chunk(to, pr)

    def _send_snapshot_chunk(self, to: NodeId, pr: Progress) -> None:
        snap = pr.snapshot
        assert snap is not None
        off = pr.snapshot_offset
        pr.snapshot_sent_tick = self._ticks
        chunk = snap.data[off : off + self.cfg.snapshot_chunk_bytes]
        self._send(
            Message(
                MessageType.SNAP,
                to,
                self.id,
                self.term,
                snapshot=Snapshot(snap.meta, chunk),
                offset=off,
                done=off + len(chunk) >= len(snap.data),
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        meta = m.snapshot.meta

        def reply(**kw: object) -> None:
            self._send(Message(MessageType.SNAP_RESP, m.frm, self.id, self.term, **kw))  # type: ignore[arg-type]

        if meta.index <= self.committed:
            reply(index=self.committed, done=True)
            return
        recv = self._snap_recv
        if m.offset == 0 and not (recv is not None and recv[0] == meta and recv[1]):
            # (A duplicated first chunk of the snapshot we are assembling is not a restart:
            # it falls through to the offset check below and we ask for what we lack.)
            recv = self._snap_recv = (meta, bytearray())
        if recv is None or recv[0] != meta:
            reply(index=meta.index, reject=True)  # we hold none of this one: start over
            return
        if m.offset != len(recv[1]):
            reply(index=meta.index, offset=len(recv[1]))  # lost or reordered: ask again
            return
        recv[1].extend(m.snapshot.data)
        if not m.done:
            reply(index=meta.index, offset=len(recv[1]))
            return
        self._snap_recv = None
        snap = Snapshot(meta, bytes(recv[1]))
        if self._ready_out:
            self._deferred_snapshot = (self.term, m.frm, snap)
            return
        self._install_received(m.frm, snap)

    def _install_received(self, frm: NodeId, snap: Snapshot) -> None:
        if snap.meta.index > self.committed:
            self._restore(snap)
        index = max(self.committed, snap.meta.index)
        self._send(Message(MessageType.SNAP_RESP, frm, self.id, self.term, index=index, done=True))

    def _restore(self, snap: Snapshot) -> None:
        meta = snap.meta
        if self.log.match_term(meta.index, meta.term):
            # We already hold this prefix: nothing to install, the commit index moves.
            self._commit_to(meta.index)
            return
        self.log = RaftLog(meta.index, meta.term, [])
        self.snapshot = snap
        self.conf = meta.conf
        self.committed = meta.index
        self.applied = meta.index
        self._applying = meta.index
        self._persisted = meta.index
        self._unstable_from = LogIndex(meta.index + 1)
        self._pending_snapshot = snap

    # ------------------------------------------------------------------------------
    # Leader duties

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.lead_transferee != NONE:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.cfg.election_ticks:
                self.lead_transferee = NONE  # a transfer that took an election timeout failed
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = sum(
                    1
                    for n in self.conf.voters
                    if n == self.id or (n in self.progress and self.progress[n].recent_active)
                )
                for n, pr in self.progress.items():
                    pr.recent_active = n == self.id
                if active < len(self.conf.voters) // 2 + 1:
                    self._become_follower(self.term, NONE)
                    return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            # While reads wait, a round whose messages or answers were lost is confirmed
            # by the next heartbeat's round.
            self._bcast_heartbeat()

    def _queue_read(self, ctx: bytes) -> None:
        if self.conf.voters == (self.id,):
            self._read_states.append(ReadState(self.committed, ctx))
            return
        self.reads.queue(self.committed, ctx)

    def _send_timeout_now(self, to: NodeId) -> None:
        # The target will campaign with a vote that rule 1 of the lease does not bind, at
        # any time from now on (the message may be delayed): no lease for this term.
        self.reads.lease_given_up = True
        self._send(Message(MessageType.TIMEOUT_NOW, to, self.id, self.term))

    def _flush(self) -> None:
        if self.role != Role.LEADER:
            return
        if self._bcast_pending:
            self._bcast_pending = False
            self._bcast_append()
        if self.reads.round_wanted():
            self._bcast_heartbeat()

    def _apply_conf_change(self, cc: ConfChange) -> None:
        voters = [v for v in self.conf.voters if v != cc.node_id]
        learners = [v for v in self.conf.learners if v != cc.node_id]
        if cc.type == ConfChangeType.ADD_VOTER:
            voters.append(cc.node_id)
        elif cc.type == ConfChangeType.ADD_LEARNER:
            learners.append(cc.node_id)
        self.conf = ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
        if self.role != Role.LEADER:
            return
        if self.lead_transferee not in self.conf.voters:
            self.lead_transferee = NONE  # the target left or was demoted: stop refusing work
        if self.id not in self.conf.voters:
            self._become_follower(self.term, NONE)  # removed or demoted: stop leading
            return
        if cc.type == ConfChangeType.REMOVE:
            self.progress.pop(cc.node_id, None)
        elif cc.node_id not in self.progress:
            pr = Progress(next=LogIndex(self.log.last_index() + 1))
            pr.recent_active = True
            self.progress[cc.node_id] = pr
        self._maybe_commit()  # the quorum changed; either way the new member needs entries
        self._bcast_pending = True
        if self.conf.voters == (self.id,):
            # We are the whole quorum now: nobody is left to answer a pending read round.
            self._read_states += self.reads.release_all()

    # ------------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)
