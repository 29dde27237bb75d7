"""The one error hierarchy on the wire.

Rules of this module:
1. ``ErrorCode`` values are part of the wire format (version 1). Never renumber or reuse a
   value; add new codes at the end.
2. Errors carry a code, a human-readable message and msgpack-friendly details. They carry
   no errno: POSIX error numbers are chosen in one place only, the FUSE adapter's map.
3. ``error_from_wire`` never raises. Whatever a peer sends, it returns a ``DfsError``: an
   unknown code becomes ``INTERNAL`` (the code is kept in ``details["remote_code"]``), a
   malformed error dict becomes a ``ProtocolError``.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar


class ErrorCode(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1  # no such inode, name, chunk or node
    EXISTS = 2  # the name (or id) is already taken
    NOT_EMPTY = 3  # directory has entries
    NOT_DIR = 4  # a path component or target is not a directory
    IS_DIR = 5  # a file operation on a directory
    INVALID = 6  # a request that is well-formed but makes no sense (bad name, bad range)
    NAME_TOO_LONG = 7  # a name over the limit (255 bytes)
    NO_SPACE = 8  # no chunkserver or disk can take the data
    STALE = 9  # a handle, lease, token or chunk version that is no longer current
    UNAVAILABLE = 10  # peer gone, connection closed, not enough replicas: retry later
    CORRUPT = 11  # checksum mismatch or damaged record
    NOT_LEADER = 12  # this metaserver is not the Raft leader; see leader_hint
    PERMISSION = 13  # access token missing, expired or not valid for this operation
    TIMEOUT = 14  # the operation did not finish in time; it may or may not have happened
    PROTOCOL = 15  # the peer sent something that breaks the wire rules
    AUTH = 16  # the handshake failed: wrong or missing cluster secret
    INTERNAL = 17  # a bug or an unknown error on the remote side
    TOO_BIG = 18  # a file, chunk or value over its limit
    BUSY = 19  # overloaded (too many requests in flight); retry with backoff
    UNSUPPORTED = 20  # unknown operation or an unsupported feature
    NO_ATTR = 21  # the extended attribute does not exist
    TOO_MANY_LINKS = 22  # an inode already has the most hard links allowed (EMLINK)
    ACCESS = 23  # the caller's uid and groups may not do this to this inode (EACCES)


class DfsError(Exception):
    """An error with a wire code. Subclasses fix the code; ``DfsError(code, ...)`` takes any.

    ``details`` must hold only msgpack-friendly values (str, int, bytes, bool, None, lists
    and dicts of those); they travel with the error.
    """

    code: ErrorCode
    message: str
    details: dict[str, Any]

    def __init__(self, code: ErrorCode, message: str = "", **details: Any) -> None:
        super().__init__(code, message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        if self.details:
            text += " " + " ".join(f"{k}={v!r}" for k, v in sorted(self.details.items()))
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take different positional arguments, so copy and pickle rebuild from
        # the parts (``copy.copy`` gives each waiter its own instance to raise).
        return (_rebuild, (type(self), self.code, self.message, self.details))


def _rebuild(
    cls: type[DfsError], code: ErrorCode, message: str, details: dict[str, Any]
) -> DfsError:
    err = cls.__new__(cls)
    DfsError.__init__(err, code, message, **details)
    return err


class _CodedError(DfsError):
    """Base of the subclasses whose code is fixed by the class."""

    CODE: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(self.CODE, message, **details)


class NotFound(_CodedError):
    CODE = ErrorCode.NOT_FOUND


class Exists(_CodedError):
    CODE = ErrorCode.EXISTS


class NotEmpty(_CodedError):
    CODE = ErrorCode.NOT_EMPTY


class NotDir(_CodedError):
    CODE = ErrorCode.NOT_DIR


class IsDir(_CodedError):
    CODE = ErrorCode.IS_DIR


class Invalid(_CodedError):
    CODE = ErrorCode.INVALID


class NameTooLong(_CodedError):
    CODE = ErrorCode.NAME_TOO_LONG


class NoSpace(_CodedError):
    CODE = ErrorCode.NO_SPACE


class Stale(_CodedError):
    CODE = ErrorCode.STALE


class Unavailable(_CodedError):
    CODE = ErrorCode.UNAVAILABLE


class Corrupt(_CodedError):
    CODE = ErrorCode.CORRUPT


class NotLeader(_CodedError):
    """Not the leader. ``leader_hint`` is the leader's address ("host:port") when known."""

    CODE = ErrorCode.NOT_LEADER

    def __init__(self, leader_hint: str | None = None, message: str = "", **details: Any) -> None:
        super().__init__(message or "not the leader", leader_hint=leader_hint, **details)

    @property
    def leader_hint(self) -> str | None:
        hint = self.details.get("leader_hint")
        return hint if isinstance(hint, str) else None


