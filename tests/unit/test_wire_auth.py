"""dfs.wire.auth: the mutual HMAC handshake, driven by hand (no sockets)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from dfs.wire.auth import NONCE_BYTES, Handshake, PeerInfo, Side, compute_proof
from dfs.wire.errors import AuthError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SECRET = b"s" * 32
NONCE_I = bytes(range(NONCE_BYTES))
NONCE_A = bytes(range(100, 100 + NONCE_BYTES))


def pair(secret_i: bytes = SECRET, secret_a: bytes = SECRET) -> tuple[Handshake, Handshake]:
    initiator = Handshake(secret_i, NONCE_I, side=Side.INITIATOR, role="client", name="c1")
    acceptor = Handshake(secret_a, NONCE_A, side=Side.ACCEPTOR, role="metaserver", name="m1")
    return initiator, acceptor


def test_success_both_ways() -> None:
    initiator, acceptor = pair()
    proof_i = initiator.receive_hello(acceptor.hello())
    proof_a = acceptor.receive_hello(initiator.hello())
    assert initiator.receive_proof(proof_a) == PeerInfo("metaserver", "m1")
    assert acceptor.receive_proof(proof_i) == PeerInfo("client", "c1")
    assert initiator.done and acceptor.done
    assert acceptor.peer == PeerInfo("client", "c1")


def test_proof_is_the_documented_hmac() -> None:
    expected = hmac.new(
        SECRET, b"dfs-auth-v1" + b"initiator" + NONCE_I + NONCE_A, hashlib.sha256
    ).digest()
    assert compute_proof(SECRET, Side.INITIATOR, NONCE_I, NONCE_A) == expected


def test_wrong_secret_fails_on_both_sides() -> None:
    initiator, acceptor = pair(secret_a=b"t" * 32)
    proof_i = initiator.receive_hello(acceptor.hello())
    proof_a = acceptor.receive_hello(initiator.hello())
    with pytest.raises(AuthError, match="secret"):
        initiator.receive_proof(proof_a)
    with pytest.raises(AuthError, match="secret"):
        acceptor.receive_proof(proof_i)
    assert not initiator.done and not acceptor.done
    with pytest.raises(AuthError):
        _ = acceptor.peer


def test_missing_or_short_secret() -> None:
    for secret in (None, b"", b"short"):
        with pytest.raises(AuthError):
            Handshake(secret, NONCE_I, side=Side.INITIATOR, role="client", name="c")


def test_reflected_proof_fails() -> None:
    # An attacker without the secret connects to the acceptor and sends back, as its own
    # proof, the acceptor's proof. The labels differ per direction, so it fails.
    acceptor = Handshake(SECRET, NONCE_A, side=Side.ACCEPTOR, role="m", name="m1")
    attacker_hello = {"op": "auth.hello", "v": 1, "role": "x", "name": "x", "nonce": NONCE_I}
    acceptor_proof = acceptor.receive_hello(attacker_hello)
    with pytest.raises(AuthError):
        acceptor.receive_proof(acceptor_proof)


def test_relayed_proof_from_a_second_connection_fails() -> None:
    # The attacker opens connection 1 (acceptor nonce A) and connection 2, on which it
    # offers A as its own nonce, hoping to receive a proof usable on connection 1.
    victim_1 = Handshake(SECRET, NONCE_A, side=Side.ACCEPTOR, role="m", name="m1")
    victim_2 = Handshake(SECRET, b"\x07" * 32, side=Side.ACCEPTOR, role="m", name="m1")
    victim_1.receive_hello({"op": "auth.hello", "v": 1, "role": "x", "name": "x", "nonce": NONCE_I})
    stolen = victim_2.receive_hello(
        {"op": "auth.hello", "v": 1, "role": "x", "name": "x", "nonce": NONCE_A}
    )
    with pytest.raises(AuthError):
        victim_1.receive_proof(stolen)


def test_echoed_nonce_refused() -> None:
    _, acceptor = pair()
    with pytest.raises(AuthError, match="reflection"):
        acceptor.receive_hello(acceptor.hello())


@pytest.mark.parametrize(
    "hello",
    [
        {},
        {"op": "auth.proof", "proof": b"x"},
        {"op": "auth.hello", "v": 2, "role": "c", "name": "c", "nonce": NONCE_I},
        {"op": "auth.hello", "v": True, "role": "c", "name": "c", "nonce": NONCE_I},
        {"op": "auth.hello", "v": 1, "role": "c", "name": "c", "nonce": NONCE_I[:-1]},
        {"op": "auth.hello", "v": 1, "role": "c", "name": "c", "nonce": "text"},
        {"op": "auth.hello", "v": 1, "role": 5, "name": "c", "nonce": NONCE_I},
        {"op": "auth.hello", "v": 1, "role": "c", "name": "n" * 300, "nonce": NONCE_I},
        {"op": "auth.hello", "v": 1, "role": "c", "nonce": NONCE_I},
    ],
)
def test_malformed_hello(hello: dict) -> None:
    _, acceptor = pair()
    with pytest.raises(AuthError):
        acceptor.receive_hello(hello)


def test_out_of_order_and_malformed_proof() -> None:
    initiator, acceptor = pair()
    with pytest.raises(AuthError, match="before hello"):
        acceptor.receive_proof({"op": "auth.proof", "proof": b"x" * 32})
    proof_i = initiator.receive_hello(acceptor.hello())
    acceptor.receive_hello(initiator.hello())
    with pytest.raises(AuthError, match="second hello"):
        acceptor.receive_hello(initiator.hello())
    with pytest.raises(AuthError):
        acceptor.receive_proof({"op": "auth.proof", "proof": "not bytes"})
    with pytest.raises(AuthError):
        acceptor.receive_proof({"op": "auth.hello"})
    acceptor.receive_proof(proof_i)
    with pytest.raises(AuthError, match="second proof"):
        acceptor.receive_proof(proof_i)
