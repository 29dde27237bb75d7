"""Access tokens: only the exact (chunk, version, mode, expiry, client) signed verifies, until
expiry."""

from __future__ import annotations

from typing import Any

import pytest

from dfs.wire.errors import PermissionDenied
from dfs.wire.token import (
    READ,
    SIGNED_TOKEN_BYTES,
    WRITE,
    Checker,
    Minter,
    make_token,
    signing_key,
    token_key,
    verify_key,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

KEY = token_key(b"s" * 32)


def check_token(key: bytes, token: bytes, *fields: Any, **named: Any) -> None:
    """The check of a chunkserver that holds the HMAC key (a secret-only cluster's)."""
    Checker(key=key).check(token, *fields, **named)


def test_valid_token_checks() -> None:
    t = make_token(KEY, 7, 3, READ, 1000)
    check_token(KEY, t, 7, 3, READ, 1000, now_ms=999)


def test_write_token_allows_read_but_not_reverse() -> None:
    w = make_token(KEY, 7, 3, WRITE, 1000)
    check_token(KEY, w, 7, 3, READ, 1000, now_ms=1)
    r = make_token(KEY, 7, 3, READ, 1000)
    with pytest.raises(PermissionDenied):
        check_token(KEY, r, 7, 3, WRITE, 1000, now_ms=1)


@pytest.mark.parametrize(
    "chunk_id, version, expiry_ms, key",
    [(8, 3, 1000, KEY), (7, 4, 1000, KEY), (7, 3, 2000, KEY), (7, 3, 1000, token_key(b"x"))],
)
def test_any_other_field_fails(chunk_id: int, version: int, expiry_ms: int, key: bytes) -> None:
    t = make_token(KEY, 7, 3, READ, 1000)
    with pytest.raises(PermissionDenied):
        check_token(key, t, chunk_id, version, READ, expiry_ms, now_ms=1)


def test_expired_and_malformed() -> None:
    t = make_token(KEY, 7, 3, READ, 1000)
    with pytest.raises(PermissionDenied, match="expired"):
        check_token(KEY, t, 7, 3, READ, 1000, now_ms=1000)
    for bad in (b"", t[:-1], "text"):
        with pytest.raises(PermissionDenied):
            check_token(KEY, bad, 7, 3, READ, 1000, now_ms=1)  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied):
        check_token(KEY, t, -1, 3, READ, 1000, now_ms=1)


def test_a_token_is_bound_to_its_client() -> None:
    t = make_token(KEY, 7, 3, WRITE, 1000, "mount-a")
    check_token(KEY, t, 7, 3, READ, 1000, now_ms=1, client="mount-a")
    for other in ("mount-b", "", "mount-a "):
        with pytest.raises(PermissionDenied):
            check_token(KEY, t, 7, 3, READ, 1000, now_ms=1, client=other)
    unbound = make_token(KEY, 7, 3, READ, 1000)  # a secret-only cluster's: client ""
    with pytest.raises(PermissionDenied):
        check_token(KEY, unbound, 7, 3, READ, 1000, now_ms=1, client="mount-a")
    with pytest.raises(PermissionDenied, match="too long"):
        check_token(KEY, t, 7, 3, READ, 1000, now_ms=1, client="x" * 256)


def test_a_version_1_token_verifies_only_unbound() -> None:
    """What a metaserver of the previous version minted, during a rolling upgrade."""
    import hashlib
    import hmac
    import struct

    msg = b"dfs-token-v1" + struct.pack(">QQ1sQ", 7, 3, READ, 1000)
    old = hmac.new(KEY, msg, hashlib.sha256).digest()
    check_token(KEY, old, 7, 3, READ, 1000, now_ms=1)
    with pytest.raises(PermissionDenied):
        check_token(KEY, old, 7, 3, READ, 1000, now_ms=1, client="mount-a")
    with pytest.raises(PermissionDenied):
        check_token(KEY, old, 7, 3, WRITE, 1000, now_ms=1)


SECRET = b"s" * 32
SIGNER = Minter(signer=signing_key(SECRET))
CHUNKSERVER = Checker(public=verify_key(SECRET))  # what a TLS cluster's chunkserver holds


def test_a_signed_token_checks_with_the_public_key_alone() -> None:
    t = SIGNER(7, 3, WRITE, 1000, "mount-a")
    assert len(t) == SIGNED_TOKEN_BYTES
    CHUNKSERVER.check(t, 7, 3, READ, 1000, now_ms=1, client="mount-a")
    CHUNKSERVER.check(t, 7, 3, WRITE, 1000, now_ms=999, client="mount-a")
    for chunk_id, version, mode, expiry_ms, client in [
        (8, 3, READ, 1000, "mount-a"),
        (7, 4, READ, 1000, "mount-a"),
        (7, 3, READ, 2000, "mount-a"),
        (7, 3, READ, 1000, "mount-b"),
        (7, 3, READ, 1000, ""),
    ]:
        with pytest.raises(PermissionDenied):
            CHUNKSERVER.check(t, chunk_id, version, mode, expiry_ms, now_ms=1, client=client)
    r = SIGNER(7, 3, READ, 1000)
    with pytest.raises(PermissionDenied):
        CHUNKSERVER.check(r, 7, 3, WRITE, 1000, now_ms=1)
    with pytest.raises(PermissionDenied, match="expired"):
        CHUNKSERVER.check(r, 7, 3, READ, 1000, now_ms=1000)
    flipped = bytes([t[0] ^ 1]) + t[1:]
    with pytest.raises(PermissionDenied):
        CHUNKSERVER.check(flipped, 7, 3, READ, 1000, now_ms=1, client="mount-a")


def test_what_a_chunkserver_holds_cannot_mint_a_token() -> None:
    """A chunkserver taken over holds the public key: every token it could make from what
    it holds, HMAC under any key it knows or a signature under another key, is refused."""
    public = verify_key(SECRET)
    forged = [
        make_token(public, 7, 3, READ, 1000),  # the public key as an HMAC key
        make_token(token_key(public), 7, 3, READ, 1000),
        Minter(signer=signing_key(public))(7, 3, READ, 1000),  # "derived" from it
        Minter(signer=signing_key(b"t" * 32))(7, 3, READ, 1000),  # another cluster's
        b"\0" * SIGNED_TOKEN_BYTES,
    ]
    for token in forged:
        with pytest.raises(PermissionDenied):
            CHUNKSERVER.check(token, 7, 3, READ, 1000, now_ms=1)


def test_a_checker_takes_only_the_kinds_it_holds_keys_for() -> None:
    hmac_token = make_token(KEY, 7, 3, READ, 1000)
    with pytest.raises(PermissionDenied):  # a TLS chunkserver without the secret
        CHUNKSERVER.check(hmac_token, 7, 3, READ, 1000, now_ms=1)
    upgrading = Checker(key=KEY, public=verify_key(SECRET))  # still holds the secret
    upgrading.check(hmac_token, 7, 3, READ, 1000, now_ms=1)
    upgrading.check(SIGNER(7, 3, READ, 1000), 7, 3, READ, 1000, now_ms=1)
    with pytest.raises(PermissionDenied):  # a secret-only chunkserver: no signed tokens
        Checker(key=KEY).check(SIGNER(7, 3, READ, 1000), 7, 3, READ, 1000, now_ms=1)
    with pytest.raises(ValueError):
        Checker(public=b"short")
