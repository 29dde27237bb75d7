"""The protocol's definitions (dfs/wire/spec.py, ops_meta.py, ops_chunk.py, limits.py).

What these tests check: a request is refused with the answers the hand-written parsers
gave (ProtocolError for a missing or mistyped field, the field's own error past a limit);
fields a definition does not name pass (old and new peers meet); every op names the roles
that may send it, as docs/ARCHITECTURE.md says ("Operations, limits and roles"); the limits are defined once in the project.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from dfs.wire import limits
from dfs.wire.errors import Invalid, NameTooLong, PermissionDenied, ProtocolError, TooBig
from dfs.wire.ops import CHUNKSERVER_OPS, METASERVER_OPS, admit, lookup
from dfs.wire.ops_meta import COMMANDS, SENT_BY_METASERVER
from dfs.wire.spec import (
    ADMIN,
    ANYONE,
    CHUNKSERVER,
    CLIENT,
    METASERVER,
    Field,
    Op,
    compile_shape,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = {"token": b"t" * 32, "expiry_ms": 1}
READ = {"chunk_id": 5, "version": 1, "offset": 0, "size": 10, **TOKEN}


def check(table: dict[str, Op], op: str, role: str, **fields: Any) -> dict[str, Any]:
    return admit(lookup(table, op), role, {"op": op, "id": 1, **fields})


def test_a_well_formed_request_passes_with_fields_nobody_defined() -> None:
    header = check(CHUNKSERVER_OPS, "chunk.read", CLIENT, **READ, future_field=[1, 2])
    assert header["future_field"] == [1, 2]


@pytest.mark.parametrize(
    ("fields", "error", "text"),
    [
        ({k: v for k, v in READ.items() if k != "size"}, ProtocolError, "missing field 'size'"),
        ({**READ, "size": "10"}, ProtocolError, "must be int, not str"),
        ({**READ, "size": True}, ProtocolError, "must be int, not bool"),
        ({**READ, "offset": -1}, ProtocolError, "must be >= 0"),
        ({**READ, "chunk_id": 0}, Invalid, "chunk_id out of range"),
        ({**READ, "version": 1 << 64}, Invalid, "version out of range"),
        ({**READ, "size": limits.READ_BYTES_MAX + 1}, TooBig, "read over"),
        ({**READ, "token": "text"}, ProtocolError, "must be bytes"),
        ({**READ, "timeout_ms": -5}, ProtocolError, "'timeout_ms' must be >= 0"),
    ],
)
def test_a_bad_read_is_answered_as_the_hand_parser_answered(
    fields: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        check(CHUNKSERVER_OPS, "chunk.read", CLIENT, **fields)


def test_list_fields_check_their_length_and_items() -> None:
    ok = check(CHUNKSERVER_OPS, "chunk.delete", METASERVER, chunks=[[1, 0], [2, 9]])
    assert ok["chunks"] == [[1, 0], [2, 9]]
    for bad in ([[0, 1]], [[1]], [[1, True]], [(1, 1)], [[1, 2]] * (limits.DELETE_CHUNKS_MAX + 1)):
        with pytest.raises(Invalid):
            check(CHUNKSERVER_OPS, "chunk.delete", METASERVER, chunks=bad)
    with pytest.raises(Invalid):
        check(CHUNKSERVER_OPS, "chunk.replicate", METASERVER, chunk_id=1, version=1, length=0,
              sources=[], **TOKEN)  # fmt: skip
    with pytest.raises(Invalid, match="inos: at most"):
        check(METASERVER_OPS, "fs.release", CLIENT, inos=[1, 0])


def test_names_targets_and_xattrs_are_refused_past_their_limits() -> None:
    name = b"n" * limits.NAME_BYTES_MAX
    mkdir = {"parent": 1, "mode": 0o40755, "uid": 0, "gid": 0}
    check(METASERVER_OPS, "fs.mkdir", CLIENT, name=name, **mkdir)
    with pytest.raises(NameTooLong):
        check(METASERVER_OPS, "fs.mkdir", CLIENT, name=name + b"n", **mkdir)
    with pytest.raises(NameTooLong):
        check(METASERVER_OPS, "fs.rename", CLIENT, parent=1, name=b"a", new_parent=1,
              new_name=name + b"n")  # fmt: skip
    with pytest.raises(NameTooLong):
        check(METASERVER_OPS, "fs.symlink", CLIENT, parent=1, name=b"l", uid=0, gid=0,
              target=b"t" * (limits.SYMLINK_TARGET_BYTES_MAX + 1))  # fmt: skip
    with pytest.raises(TooBig):
        check(METASERVER_OPS, "fs.setxattr", CLIENT, ino=1, name=b"user.a",
              value=b"v" * (limits.XATTR_VALUE_BYTES_MAX + 1))  # fmt: skip
    with pytest.raises(Invalid, match=r"ops: 1\.\."):
        check(METASERVER_OPS, "fs.batch", CLIENT, ops=[])


def test_a_mutations_arguments_are_its_own_fields_only() -> None:
    header = check(METASERVER_OPS, "fs.create", CLIENT, parent=1, name=b"f", mode=0o100644,
                   uid=0, gid=0, first_chunk=True, client=7, seq=3, holder=9)  # fmt: skip
    assert METASERVER_OPS["fs.create"].args(header) == {
        "parent": 1, "name": b"f", "mode": 0o100644, "uid": 0, "gid": 0,
    }  # fmt: skip
    assert COMMANDS["fs.create"] == "create" and "fs.batch" not in COMMANDS


def test_an_unknown_op_is_unsupported() -> None:
    from dfs.wire.errors import Unsupported

    for op in ("fs.nothing", None, 7):
        with pytest.raises(Unsupported):
            lookup(METASERVER_OPS, op)


# Who may send what (docs/ARCHITECTURE.md, "Operations, limits and roles").
ONLY = {
    "raft": {METASERVER},
    "chunk.delete": {METASERVER},
    "chunk.replicate": {METASERVER},
    "chunk.info": {METASERVER},
    "chunk.write": {CLIENT, ADMIN, CHUNKSERVER, METASERVER},
    "chunk.read": {CLIENT, ADMIN, CHUNKSERVER},
    "chunk.sync": {CLIENT, ADMIN, CHUNKSERVER},
    "cs.register": {CHUNKSERVER},
    "cs.heartbeat": {CHUNKSERVER},
    "cs.report": {CHUNKSERVER},
    "cs.bad_chunks": {CHUNKSERVER},
    "status": set(ANYONE),
    "cs.status": set(ANYONE),
    "meta.members": set(ANYONE),
}


def test_every_op_names_its_senders() -> None:
    every = {**METASERVER_OPS, **CHUNKSERVER_OPS}
    for name, roles in ONLY.items():
        assert set(every[name].roles) == roles, name
    for name, spec in METASERVER_OPS.items():
        if name.startswith("fs."):  # files: a client's and the operator's
            assert spec.roles == {CLIENT, ADMIN}, name
        if name.startswith("admin.") and name != "admin.usage":  # the operator's only
            assert spec.roles == {ADMIN}, name
    assert METASERVER_OPS["admin.usage"].roles == {CLIENT, ADMIN}  # what du asks
    for spec in SENT_BY_METASERVER:
        assert spec.roles == {METASERVER}


@pytest.mark.parametrize("role", [CLIENT, CHUNKSERVER, "test", None])
def test_a_role_not_allowed_is_refused_before_the_fields_are_read(role: str | None) -> None:
    with pytest.raises(PermissionDenied, match="may be sent only by metaserver") as refused:
        admit(CHUNKSERVER_OPS["chunk.delete"], role, {"chunks": "not even a list"})
    assert refused.value.details == {"op": "chunk.delete", "role": str(role)}


def test_a_reply_shape_is_a_protocol_error_when_broken() -> None:
    shape = compile_shape((Field("ino", "uint"), Field("name", "bytes", high=3)), "entry")
    assert shape({"ino": 1, "name": b"abc"})["ino"] == 1
    for bad in ([], {"ino": -1, "name": b""}, {"ino": 1, "name": b"abcd"}, {"name": b""}):
        with pytest.raises(ProtocolError):
            shape(bad)


def _assigned_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Name) and isinstance(
                getattr(node, "value", None), ast.BinOp | ast.Constant
            ):
                names.add(t.id)
    return names


def test_every_limit_is_defined_once() -> None:
    """A limit of dfs/wire/limits.py set to a number anywhere else is a second home."""
    own = {n for n in vars(limits) if n.isupper()}
    found = []
    for package in ("dfs", "metaserver", "chunkserver"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "dfs" / "wire" / "limits.py":
                continue
            for name in sorted(_assigned_names(path) & own):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    assert not found, found


TRICKY: tuple[Any, ...] = (
    0,
    1,
    -1,
    255,
    256,
    4095,
    4096,
    1 << 63,
    (1 << 64) - 1,
    1 << 64,
    True,
    False,
    None,
    "",
    "127.0.0.1:1",
    "x" * 300,
    b"",
    b"x" * 255,
    b"x" * 256,
    b"x" * (64 * 1024 + 1),
    [],
    [1],
    [[1, 2]],
    [[1, 2, 3]],
    [[0, 1]],
    ["a:1"],
    [1] * 17,
    {},
    {"a": 1},
    1.5,
)


def _reference(spec: Op, header: dict[str, Any]) -> None:
    """The definition checked the slow way: each field's closure, no generated code."""
    every = spec.fields + tuple(
        c for c in spec.common if c.name not in {f.name for f in spec.fields}
    )
    for f in every:
        if f.name not in header:
            if f.required:
                raise ProtocolError(f"missing field {f.name!r}")
            continue
        f.compile()(header[f.name])


