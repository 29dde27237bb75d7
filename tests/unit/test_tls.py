"""TLS credentials (dfs/pki.py, dfs/credentials.py) on both RPC drivers, over loopback.

Written as the attacks they stop: a client credential claiming a server's role, a process
with a client's credential posing as a server, a certificate from another cluster's CA, a
peer with no certificate, a credential file others may read.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import pytest

from dfs import rpc
from dfs.client.conn import open_connection
from dfs.credentials import (
    CredentialFileError,
    Credentials,
    TlsCredential,
    certified_peer,
    token_checker,
    token_minter,
)
from dfs.pki import issue, make_authority, write_credential
from dfs.wire.auth import Handshake, Side
from dfs.wire.errors import AuthError, PermissionDenied, Unavailable
from dfs.wire.token import READ, verify_key

# Refused peers are logged (one warning each): that is what these tests provoke.
pytestmark = [
    pytest.mark.unit,
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.allow_warnings,
]

HOST = "127.0.0.1"
SECRET = b"s" * 32


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsCredential]:
    """Credentials of one cluster (meta, cs, client) and a client of another CA."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_authority("one")
    other = make_authority("two")
    made = {
        "meta": issue(ca, "metaserver", "meta-1", ("127.0.0.1",)),
        "cs": issue(ca, "chunkserver", "cs-1", verify_key=verify_key(SECRET)),
        "client": issue(ca, "client", "mount-a"),
        "stranger": issue(other, "client", "mount-x"),
        "stranger-meta": issue(other, "metaserver", "meta-x"),
    }
    out = {}
    for key, pem in made.items():
        write_credential(d / f"{key}.pem", pem)
        out[key] = TlsCredential.load(d / f"{key}.pem")
    return out


