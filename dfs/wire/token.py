"""Chunk access tokens: the metaserver's signed permission to read or write one chunk version.

Pure: the caller passes the current time. Two signatures over the same fields::

    fields = pack(">QQ1sQ", chunk_id, version, mode, expiry_ms) || len(client) || client

- **Version 3, Ed25519** (TLS clusters): ``token = Ed25519-sign(S, b"dfs-token-v3" ||
  fields)``, 64 bytes. The signing key ``S`` derives from the cluster secret
  (``signing_key``), which only metaservers hold in a TLS cluster; chunkservers hold the
  32-byte public key (``verify_key``, carried in their credential file: ``dfs/pki.py``),
  which checks tokens and makes none. So a chunkserver taken over can read what is on its
  own disk, but cannot mint a token that another chunkserver accepts.
- **Version 2, HMAC-SHA256** (secret-only clusters, where every process holds the secret
  and names are claims anyway): ``token = HMAC-SHA256(K, b"dfs-token-v2" || fields)``,
  32 bytes, ``K = HMAC-SHA256(cluster_secret, b"dfs-token-key")`` (``token_key``).
  A version 1 token (no client; prefix ``b"dfs-token-v1"``) still verifies where the
  client is empty, for rolling upgrades of secret-only clusters.

``client`` (UTF-8, one length byte) is the name of the client the token was issued to: in a
TLS cluster its certificate's fingerprint, which the chunkserver reads from the connection
the token arrives on (a chunkserver forwarding a write down its chain vouches for it, field
``client_name``); empty in a secret-only cluster, where names are only claims. A token
issued to one client is refused from another.

``mode`` is ``b"r"`` (read) or ``b"w"`` (write; also allows reads and syncs of the same chunk
and version). ``expiry_ms`` is wall-clock milliseconds since the epoch and travels next to
the token in the request, so a chunkserver can check it without state. The keys derive from
the cluster secret rather than being the secret itself, so that a token never serves as a
handshake proof (different message prefix, different key).

What signs is a ``Minter``; what checks is a ``Checker`` (``dfs/credentials.py`` makes both
from what a process holds). A wrong token, a token for another chunk, version, mode or
client, or an expired one fails with ``PermissionDenied``: the client asks the metaserver
for a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from dfs.wire.errors import PermissionDenied

if TYPE_CHECKING:  # the cryptography package is imported where Ed25519 is used, only
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

TOKEN_VERSION = 3
TOKEN_BYTES = 32  # version 2 (and 1): HMAC-SHA256
SIGNED_TOKEN_BYTES = 64  # version 3: Ed25519
VERIFY_KEY_BYTES = 32
READ = b"r"
WRITE = b"w"
_PREFIX_V3 = b"dfs-token-v3"
_PREFIX = b"dfs-token-v2"
_PREFIX_V1 = b"dfs-token-v1"
CLIENT_NAME_BYTES_MAX = 255
_FIELDS = struct.Struct(">QQ1sQ")


def token_key(secret: bytes) -> bytes:
    """The version 2 HMAC key."""
    return hmac.new(secret, b"dfs-token-key", hashlib.sha256).digest()


def signing_key(secret: bytes) -> Ed25519PrivateKey:
    """The version 3 signing key: only a metaserver of a TLS cluster makes it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = hmac.new(secret, b"dfs-token-signing-key", hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def verify_key(secret: bytes) -> bytes:
    """The raw 32-byte public key of ``signing_key(secret)``: what chunkservers hold."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return signing_key(secret).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _fields(chunk_id: int, version: int, mode: bytes, expiry_ms: int, client: str) -> bytes:
    name = client.encode()
    assert len(name) <= CLIENT_NAME_BYTES_MAX, client
    return _FIELDS.pack(chunk_id, version, mode, expiry_ms) + bytes((len(name),)) + name


def make_token(
    key: bytes, chunk_id: int, version: int, mode: bytes, expiry_ms: int, client: str = ""
) -> bytes:
    """A version 2 token: (chunk_id, version, mode, expiry_ms, client) under ``key``
    (``token_key``)."""
    assert mode in (READ, WRITE), mode
    msg = _PREFIX + _fields(chunk_id, version, mode, expiry_ms, client)
    return hmac.new(key, msg, hashlib.sha256).digest()


def _v1(key: bytes, chunk_id: int, version: int, mode: bytes, expiry_ms: int) -> bytes:
    msg = _PREFIX_V1 + _FIELDS.pack(chunk_id, version, mode, expiry_ms)
    return hmac.new(key, msg, hashlib.sha256).digest()


def sign_token(
    key: Ed25519PrivateKey,
    chunk_id: int,
    version: int,
    mode: bytes,
    expiry_ms: int,
    client: str = "",
) -> bytes:
    """A version 3 token under ``key`` (``signing_key``)."""
    assert mode in (READ, WRITE), mode
    return key.sign(_PREFIX_V3 + _fields(chunk_id, version, mode, expiry_ms, client))


def _signed(public: Ed25519PublicKey, token: bytes, msg: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(token, _PREFIX_V3 + msg)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Minter:
    """What a metaserver issues tokens with: ``signer`` (version 3) when set, else the
    HMAC ``key`` (version 2)."""

    key: bytes | None = None
    signer: Ed25519PrivateKey | None = None

    def __call__(
        self, chunk_id: int, version: int, mode: bytes, expiry_ms: int, client: str = ""
    ) -> bytes:
        if self.signer is not None:
            return sign_token(self.signer, chunk_id, version, mode, expiry_ms, client)
        assert self.key is not None, "a minter needs a key"
        return make_token(self.key, chunk_id, version, mode, expiry_ms, client)


@dataclass(frozen=True)
class Checker:
    """What a chunkserver checks tokens with: a version 3 token against ``public`` (raw
    Ed25519 public key), a version 2 or 1 one against the HMAC ``key``; a kind it has no
    key for is refused."""

    key: bytes | None = None
    public: bytes | None = None

    def __post_init__(self) -> None:
        if self.public is not None and len(self.public) != VERIFY_KEY_BYTES:
            raise ValueError(f"a token verification key is {VERIFY_KEY_BYTES} bytes")

    @cached_property
    def _verifier(self) -> Ed25519PublicKey | None:
        if self.public is None:
            return None
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.public)

    def check(
        self,
        token: bytes,
        chunk_id: int,
        version: int,
        mode: bytes,
        expiry_ms: int,
        now_ms: int,
        client: str = "",
    ) -> None:
        """Raise ``PermissionDenied`` unless ``token`` allows ``mode`` on (chunk_id,
        version) to ``client`` until ``expiry_ms`` and ``now_ms`` is before that. A write
        token allows reads too."""
        public = self._verifier
        if public is not None and isinstance(token, bytes) and len(token) == SIGNED_TOKEN_BYTES:
            _check(
                lambda m: _signed(public, token, _fields(chunk_id, version, m, expiry_ms, client)),
                chunk_id, version, mode, expiry_ms, now_ms, client,
            )  # fmt: skip
        elif self.key is not None and isinstance(token, bytes) and len(token) == TOKEN_BYTES:
            key = self.key
            _check(
                lambda m: hmac.compare_digest(token, make_token(key, chunk_id, version, m, expiry_ms, client))
                or (not client and hmac.compare_digest(token, _v1(key, chunk_id, version, m, expiry_ms))),
                chunk_id, version, mode, expiry_ms, now_ms, client,
            )  # fmt: skip
        else:
            raise PermissionDenied("missing or malformed access token", chunk_id=chunk_id)


def _check(
    made_for: Callable[[bytes], bool],
    chunk_id: int,
    version: int,
    mode: bytes,
    expiry_ms: int,
    now_ms: int,
    client: str,
) -> None:
    """The rule of every token check, whatever its kind: the fields in range, the token
    made for ``mode`` (``made_for``; a write token allows reads too), not expired."""
    if not (0 <= chunk_id < 1 << 64 and 0 <= version < 1 << 64 and 0 <= expiry_ms < 1 << 64):
        raise PermissionDenied("access token fields out of range", chunk_id=chunk_id)
    if len(client.encode()) > CLIENT_NAME_BYTES_MAX:
        raise PermissionDenied("client name too long for a token", chunk_id=chunk_id)
    modes = (WRITE,) if mode == WRITE else (READ, WRITE)
    if not any(made_for(m) for m in modes):
        raise PermissionDenied("access token not valid for this chunk", chunk_id=chunk_id)
    if now_ms >= expiry_ms:
        raise PermissionDenied("access token expired", chunk_id=chunk_id)