def _outcome(check: Any, header: dict[str, Any]) -> tuple[type[Exception] | None, str]:
    try:
        check(header)
    except Exception as e:
        return type(e), str(e)
    return None, ""


def _good(f: Field) -> Any:
    """A value ``f`` takes."""
    low = f.low or 0
    if f.kind in ("uint", "int"):
        return low
    if f.kind in ("bytes", "str"):
        return (b"x" if f.kind == "bytes" else "x") * low
    if f.kind == "list":
        if f.items is None:
            return [0] * low
        if isinstance(f.items, tuple) and isinstance(f.items[0], Field):
            return [{i.name: _good(i) for i in f.items if i.required}] * max(low, 1)
        if isinstance(f.items, tuple):
            return [[lo for lo, _ in f.items]] * max(low, 1)
        return [{"id": 1, "uint": 0, "str": "h:1"}[f.items]] * max(low, 1)
    return {"bool": False, "map": {}, "any": 0}[f.kind]


def test_the_generated_check_answers_as_the_fields_closures_do() -> None:
    """Every field of every op, given each tricky value, the others well-formed."""
    for spec in [*METASERVER_OPS.values(), *CHUNKSERVER_OPS.values()]:
        every = spec.fields + spec.common
        good = {f.name: _good(f) for f in every}
        assert spec.check(dict(good)) == good, spec.name
        for f in every:
            for value in TRICKY:
                header = {**good, f.name: value}
                assert _outcome(spec.check, header) == _outcome(
                    lambda h, s=spec: _reference(s, h), header
                ), (spec.name, f.name, value)
