"""The shape of an operation's definition, and its validator. Pure.

What it owns: ``Field`` (one header field: its name, kind, whether it is required, its
limits and the error a value past them gets), ``Op`` (one operation: who may send it, its
request and reply fields, what it answers), the roles, and the compiled check that a
server runs once at its edge on every request (``Op.check``). The operations themselves
are defined in ``ops_meta.py`` and ``ops_chunk.py``; ``ops.py`` gathers them.

Rules of this module:
1. The wire format is msgpack maps (``messages.py``); a definition only says what a map
   must hold. Fields a definition does not name are ignored (old and new peers meet).
2. A missing required field, or a field of the wrong kind, is a ``ProtocolError`` naming
   it; a value past a limit is the field's ``error`` (``Invalid`` unless it says
   ``NameTooLong`` or ``TooBig``): the same answers the hand-written parsers gave, and in
   every case an error response on a connection that stays up.
3. Checks are compiled once, when the definition is made (``Op.__post_init__``): each op
   gets one generated function (``_compile_checks``) whose fast path is a few inline
   comparisons per field; anything off that path goes to the field's closure
   (``Field.compile``), which gives the exact error. No reflection per request.
4. ``bool`` never passes for an integer, nor an integer for a ``bool``.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from typing import Any, cast

from dfs.wire.errors import DfsError, Invalid, ProtocolError

# ------------------------------------------------------------------ roles
# What the peer proved: in a TLS cluster its certificate's role (``dfs/credentials.py``),
# which only the cluster CA issues; in a secret-only cluster a claim inside the handshake's
# MAC (``auth.py``), which anyone who holds the secret can make (docs/SECURITY.md).
CLIENT = "client"  # a mount, or the CLI of a client host: files only
ADMIN = "admin"  # the operator's CLI: files and the cluster's admin.* commands
METASERVER = "metaserver"
CHUNKSERVER = "chunkserver"
ROLES = (CLIENT, ADMIN, METASERVER, CHUNKSERVER)
USERS = frozenset({CLIENT, ADMIN})  # who works on files
ANYONE = frozenset(ROLES)
SERVER_ROLES = frozenset({METASERVER, CHUNKSERVER})

# ------------------------------------------------------------------ kinds
UINT = "uint"  # an int >= 0
INT = "int"
BYTES = "bytes"
STR = "str"
BOOL = "bool"
LIST = "list"
MAP = "map"
ANY = "any"
KINDS = (UINT, INT, BYTES, STR, BOOL, LIST, MAP, ANY)

_MISSING: Any = object()
Check = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Field:
    """One header field.

    ``low``/``high``: the smallest and largest value (``uint``/``int``), length in bytes
    (``bytes``), characters (``str``) or items (``list``). ``items``: each list item's
    check: ``"uint"`` (an int >= 0), ``"id"`` (an int >= 1), ``"str"``, a tuple of
    ``(low, high)`` ranges for a list of fixed-length int lists (``[[chunk_id, version],
    ...]``), or a tuple of ``Field`` for a list of maps, each checked as a header is (its
    own fields' errors). ``error``: raised for a value out of ``low..high`` (and for a bad
    item of the other kinds), with ``message`` when given.
    """

    name: str
    kind: str
    required: bool = True
    low: int | None = None
    high: int | None = None
    error: Callable[..., DfsError] = Invalid
    message: str = ""
    items: str | tuple[tuple[int, int], ...] | tuple[Field, ...] | None = None
    nullable: bool = False
    doc: str = ""
    # False for a field that steers the server but is no argument of the op's command.
    arg: bool = True

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert self.items is None or self.kind == LIST, self.name

    def compile(self) -> Check:
        return _compile(self)


def _kind_error(name: str, kind: str, value: Any) -> ProtocolError:
    want = "int" if kind == UINT else kind
    return ProtocolError(f"field {name!r} must be {want}, not {type(value).__name__}")


def _is_int(v: Any) -> bool:
    return type(v) is int or (isinstance(v, int) and type(v) is not bool)


def _compile(f: Field) -> Check:
    name, kind, low, high, error, nullable = f.name, f.kind, f.low, f.high, f.error, f.nullable
    message = f.message or f"field {name!r} out of range"

    def out(v: Any) -> DfsError:
        return error(message, field=name)

    if kind in (UINT, INT):
        lo = low if low is not None else (0 if kind == UINT else None)

        def check_int(v: Any) -> None:
            if type(v) is not int and not _is_int(v):
                if v is None and nullable:
                    return
                raise _kind_error(name, kind, v)
            if kind == UINT and v < 0:
                raise ProtocolError(f"field {name!r} must be >= 0")
            if (lo is not None and v < lo) or (high is not None and v > high):
                raise out(v)

        return check_int

    if kind in (BYTES, STR):
        tp: type = bytes if kind == BYTES else str

        def check_sized(v: Any) -> None:
            if type(v) is not tp and not isinstance(v, tp):
                if v is None and nullable:
                    return
                raise _kind_error(name, kind, v)
            size = len(cast(Sized, v))
            if (high is not None and size > high) or (low is not None and size < low):
                raise out(v)

        return check_sized

    if kind == BOOL:

        def check_bool(v: Any) -> None:
            if type(v) is not bool and not (v is None and nullable):
                raise _kind_error(name, kind, v)

        return check_bool

    if kind == LIST:
        maps = bool(f.items) and isinstance(cast(tuple[Any, ...], f.items)[0], Field)
        each = _compile_checks(cast(tuple[Field, ...], f.items)) if maps else None
        item = (
            None if maps else _item_check(cast(str | tuple[tuple[int, int], ...] | None, f.items))
        )

        def check_list(v: Any) -> None:
            if type(v) is not list:
                if v is None and nullable:
                    return
                raise _kind_error(name, kind, v)
            if (high is not None and len(v) > high) or (low is not None and len(v) < low):
                raise out(v)
            if each is not None:  # maps, each checked as a header is: its fields' errors
                for x in v:
                    if type(x) is not dict:
                        raise ProtocolError(f"field {name!r}: every item must be a map")
                    each(x)
            elif item is not None:
                for x in v:
                    if not item(x):
                        raise out(v)

        return check_list

    if kind == MAP:

        def check_map(v: Any) -> None:
            if type(v) is not dict and not (v is None and nullable):
                raise _kind_error(name, kind, v)

        return check_map

    return lambda v: None  # ANY


def _item_check(items: str | tuple[tuple[int, int], ...] | None) -> Callable[[Any], bool] | None:
    if items is None:
        return None
    if items == UINT:
        return lambda x: type(x) is int and x >= 0
    if items == "id":
        return lambda x: type(x) is int and x >= 1
    if items == STR:
        return lambda x: type(x) is str
    assert isinstance(items, tuple), items
    ranges = items
    n = len(ranges)

    def ok(x: Any) -> bool:
        if type(x) is not list or len(x) != n:
            return False
        for value, (lo, hi) in zip(x, ranges):  # noqa: B905 - lengths checked above
            if type(value) is not int or not lo <= value <= hi:
                return False
        return True

    return ok


@dataclass(frozen=True)
class Op:
    """One operation: ``name`` (the header's ``op``), the ``roles`` that may send it, its
    request ``fields`` (checked by ``check``), its ``reply`` fields (documented; the
    client's records check the ones they read), the raw ``payload`` each way, and
    ``answer``: what the reply means, for docs/PROTOCOL.md. ``session``: a mutation that
    carries ``client``/``seq``. ``oneway``: sent without an ``id``, never answered."""

    name: str
    roles: frozenset[str]
    fields: tuple[Field, ...] = ()
    reply: tuple[Field, ...] = ()
    answer: str = ""
    payload: str = ""
    reply_payload: str = ""
    session: bool = False
    oneway: bool = False
    # The fields every request of this kind may carry besides its own (timeout_ms, ...).
    common: tuple[Field, ...] = ()
    # ``check(header)``: checks ``header`` against this definition and returns it; raises
    # as rule 2 says. Generated in ``__post_init__``.
    check: Callable[[dict[str, Any]], dict[str, Any]] = field(init=False, repr=False, compare=False)
    _args: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert self.roles and self.roles <= ANYONE, (self.name, self.roles)
        names = [f.name for f in self.fields]
        assert len(set(names)) == len(names), f"{self.name}: a field named twice"
        every = self.fields + tuple(c for c in self.common if c.name not in names)
        object.__setattr__(self, "check", _compile_checks(every))
        object.__setattr__(self, "_args", tuple(f.name for f in self.fields if f.arg))

    def args(self, header: dict[str, Any]) -> dict[str, Any]:
        """The op's own fields present in a checked ``header`` (what a command takes)."""
        return {name: header[name] for name in self._args if name in header}

    def allows(self, role: str | None) -> bool:
        return role in self.roles


def _fast_fails(f: Field, v: str) -> str | None:
    """A Python expression, true when value ``v`` leaves the fast path of ``f`` (the
    field's closure then decides); None when the closure must always look (list items)."""
    low, high = f.low, f.high
    if f.kind in (UINT, INT):
        bounds = [f"{v} < {low or 0}"] if f.kind == UINT or low is not None else []
        if high is not None:
            bounds.append(f"{v} > {high}")
        return " or ".join([f"type({v}) is not int", *bounds])
    if f.kind in (BYTES, STR):
        sized = [f"type({v}) is not {'bytes' if f.kind == BYTES else 'str'}"]
        if high is not None:
            sized.append(f"len({v}) > {high}")
        if low:
            sized.append(f"len({v}) < {low}")
        return " or ".join(sized)
    if f.kind == BOOL:
        return f"type({v}) is not bool"
    if f.kind == MAP:
        return f"type({v}) is not dict"
    if f.kind == LIST:
        if f.items is not None:
            return None
        listed = [f"type({v}) is not list"]
        if high is not None:
            listed.append(f"len({v}) > {high}")
        if low:
            listed.append(f"len({v}) < {low}")
        return " or ".join(listed)
    return "False"  # ANY


def _compile_checks(fields: tuple[Field, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One function checking every field of ``fields`` in a header (rule 3)."""
    names: dict[str, Any] = {"_M": _MISSING, "_missing": _missing}
    lines = ["def check(h):"]
    for i, f in enumerate(fields):
        names[f"c{i}"] = f.compile()
        fails = _fast_fails(f, "v")
        lines.append(f"    v = h.get({f.name!r}, _M)")
        if f.required:
            lines.append("    if v is _M:")
            lines.append(f"        _missing({f.name!r})")
            lines.append(f"    elif {fails}:" if fails is not None else "    else:")
        elif fails is not None:
            lines.append(f"    if v is not _M and ({fails}):")
        else:
            lines.append("    if v is not _M:")
        lines.append(f"        c{i}(v)")
    lines.append("    return h")
    exec("\n".join(lines), names)
    check: Callable[[dict[str, Any]], dict[str, Any]] = names["check"]
    return check


def _missing(name: str) -> None:
    raise ProtocolError(f"missing field {name!r}")


def check_reply(fields: tuple[Field, ...], wire: Any, what: str) -> dict[str, Any]:
    """Check a map a peer answered against ``fields`` (compiled on every call: for the
    client's records, which compile theirs once with ``compile_shape``)."""
    return compile_shape(fields, what)(wire)


def compile_shape(fields: tuple[Field, ...], what: str) -> Callable[[Any], dict[str, Any]]:
    """A checker of a map against ``fields``: returns the map, or raises ``ProtocolError``
    (a reply's shape is the peer's business: any breach is a protocol error)."""
    checks = tuple((f.name, f.required, f.compile()) for f in fields)

    def check(wire: Any) -> dict[str, Any]:
        if not isinstance(wire, dict):
            raise ProtocolError(f"{what} is not a map")
        for name, required, test in checks:
            value = wire.get(name, _MISSING)
            if value is _MISSING:
                if required:
                    raise ProtocolError(f"missing field {name!r}")
                continue
            try:
                test(value)
            except ProtocolError:
                raise
            except DfsError as e:
                raise ProtocolError(f"{what}: {e.message}") from None
        return wire

    return check


__all__ = [
    "ANYONE",
    "CHUNKSERVER",
    "CLIENT",
    "METASERVER",
    "ROLES",
    "Field",
    "Op",
    "check_reply",
    "compile_shape",
]
