"""The Raft library's data: log entries, persistent state, messages and the Ready batch.

Rules of this module:
1. Everything here is a plain, frozen value. Nothing does I/O; nothing knows about the
   file system. The same values flow through the pure core (``core.py``), the simulator
   (``sim.py``), the disk format (``storage.py``) and the wire (``node.py``).
2. ``to_wire``/``from_wire`` turn each value into msgpack-friendly lists of ints, bytes
   and lists (and back). That encoding is the canonical one, versioned by ``FORMAT_VERSION``;
   ``from_wire`` validates shapes and types and raises ``ValueError`` on anything else,
   because its input may come from a peer or a damaged disk.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from dfs.types import LogIndex, NodeId, Term

FORMAT_VERSION = 1

NONE: NodeId = NodeId(0)
"""Node id 0 means "nobody" (no vote, no known leader). Real node ids are >= 1."""


class EntryType(enum.IntEnum):
    NORMAL = 0  # application command (bytes the state machine understands)
    CONF_CHANGE = 1  # a ConfChange, encoded with conf_change_to_bytes
    EMPTY = 2  # the no-op a new leader appends to commit entries of earlier terms


@dataclass(frozen=True, slots=True)
class Entry:
    term: Term
    index: LogIndex
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it leaves the node."""

    term: Term = Term(0)
    vote: NodeId = NONE
    commit: LogIndex = LogIndex(0)


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()

    def members(self) -> tuple[NodeId, ...]:
        return self.voters + self.learners


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0  # adds a node as voter, or promotes a learner
    ADD_LEARNER = 1  # adds a non-voting node, or demotes a voter
    REMOVE = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""  # opaque to the core: the application puts the node's address here


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: LogIndex = LogIndex(0)
    term: Term = Term(0)
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image up to and including ``meta.index`` (data is the application's)."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""


class MessageType(enum.IntEnum):
    APP = 0  # AppendEntries: log_term/index of the entry before ``entries``
    APP_RESP = 1  # reject or accept; index = last matching index, or a hint on reject
    VOTE = 2
    VOTE_RESP = 3
    PRE_VOTE = 4  # term = the term the candidate would take; nobody changes term for it
    PRE_VOTE_RESP = 5
    HEARTBEAT = 6  # commit = min(leader commit, follower match); context = ReadIndex round
    HEARTBEAT_RESP = 7
    SNAP = 8  # one chunk of a snapshot: snapshot.meta, offset = index of chunk bytes
    SNAP_RESP = 9  # offset = next byte wanted, reject = start over
    TIMEOUT_NOW = 10  # leadership transfer: campaign now, ignoring leases


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: NodeId
    frm: NodeId
    term: Term
    log_term: Term = Term(0)
    index: LogIndex = LogIndex(0)
    entries: tuple[Entry, ...] = ()
    commit: LogIndex = LogIndex(0)
    reject: bool = False
    reject_hint: LogIndex = LogIndex(0)
    context: bytes = b""
    snapshot: Snapshot | None = None
    offset: int = 0  # SNAP: byte offset of this chunk in snapshot data
    done: bool = False  # SNAP: last chunk


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    index: LogIndex
    context: bytes


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the caller may want to observe; never persisted."""

    leader: NodeId
    role: Role


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the caller. Handle the fields in this order, then ``advance``:

    1. ``snapshot`` (if any): persist it and restore the state machine from it.
    2. ``entries``: append to the log, replacing any stored entries from ``entries[0].index``
       on; then ``hard_state`` (if not None). Then one fsync when ``must_sync``.
    3. ``messages``: send, only after step 2 is durable (votes and acks depend on it).
    4. ``committed_entries``: apply in order (all are already durable on a quorum).
    5. ``read_states``: answer each read once the applied index reaches its index.
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool


# ----------------------------------------------------------------------------------------
# Canonical encoding (msgpack-friendly lists). Version 1.


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"expected a non-negative int, got {type(v).__name__}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise ValueError(f"expected bytes, got {type(v).__name__}")
    return v


def _list(v: Any, n: int | None = None) -> list[Any]:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
        raise ValueError(f"expected a list of {n} items")
    return list(v)


def entry_to_wire(e: Entry) -> list[Any]:
    return [e.term, e.index, int(e.type), e.data]


# The enums by value, for the decoders: a dict lookup instead of an enum call per field (a
# third of a microsecond each), on the path of every append and acknowledgement.
_ENTRY_TYPES = {int(t): t for t in EntryType}
_MESSAGE_TYPES = {int(t): t for t in MessageType}


def entry_from_wire(v: Any) -> Entry:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise ValueError("expected a list of 4 items")
    t, i, ty, d = v
    if type(t) is not int or type(i) is not int or t < 0 or i < 0:
        raise ValueError("expected non-negative ints")
    entry_type = _ENTRY_TYPES.get(ty) if type(ty) is int else None
    if entry_type is None:
        raise ValueError(f"unknown entry type {ty!r}")
    return Entry(Term(t), LogIndex(i), entry_type, _bytes(d))


def hard_state_to_wire(h: HardState) -> list[Any]:
    return [h.term, h.vote, h.commit]


def hard_state_from_wire(v: Any) -> HardState:
    t, vote, c = _list(v, 3)
    return HardState(Term(_int(t)), NodeId(_int(vote)), LogIndex(_int(c)))


def conf_state_to_wire(c: ConfState) -> list[Any]:
    return [list(c.voters), list(c.learners)]


def conf_state_from_wire(v: Any) -> ConfState:
    voters, learners = _list(v, 2)
    return ConfState(
        tuple(NodeId(_int(x)) for x in _list(voters)),
        tuple(NodeId(_int(x)) for x in _list(learners)),
    )


def snapshot_meta_to_wire(m: SnapshotMeta) -> list[Any]:
    return [m.index, m.term, conf_state_to_wire(m.conf)]


def snapshot_meta_from_wire(v: Any) -> SnapshotMeta:
    i, t, c = _list(v, 3)
    return SnapshotMeta(LogIndex(_int(i)), Term(_int(t)), conf_state_from_wire(c))


def conf_change_to_bytes(cc: ConfChange) -> bytes:
    # A fixed, tiny layout so the core can decode it without a serialization library.
    return bytes([FORMAT_VERSION, int(cc.type)]) + cc.node_id.to_bytes(8, "big") + cc.context


def conf_change_from_bytes(b: bytes) -> ConfChange:
    if len(b) < 10 or b[0] != FORMAT_VERSION:
        raise ValueError("malformed conf change")
    return ConfChange(ConfChangeType(b[1]), NodeId(int.from_bytes(b[2:10], "big")), b[10:])


def message_to_wire(m: Message) -> list[Any]:
    snap = None
    if m.snapshot is not None:
        snap = [snapshot_meta_to_wire(m.snapshot.meta), m.snapshot.data]
    return [
        int(m.type), m.to, m.frm, m.term, m.log_term, m.index,
        [entry_to_wire(e) for e in m.entries],
        m.commit, m.reject, m.reject_hint, m.context, snap, m.offset, m.done,
    ]  # fmt: skip


def message_from_wire(v: Any) -> Message:
    # The checks of _int/_list/_bytes, written out: this runs for every message a node
    # receives, twice on a commit's path (the append, its acknowledgement).
    if not isinstance(v, (list, tuple)) or len(v) != 14:
        raise ValueError("expected a list of 14 items")
    (ty, to, frm, term, log_term, index, entries, commit, reject, hint, ctx, snap, off,
     done) = v  # fmt: skip
    for x in (to, frm, term, log_term, index, commit, hint, off):
        if type(x) is not int or x < 0:
            raise ValueError(f"expected a non-negative int, got {type(x).__name__}")
    message_type = _MESSAGE_TYPES.get(ty) if type(ty) is int else None
    if message_type is None:
        raise ValueError(f"unknown message type {ty!r}")
    if not isinstance(entries, (list, tuple)):
        raise ValueError("expected a list of entries")
    snapshot = None
    if snap is not None:
        meta, data = _list(snap, 2)
        snapshot = Snapshot(snapshot_meta_from_wire(meta), _bytes(data))
    if type(reject) is not bool or type(done) is not bool:
        raise ValueError("expected bool")
    return Message(
        message_type, NodeId(to), NodeId(frm), Term(term), Term(log_term), LogIndex(index),
        tuple([entry_from_wire(e) for e in entries]) if entries else (),
        LogIndex(commit), reject, LogIndex(hint), _bytes(ctx), snapshot, off, done,
    )  # fmt: skip
