"""The Raft values' canonical encoding (``metaserver/raft/types.py``) and the peer frames
(``metaserver/raft/peer.py``): every message survives the round trip, through msgpack as on
the wire, and the decoders refuse what a peer or a damaged disk could send instead."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from dfs.types import LogIndex, NodeId, Term
from dfs.wire.errors import ProtocolError
from metaserver.raft.peer import PEER_WIRE_VERSION, RAFT_OP, frames_to_peers, messages_of_frame
from metaserver.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
    entry_from_wire,
    entry_to_wire,
    message_from_wire,
    message_to_wire,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ENTRY = Entry(Term(3), LogIndex(100), EntryType.NORMAL, b"x" * 300)
MESSAGES = [
    Message(
        MessageType.APP, NodeId(2), NodeId(1), Term(3), Term(3), LogIndex(99),
        (ENTRY, Entry(Term(3), LogIndex(101), EntryType.EMPTY)), LogIndex(98),
    ),
    Message(MessageType.APP_RESP, NodeId(1), NodeId(2), Term(3), index=LogIndex(101)),
    Message(
        MessageType.APP_RESP, NodeId(1), NodeId(2), Term(3), Term(2), LogIndex(7),
        reject=True, reject_hint=LogIndex(5),
    ),
    Message(MessageType.HEARTBEAT, NodeId(3), NodeId(1), Term(4), commit=LogIndex(9),
            context=b"\x00" * 8),
    Message(
        MessageType.SNAP, NodeId(3), NodeId(1), Term(4),
        snapshot=Snapshot(SnapshotMeta(LogIndex(50), Term(2), ConfState((NodeId(1),))), b""),
        offset=4096, done=True,
    ),
]  # fmt: skip


def _through_msgpack(wire: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False)


@pytest.mark.parametrize("m", MESSAGES, ids=lambda m: m.type.name)
def test_messages_round_trip(m: Message) -> None:
    assert message_from_wire(_through_msgpack(message_to_wire(m))) == m
    assert message_from_wire(message_to_wire(m)) == m


def _app_wire() -> list[Any]:
    wire = _through_msgpack(message_to_wire(MESSAGES[0]))
    assert isinstance(wire, list)
    return wire


def _with(k: int, value: Any) -> list[Any]:
    wire = _app_wire()
    wire[k] = value
    return wire


@pytest.mark.parametrize(
    "wire",
    [
        "not a list",
        _app_wire()[:13],
        [*_app_wire(), 0],
        _with(0, 99),  # no such message type
        _with(0, True),  # a bool is not an int here
        _with(0, "0"),
        _with(1, -1),
        _with(3, 1.0),
        _with(7, None),
        _with(12, -5),
        _with(6, "entries"),
        _with(6, [[3, 100, 7, b""]]),  # no such entry type
        _with(6, [[3, 100, 0]]),
        _with(6, [[3, -1, 0, b""]]),
        _with(6, [[3, 100, 0, "text"]]),
        _with(8, 0),  # reject must be a bool
        _with(13, 1),  # done too
        _with(10, "ctx"),
        _with(11, [1]),
    ],
)
def test_malformed_messages_are_refused(wire: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        message_from_wire(wire)


def test_entries_round_trip_and_refuse_garbage() -> None:
    assert entry_from_wire(_through_msgpack(entry_to_wire(ENTRY))) == ENTRY
    for bad in ([3, 100, 0], [3, 100, 3, b""], [3, 100, False, b""], (3, -1, 0, b""), None):
        with pytest.raises(ValueError):
            entry_from_wire(bad)


def test_frames_carry_one_readys_messages_in_order() -> None:
    """One frame per peer with its messages in order; a snapshot chunk alone in its own
    frame, its bytes as the payload, after what was gathered for that peer before it;
    nothing to ourselves."""
    to2 = MESSAGES[0]
    to3 = [MESSAGES[3], Message(MessageType.HEARTBEAT, NodeId(3), NodeId(1), Term(4))]
    chunk = Snapshot(MESSAGES[4].snapshot.meta, b"chunk bytes")  # type: ignore[union-attr]
    snap = Message(MessageType.SNAP, NodeId(3), NodeId(1), Term(4), snapshot=chunk)
    to_self = Message(MessageType.APP_RESP, NodeId(1), NodeId(1), Term(4))
    frames = frames_to_peers(NodeId(1), [to2, to3[0], to_self, snap, to3[1]])
    assert [(to, len(h["m"]), p) for to, h, p in frames] == [
        (3, 1, b""),
        (3, 1, b"chunk bytes"),
        (2, 1, b""),
        (3, 1, b""),
    ]
    for _, header, _payload in frames:
        assert header["op"] == RAFT_OP and header["v"] == PEER_WIRE_VERSION
    got = [m for _, h, p in frames for m in messages_of_frame(_through_msgpack(h), p)]
    assert got == [to3[0], snap, to2, to3[1]]


@pytest.mark.parametrize(
    "header",
    [
        {"op": RAFT_OP, "v": PEER_WIRE_VERSION + 1, "m": []},
        {"op": RAFT_OP, "v": PEER_WIRE_VERSION, "m": "x"},
        {"op": RAFT_OP, "v": PEER_WIRE_VERSION, "m": [[1, 2, 3]]},
    ],
)
def test_malformed_frames_are_protocol_errors(header: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        messages_of_frame(header, b"")
