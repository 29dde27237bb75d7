"""Revoked credentials (dfs/revocations.py, dfs/pki.py's ``revoke``), as the operator
meets them: a client host is lost, its credential is revoked, and within about a second
the servers refuse it and close what it had open, while every other credential goes on
working, without a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dfs import rpc
from dfs.client.conn import open_connection
from dfs.credentials import CredentialFileError, Credentials, TlsCredential
from dfs.pki import issue, make_authority, revoke, serial_of, write_credential
from dfs.revocations import CRL_FILE, RELOAD_S, RevocationListError, read_revoked
from dfs.wire.errors import AuthError, Unavailable

pytestmark = [
    pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(60), pytest.mark.allow_warnings,
]  # fmt: skip

HOST = "127.0.0.1"
SECRET = b"s" * 32


async def whoami(conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> Any:
    assert conn.peer is not None
    return {"name": conn.peer.name}, b""


def credentials(tmp_path: Path) -> tuple[Any, dict[str, Path]]:
    ca = make_authority("one")
    paths = {}
    for role, name in (("metaserver", "meta-1"), ("client", "lost"), ("client", "kept")):
        paths[name] = tmp_path / f"{name}.pem"
        write_credential(paths[name], issue(ca, role, name, (HOST,)))
    return ca, paths


async def _connect(port: int, path: Path) -> rpc.Connection:
    creds = Credentials(None, TlsCredential.load(path))
    return await rpc.connect(HOST, port, creds, name="c", role="client", timeout_s=5)


async def test_a_revoked_credential_is_refused_and_cut_off(tmp_path: Path) -> None:
    ca, paths = credentials(tmp_path)
    server_creds = Credentials(SECRET, TlsCredential.load(paths["meta-1"]))
    async with await rpc.serve(HOST, 0, server_creds, whoami, name="m", role="metaserver") as srv:
        lost = await _connect(srv.port, paths["lost"])
        kept = await _connect(srv.port, paths["kept"])
        assert (await lost.call("who"))[0]["name"] == "lost"
        revoked = revoke(ca, tmp_path, {serial_of(paths["lost"].read_bytes())})
        assert revoked == {serial_of(paths["lost"].read_bytes())}
        # The open connection is closed within the reload period (polled, bounded).
        deadline = time.monotonic() + 10 * RELOAD_S + 5
        while not lost.closed:
            assert time.monotonic() < deadline, "the revoked peer's connection stayed open"
            await rpc.asyncio.sleep(0.05)
        # A new one is refused, by either driver; the other credential goes on.
        with pytest.raises((AuthError, Unavailable)):
            (await _connect(srv.port, paths["lost"])).close()
        with pytest.raises((AuthError, Unavailable)):
            creds = Credentials(None, TlsCredential.load(paths["lost"]))
            async with open_connection(f"{HOST}:{srv.port}", creds, name="c") as conn:
                await conn.call("who", timeout_s=5)
        assert (await kept.call("who"))[0]["name"] == "kept"
        again = await _connect(srv.port, paths["kept"])
        assert (await again.call("who"))[0]["name"] == "kept"
        again.close()
        kept.close()


async def test_a_client_refuses_a_revoked_server(tmp_path: Path) -> None:
    """The dialler checks too: a server credential stolen and revoked gets no client
    whose credential directory holds the list."""
    ca, paths = credentials(tmp_path)
    revoke(ca, tmp_path, {serial_of(paths["meta-1"].read_bytes())})
    server_creds = Credentials(SECRET, TlsCredential.load(paths["meta-1"]))
    async with await rpc.serve(HOST, 0, server_creds, whoami, name="m", role="metaserver") as srv:
        with pytest.raises(AuthError, match="revoked"):
            (await _connect(srv.port, paths["kept"])).close()


async def test_a_server_closes_what_it_dialled_to_a_revoked_peer(tmp_path: Path) -> None:
    """Revoke metaserver B: A's own connection to B (a Raft peer's, say) is closed by A's
    sweep too, not only what B dialled."""
    ca, paths = credentials(tmp_path)
    paths["meta-2"] = tmp_path / "meta-2.pem"
    write_credential(paths["meta-2"], issue(ca, "metaserver", "meta-2", (HOST,)))
    a = Credentials(SECRET, TlsCredential.load(paths["meta-1"]))
    b = Credentials(SECRET, TlsCredential.load(paths["meta-2"]))
    srv_a = await rpc.serve(HOST, 0, a, whoami, name="a", role="metaserver")
    srv_b = await rpc.serve(HOST, 0, b, whoami, name="b", role="metaserver")
    async with srv_a, srv_b:
        to_b = await rpc.connect(HOST, srv_b.port, a, name="a", role="metaserver")
        assert (await to_b.call("who"))[0]["name"] == "meta-1"
        revoke(ca, tmp_path, {serial_of(paths["meta-2"].read_bytes())})
        deadline = time.monotonic() + 10 * RELOAD_S + 5
        while not to_b.closed:
            assert time.monotonic() < deadline, "a connection to a revoked peer stayed open"
            await rpc.asyncio.sleep(0.05)


def test_the_list_must_be_the_cas_and_stays_revoked(tmp_path: Path) -> None:
    ca, paths = credentials(tmp_path)
    first = serial_of(paths["lost"].read_bytes())
    second = serial_of(paths["kept"].read_bytes())
    revoke(ca, tmp_path, {first})
    assert revoke(ca, tmp_path, {second}) == {first, second}  # entries are never dropped
    crl = tmp_path / CRL_FILE
    assert read_revoked(crl.read_bytes(), ca.cert_pem.decode()) == {first, second}
    other = make_authority("two")
    with pytest.raises(RevocationListError, match="not signed"):
        read_revoked(crl.read_bytes(), other.cert_pem.decode())
    # Another CA's list beside a credential: refused at start.
    (tmp_path / "x").mkdir()
    revoke(other, tmp_path / "x", set())
    crl.write_bytes((tmp_path / "x" / CRL_FILE).read_bytes())
    with pytest.raises(CredentialFileError, match="revocation list"):
        TlsCredential.load(paths["kept"])
    crl.write_bytes(b"not a list")
    with pytest.raises(CredentialFileError, match="revocation list"):
        TlsCredential.load(paths["kept"])


def test_a_list_that_turns_bad_keeps_the_last_good_one(tmp_path: Path) -> None:
    ca, paths = credentials(tmp_path)
    serial = serial_of(paths["lost"].read_bytes())
    revoke(ca, tmp_path, {serial})
    revocations = TlsCredential.load(paths["kept"]).revocations
    assert revocations.revoked(serial)
    (tmp_path / CRL_FILE).write_bytes(b"half a copy")
    later = time.monotonic() + RELOAD_S  # due to be read again
    assert serial in revocations.serials(later)  # a half-copied file does not lift it
    # Nor does an older list (validly signed, naming less), nor removing the file.
    (tmp_path / "old").mkdir()
    revoke(ca, tmp_path / "old", set())
    (tmp_path / CRL_FILE).write_bytes((tmp_path / "old" / CRL_FILE).read_bytes())
    assert serial in revocations.serials(later + RELOAD_S)
    (tmp_path / CRL_FILE).unlink()
    assert serial in revocations.serials(later + 2 * RELOAD_S)