async def whoami(conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> Any:
    assert conn.peer is not None
    return {"role": conn.peer.role, "name": conn.peer.name, "cert": conn.peer.cert_id}, b""


async def serve(cred: TlsCredential) -> rpc.RpcServer:
    return await rpc.serve(
        HOST, 0, Credentials(SECRET, cred), whoami, name="meta-1", role="metaserver"
    )


async def test_roles_come_from_certificates(pki: dict[str, TlsCredential]) -> None:
    async with await serve(pki["meta"]) as server:
        conn = await rpc.connect(
            HOST, server.port, Credentials(None, pki["client"]), name="anything", role="client"
        )
        try:
            assert conn.peer is not None and conn.peer.role == "metaserver"
            assert conn.peer.name == "meta-1"  # the certificate's CN, not the claim
            header, _ = await conn.call("who")
            assert (header["role"], header["name"]) == ("client", "mount-a")
            # what tokens are bound to: the same on both ends, and not the other's
            assert header["cert"] == pki["client"].cert_id != pki["meta"].cert_id
            assert conn.peer.cert_id == pki["meta"].cert_id and len(header["cert"]) == 32
        finally:
            conn.close()


async def test_client_credential_cannot_claim_a_server_role(
    pki: dict[str, TlsCredential],
) -> None:
    """Asked to speak as a metaserver, a client credential speaks as what it is; a claim
    that differs from the certificate (a hand-made handshake) is refused."""
    async with await serve(pki["meta"]) as server:
        conn = await rpc.connect(
            HOST, server.port, Credentials(None, pki["client"]), name="x", role="metaserver"
        )
        try:
            header, _ = await conn.call("who")
            assert header["role"] == "client"
        finally:
            conn.close()
    client = certified_peer(
        {"subject": ((("organizationalUnitName", "client"),), (("commonName", "m"),))}
    )
    acceptor = Handshake(None, b"a" * 32, side=Side.ACCEPTOR, role="metaserver", name="m1",
                         certified=client)  # fmt: skip
    forger = Handshake(b"k" * 32, b"b" * 32, side=Side.INITIATOR, role="metaserver", name="m")
    acceptor.receive_hello(forger.hello())
    proof = forger.receive_hello(acceptor.hello())
    assert proof is not None
    with pytest.raises(AuthError, match="its certificate"):
        acceptor.receive_proof(proof)


async def test_a_client_credential_cannot_pose_as_a_server(
    pki: dict[str, TlsCredential],
) -> None:
    """A process with a client's credential listening on a stolen port: the dialler
    refuses it (its certificate is a client's), so it learns nothing from the dialler."""
    async with await serve(pki["client"]) as server:
        with pytest.raises(AuthError, match="not a server"):
            conn = await rpc.connect(
                HOST, server.port, Credentials(None, pki["client"]), name="x", timeout_s=10
            )
            conn.close()


@pytest.mark.parametrize("stranger", ["stranger", "stranger-meta"])
async def test_another_clusters_ca_is_refused(pki: dict[str, TlsCredential], stranger: str) -> None:
    async with await serve(pki["meta"]) as server:
        with pytest.raises((Unavailable, AuthError)):
            conn = await rpc.connect(
                HOST, server.port, Credentials(None, pki[stranger]), name="x", timeout_s=10
            )
            conn.close()
        # and the server refuses the stranger's server too
        other = await serve(pki["stranger-meta"])
        async with other:
            with pytest.raises((Unavailable, AuthError)):
                conn = await rpc.connect(
                    HOST, other.port, Credentials(None, pki["client"]), name="x", timeout_s=10
                )
                conn.close()


async def test_no_tls_or_no_certificate_is_refused(pki: dict[str, TlsCredential]) -> None:
    async with await serve(pki["meta"]) as server:
        # plain TCP with the right secret: the TLS server never speaks dfs to it
        with pytest.raises((Unavailable, AuthError)):
            conn = await rpc.connect(HOST, server.port, SECRET, name="x", timeout_s=5)
            conn.close()
        # TLS that trusts the CA but presents no certificate
        bare = ssl.create_default_context(cadata=pki["meta"].ca_pem)
        bare.check_hostname = False
        with pytest.raises((Unavailable, AuthError)):
            conn = await rpc.connect(
                HOST, server.port, Credentials(SECRET), name="x", timeout_s=5, ssl_context=bare
            )
            conn.close()


async def test_the_client_driver_speaks_tls(pki: dict[str, TlsCredential]) -> None:
    async with await serve(pki["meta"]) as server:
        async with open_connection(
            f"{HOST}:{server.port}", Credentials(None, pki["client"]), name="m"
        ) as conn:
            assert conn.peer.role == "metaserver"
            header, _ = await conn.call("who")
            assert header["role"] == "client"
        async with open_connection(  # speaks as its certificate says, whatever asked
            f"{HOST}:{server.port}", Credentials(None, pki["cs"]), name="m", role="client"
        ) as conn:
            header, _ = await conn.call("who")
            assert (header["role"], header["name"]) == ("chunkserver", "cs-1")
    async with await serve(pki["client"]) as fake:  # a client's credential posing as a server
        with pytest.raises(AuthError, match="not a server"):
            async with open_connection(
                f"{HOST}:{fake.port}", Credentials(None, pki["client"]), name="m"
            ):
                pass


def test_credential_file_checks(tmp_path: Path, pki: dict[str, TlsCredential]) -> None:
    path = tmp_path / "c.pem"
    write_credential(path, issue(make_authority("z"), "client", "c"))
    assert TlsCredential.load(path).path == path
    os.chmod(path, 0o640)
    with pytest.raises(CredentialFileError, match="chmod 600"):
        TlsCredential.load(path)
    os.chmod(path, 0o600)
    path.write_bytes(path.read_bytes().split(b"-----BEGIN PRIVATE KEY")[0])
    with pytest.raises(CredentialFileError, match="key"):
        TlsCredential.load(path)
    with pytest.raises(CredentialFileError, match="cannot read"):
        TlsCredential.load(tmp_path / "missing.pem")


def test_certified_peer_needs_a_role() -> None:
    with pytest.raises(AuthError):
        certified_peer(None)
    with pytest.raises(AuthError, match="no dfs role"):
        certified_peer({"subject": ((("commonName", "x"),),)})
    peer = certified_peer(
        {"subject": ((("organizationalUnitName", "chunkserver"),), (("commonName", "cs-2"),))}
    )
    assert (peer.role, peer.name) == ("chunkserver", "cs-2")


def test_a_chunkserver_credential_checks_tokens_without_the_secret(
    tmp_path: Path, pki: dict[str, TlsCredential]
) -> None:
    """A TLS cluster's chunkserver holds its credential only: the public key in it checks
    what the metaservers sign, and nothing it holds signs a token."""
    cs = pki["cs"]
    assert cs.verify_key == verify_key(SECRET)
    checker = token_checker(Credentials(None, cs))
    assert checker.key is None  # no HMAC key: a version 2 token is refused
    mint = token_minter(Credentials(SECRET, pki["meta"]))
    checker.check(mint(7, 3, READ, 1000, "c"), 7, 3, READ, 1000, now_ms=1, client="c")
    with pytest.raises(PermissionDenied):
        checker.check(token_minter(Credentials(SECRET))(7, 3, READ, 1000), 7, 3, READ, 1000, 1)
    with pytest.raises(AuthError):  # a chunkserver can be given neither
        token_checker(Credentials(None, pki["client"]))
    with pytest.raises(AuthError):
        token_minter(Credentials(None, cs))
    with pytest.raises(ValueError):
        issue(make_authority("z"), "client", "c", verify_key=verify_key(SECRET))
    # The block is read whole or refused.
    path = tmp_path / "cs.pem"
    pem = issue(make_authority("z"), "chunkserver", "cs", verify_key=verify_key(SECRET))
    head, _, tail = pem.partition(b"-----BEGIN DFS TOKEN VERIFY KEY-----\n")
    short = b"-----BEGIN DFS TOKEN VERIFY KEY-----\nAAAA\n" + tail.partition(b"\n")[2]
    write_credential(path, head + short)  # a 3-byte key
    with pytest.raises(CredentialFileError, match="verification key"):
        TlsCredential.load(path)
