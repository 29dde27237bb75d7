"""Access tokens: only the exact (chunk, version, mode, expiry, client) signed verifies, until
expiry."""

from __future__ import annotations

import pytest

from dfs.wire.errors import PermissionDenied
from dfs.wire.token import READ, WRITE, check_token, make_token, token_key

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

KEY = token_key(b"s" * 32)


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
