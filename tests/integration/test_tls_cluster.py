"""A TLS cluster (``dfs up --tls``), tried as an attacker who holds a client's credential,
or the cluster secret without a certificate, or another cluster's certificates, would
(docs/SECURITY.md).

What these tests check, on real server processes:
- the CLI's files round trip over TLS, with the client credential alone (no secret);
- the client credential cannot claim a server's role: refused in the handshake, so it
  can send no Raft frame, no ``chunk.delete``, no ``cs.register``;
- as a client it is refused those ops, and it cannot mint a chunk token: it holds no key
  to mint one with, and a token keyed by anything it holds is refused;
- a chunkserver's credential (it holds no secret) mints no token a chunkserver accepts;
- the cluster secret without a certificate gets nothing, nor does a certificate from
  another CA, nor a process posing as a server with a client's credential (the relay
  through a stolen port: the dialler refuses it before sending anything).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from quick_timers import QUICK_TIMERS

from dfs import pki, rpc
from dfs.cli import cluster as local
from dfs.client import FsClient
from dfs.credentials import Credentials, TlsCredential, load_client_credentials, token_minter
from dfs.secret import load_secret
from dfs.wire.errors import AccessDenied, AuthError, PermissionDenied, Timeout, Unavailable
from dfs.wire.limits import ROOT_INO
from dfs.wire.token import READ, Minter, make_token, signing_key, token_key
from tools.testing import localcluster

# Refused peers are logged by the servers and the tests' own listener: what they provoke.
pytestmark = [
    pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120),
    pytest.mark.allow_warnings,
]  # fmt: skip


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    with localcluster.running(
        tmp_path_factory.mktemp("cluster"), chunkservers=1, chunk_size=1 << 20,
        **QUICK_TIMERS, tls=True,
    ) as lay:  # fmt: skip
        yield lay


def client_only(layout: local.Layout) -> Credentials:
    creds = load_client_credentials(layout.client_file)
    assert creds.secret is None and creds.tls is not None
    return creds


async def _connect(address: str, creds: Credentials, role: str) -> rpc.Connection:
    host, _, port = address.rpartition(":")
    return await rpc.connect(host, int(port), creds, name="attacker", role=role, timeout_s=5)


def test_files_round_trip_with_the_client_credential_alone(
    layout: local.Layout, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))  # three chunks
    base = [sys.executable, "-m", "dfs.cli.main"]
    remote = ["--meta", ",".join(layout.meta_addresses), "--secret", str(layout.client_file)]
    for args in (["put", str(src), "/f"], ["get", "/f", str(tmp_path / "back")]):
        proc = subprocess.run(base + args + remote, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    for path in layout.tls_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    assert layout.tls_dir.stat().st_mode & 0o077 == 0


async def test_a_client_credential_cannot_act_as_a_server(layout: local.Layout) -> None:
    creds = client_only(layout)
    st = await local.cluster_status(layout.meta_addresses, creds)
    cs_address = st["chunkservers"][0]["address"]
    # Asked to speak as a server, it speaks as the client its certificate says it is
    # (tests/unit/test_tls.py: a forged claim is refused), and the servers' ops, the
    # cluster's admin commands too, are refused.
    meta = await _connect(st["leader_address"], creds, "metaserver")
    cs = await _connect(cs_address, creds, "metaserver")
    try:
        with pytest.raises(PermissionDenied):
            await meta.call("cs.register", timeout_s=5, uuid="intruder", address="127.0.0.1:1")
        with pytest.raises(PermissionDenied):
            await cs.call("chunk.delete", timeout_s=5, chunks=[[1, 1]])
        with pytest.raises(PermissionDenied):
            await meta.call("admin.transfer_leader", timeout_s=5)
        header, _ = await meta.call("fs.getattr", timeout_s=5, ino=ROOT_INO)
        assert header["attr"]["ino"] == ROOT_INO
    finally:
        meta.close()
        cs.close()


async def _read_chunk(
    conn: rpc.Connection, chunk: dict, size: int, token: bytes, expiry_ms: int
) -> bytes:
    """``chunk.read`` of the chunk's first ``size`` bytes with ``token``."""
    _, payload = await conn.call(
        "chunk.read", timeout_s=5, chunk_id=chunk["chunk_id"], version=chunk["version"],
        offset=0, size=size, token=token, expiry_ms=expiry_ms,
    )  # fmt: skip
    return bytes(payload)


