"""Message conventions: what a frame header means. Pure.

Version 1 (``MESSAGES_VERSION``). Every frame (see ``codec.py``) carries a msgpack map, the
*header*, and optional raw payload bytes. Three kinds of header:

request   ``{"op": str, "id": int, ...fields}``
    Asks the peer to do ``op``. ``id`` (>= 0) is chosen by the sender, unique among its
    requests in flight on this connection; the response carries it back, so many requests
    may be in flight at once (pipelining) and responses may come back in any order.

response  ``{"id": int, "ok": True, ...result fields}`` or
          ``{"id": int, "ok": False, "err": error_to_wire(err)}``
    The answer to the request with the same ``id``. ``"ok"`` is what marks a response.

one-way   ``{"op": str, ...fields}`` (no ``"id"``; or ``"oneway": True``)
    A message with no answer (Raft peer traffic). One-way messages on one connection are
    handed to the receiver in the order they were sent.

Field names are short lowercase words; field values are msgpack-friendly (str, int, bytes,
bool, None, lists, str-keyed maps). Bulk data (chunk bytes, snapshot chunks) travels as the
frame payload, never as a header field. The authentication handshake (``auth.py``) uses the
ops ``auth.hello`` and ``auth.proof`` before any other message.

Each subsystem defines its ops, fields and payload next to its server, with a comment, and
lists them here:

| op prefix | defined in             | kind                        |
|-----------|------------------------|-----------------------------|
| auth.*    | dfs/wire/auth.py       | handshake (one-way)         |
| raft.*    | metaserver/raft        | one-way peer messages       |

Validation helpers raise ``ProtocolError`` when a peer's header has a missing field or a
field of the wrong type: a server answers that with an error response (the framing is
intact, so the connection can stay up).
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

from dfs.wire.errors import DfsError, ProtocolError, error_to_wire

MESSAGES_VERSION = 1

OP = "op"
ID = "id"
OK = "ok"
ERR = "err"
ONEWAY = "oneway"

T = TypeVar("T")


def request(op: str, id: int, **fields: Any) -> dict[str, Any]:
    assert OP not in fields and OK not in fields, "reserved header field"
    return {OP: op, ID: id, **fields}


def oneway(op: str, **fields: Any) -> dict[str, Any]:
    assert ID not in fields and OK not in fields, "reserved header field"
    return {OP: op, **fields}


def response_ok(id: int, **fields: Any) -> dict[str, Any]:
    assert ID not in fields and OK not in fields and ERR not in fields, "reserved header field"
    return {ID: id, OK: True, **fields}


def response_err(id: int, err: DfsError) -> dict[str, Any]:
    return {ID: id, OK: False, ERR: error_to_wire(err)}


def is_response(header: dict[str, Any]) -> bool:
    return OK in header


def is_oneway(header: dict[str, Any]) -> bool:
    """A header that is not a response and expects none."""
    return OK not in header and (ID not in header or header.get(ONEWAY) is True)


def _type_ok(value: Any, tp: type | tuple[type, ...]) -> bool:
    # bool is a subclass of int, but a bool where an int is expected is a peer's bug.
    if type(value) is bool:
        return tp is bool or (isinstance(tp, tuple) and bool in tp)
    return isinstance(value, tp)


_MISSING: Any = object()


@overload
def field(header: dict[str, Any], name: str, tp: type[T]) -> T: ...
@overload
def field(header: dict[str, Any], name: str, tp: type[T], default: T) -> T: ...
@overload
def field(header: dict[str, Any], name: str, tp: tuple[type, ...], default: Any = ...) -> Any: ...


def field(header: dict[str, Any], name: str, tp: Any, default: Any = _MISSING) -> Any:
    """``header[name]``, checked to be of type ``tp`` (a type or a tuple of types).

    With ``default`` the field is optional (the default is returned when it is absent; an
    explicit ``None`` is only accepted if ``type(None)`` is in ``tp``). ``bool`` never
    passes for ``int``. Raises ``ProtocolError`` naming the field.
    """
    try:
        value = header[name]
    except KeyError:
        if default is not _MISSING:
            return default
        raise ProtocolError(f"missing field {name!r}") from None
    if not _type_ok(value, tp):
        want = tp.__name__ if isinstance(tp, type) else "|".join(t.__name__ for t in tp)
        raise ProtocolError(f"field {name!r} must be {want}, not {type(value).__name__}")
    return value


def uint_field(header: dict[str, Any], name: str, default: int | None = None) -> int:
    """A non-negative int field (ids, offsets, lengths)."""
    value = field(header, name, int) if default is None else field(header, name, int, default)
    if value < 0:
        raise ProtocolError(f"field {name!r} must be >= 0")
    return value
