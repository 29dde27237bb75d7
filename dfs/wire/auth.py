"""Mutual authentication on the cluster secret: an HMAC-SHA256 challenge-response. Pure.

The caller brings the randomness (a 32-byte nonce from ``os.urandom``) and moves the frames;
this module only builds and checks headers. ``dfs.rpc`` runs it on every new connection
before any other frame is accepted.

Protocol, version 1 (``AUTH_VERSION``). The side that opened the connection is the
*initiator*, the side that accepted it the *acceptor*. Both sides do the same thing, at the
same time, so the handshake costs two round trips whatever the latency::

    1. send  {"op": "auth.hello", "v": 1, "role": str, "name": str, "nonce": 32 bytes}
    2. on the peer's hello: check it; send
             {"op": "auth.proof", "proof": HMAC-SHA256(secret,
                  b"dfs-auth-v1" + own_label + own_nonce + peer_nonce)}
    3. on the peer's proof: recompute it with the peer's label and compare
       (``hmac.compare_digest``). Equal: the peer knows the secret. Else: ``AuthError``.

Labels are b"initiator" and b"acceptor": a proof is only valid in one direction, so a proof
reflected back (or relayed from a second connection to the same server) fails. Each proof
covers the prover's fresh nonce and the verifier's fresh nonce, so a recorded proof never
verifies again. A hello that echoes our own nonce is refused outright.

What this does not do: it derives no session key and does not protect the frames that follow
from a man in the middle; that is TLS's job, layered underneath when needed. ``role`` and
``name`` say who the peer claims to be (for logs and for servers that treat roles
differently); they are only trustworthy in the sense that the peer knows the secret.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from dfs.wire.errors import AuthError

AUTH_VERSION = 1
NONCE_BYTES = 32
SECRET_BYTES_MIN = 16
NAME_BYTES_MAX = 255  # role and name are for logs; keep them short
OP_HELLO = "auth.hello"
OP_PROOF = "auth.proof"
_CONTEXT = b"dfs-auth-v1"


class Side(enum.Enum):
    INITIATOR = b"initiator"  # opened the connection
    ACCEPTOR = b"acceptor"  # accepted it

    @property
    def other(self) -> Side:
        return Side.ACCEPTOR if self is Side.INITIATOR else Side.INITIATOR


@dataclass(frozen=True, slots=True)
class PeerInfo:
    role: str  # process kind the peer claims: "metaserver", "chunkserver", "client", ...
    name: str  # its node name, for logs


def compute_proof(secret: bytes, side: Side, own_nonce: bytes, peer_nonce: bytes) -> bytes:
    """The proof that ``side`` sends: HMAC-SHA256 over context, label and both nonces."""
    return hmac.new(secret, _CONTEXT + side.value + own_nonce + peer_nonce, hashlib.sha256).digest()


def _short_str(header: dict[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or len(value.encode()) > NAME_BYTES_MAX:
        raise AuthError(f"malformed hello: bad {name!r}")
    return value


class Handshake:
    """One side of one handshake. Use in this order::

        send(hs.hello())
        send(hs.receive_hello(peer_hello))   # returns our proof
        peer = hs.receive_proof(peer_proof)  # raises AuthError unless the peer proved itself

    Any malformed or out-of-order header raises ``AuthError``; the caller then drops the
    connection. ``done`` is True only after a successful ``receive_proof``.
    """

    def __init__(
        self, secret: bytes | None, nonce: bytes, *, side: Side, role: str, name: str
    ) -> None:
        if not secret:
            raise AuthError("no cluster secret configured")
        if len(secret) < SECRET_BYTES_MIN:
            raise AuthError(f"cluster secret is shorter than {SECRET_BYTES_MIN} bytes")
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        self._secret = bytes(secret)
        self._nonce = bytes(nonce)
        self.side = side
        self.role = role
        self.name = name
        self._peer_nonce: bytes | None = None
        self._peer: PeerInfo | None = None
        self.peer_claim: PeerInfo | None = None  # from the hello, before it is proven
        self.done = False

    def hello(self) -> dict[str, Any]:
        return {
            "op": OP_HELLO,
            "v": AUTH_VERSION,
            "role": self.role,
            "name": self.name,
            "nonce": self._nonce,
        }

    def receive_hello(self, header: dict[str, Any]) -> dict[str, Any]:
        """Check the peer's hello; return our proof header to send."""
        if self._peer_nonce is not None:
            raise AuthError("second hello")
        if header.get("op") != OP_HELLO:
            raise AuthError(f"expected {OP_HELLO}, got op {header.get('op')!r}")
        version = header.get("v")
        if version != AUTH_VERSION or type(version) is not int:
            raise AuthError(f"unsupported auth version {version!r}")
        nonce = header.get("nonce")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise AuthError("malformed hello: bad 'nonce'")
        if hmac.compare_digest(nonce, self._nonce):
            raise AuthError("peer echoed our nonce (reflection)")
        self.peer_claim = PeerInfo(_short_str(header, "role"), _short_str(header, "name"))
        self._peer_nonce = nonce
        proof = compute_proof(self._secret, self.side, self._nonce, nonce)
        return {"op": OP_PROOF, "proof": proof}

    def receive_proof(self, header: dict[str, Any]) -> PeerInfo:
        """Verify the peer's proof; return who it is. ``AuthError`` on any mismatch."""
        if self._peer_nonce is None or self.peer_claim is None:
            raise AuthError("proof before hello")
        if self.done:
            raise AuthError("second proof")
        if header.get("op") != OP_PROOF:
            raise AuthError(f"expected {OP_PROOF}, got op {header.get('op')!r}")
        proof = header.get("proof")
        if not isinstance(proof, bytes):
            raise AuthError("malformed proof")
        expected = compute_proof(self._secret, self.side.other, self._peer_nonce, self._nonce)
        if not hmac.compare_digest(proof, expected):
            raise AuthError("peer's proof does not match (wrong cluster secret?)")
        self.done = True
        self._peer = self.peer_claim
        return self._peer

    @property
    def peer(self) -> PeerInfo:
        """The authenticated peer (only after ``receive_proof`` succeeded)."""
        if self._peer is None:
            raise AuthError("handshake not complete")
        return self._peer
