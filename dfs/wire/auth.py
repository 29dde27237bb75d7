"""Mutual authentication on the cluster secret: an HMAC-SHA256 challenge-response. Pure.

The caller brings the randomness (a 32-byte nonce from ``os.urandom``) and moves the frames;
this module only builds and checks headers. ``dfs.rpc`` runs it on every new connection
before any other frame is accepted.

Protocol, version 2 (``AUTH_VERSION``). The side that opened the connection is the
*initiator*, the side that accepted it the *acceptor*. Nobody says who it is before its
peer has proven that it knows the secret, or at the same time::

    1. both send  {"op": "auth.hello", "v": 2, "nonce": 32 bytes}
    2. the initiator, on the acceptor's hello, sends
             {"op": "auth.proof", "role": str, "name": str, "proof": HMAC-SHA256(secret,
                  b"dfs-auth-v2" + own_label + own_nonce + peer_nonce + claim)}
       where claim = len(role) + role + len(name) + name (one length byte each, UTF-8)
    3. the acceptor checks it (``hmac.compare_digest``; a mismatch: ``AuthError`` and the
       connection closes, having revealed nothing about the server); only then does it send
       its own proof the same way, which the initiator checks.

This costs two round trips, as the symmetric version 1 did. Labels are b"initiator" and
b"acceptor": a proof is only valid in one direction, so a proof reflected back (or
relayed from a second connection to the same server) fails. Each proof covers the
prover's fresh nonce, the verifier's fresh nonce and the role and name the prover claims,
so a recorded proof never verifies again and a claim cannot be changed on the way. A hello
that echoes our own nonce is refused outright.

What this does not do: it derives no session key and does not protect the frames that follow
from a man in the middle; that is TLS's job, layered underneath when needed. ``role`` and
``name`` say who the peer claims to be (for logs and for servers that treat roles
differently); they are only trustworthy in the sense that the peer knows the secret.

Under TLS (``certified``: the role and name in the peer's verified certificate,
``dfs/credentials.py``) the same steps run with empty proofs and no secret: the channel
already proved who the peer is, and the handshake only checks that the role it claims is
its certificate's, and, on the side that dialled, that the peer is a server.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from dfs.wire.errors import AuthError
from dfs.wire.spec import SERVER_ROLES

AUTH_VERSION = 2
NONCE_BYTES = 32
SECRET_BYTES_MIN = 16
CLAIM_BYTES_MAX = 255  # role and name are for logs; keep them short
OP_HELLO = "auth.hello"
OP_PROOF = "auth.proof"
_CONTEXT = b"dfs-auth-v2"


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
    # A client whose certificate restricts it to one user: its uid and groups (the
    # metaserver then checks every request's permissions as that user, docs/SECURITY.md).
    # None: not restricted (a server, root's mount, a secret-only cluster's client).
    uid: int | None = None
    gids: tuple[int, ...] = ()
    cert_id: str = ""  # in a TLS cluster: its certificate's fingerprint (tokens are bound to it)
    serial: int | None = None  # in a TLS cluster: its certificate's serial (what a CRL names)


def compute_proof(
    secret: bytes, side: Side, own_nonce: bytes, peer_nonce: bytes, role: str, name: str
) -> bytes:
    """The proof that ``side`` sends: HMAC-SHA256 over context, label, both nonces and the
    prover's claim (its role and name, each with a length byte)."""
    claim = b"".join(len(b).to_bytes(1, "big") + b for b in (role.encode(), name.encode()))
    message = _CONTEXT + side.value + own_nonce + peer_nonce + claim
    return hmac.new(secret, message, hashlib.sha256).digest()


def check_secret(secret: bytes | None) -> None:
    """``AuthError`` unless ``secret`` can key a handshake."""
    if not secret:
        raise AuthError("no cluster secret configured")
    if len(secret) < SECRET_BYTES_MIN:
        raise AuthError(f"cluster secret is shorter than {SECRET_BYTES_MIN} bytes")


