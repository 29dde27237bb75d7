"""Every operation of the protocol (version 1), by server, and the check at the edge. Pure.

The definitions are in ``ops_meta.py`` (the metaserver's) and ``ops_chunk.py`` (the
chunkserver's), in the shape of ``spec.py``. A server looks an incoming op up here, then
``admit``s it: the peer's role (proven in the handshake, ``auth.py``) must be one the
definition allows, and the header must pass the definition's check. docs/PROTOCOL.md's
tables are generated from these (``python -m tools.protocoldoc``).
"""

from __future__ import annotations

from typing import Any

from dfs.wire.auth import PeerInfo
from dfs.wire.errors import AuthError, PermissionDenied, Unsupported
from dfs.wire.ops_chunk import CHUNK_OPS
from dfs.wire.ops_meta import META_OPS, RAFT
from dfs.wire.spec import CHUNKSERVER, METASERVER, Op

CHUNKSERVER_OPS: dict[str, Op] = {op.name: op for op in CHUNK_OPS}
METASERVER_OPS: dict[str, Op] = {op.name: op for op in META_OPS}
# Which server takes each op: a TLS peer is asked only for its certificate's kind's ops.
SERVED_BY: dict[str, str] = {
    **{name: METASERVER for name in METASERVER_OPS},
    **{name: CHUNKSERVER for name in CHUNKSERVER_OPS},
}


def lookup(ops: dict[str, Op], op: Any) -> Op:
    """The definition of ``op``; ``Unsupported`` for an op this server does not take."""
    spec = ops.get(op) if type(op) is str else None
    if spec is None:
        raise Unsupported(f"unknown op {op!r}", op=str(op)[:64])
    return spec


def refuse_role(spec: Op, role: str | None) -> PermissionDenied:
    """The answer to ``role`` sending ``spec``, which it may not."""
    allowed = ", ".join(sorted(spec.roles))
    return PermissionDenied(
        f"{spec.name} may be sent only by {allowed}, not by a {role}", op=spec.name,
        role=str(role),
    )  # fmt: skip


def admit(spec: Op, role: str | None, header: dict[str, Any]) -> dict[str, Any]:
    """Check that ``role`` may send ``spec`` and that ``header`` is well-formed; returns
    the header. Raises ``PermissionDenied``, ``ProtocolError`` or the field's error."""
    if role not in spec.roles:
        raise refuse_role(spec, role)
    return spec.check(header)


def check_server(op: str, peer: PeerInfo | None) -> None:
    """Before a request is sent: ``AuthError`` when the peer's certificate (TLS: proven,
    ``peer.cert_id`` set) is not of the server that takes ``op``. So a server taken over
    cannot pose as another kind: a chunkserver's credential on a metaserver's address
    gets no ``fs.*`` request, no file name, no data. Ops of neither table pass."""
    if peer is not None and peer.cert_id:
        server = SERVED_BY.get(op)
        if server is not None and server != peer.role:
            raise AuthError(f"{op} goes to a {server}, and the peer is a {peer.role}", op=op)


__all__ = [
    "CHUNKSERVER_OPS", "METASERVER_OPS", "RAFT", "SERVED_BY", "admit", "check_server",
    "lookup", "refuse_role",
]  # fmt: skip
