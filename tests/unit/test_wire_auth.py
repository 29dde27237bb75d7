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
    assert acceptor.receive_hello(initiator.hello()) is None  # nothing before a proof
    proof_i = initiator.receive_hello(acceptor.hello())
    assert proof_i is not None
    with pytest.raises(AuthError, match="only after"):
        acceptor.proof()
    assert acceptor.receive_proof(proof_i) == PeerInfo("client", "c1")
    assert initiator.receive_proof(acceptor.proof()) == PeerInfo("metaserver", "m1")
    assert initiator.done and acceptor.done
    assert acceptor.peer == PeerInfo("client", "c1")


def test_nothing_says_who_a_server_is_before_its_peer_proved_itself() -> None:
    """Version 2: the hellos carry a nonce only; the acceptor's role and name travel in
    its proof, which it sends only once the initiator's checked out."""
    initiator, acceptor = pair(secret_i=b"t" * 32)  # a client with a wrong secret
    for hello in (initiator.hello(), acceptor.hello()):
        assert set(hello) == {"op", "v", "nonce"}
    assert acceptor.receive_hello(initiator.hello()) is None
    proof = initiator.receive_hello(acceptor.hello())
    assert proof is not None
    with pytest.raises(AuthError, match="secret"):
        acceptor.receive_proof(proof)
    with pytest.raises(AuthError, match="only after"):
        acceptor.proof()  # nothing for it


def test_proof_is_the_documented_hmac() -> None:
    claim = b"\x06client" + b"\x02c1"
    expected = hmac.new(
        SECRET, b"dfs-auth-v2" + b"initiator" + NONCE_I + NONCE_A + claim, hashlib.sha256
    ).digest()
    assert compute_proof(SECRET, Side.INITIATOR, NONCE_I, NONCE_A, "client", "c1") == expected


def test_a_changed_claim_fails_the_proof() -> None:
    initiator, acceptor = pair()
    acceptor.receive_hello(initiator.hello())
    proof_i = initiator.receive_hello(acceptor.hello())
    assert proof_i is not None
    with pytest.raises(AuthError, match="secret"):
        acceptor.receive_proof(proof_i | {"role": "metaserver"})


def test_wrong_secret_fails_on_both_sides() -> None:
    initiator, acceptor = pair(secret_a=b"t" * 32)
    acceptor.receive_hello(initiator.hello())
    proof_i = initiator.receive_hello(acceptor.hello())
    assert proof_i is not None
    with pytest.raises(AuthError, match="secret"):
        acceptor.receive_proof(proof_i)
    # And an initiator refuses an acceptor's proof made with another secret.
    initiator_ok, acceptor_ok = pair()
    acceptor_ok.receive_hello(initiator_ok.hello())
    initiator_ok.receive_hello(acceptor_ok.hello())
    forged = {"op": "auth.proof", "role": "m", "name": "m1",
              "proof": compute_proof(b"t" * 32, Side.ACCEPTOR, NONCE_A, NONCE_I, "m", "m1")}  # fmt: skip
    with pytest.raises(AuthError, match="secret"):
        initiator_ok.receive_proof(forged)
    assert not acceptor.done
    with pytest.raises(AuthError):
        _ = acceptor.peer


def test_missing_or_short_secret() -> None:
    for secret in (None, b"", b"short"):
        with pytest.raises(AuthError):
            Handshake(secret, NONCE_I, side=Side.INITIATOR, role="client", name="c")


def test_reflected_proof_fails() -> None:
    # An attacker without the secret gets an initiator's proof (from a client it lured)
    # and offers it back to that client as the acceptor's: the labels differ, so it fails.
    initiator = Handshake(SECRET, NONCE_I, side=Side.INITIATOR, role="c", name="c1")
    proof = initiator.receive_hello({"op": "auth.hello", "v": 2, "nonce": NONCE_A})
    assert proof is not None
    with pytest.raises(AuthError):
        initiator.receive_proof(proof)


def test_relayed_proof_from_a_second_connection_fails() -> None:
    # The attacker opens connection 1 to a client-like initiator (acceptor nonce A) and
    # connection 2, on which it offers A as its own nonce, hoping for a proof usable on 1.
    victim_1 = Handshake(SECRET, NONCE_I, side=Side.INITIATOR, role="c", name="c1")
    victim_2 = Handshake(SECRET, b"\x07" * 32, side=Side.INITIATOR, role="c", name="c1")
    victim_1.receive_hello({"op": "auth.hello", "v": 2, "nonce": NONCE_A})
    stolen = victim_2.receive_hello({"op": "auth.hello", "v": 2, "nonce": NONCE_I})
    assert stolen is not None
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
        {"op": "auth.hello", "v": 1, "role": "c", "name": "c", "nonce": NONCE_I},
        {"op": "auth.hello", "v": True, "nonce": NONCE_I},
        {"op": "auth.hello", "v": 2, "nonce": NONCE_I[:-1]},
        {"op": "auth.hello", "v": 2, "nonce": "text"},
        {"op": "auth.hello", "v": 2},
    ],
)
def test_malformed_hello(hello: dict) -> None:
    _, acceptor = pair()
    with pytest.raises(AuthError):
        acceptor.receive_hello(hello)


@pytest.mark.parametrize(
    "change",
    [
        {"role": 5},
        {"name": "n" * 300},
        {"role": None},
        {"proof": "not bytes"},
        {"op": "auth.hello"},
    ],
)
def test_malformed_proof(change: dict) -> None:
    initiator, acceptor = pair()
    acceptor.receive_hello(initiator.hello())
    proof = initiator.receive_hello(acceptor.hello())
    assert proof is not None
    with pytest.raises(AuthError):
        acceptor.receive_proof({k: v for k, v in (proof | change).items() if v is not None})


def test_out_of_order_and_second_messages() -> None:
    initiator, acceptor = pair()
    with pytest.raises(AuthError, match="before hello"):
        acceptor.receive_proof({"op": "auth.proof", "proof": b"x" * 32, "role": "c", "name": "c"})
    acceptor.receive_hello(initiator.hello())
    proof_i = initiator.receive_hello(acceptor.hello())
    assert proof_i is not None
    with pytest.raises(AuthError, match="second hello"):
        acceptor.receive_hello(initiator.hello())
    acceptor.receive_proof(proof_i)
    with pytest.raises(AuthError, match="second proof"):
        acceptor.receive_proof(proof_i)
    with pytest.raises(AuthError, match="only after"):
        initiator.proof()  # an initiator never sends a second proof