async def test_a_client_cannot_mint_a_token(layout: local.Layout) -> None:
    creds = client_only(layout)
    data = b"precious" * 1000
    chunk = await localcluster.write_and_locate(layout.meta_addresses, creds, b"victim", data)
    conn = await _connect(chunk["replicas"][0]["address"], creds, "client")
    try:
        expiry_ms = time.time_ns() // 1_000_000 + 60_000
        # Keys a client could try: anything derived from what it holds.
        pem = creds.tls.path.read_bytes() if creds.tls else b""
        for key in (hashlib.sha256(pem).digest(), b"\0" * 32):
            token = make_token(key, chunk["chunk_id"], chunk["version"], READ, expiry_ms)
            with pytest.raises(PermissionDenied):
                await _read_chunk(conn, chunk, len(data), token, expiry_ms)
    finally:
        conn.close()


async def test_a_chunkserver_holds_no_key_that_mints_a_token(
    layout: local.Layout, tmp_path: Path
) -> None:
    """A chunkserver taken over (its host, its credential file) cannot mint a token that
    a chunkserver accepts: it holds no secret, and its credential's key only checks.
    Not even the cluster secret's HMAC tokens (version 2) pass any more: only what a
    metaserver signs does."""
    cs_dir = layout.dir / f"cs{min(layout.chunkservers)}"
    config = (cs_dir / "cs.toml").read_text()
    assert "secret_file" not in config and "credential_file" in config
    cs_creds = Credentials(
        None, TlsCredential.load(layout.tls_dir / f"cs{min(layout.chunkservers)}.pem")
    )
    assert cs_creds.tls is not None and cs_creds.tls.verify_key is not None
    data = b"precious" * 1000
    chunk = await localcluster.write_and_locate(
        layout.meta_addresses, client_only(layout), b"victim-cs", data
    )
    conn = await _connect(chunk["replicas"][0]["address"], cs_creds, "chunkserver")
    try:
        expiry_ms = time.time_ns() // 1_000_000 + 60_000
        public = cs_creds.tls.verify_key
        ids = (chunk["chunk_id"], chunk["version"], READ, expiry_ms)
        forged = [
            make_token(public, *ids),
            make_token(token_key(public), *ids),
            Minter(signer=signing_key(public))(*ids),
            make_token(token_key(load_secret(layout.secret_file)), *ids),
        ]
        for token in forged:
            with pytest.raises(PermissionDenied):
                await _read_chunk(conn, chunk, len(data), token, expiry_ms)
        # What a metaserver signs (its secret, its credential) passes on that connection.
        meta = Credentials(
            load_secret(layout.secret_file),
            TlsCredential.load(layout.tls_dir / f"meta{min(layout.metaservers)}.pem"),
        )
        back = await _read_chunk(conn, chunk, len(data), token_minter(meta)(*ids), expiry_ms)
        assert back == data
    finally:
        conn.close()


async def test_the_secret_without_a_certificate_gets_nothing(layout: local.Layout) -> None:
    secret = load_secret(layout.secret_file)
    for address in layout.meta_addresses + list(layout.chunkservers.values()):
        host, _, port = address.rpartition(":")
        with pytest.raises((Unavailable, AuthError)):
            conn = await rpc.connect(
                host, int(port), secret, name="x", role="metaserver", timeout_s=5
            )
            conn.close()


async def test_another_clusters_certificates_get_nothing(
    layout: local.Layout, tmp_path: Path
) -> None:
    other = pki.make_authority("elsewhere")
    for role in ("client", "metaserver"):
        path = tmp_path / f"{role}.pem"
        pki.write_credential(path, pki.issue(other, role, "intruder"))
        creds = Credentials(None, TlsCredential.load(path))
        with pytest.raises((Unavailable, AuthError)):
            conn = await _connect(layout.meta_addresses[0], creds, role)
            conn.close()