def _short_str(header: dict[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or len(value.encode()) > CLAIM_BYTES_MAX:
        raise AuthError(f"malformed proof: bad {name!r}")
    return value


class Handshake:
    """One side of one handshake. Use in this order::

        send(hs.hello())
        proof = hs.receive_hello(peer_hello)  # the initiator's proof; None on the acceptor
        if proof is not None:
            send(proof)
        peer = hs.receive_proof(peer_proof)  # raises AuthError unless the peer proved itself
        if proof is None:
            send(hs.proof())                 # the acceptor proves itself only now

    Any malformed or out-of-order header raises ``AuthError``; the caller then drops the
    connection. ``done`` is True only after a successful ``receive_proof``.
    """

    def __init__(
        self,
        secret: bytes | None,
        nonce: bytes,
        *,
        side: Side,
        role: str,
        name: str,
        certified: PeerInfo | None = None,
    ) -> None:
        if certified is None:
            check_secret(secret)
        elif side is Side.INITIATOR and certified.role not in SERVER_ROLES:
            raise AuthError(f"the server's certificate is a {certified.role}'s, not a server's")
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        for what, value in (("role", role), ("name", name)):
            if len(value.encode()) > CLAIM_BYTES_MAX:
                raise ValueError(f"{what} over {CLAIM_BYTES_MAX} bytes")
        self._secret = bytes(secret or b"")
        self._certified = certified
        self._nonce = bytes(nonce)
        self.side = side
        self.role = role
        self.name = name
        self._peer_nonce: bytes | None = None
        self._peer: PeerInfo | None = None
        self.done = False

    def hello(self) -> dict[str, Any]:
        return {"op": OP_HELLO, "v": AUTH_VERSION, "nonce": self._nonce}

    def receive_hello(self, header: dict[str, Any]) -> dict[str, Any] | None:
        """Check the peer's hello. The initiator gets its proof to send; the acceptor
        None: it sends its proof (``proof``) once the initiator's has been checked."""
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
        self._peer_nonce = nonce
        return self._proof() if self.side is Side.INITIATOR else None

    def proof(self) -> dict[str, Any]:
        """The acceptor's proof, once the initiator's checked out (``receive_proof``)."""
        if self.side is not Side.ACCEPTOR or not self.done:
            raise AuthError("the acceptor proves itself only after the initiator")
        return self._proof()

    def _proof(self) -> dict[str, Any]:
        assert self._peer_nonce is not None
        if self._certified is not None:
            return {"op": OP_PROOF, "role": self.role, "name": self.name, "proof": b""}
        proof = compute_proof(
            self._secret, self.side, self._nonce, self._peer_nonce, self.role, self.name
        )
        return {"op": OP_PROOF, "role": self.role, "name": self.name, "proof": proof}

    def receive_proof(self, header: dict[str, Any]) -> PeerInfo:
        """Verify the peer's proof; return who it is. ``AuthError`` on any mismatch."""
        if self._peer_nonce is None:
            raise AuthError("proof before hello")
        if self.done:
            raise AuthError("second proof")
        if header.get("op") != OP_PROOF:
            raise AuthError(f"expected {OP_PROOF}, got op {header.get('op')!r}")
        proof = header.get("proof")
        if not isinstance(proof, bytes):
            raise AuthError("malformed proof")
        claim = PeerInfo(_short_str(header, "role"), _short_str(header, "name"))
        if self._certified is not None:
            if claim.role != self._certified.role:
                raise AuthError(
                    f"peer claims role {claim.role!r}, its certificate {self._certified.role!r}"
                )
            self.done = True
            self._peer = self._certified
            return self._certified
        expected = compute_proof(
            self._secret, self.side.other, self._peer_nonce, self._nonce, claim.role, claim.name
        )
        if not hmac.compare_digest(proof, expected):
            raise AuthError("peer's proof does not match (wrong cluster secret?)")
        self.done = True
        self._peer = claim
        return claim

    @property
    def peer(self) -> PeerInfo:
        """The authenticated peer (only after ``receive_proof`` succeeded)."""
        if self._peer is None:
            raise AuthError("handshake not complete")
        return self._peer
