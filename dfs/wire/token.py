"""Chunk access tokens: the metaserver's signed permission to read or write one chunk version.

Pure: the caller passes the current time. Format (version 2)::

    key   = HMAC-SHA256(cluster_secret, b"dfs-token-key")
    token = HMAC-SHA256(key, b"dfs-token-v2" || pack(">QQ1sQ", chunk_id, version, mode,
                                                     expiry_ms) || len(client) || client)

``client`` (UTF-8, one length byte) is the name of the client the token was issued to: in a
TLS cluster its certificate's name, which the chunkserver reads from the connection the
token arrives on (a chunkserver forwarding a write down its chain vouches for it, field
``client_name``); empty in a secret-only cluster, where names are only claims. A token
issued to one client is refused from another.

A version 1 token (no client; prefix ``b"dfs-token-v1"``) still verifies where the client
is empty, so that a secret-only cluster's chunkservers, upgraded first, accept the tokens
of metaservers not upgraded yet (docs/OPERATIONS.md, rolling upgrades).

``mode`` is ``b"r"`` (read) or ``b"w"`` (write; also allows reads and syncs of the same chunk
and version). ``expiry_ms`` is wall-clock milliseconds since the epoch and travels next to
the token in the request, so a chunkserver can check it without state. The key is derived
from the cluster secret rather than being the secret itself, so that a token never serves as
a handshake proof (different message prefix, different key).

A wrong token, a token for another chunk, version or mode, or an expired one fails with
``PermissionDenied``: the client asks the metaserver for a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from dfs.wire.errors import PermissionDenied

TOKEN_VERSION = 2
TOKEN_BYTES = 32
READ = b"r"
WRITE = b"w"
_PREFIX = b"dfs-token-v2"
_PREFIX_V1 = b"dfs-token-v1"
CLIENT_NAME_BYTES_MAX = 255
_FIELDS = struct.Struct(">QQ1sQ")


def token_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"dfs-token-key", hashlib.sha256).digest()


def make_token(
    key: bytes, chunk_id: int, version: int, mode: bytes, expiry_ms: int, client: str = ""
) -> bytes:
    """Sign (chunk_id, version, mode, expiry_ms, client) with ``key`` (``token_key``)."""
    assert mode in (READ, WRITE), mode
    name = client.encode()
    assert len(name) <= CLIENT_NAME_BYTES_MAX, client
    msg = _PREFIX + _FIELDS.pack(chunk_id, version, mode, expiry_ms) + bytes((len(name),)) + name
    return hmac.new(key, msg, hashlib.sha256).digest()


def _v1(key: bytes, chunk_id: int, version: int, mode: bytes, expiry_ms: int) -> bytes:
    msg = _PREFIX_V1 + _FIELDS.pack(chunk_id, version, mode, expiry_ms)
    return hmac.new(key, msg, hashlib.sha256).digest()


def check_token(
    key: bytes,
    token: bytes,
    chunk_id: int,
    version: int,
    mode: bytes,
    expiry_ms: int,
    now_ms: int,
    client: str = "",
) -> None:
    """Raise ``PermissionDenied`` unless ``token`` allows ``mode`` on (chunk_id, version)
    to ``client`` until ``expiry_ms`` and ``now_ms`` is before that. A write token allows
    reads too."""
    if not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
        raise PermissionDenied("missing or malformed access token", chunk_id=chunk_id)
    if not (0 <= chunk_id < 1 << 64 and 0 <= version < 1 << 64 and 0 <= expiry_ms < 1 << 64):
        raise PermissionDenied("access token fields out of range", chunk_id=chunk_id)
    if len(client.encode()) > CLIENT_NAME_BYTES_MAX:
        raise PermissionDenied("client name too long for a token", chunk_id=chunk_id)
    modes = (WRITE,) if mode == WRITE else (READ, WRITE)
    if not any(
        hmac.compare_digest(token, make_token(key, chunk_id, version, m, expiry_ms, client))
        or (not client and hmac.compare_digest(token, _v1(key, chunk_id, version, m, expiry_ms)))
        for m in modes
    ):
        raise PermissionDenied("access token not valid for this chunk", chunk_id=chunk_id)
    if now_ms >= expiry_ms:
        raise PermissionDenied("access token expired", chunk_id=chunk_id)