async def test_a_relay_on_a_stolen_port_learns_nothing(layout: local.Layout) -> None:
    """A process with a client's credential listens where a server is expected: the
    client refuses it in the handshake, before any request leaves."""
    seen: list[str] = []

    async def record(conn: rpc.Connection, header: dict, payload: bytes) -> None:
        seen.append(header.get("op", "?"))

    creds = client_only(layout)
    fake = await rpc.serve("127.0.0.1", 0, creds, record, name="meta-1", role="metaserver")
    async with fake:
        with pytest.raises(AuthError, match="not a server"):
            async with FsClient.open_cluster([f"127.0.0.1:{fake.port}"], creds, timeout_s=5):
                pass
    assert seen == []


def _issue(layout: local.Layout, path: Path, *args: str) -> Credentials:
    proc = subprocess.run(
        [sys.executable, "-m", "dfs.cli.main", "credential", *args, "--out", str(path),
         "--dir", str(layout.dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert path.stat().st_mode & 0o077 == 0
    return load_client_credentials(path)


async def _read(fs: FsClient, ino: int) -> bytes:
    f = await fs.open(ino, os.O_RDONLY)
    try:
        return await f.read(0, 1 << 20)
    finally:
        await f.close()


async def test_a_credential_restricted_to_a_user_gets_that_users_rights(
    layout: local.Layout, tmp_path: Path
) -> None:
    """As root's client: a private directory, a shared sticky one with a file of root's.
    As a client whose credential says uid 1000: what a local file system lets uid 1000
    do, and no more."""
    root = client_only(layout)
    user = _issue(layout, tmp_path / "u.pem", "alice", "--uid", "1000", "--gids", "1000")
    async with FsClient.open_cluster(layout.meta_addresses, root) as fs:
        private = await fs.mkdir(ROOT_INO, b"private", 0o700, uid=0, gid=0)
        _, f = await fs.create_and_open(private.ino, b"secret", 0o600,
                                        os.O_WRONLY | os.O_CREAT, uid=0, gid=0)  # fmt: skip
        await f.write(0, b"root only")
        await f.close()
        shared = await fs.mkdir(ROOT_INO, b"shared", 0o1777, uid=0, gid=0)
        _, f = await fs.create_and_open(shared.ino, b"pub", 0o644,
                                        os.O_WRONLY | os.O_CREAT, uid=0, gid=0)  # fmt: skip
        await f.write(0, b"everyone reads")
        await f.close()
        pub = await fs.lookup(shared.ino, b"pub")
        secret = await fs.lookup(private.ino, b"secret")
    async with FsClient.open_cluster(layout.meta_addresses, user) as fs:
        with pytest.raises(AccessDenied):  # no search permission on /private
            await fs.lookup(private.ino, b"secret")
        with pytest.raises(AccessDenied):  # nor reading its 0600 file by inode number
            await _read(fs, secret.ino)
        assert await _read(fs, pub.ino) == b"everyone reads"
        with pytest.raises(AccessDenied):  # root's file, 0644: no writes
            f = await fs.open(pub.ino, os.O_WRONLY)
            await f.write(0, b"defaced")
            await f.close()
        with pytest.raises(PermissionDenied):  # sticky /shared: not root's file to remove
            await fs.unlink(shared.ino, b"pub")
        with pytest.raises(PermissionDenied):  # nor to chmod
            await fs.setattr(pub.ino, mode=0o100666)
        with pytest.raises(PermissionDenied):  # a file made in its name must be its own
            await fs.mkdir(shared.ino, b"as-root", 0o755, uid=0, gid=0)
        mine = await fs.mkdir(shared.ino, b"mine", 0o755, uid=1000, gid=1000)
        _, f = await fs.create_and_open(mine.ino, b"notes", 0o600,
                                        os.O_WRONLY | os.O_CREAT, uid=1000, gid=1000)  # fmt: skip
        await f.write(0, b"alice's")
        await f.close()
        notes = await fs.lookup(mine.ino, b"notes")
        assert await _read(fs, notes.ino) == b"alice's"
        await fs.unlink(mine.ino, b"notes")
        with pytest.raises(PermissionDenied):  # no admin commands
            await fs.meta.read("admin.drain", cs_id=1, draining=True)
    assert (await local.cluster_status(layout.meta_addresses, user))["leader"] is not None


async def test_a_token_works_only_for_the_client_it_was_issued_to(
    layout: local.Layout, tmp_path: Path
) -> None:
    """A read token that client A got, sent by client B (another credential of the same
    cluster) to the same replica: refused; sent by A: the bytes."""
    a = client_only(layout)
    b = _issue(layout, tmp_path / "b.pem", "mount-b")
    data = b"a's data" * 500
    chunk = await localcluster.write_and_locate(layout.meta_addresses, a, b"a-file", data)
    fields = {
        "chunk_id": chunk["chunk_id"], "version": chunk["version"], "offset": 0,
        "size": len(data), "token": chunk["token"], "expiry_ms": chunk["expiry_ms"],
    }  # fmt: skip
    replica = chunk["replicas"][0]["address"]
    thief = await _connect(replica, b, "client")
    try:
        with pytest.raises(PermissionDenied):
            await thief.call("chunk.read", timeout_s=5, **fields)
        with pytest.raises(PermissionDenied):  # naming the owner does not help a client
            await thief.call("chunk.read", timeout_s=5, client_name="client", **fields)
    finally:
        thief.close()
    owner = await _connect(replica, a, "client")
    try:
        _, payload = await owner.call("chunk.read", timeout_s=5, **fields)
        assert bytes(payload) == data
    finally:
        owner.close()


async def test_a_chunkserver_posing_as_a_metaserver_gets_no_request(
    layout: local.Layout,
) -> None:
    """A chunkserver's credential listening where a metaserver is expected (a server
    taken over): it is a server, so the handshake passes, but neither driver sends it a
    metaserver's op, so it learns no name and no data."""
    seen: list[str] = []

    async def record(conn: rpc.Connection, header: dict, payload: bytes) -> None:
        seen.append(header.get("op", "?"))

    cs_pem = layout.tls_dir / f"cs{min(layout.chunkservers)}.pem"
    posing = Credentials(None, TlsCredential.load(cs_pem))
    fake = await rpc.serve("127.0.0.1", 0, posing, record, name="meta-1", role="metaserver")
    async with fake:
        with pytest.raises(AuthError, match="goes to a metaserver"):
            async with FsClient.open_cluster(
                [f"127.0.0.1:{fake.port}"], client_only(layout), timeout_s=5
            ):
                pass
        conn = await _connect(f"127.0.0.1:{fake.port}", client_only(layout), "client")
        try:
            with pytest.raises(AuthError, match="goes to a metaserver"):
                await conn.call("fs.lookup", timeout_s=5, parent=ROOT_INO, name=b"secret")
        finally:
            conn.close()
    assert seen == []


async def test_a_revoked_credential_is_cut_off_without_a_restart(
    layout: local.Layout, tmp_path: Path
) -> None:
    """A client host is lost: `dfs revoke` its credential, and within about a second the
    servers close what it had open and refuse it anew; everyone else goes on."""
    lost = _issue(layout, tmp_path / "lost.pem", "lost-laptop")
    async with FsClient.open_cluster(layout.meta_addresses, lost, timeout_s=10) as fs:
        assert (await fs.meta.read("fs.getattr", ino=ROOT_INO))["attr"]["ino"] == ROOT_INO
        proc = subprocess.run(
            [sys.executable, "-m", "dfs.cli.main", "revoke", str(tmp_path / "lost.pem"),
             "--dir", str(layout.dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0 and "revoked serial" in proc.stdout, proc.stderr
        deadline = time.monotonic() + 30
        while True:  # polled: its connections close within the servers' reload period
            try:
                await fs.meta.read("fs.getattr", ino=ROOT_INO, timeout_s=2)
            except (AuthError, Unavailable, Timeout):
                break
            assert time.monotonic() < deadline, "a revoked credential was still served"
            await anyio.sleep(0.1)
    with pytest.raises((AuthError, Unavailable, Timeout)):
        async with FsClient.open_cluster(layout.meta_addresses, lost, timeout_s=5) as fs:
            await fs.meta.read("fs.getattr", ino=ROOT_INO)
    async with FsClient.open_cluster(layout.meta_addresses, client_only(layout)) as fs:
        assert (await fs.meta.read("fs.getattr", ino=ROOT_INO))["attr"]["ino"] == ROOT_INO
