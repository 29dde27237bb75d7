"""Regression tests for the Raft core, each a scenario found by review.

Each drives cores by hand, message by message, where the transcripts' lock-step
``stabilize`` cannot reach (a message stepped between ``ready()`` and ``advance()``,
a heartbeat round lost on the way).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dfs.types import LogIndex, NodeId, Term
from metaserver.raft.core import Config, RawNode
from metaserver.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    conf_change_to_bytes,
)


def new_node(i: int, voters: tuple[int, ...] = (1, 2, 3), *, lease: bool = False) -> RawNode:
    return RawNode(
        Config(id=NodeId(i), read_lease=lease),
        random.Random(i),
        hard_state=HardState(),
        snapshot=None,
        entries=[],
        bootstrap=ConfState(tuple(NodeId(v) for v in voters)),
    )


def drain(node: RawNode) -> None:
    while node.has_ready():
        node.advance(node.ready())


def test_snapshot_during_an_outstanding_ready_keeps_its_membership() -> None:
    """A snapshot stepped while a Ready is out must not be overwritten, at advance(), by
    the older membership changes that Ready carried (two-leader risk: the node would
    count votes against a stale voter set)."""
    f = new_node(2)
    drain(f)
    t = Term(2)

    def learner(n: int) -> bytes:
        return conf_change_to_bytes(ConfChange(ConfChangeType.ADD_LEARNER, NodeId(n)))

    f.step(
        Message(
            MessageType.APP, NodeId(2), NodeId(1), t, log_term=Term(1), index=LogIndex(3),
            entries=(
                Entry(t, LogIndex(4), EntryType.EMPTY),
                Entry(t, LogIndex(5), EntryType.CONF_CHANGE, learner(4)),
                Entry(t, LogIndex(6), EntryType.CONF_CHANGE, learner(5)),
            ),
            commit=LogIndex(6),
        )
    )  # fmt: skip
    f.advance(f.ready())
    f.step(
        Message(
            MessageType.APP, NodeId(2), NodeId(1), t, log_term=t, index=LogIndex(6),
            entries=(Entry(t, LogIndex(7)),), commit=LogIndex(6),
        )
    )  # fmt: skip
    outstanding = f.ready()
    assert [e.index for e in outstanding.committed_entries] == [4, 5, 6]
    five = ConfState(tuple(NodeId(v) for v in (1, 2, 3, 4, 5)), ())
    snap = Snapshot(SnapshotMeta(LogIndex(20), t, five), b"image")
    f.step(Message(MessageType.SNAP, NodeId(2), NodeId(1), t, snapshot=snap, done=True))
    f.advance(outstanding)
    rd = f.ready()
    assert rd.snapshot == snap  # installed after the outstanding Ready, not under it
    assert f.conf == five
    assert any(m.type == MessageType.SNAP_RESP and m.done for m in rd.messages)
    f.advance(rd)
    drain(f)
    f.cfg.pre_vote = False
    f.campaign()
    asked = sorted(m.to for m in f.ready().messages if m.type == MessageType.VOTE)
    assert asked == [1, 3, 4, 5]
    f.step(Message(MessageType.VOTE_RESP, NodeId(2), NodeId(3), f.term))
    assert f.role == Role.CANDIDATE  # two votes of five are no quorum


class Net:
    def __init__(self, n: int = 3, *, lease: bool = False) -> None:
        voters = tuple(range(1, n + 1))
        self.nodes = {i: new_node(i, voters, lease=lease) for i in voters}
        self.drop: Callable[[Message], bool] = lambda m: False
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in self.nodes}

    def pump(self) -> None:
        for _ in range(100):
            out: list[Message] = []
            for i, node in self.nodes.items():
                while node.has_ready():
                    rd = node.ready()
                    self.read_states[i] += rd.read_states
                    out += rd.messages
                    node.advance(rd)
            if not out:
                return
            for m in out:
                if not self.drop(m):
                    self.nodes[m.to].step(m)

    def tick(self, k: int) -> None:
        for _ in range(k):
            for node in self.nodes.values():
                node.tick()
            self.pump()


def test_lost_read_round_is_confirmed_by_later_heartbeats() -> None:
    net = Net()
    net.pump()
    net.nodes[1].campaign()
    net.pump()
    leader = net.nodes[1]
    assert leader.role == Role.LEADER
    net.drop = lambda m: m.type == MessageType.HEARTBEAT and m.context != b""
    leader.read_index(b"r1")
    net.pump()
    assert net.read_states[1] == []
    net.drop = lambda m: False
    net.tick(2)  # regular heartbeats, no new read
    assert [rs.context for rs in net.read_states[1]] == [b"r1"]


def test_reads_are_released_when_the_leader_becomes_the_only_voter() -> None:
    net = Net()
    net.pump()
    net.nodes[1].campaign()
    net.pump()
    leader = net.nodes[1]
    for victim in (3, 2):
        leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, NodeId(victim)))
        net.pump()
    assert leader.conf.voters == (1,)
    # A read queued under the old membership, whose round nobody is left to answer.
    net.drop = lambda m: True
    leader.reads.queue(leader.committed, b"stuck")
    leader._apply_conf_change(ConfChange(ConfChangeType.REMOVE, NodeId(2)))
    net.pump()
    assert [rs.context for rs in net.read_states[1]] == [b"stuck"]


def test_transfer_to_a_removed_node_stops_blocking_proposals() -> None:
    net = Net()
    net.pump()
    net.nodes[1].campaign()
    net.pump()
    leader = net.nodes[1]
    net.drop = lambda m: m.to == 3  # node 3 lags, so the transfer waits for it
    leader.propose(b"x")
    net.pump()
    leader.transfer_leader(NodeId(3))
    assert leader.lead_transferee == 3
    leader._apply_conf_change(ConfChange(ConfChangeType.REMOVE, NodeId(3)))
    assert leader.lead_transferee == 0
    leader.propose(b"y")  # accepted again


def leased_net(n: int = 3) -> tuple[Net, RawNode]:
    """A group with leases on whose node 1 leads and holds a lease."""
    net = Net(n, lease=True)
    net.pump()
    for node in net.nodes.values():  # as if they had started an election timeout ago
        node.lease_elapsed = node.cfg.election_ticks
    net.nodes[1].campaign()
    net.pump()
    leader = net.nodes[1]
    assert leader.role == Role.LEADER
    net.tick(1)
    assert leader.lease_read_index() == leader.committed
    return net, leader


def test_lease_promise_survives_a_term_raised_by_a_stale_answer() -> None:
    """A follower bound by a leader's lease whose term rises through some other message
    (here a rejected pre-vote answer from a node that moved on) must still refuse to vote
    in that new term until its promise ends: otherwise a candidate could win while the old
    leader still serves reads on its lease. (etcd's check only guards higher-term votes of
    a follower that knows its leader; this core's rule 1 is kept per node.)"""
    net, _ = leased_net()
    f = net.nodes[2]
    t = Term(f.term + 1)
    f.step(Message(MessageType.PRE_VOTE_RESP, NodeId(2), NodeId(3), t, reject=True))
    assert f.term == t and f.leader == 0 and f.vote == 0
    f.step(Message(MessageType.VOTE, NodeId(2), NodeId(3), t, log_term=t, index=LogIndex(99)))
    assert f.vote == 0
    assert not [m for m in f.ready().messages if m.type == MessageType.VOTE_RESP]
    for _ in range(f.cfg.election_ticks):
        f.tick()
    f.step(Message(MessageType.VOTE, NodeId(2), NodeId(3), t, log_term=t, index=LogIndex(99)))
    assert f.vote == 3  # the promise is over


def test_lease_promise_binds_a_node_that_just_started() -> None:
    """A node may have acknowledged a leader just before it crashed: after a restart it
    votes for nobody, and campaigns not, for an election timeout."""
    node = new_node(2, lease=True)
    drain(node)
    t = Term(node.term + 1)
    node.step(Message(MessageType.VOTE, NodeId(2), NodeId(3), t, log_term=t, index=LogIndex(9)))
    node.campaign()
    assert node.vote == 0 and node.role == Role.FOLLOWER and node.term == t - 1


def test_lease_ends_lease_ticks_after_the_acknowledged_round_left() -> None:
    net, leader = leased_net()
    net.drop = lambda m: True  # the leader is cut off: no round is acknowledged again
    sent_at = leader._ticks
    while leader.lease_read_index() is not None:
        leader.tick()
        net.pump()
    assert leader._ticks - sent_at == leader.cfg.lease_ticks == 8
    assert leader.role == Role.LEADER  # still leading (check-quorum has not fired yet)


def test_void_lease_waits_for_a_round_sent_after_it() -> None:
    """The node calls void_lease right after a tick that came a whole interval late: rounds
    sent before that tick do not count, the one that tick sends does."""
    net, leader = leased_net()
    leader.tick()
    leader.void_lease()
    assert leader.lease_read_index() is None
    net.pump()
    assert leader.lease_read_index() == leader.committed


def test_transfer_gives_the_lease_up_for_the_term() -> None:
    net, leader = leased_net()
    net.drop = lambda m: m.type == MessageType.TIMEOUT_NOW  # the transfer does not happen
    leader.transfer_leader(NodeId(2))
    net.pump()
    assert leader.lease_read_index() is None
    net.tick(leader.cfg.election_ticks)  # the transfer is abandoned; the term goes on
    assert leader.role == Role.LEADER and leader.lead_transferee == 0
    assert leader.lease_read_index() is None


def test_read_index_counts_each_voter_latest_round() -> None:
    """Acknowledgements of different rounds confirm a read together: each voter answered
    a round sent after the read arrived."""
    net = Net(5)
    net.pump()
    net.nodes[1].campaign()
    net.pump()
    leader = net.nodes[1]
    leader.read_index(b"r")

    def one_answer_per_round(m: Message) -> bool:
        if m.type != MessageType.HEARTBEAT_RESP:
            return False
        round_ = int.from_bytes(m.context, "big")
        return (m.frm, round_) not in ((2, 1), (3, 2))  # 2 answers round 1, 3 round 2

    net.drop = one_answer_per_round
    net.pump()
    assert net.read_states[1] == []  # round 1: the leader and node 2 are no quorum of 5
    net.tick(1)
    assert [rs.context for rs in net.read_states[1]] == [b"r"]


def _follower_acks(net: Net, follower: int, sent: tuple[Message, ...]) -> list[Message]:
    """Deliver the leader's appends to ``follower``; return its answers once durable there."""
    node = net.nodes[follower]
    for m in sent:
        if m.to == follower:
            node.step(m)
    acks: list[Message] = []
    while node.has_ready():
        rd = node.ready()
        acks += [m for m in rd.messages if m.type == MessageType.APP_RESP]
        node.advance(rd)  # the follower's fsync is done: it may answer
    return acks


def test_leader_counts_its_own_log_only_once_its_write_is_durable() -> None:
    """The node sends a leader's appends before its own fsync, and steps the followers'
    answers while that fsync may still run. One follower's acknowledgement plus the
    leader's write in flight is ONE durable copy of three: no commit. Both followers'
    make a quorum without the leader; the leader may then commit, but hands the entry out
    for applying only after its own write (``advance``)."""
    net = Net()
    net.pump()
    net.nodes[1].campaign()
    net.pump()
    leader = net.nodes[1]
    assert leader.role == Role.LEADER and not leader.has_ready()
    index = leader.propose(b"x")
    in_flight = leader.ready()  # the leader's write of the entry starts; not advanced
    assert [e.index for e in in_flight.entries] == [index]
    before = leader.committed

    for m in _follower_acks(net, 2, in_flight.messages):
        leader.step(m)
    assert leader.committed == before, "counted its own write before it was durable"
    assert not any(e.index == index for e in leader.ready().committed_entries)

    for m in _follower_acks(net, 3, in_flight.messages):
        leader.step(m)
    assert leader.committed == index  # two followers: a quorum without the leader
    rd = leader.ready()
    assert not any(e.index == index for e in rd.committed_entries), "applied before durable"
    leader.advance(rd)
    leader.advance(in_flight)  # the leader's own write is durable now
    assert [e.index for e in leader.ready().committed_entries] == [index]


def test_leader_alone_never_commits_its_own_entry() -> None:
    """An entry that only the leader holds, however durable there, is not committed."""
    net = Net()
    net.pump()
    net.nodes[1].campaign()
    net.pump()
    leader = net.nodes[1]
    before = leader.committed
    index = leader.propose(b"y")
    first = leader.ready()
    leader.advance(first)  # durable on the leader; its appends are held back
    for _ in range(3):
        leader.tick()
        rd = leader.ready()
        assert not any(e.index == index for e in rd.committed_entries)
        leader.advance(rd)  # the heartbeats are lost too
    assert leader.committed == before
    # One follower's acknowledgement makes two durable copies of three: committed.
    for m in _follower_acks(net, 2, first.messages):
        leader.step(m)
    assert leader.committed == index