class PermissionDenied(_CodedError):
    CODE = ErrorCode.PERMISSION


class Timeout(_CodedError):
    CODE = ErrorCode.TIMEOUT


class ProtocolError(_CodedError):
    """A *remote* error: the peer broke the wire rules. Drop the connection."""

    CODE = ErrorCode.PROTOCOL


class AuthError(_CodedError):
    """The handshake failed (wrong or missing secret, malformed hello or proof)."""

    CODE = ErrorCode.AUTH


class InternalError(_CodedError):
    CODE = ErrorCode.INTERNAL


class TooBig(_CodedError):
    CODE = ErrorCode.TOO_BIG


class Busy(_CodedError):
    CODE = ErrorCode.BUSY


class Unsupported(_CodedError):
    CODE = ErrorCode.UNSUPPORTED


class NoAttr(_CodedError):
    CODE = ErrorCode.NO_ATTR


class TooManyLinks(_CodedError):
    CODE = ErrorCode.TOO_MANY_LINKS


class AccessDenied(_CodedError):
    CODE = ErrorCode.ACCESS


_CLASS_BY_CODE: dict[ErrorCode, type[_CodedError]] = {
    cls.CODE: cls
    for cls in (
        NotFound, Exists, NotEmpty, NotDir, IsDir, Invalid, NameTooLong, NoSpace, Stale,
        Unavailable, Corrupt, NotLeader, PermissionDenied, Timeout, ProtocolError, AuthError,
        InternalError, TooBig, Busy, Unsupported, NoAttr, TooManyLinks, AccessDenied,
    )
}  # fmt: skip


def error_class(code: ErrorCode) -> type[DfsError]:
    """The class ``error_from_wire`` builds for ``code`` (``DfsError`` for ``OK``)."""
    return _CLASS_BY_CODE.get(code, DfsError)


def error_to_wire(err: DfsError) -> dict[str, Any]:
    """``{"code": int, "msg": str}`` plus ``"details": {...}`` when there are any."""
    wire: dict[str, Any] = {"code": int(err.code), "msg": err.message}
    if err.details:
        wire["details"] = err.details
    return wire


def error_from_wire(wire: Any) -> DfsError:
    """Rebuild the error a peer sent. Never raises (see rule 3 above)."""
    if not isinstance(wire, dict):
        return ProtocolError("error is not a map", got=type(wire).__name__)
    code = wire.get("code")
    message = wire.get("msg", "")
    details = wire.get("details", {})
    if type(code) is not int or not isinstance(message, str) or not isinstance(details, dict):
        return ProtocolError("malformed error")
    if not all(isinstance(k, str) for k in details):
        return ProtocolError("malformed error details")
    try:
        known = ErrorCode(code)
    except ValueError:
        return DfsError(ErrorCode.INTERNAL, message, **{**details, "remote_code": code})
    cls = _CLASS_BY_CODE.get(known)
    if cls is None:  # OK is not an error; treat it as a confused peer
        return ProtocolError("error with code OK")
    # Built without the subclass __init__, whose positional arguments differ (NotLeader);
    # the subclass reads everything it needs from ``details``.
    return _rebuild(cls, known, message, details)


def errors_to_wire(errors: list[DfsError | None]) -> list[dict[str, Any] | None] | None:
    """An answer's per-item errors (``chunk.write_many``'s ``errors``): one per item, None
    for an item that succeeded; None for the whole list when every item did."""
    if not any(errors):
        return None
    return [None if e is None else error_to_wire(e) for e in errors]


def errors_from_wire(wire: Any, count: int) -> list[DfsError | None]:
    """The errors of ``count`` items from ``errors_to_wire``'s list (``None``: all
    succeeded). Never raises: a list of another length or kind is a ``ProtocolError``
    for every item."""
    if wire is None:
        return [None] * count
    if type(wire) is not list or len(wire) != count:
        return [ProtocolError("malformed list of errors", expected=count) for _ in range(count)]
    return [None if e is None else error_from_wire(e) for e in wire]
