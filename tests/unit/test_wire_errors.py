"""dfs.wire.errors and dfs.wire.messages: error round trips and header validation."""

from __future__ import annotations

import pytest

from dfs.wire import messages
from dfs.wire.errors import (
    DfsError,
    ErrorCode,
    NotFound,
    NotLeader,
    ProtocolError,
    error_class,
    error_from_wire,
    error_to_wire,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.mark.parametrize("code", [c for c in ErrorCode if c is not ErrorCode.OK])
def test_every_code_round_trips_to_its_class(code: ErrorCode) -> None:
    err = DfsError(code, "boom", inode=5)
    back = error_from_wire(error_to_wire(err))
    assert type(back) is error_class(code) and back.code is code
    assert back.message == "boom" and back.details == {"inode": 5}


def test_subclass_round_trip_and_leader_hint() -> None:
    back = error_from_wire(error_to_wire(NotLeader("10.0.0.2:7000")))
    assert isinstance(back, NotLeader) and back.leader_hint == "10.0.0.2:7000"
    assert NotLeader().leader_hint is None
    assert isinstance(error_from_wire(error_to_wire(NotFound("x"))), NotFound)


@pytest.mark.parametrize(
    "wire",
    [None, 5, [], {"msg": "x"}, {"code": "1"}, {"code": 1, "msg": 2},
     {"code": 1, "details": []}, {"code": True}, {"code": 0}],
)  # fmt: skip
def test_malformed_error_is_protocol_error_never_raises(wire: object) -> None:
    assert isinstance(error_from_wire(wire), ProtocolError)


def test_copy_and_pickle_keep_class_and_fields() -> None:
    import copy
    import pickle

    for err in (NotLeader("h:1", "moved", term=3), NotFound("x", ino=1), DfsError(ErrorCode.BUSY)):
        for clone in (copy.copy(err), pickle.loads(pickle.dumps(err))):
            assert type(clone) is type(err) and clone is not err
            assert (clone.code, clone.message, clone.details) == (
                err.code,
                err.message,
                err.details,
            )


def test_unknown_code_is_internal() -> None:
    back = error_from_wire({"code": 9999, "msg": "new", "details": {"remote_code": 1}})
    assert type(back) is DfsError and back.code is ErrorCode.INTERNAL
    assert back.details["remote_code"] == 9999


def test_message_helpers() -> None:
    assert messages.request("read", 3, chunk=1) == {"op": "read", "id": 3, "chunk": 1}
    assert messages.response_ok(3, n=1) == {"id": 3, "ok": True, "n": 1}
    err = messages.response_err(3, NotFound("x"))
    assert err["ok"] is False and error_from_wire(err["err"]).code is ErrorCode.NOT_FOUND
    assert messages.is_oneway({"op": "raft"}) and messages.is_oneway(
        {"op": "raft", "id": 1, "oneway": True}
    )
    assert not messages.is_oneway({"op": "read", "id": 1})
    assert messages.is_response({"id": 1, "ok": True})


def test_field_validation() -> None:
    header = {"n": 1, "b": True, "s": "x", "neg": -1}
    assert messages.field(header, "n", int) == 1
    assert messages.field(header, "missing", int, 7) == 7
    assert messages.field(header, "b", bool) is True
    assert messages.field(header, "s", (str, type(None))) == "x"
    with pytest.raises(ProtocolError, match="'b'"):
        messages.field(header, "b", int)  # a bool is not an int on the wire
    with pytest.raises(ProtocolError, match="missing"):
        messages.field(header, "missing", int)
    with pytest.raises(ProtocolError):
        messages.field(header, "s", bytes)
    with pytest.raises(ProtocolError):
        messages.uint_field(header, "neg")
    assert messages.uint_field(header, "n") == 1
