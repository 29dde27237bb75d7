"""Chunkservers as real processes: three ``python -m chunkserver`` on loopback and a fake
metaserver in the test process.

What these tests check, end to end through sockets and files:
- a write through a chain of three lands on all three; reads from each give identical bytes;
  ``chunk.sync`` and ``sync`` writes go through the chain;
- tokens (wrong, expired, for another chunk or mode) and versions (older, other) are refused,
  and a newer version truncates to the handle's length;
- a replica whose file was damaged on disk answers Corrupt from then on and is reported
  (cs.bad_chunks, retried until acknowledged); the others still serve;
- an error downstream comes back with the failing server's address;
- ``expect_length`` on writes and syncs is checked on every replica of the chain;
- ``chunk.write_many`` lands each good write on every replica, fails each bad one alone
  (the nearer replica's error), keeps one chunk's writes in order, and refuses whole what
  breaks the request;
- registration and heartbeats reach the metaserver (following a NotLeader hint), the cs_id
  is stable across a restart, and data is served while no metaserver answers;
- SIGTERM exits 0 promptly, with connections open and with writes in flight (every write it
  acknowledged is there after the restart); a server reconnects to a restarted next hop;
- a garbage frame or a wrong secret does not bring a server down;
- a bad config exits 2; a second server on the same data directory is refused.

Rules: every process is started here and ended by PID in the fixture's finalizer (SIGKILL if
still running); waits poll with a deadline, nothing sleeps to wait for a condition. The
servers' logs go to files in the test's tmp dir and are printed when a test fails.

The fake metaserver runs in its own thread and event loop, so it serves the chunkservers
whatever the test's own loop is doing, and records what they sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkserver.disk import INLINE_WRITE_BYTES_MAX
from dfs import rpc
from dfs.ports import free_loopback_ports
from dfs.secret import write_secret
from dfs.wire.errors import (
    AuthError,
    Corrupt,
    DfsError,
    Invalid,
    NotFound,
    NotLeader,
    PermissionDenied,
    ProtocolError,
    Stale,
    TooBig,
    Unavailable,
)
from dfs.wire.ops import CHUNKSERVER_OPS
from dfs.wire.replicafile import DATA_OFFSET, chunk_relpath
from dfs.wire.spec import CLIENT, METASERVER
from dfs.wire.token import READ, WRITE, make_token, token_key

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
SECRET = bytes(range(32))
KEY = token_key(SECRET)
DEADLINE_S = 20.0
# Short heartbeats make registration and the unreachable/reachable changes quick to see.
HEARTBEAT_MS = 100
B = 64 * 1024


# ---------------------------------------------------------------------- helpers


async def eventually(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``probe`` until it returns something other than None, within DEADLINE_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        result = await probe()
        if result is not None:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # polling interval, not a wait for the condition


async def _true(ok: bool) -> bool | None:
    return True if ok else None


def expiry(seconds: float = 60.0) -> int:
    return int((time.time() + seconds) * 1000)


def token_fields(chunk_id: int, version: int, mode: bytes, ttl_s: float = 60.0) -> dict[str, Any]:
    expiry_ms = expiry(ttl_s)
    return {"token": make_token(KEY, chunk_id, version, mode, expiry_ms), "expiry_ms": expiry_ms}


class FakeMetaserver:
    """Answers cs.register / cs.heartbeat / cs.report / cs.bad_chunks like
    docs/PROTOCOL.md says, and records them.

    ``leader_hint``: answer everything with NotLeader pointing there instead (may be changed
    while it runs). ``refuse``: op -> how many more calls of it to answer Unavailable.
    ``ids_by_uuid`` may be shared by two fakes, so that a chunkserver moving from one to
    the other (a leader change) keeps its id.
    """

    def __init__(self, port: int, *, leader_hint: str | None = None) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.leader_hint = leader_hint
        self.ids_by_uuid: dict[str, int] = {}
        self.registrations: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.report_calls: list[dict[str, Any]] = []
        self.bad_chunks: list[dict[str, Any]] = []
        self.refuse: dict[str, int] = {}
        self.refused = 0
        self._mutex = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"fake-meta-{port}", daemon=True)

    def start(self) -> FakeMetaserver:
        self._thread.start()
        assert self._ready.wait(10), "fake metaserver did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = await rpc.serve(
                "127.0.0.1", self.port, SECRET, self._handle, name="fake-meta", role="metaserver"
            )
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(
        self, conn: rpc.Connection, h: dict[str, Any], payload: bytes
    ) -> rpc.HandlerResult:
        with self._mutex:
            if self.leader_hint is not None:
                self.refused += 1
                raise NotLeader(self.leader_hint)
            record = {k: v for k, v in h.items() if k not in ("op", "id")}
            if self.refuse.get(h["op"], 0) > 0:
                self.refuse[h["op"]] -= 1
                raise Unavailable(f"fake metaserver refuses {h['op']} for now")
            if h["op"] in ("cs.report", "cs.bad_chunks") and (
                h["cs_id"] not in self.ids_by_uuid.values()
            ):
                raise NotFound("unknown chunkserver: register first")
            if h["op"] == "cs.report":
                self.report_calls.append(record)
                return None
            if h["op"] == "cs.bad_chunks":
                self.bad_chunks.append(record)
                return {"extra": "ignored"}, b""
            if h["op"] == "cs.register":
                uuid = h["uuid"]
                cs_id = self.ids_by_uuid.setdefault(uuid, len(self.ids_by_uuid) + 1)
                self.registrations.append({**record, "cs_id": cs_id})
                return {"cs_id": cs_id}, b""
            if h["op"] == "cs.heartbeat":
                if h["cs_id"] not in self.ids_by_uuid.values():
                    raise NotFound("unknown chunkserver: register first")
                self.heartbeats.append(record)
                return None
        raise NotFound(f"fake metaserver has no op {h['op']}")

    def heartbeats_of(self, cs_id: int) -> list[dict[str, Any]]:
        with self._mutex:
            return [h for h in self.heartbeats if h["cs_id"] == cs_id]

    def registrations_of(self, address: str) -> list[dict[str, Any]]:
        with self._mutex:
            return [r for r in self.registrations if r["address"] == address]

    def reports_of(self, cs_id: int) -> list[list[list[int]]]:
        """The complete block reports of ``cs_id``: parts 0 .. final, in order, joined."""
        with self._mutex:
            calls = [c for c in self.report_calls if c["cs_id"] == cs_id]
        reports: list[list[list[int]]] = []
        current: list[list[int]] | None = None
        expected_part = 0
        for call in calls:
            if call["part"] == 0:
                current, expected_part = [], 0
            if current is None or call["part"] != expected_part:
                current = None  # a report whose beginning we missed: not usable
                continue
            current.extend(call["chunks"])
            expected_part += 1
            if call["final"]:
                reports.append(current)
                current = None
        return reports

    def bad_chunks_of(self, cs_id: int) -> list[list[int]]:
        with self._mutex:
            return [e for c in self.bad_chunks if c["cs_id"] == cs_id for e in c["chunks"]]


class Chunkservers:
    """``n`` chunkserver processes and their files under ``root``."""

    def __init__(self, root: Path, metaservers: list[str], n: int = 3, **options: Any) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.secret_file = root / "secret"
        write_secret(self.secret_file, SECRET)
        self.ids = list(range(1, n + 1))
        ports = free_loopback_ports(n)
        self.addresses = {i: f"127.0.0.1:{p}" for i, p in zip(self.ids, ports, strict=True)}
        self.metaservers = metaservers
        self.options: dict[str, Any] = {"heartbeat_ms": HEARTBEAT_MS, **options}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.conns: dict[int, rpc.Connection] = {}
        # The test plays the metaserver, on connections of that role, for the ops only a
        # metaserver may send (chunk.delete, chunk.replicate, chunk.info).
        self.meta_conns: dict[int, rpc.Connection] = {}

    def data_dir(self, i: int) -> Path:
        return self.root / f"cs{i}"

    def log_path(self, i: int) -> Path:
        return self.root / f"cs{i}.log"

    def log(self, i: int) -> str:
        return self.log_path(i).read_text() if self.log_path(i).exists() else ""

    def chunk_path(self, i: int, chunk_id: int) -> Path:
        return self.data_dir(i) / chunk_relpath(chunk_id)

    def config_path(self, i: int) -> Path:
        path = self.root / f"cs{i}.toml"
        metas = ", ".join(f'"{m}"' for m in self.metaservers)
        lines = [
            f'listen = "{self.addresses[i]}"',
            f'data_dir = "{self.data_dir(i)}"',
            f'secret_file = "{self.secret_file}"',
            f"metaservers = [{metas}]",
        ]
        for key, value in self.options.items():
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, i: int) -> subprocess.Popen[bytes]:
        assert i not in self.procs or self.procs[i].poll() is not None
        with open(self.log_path(i), "ab") as log_file:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "chunkserver", "--config", str(self.config_path(i))],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            )  # fmt: skip
        return self.procs[i]

    async def start_all(self) -> None:
        for i in self.ids:
            self.start(i)
        for i in self.ids:
            await self.wait_serving(i)

    async def wait_serving(self, i: int) -> dict[str, Any]:
        async def status() -> dict[str, Any] | None:
            proc = self.procs[i]
            assert proc.poll() is None, f"cs{i} exited with {proc.returncode}:\n{self.log(i)}"
            try:
                return await self.call(i, "cs.status", timeout_s=1.0)
            except DfsError:
                return None

        result: dict[str, Any] = await eventually(status, f"cs{i} to serve")
        return result

    async def conn(self, i: int, role: str = CLIENT) -> rpc.Connection:
        conns = self.conns if role == CLIENT else self.meta_conns
        conn = conns.get(i)
        if conn is None or conn.closed:
            host, port = self.addresses[i].rsplit(":", 1)
            conn = await rpc.connect(host, int(port), SECRET, name="test", timeout_s=2.0, role=role)
            conns[i] = conn
        return conn

    async def call(
        self, i: int, op: str, payload: bytes = b"", timeout_s: float = 10.0, **fields: Any
    ) -> dict[str, Any]:
        spec = CHUNKSERVER_OPS.get(op)
        conn = await self.conn(i, CLIENT if spec is None or spec.allows(CLIENT) else METASERVER)
        header, _ = await conn.call(op, payload, timeout_s=timeout_s, **fields)
        return header

    async def read(
        self, i: int, chunk_id: int, version: int, offset: int, size: int, mode: bytes = READ
    ) -> bytes:
        conn = await self.conn(i)
        _, payload = await conn.call(
            "chunk.read",
            timeout_s=10.0,
            chunk_id=chunk_id,
            version=version,
            offset=offset,
            size=size,
            **token_fields(chunk_id, version, mode),
        )
        return bytes(payload)

    async def write(
        self,
        i: int,
        chunk_id: int,
        version: int,
        offset: int,
        data: bytes,
        *,
        chain: list[int] | None = None,
        length: int = 0,
        sync: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        fields = {**token_fields(chunk_id, version, WRITE), **extra}
        return await self.call(
            i,
            "chunk.write",
            data,
            chunk_id=chunk_id,
            version=version,
            length=length,
            offset=offset,
            chain=[self.addresses[j] for j in (chain or [])],
            sync=sync,
            **fields,
        )

    async def terminate(self, i: int, timeout_s: float = 10.0) -> tuple[int, float]:
        """SIGTERM by PID, our connection to it left open; returns (exit code, seconds it
        took). Polls, so the event loop goes on serving our side of the connection."""
        proc = self.procs.pop(i)
        loop = asyncio.get_running_loop()
        started = loop.time()
        os.kill(proc.pid, signal.SIGTERM)
        while proc.poll() is None:
            assert loop.time() - started < timeout_s, f"cs{i} ignored SIGTERM"
            await asyncio.sleep(0.01)  # polling interval
        for conns in (self.conns, self.meta_conns):
            conn = conns.pop(i, None)
            if conn is not None:
                conn.close()
        return proc.returncode, loop.time() - started

    async def close_connections(self) -> None:
        conns = [*self.conns.values(), *self.meta_conns.values()]
        self.conns.clear()
        self.meta_conns.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(TimeoutError):
                await conn.wait_closed(2.0)

    def end_all(self) -> None:
        """SIGKILL by PID whatever is still running, and reap it."""
        for i in list(self.procs):
            proc = self.procs.pop(i)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"----- cs{i} -----\n{self.log(i)[-20000:]}" for i in self.ids)


@pytest.fixture
def metaservers() -> Iterator[Callable[..., FakeMetaserver]]:
    made: list[FakeMetaserver] = []

    def make(port: int | None = None, **options: Any) -> FakeMetaserver:
        meta = FakeMetaserver(port or free_loopback_ports(1)[0], **options)
        made.append(meta)
        return meta.start()

    yield make
    for meta in made:
        meta.stop()


@pytest.fixture
async def clusters(tmp_path: Path) -> AsyncIterator[Callable[..., Chunkservers]]:
    made: list[Chunkservers] = []

    def make(metas: list[str], **options: Any) -> Chunkservers:
        cluster = Chunkservers(tmp_path / f"cluster{len(made)}", metas, **options)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            try:
                await cluster.close_connections()
            finally:
                cluster.end_all()
                # pytest shows a test's captured output only when it fails: the servers' logs.
                print(cluster.logs())


# ---------------------------------------------------------------------- data path


@pytest.mark.timeout(60)
async def test_chain_write_reads_back_identically_from_every_replica(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    meta = metaservers()
    c = clusters([meta.address])
    await c.start_all()
    rng = random.Random(1)
    chunk_id = 0x1234
    model = bytearray()
    # Unaligned pieces across block boundaries, a gap, a large frame, an overwrite.
    pieces = [(0, 1000), (1000, B), (B + 1000, 3 * B + 17), (5 * B, 100), (300_000, 4 << 20),
              (77, 1)]  # fmt: skip
    for offset, size in pieces:
        data = rng.randbytes(size)
        await c.write(1, chunk_id, 1, offset, data, chain=[2, 3])
        if offset > len(model):
            model.extend(bytes(offset - len(model)))
        model[offset : offset + size] = data
    for i in c.ids:
        assert await c.read(i, chunk_id, 1, 0, 16 << 20) == bytes(model), f"cs{i} differs"
        assert await c.read(i, chunk_id, 1, B - 3, 10) == bytes(model[B - 3 : B + 7])
        info = await c.call(i, "chunk.info", chunk_id=chunk_id)
        assert (info["version"], info["length"]) == (1, len(model))
    # A write token also reads; a sync goes through the chain; a sync write too.
    assert await c.read(3, chunk_id, 1, 0, 100, mode=WRITE) == bytes(model[:100])
    await c.call(
        1, "chunk.sync", chunk_id=chunk_id, version=1, chain=[c.addresses[2], c.addresses[3]],
        **token_fields(chunk_id, 1, WRITE),
    )  # fmt: skip
    await c.write(2, chunk_id, 1, 10, b"synced", chain=[3, 1], sync=True)
    model[10:16] = b"synced"
    for i in c.ids:
        assert await c.read(i, chunk_id, 1, 0, 16 << 20) == bytes(model)
        status = await c.call(i, "cs.status")
        assert status["chunks"] == 1 and status["used_bytes"] >= len(model)
        assert status["address"] == c.addresses[i] and status["pid"] == c.procs[i].pid
    assert all(c.chunk_path(i, chunk_id).stat().st_size == DATA_OFFSET + len(model) for i in c.ids)


@pytest.mark.timeout(60)
async def test_pipelined_writes_to_one_chunk_land_in_the_order_they_were_sent(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    """A small write answered in the read callback (or on the loop in its task) must not
    overtake a larger write of the same chunk sent before it on the same connection, which
    waits for the disk pool: along a chain and at its end, the later bytes win."""
    meta = metaservers()
    c = clusters([meta.address])
    await c.start_all()
    big = b"a" * (INLINE_WRITE_BYTES_MAX + 4096)  # too big for the loop: the disk pool's
    for chunk_id, chain in ((0x51, []), (0x52, [2, 3])):
        for round_ in range(5):
            small = bytes([0x30 + round_]) * 4096
            await asyncio.gather(
                c.write(1, chunk_id, 1, 0, big, chain=chain, length=len(big) * (round_ > 0)),
                c.write(1, chunk_id, 1, 0, small, chain=chain, length=len(big) * (round_ > 0)),
            )
            for i in [1, *chain]:
                got = await c.read(i, chunk_id, 1, 0, 8192)
                assert got == small + big[4096:8192], (chunk_id, round_, i)


@pytest.mark.timeout(60)
async def test_a_token_checked_once_allows_only_what_it_signs_and_only_until_it_expires(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    """The server remembers tokens it verified (TOKEN CACHE in server.py): a remembered
    token still allows nothing its signature does not cover, and stops at its expiry."""
    meta = metaservers()
    c = clusters([meta.address], n=1)
    await c.start_all()
    await c.write(1, 5, 3, 0, b"x" * 1000)
    read = {"chunk_id": 5, "version": 3, "offset": 0, "size": 10}
    valid = token_fields(5, 3, READ, ttl_s=2.0)
    conn = await c.conn(1)
    for _ in range(3):
        _, payload = await conn.call("chunk.read", timeout_s=10.0, **{**read, **valid})
        assert bytes(payload) == b"x" * 10
    await c.write(1, 6, 3, 0, b"y" * 10)
    for fields in (
        {**read, **valid, "version": 4},
        {**read, **valid, "chunk_id": 6},
        {**read, "token": valid["token"], "expiry_ms": valid["expiry_ms"] + 60_000},
    ):
        with pytest.raises((PermissionDenied, Stale)) as refused:
            await c.call(1, "chunk.read", **fields)
        if fields.get("version") != 4:
            assert isinstance(refused.value, PermissionDenied)
    with pytest.raises(PermissionDenied):  # a read token, remembered, is no write token
        await c.call(1, "chunk.write", b"z", chunk_id=5, version=3, length=1000, offset=0,
                     chain=[], **valid)  # fmt: skip

    async def expired() -> bool | None:
        try:
            await c.call(1, "chunk.read", **{**read, **valid})
        except PermissionDenied:
            assert time.time() * 1000 >= valid["expiry_ms"] - 1  # not before its expiry
            return True
        return None

    await eventually(expired, "the remembered token to expire")


@pytest.mark.timeout(60)
async def test_only_a_metaserver_may_delete_copy_or_inspect_replicas(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    """The attack: a client (or a chunkserver) that knows the secret sends chunk.delete,
    chunk.replicate or chunk.info. Each is answered PermissionDenied, the connection goes
    on serving, and the replica is still there, whole."""
    meta = metaservers()
    c = clusters([meta.address], n=1)
    await c.start_all()
    await c.write(1, 7, 2, 0, b"z" * 5000, length=0)
    host, port = c.addresses[1].rsplit(":", 1)
    for role in (CLIENT, "chunkserver"):
        conn = await rpc.connect(host, int(port), SECRET, name="intruder", role=role)
        try:
            for op, fields in (
                ("chunk.delete", {"chunks": [[7, 9]]}),
                ("chunk.info", {"chunk_id": 7}),
                ("chunk.replicate", {"chunk_id": 7, "version": 3, "length": 0,
                                     "sources": ["127.0.0.1:1"], **token_fields(7, 3, WRITE)}),
            ):  # fmt: skip
                with pytest.raises(PermissionDenied) as refused:
                    await conn.call(op, timeout_s=5.0, **fields)
                assert refused.value.details["role"] == role
            status, _ = await conn.call("cs.status", timeout_s=5.0)  # still usable
            assert status["chunks"] == 1
        finally:
            conn.close()
    assert await c.read(1, 7, 2, 0, 5000) == b"z" * 5000
    info = await c.call(1, "chunk.info", chunk_id=7)
    assert (info["version"], info["length"]) == (2, 5000)


@pytest.mark.timeout(60)
async def test_tokens_versions_and_limits_are_enforced(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    meta = metaservers()
    c = clusters([meta.address], n=1)
    await c.start_all()
    await c.write(1, 5, 3, 0, b"x" * 1000)
    read = {"chunk_id": 5, "version": 3, "offset": 0, "size": 10}
    bad_tokens = {
        "random": {"token": os.urandom(32), "expiry_ms": expiry()},
        "expired": token_fields(5, 3, READ, ttl_s=-1),
        "other chunk": {**token_fields(6, 3, READ), "chunk_id": 5},
        "other version": {"token": token_fields(5, 4, READ)["token"], "expiry_ms": expiry()},
        "extended expiry": {"token": token_fields(5, 3, READ)["token"], "expiry_ms": expiry(999)},
        "short": {"token": b"x", "expiry_ms": expiry()},
    }
    for what, fields in bad_tokens.items():
        with pytest.raises(PermissionDenied):
            await c.call(1, "chunk.read", **{**read, **fields})
            pytest.fail(f"{what} token accepted")
    with pytest.raises(PermissionDenied):  # a read token does not allow a write
        await c.call(1, "chunk.write", b"y", chunk_id=5, version=3, length=0, offset=0,
                     chain=[], **token_fields(5, 3, READ))  # fmt: skip
    with pytest.raises(PermissionDenied):  # nor a sync
        await c.call(1, "chunk.sync", chunk_id=5, version=3, chain=[], **token_fields(5, 3, READ))
    # Versions: older writes and other reads are Stale; a newer write truncates to `length`.
    with pytest.raises(Stale):
        await c.write(1, 5, 2, 0, b"old")
    with pytest.raises(Stale):
        await c.read(1, 5, 4, 0, 10)
    await c.write(1, 5, 4, 10, b"v4", length=100)
    assert await c.read(1, 5, 4, 0, 1000) == b"x" * 10 + b"v4" + b"x" * 88
    with pytest.raises(Stale):
        await c.read(1, 5, 3, 0, 10)
    # Field checks and limits.
    with pytest.raises(TooBig):
        await c.call(1, "chunk.read", chunk_id=5, version=4, offset=0, size=(16 << 20) + 1,
                     **token_fields(5, 4, READ))  # fmt: skip
    with pytest.raises(TooBig):
        await c.write(1, 5, 4, (1 << 30) - 1, b"xx")
    with pytest.raises(Invalid):
        await c.write(1, 5, 4, 0, b"abc", size=4)
    with pytest.raises(Invalid):
        await c.call(1, "chunk.write", b"a", chunk_id=5, version=4, length=0, offset=0,
                     chain=["nowhere"], **token_fields(5, 4, WRITE))  # fmt: skip
    with pytest.raises(ProtocolError):
        await c.call(1, "chunk.read", chunk_id=5, version=4, offset=-1, size=1,
                     **token_fields(5, 4, READ))  # fmt: skip
    with pytest.raises(ProtocolError):
        await c.call(1, "chunk.info")
    with pytest.raises(NotFound):
        await c.call(1, "chunk.info", chunk_id=6)
    assert await c.read(1, 5, 4, 0, 12) == b"x" * 10 + b"v4"


@pytest.mark.timeout(60)
async def test_a_damaged_replica_is_corrupt_reported_and_the_others_still_serve(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    meta = metaservers()
    meta.refuse["cs.bad_chunks"] = 2  # the report is retried until acknowledged
    c = clusters([meta.address], scrub_bytes_per_s=0)  # only the read finds it here
    await c.start_all()
    data = random.Random(2).randbytes(3 * B)
    await c.write(1, 42, 1, 0, data, chain=[2, 3], sync=True)
    await c.write(2, 43, 1, 0, b"neighbour")
    path = c.chunk_path(2, 42)
    with open(path, "r+b") as f:  # flip one bit in block 1, as a failing disk would
        f.seek(DATA_OFFSET + B + 99)
        byte = f.read(1)
        f.seek(DATA_OFFSET + B + 99)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(Corrupt) as e:
        await c.read(2, 42, 1, 0, 3 * B)
    assert e.value.details["block"] == 1 and e.value.details["address"] == c.addresses[2]
    # The replica is bad now: never served again (its good blocks neither), reported.
    with pytest.raises(Corrupt) as again:
        await c.read(2, 42, 1, 0, B)
    assert again.value.details["address"] == c.addresses[2]
    status = await c.wait_serving(2)
    await eventually(
        lambda: _true([42, 1] in meta.bad_chunks_of(status["cs_id"])), "the bad replica report"
    )
    assert meta.refuse["cs.bad_chunks"] == 0
    assert (await c.call(2, "cs.status"))["bad_chunks"] == 1
    assert await c.read(2, 43, 1, 0, 100) == b"neighbour"
    for i in (1, 3):
        assert await c.read(i, 42, 1, 0, 3 * B) == data
    assert "event=corrupt chunk=42 block=1" in c.log(2)
    assert "event=replica_bad chunk=42 version=1 reason=checksum" in c.log(2)


@pytest.mark.timeout(60)
async def test_a_downstream_error_names_the_failing_server(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    meta = metaservers()
    c = clusters([meta.address])
    await c.start_all()
    # cs3 holds a newer version: a write for the older one fails there, two hops down.
    await c.write(3, 9, 2, 0, b"newer")
    with pytest.raises(Stale) as e:
        await c.write(1, 9, 1, 0, b"older", chain=[2, 3])
    assert e.value.details["address"] == c.addresses[3]
    # A dead server in the chain: the error is the connection's, named by who saw it.
    (dead_port,) = free_loopback_ports(1)
    dead = f"127.0.0.1:{dead_port}"
    with pytest.raises(Unavailable) as down:
        await c.call(1, "chunk.write", b"data", chunk_id=10, version=1, length=0, offset=0,
                     chain=[c.addresses[2], dead], **token_fields(10, 1, WRITE))  # fmt: skip
    assert down.value.details["address"] == dead
    # The replicas before the failure did write (the client will bump the version anyway).
    assert await c.read(2, 10, 1, 0, 10) == b"data"


def write_item(
    chunk_id: int, version: int, offset: int, data: bytes, **extra: Any
) -> dict[str, Any]:
    """One write of a ``chunk.write_many``, with a good token unless ``extra`` says."""
    return {
        "chunk_id": chunk_id, "version": version, "length": 0, "offset": offset,
        "size": len(data), **token_fields(chunk_id, version, WRITE), **extra,
    }  # fmt: skip


@pytest.mark.timeout(60)
async def test_write_many_lands_every_good_write_on_every_replica_and_fails_the_others_alone(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    """chunk.write_many (WRITE MANY in chunkserver/writes.py): several chunks' writes along
    one chain in one request; each fails as a chunk.write of it alone would, with the
    nearer replica's error, and the rest land on every replica."""
    meta = metaservers()
    c = clusters([meta.address])
    await c.start_all()
    rng = random.Random(7)
    # cs3 holds chunk 0x72 at a newer version: that write fails two hops down, alone.
    await c.write(3, 0x72, 2, 0, b"newer")
    big = rng.randbytes(INLINE_WRITE_BYTES_MAX - 1)  # on the loop at the chain's end only
    writes = [
        (0x70, 1, 0, rng.randbytes(4096), {}),
        (0x71, 1, 0, rng.randbytes(1), {}),
        (0x72, 1, 0, b"older", {}),
        (0x73, 1, 0, b"forged", {"token": b"x" * 32}),
        (0x70, 1, 4096, big, {}),  # the same chunk again, after its first write
        (0x74, 1, 0, b"", {}),
    ]
    items = [write_item(cid, v, off, data, **extra) for cid, v, off, data, extra in writes]
    reply = await c.call(1, "chunk.write_many", b"".join(w[3] for w in writes), writes=items,
                         chain=[c.addresses[2], c.addresses[3]])  # fmt: skip
    errors = reply["errors"]
    assert [e is None for e in errors] == [True, True, False, False, True, True]
    assert errors[2]["code"] == Stale.CODE and errors[2]["details"]["address"] == c.addresses[3]
    assert errors[3]["code"] == PermissionDenied.CODE
    assert errors[3]["details"]["address"] == c.addresses[1]  # the nearest replica's error
    for i in c.ids:
        assert await c.read(i, 0x70, 1, 0, 1 << 20) == writes[0][3] + big, f"cs{i}"
        assert await c.read(i, 0x71, 1, 0, 10) == writes[1][3]
        info = await c.call(i, "chunk.info", chunk_id=0x74)
        assert (info["version"], info["length"]) == (1, 0)
        with pytest.raises(NotFound):
            await c.call(i, "chunk.info", chunk_id=0x73)
    # All written: an empty answer.
    ok = [write_item(0x75 + k, 1, 0, bytes([k]) * 100) for k in range(3)]
    reply = await c.call(2, "chunk.write_many", b"".join(bytes([k]) * 100 for k in range(3)),
                         writes=ok, chain=[c.addresses[3]])  # fmt: skip
    assert "errors" not in reply
    assert await c.read(3, 0x77, 1, 0, 200) == bytes([2]) * 100
    # Two writes of one chunk in one batch land in order, even when only the later could
    # have gone on the event loop (the earlier keeps part of an old block: the disk pool).
    for i in c.ids:
        await c.write(i, 0x7B, 1, 0, b"o" * B)
    first, second = b"1" * 10, b"2" * B  # over [100, 110) of the block, then all of it
    items = [write_item(0x7B, 1, 100, first, length=B), write_item(0x7B, 1, 0, second, length=B)]
    assert "errors" not in await c.call(1, "chunk.write_many", first + second, writes=items,
                                        chain=[c.addresses[2], c.addresses[3]])  # fmt: skip
    for i in c.ids:
        assert await c.read(i, 0x7B, 1, 0, B) == second, f"cs{i}"
    # What the whole request breaks is refused whole, and the server stays up.
    with pytest.raises(Invalid):  # the payload is not the writes' sizes
        await c.call(1, "chunk.write_many", b"abc", writes=[write_item(0x78, 1, 0, b"ab")])
    with pytest.raises(TooBig):  # one write over the item limit
        item = write_item(0x78, 1, 0, b"")
        await c.call(1, "chunk.write_many", b"", writes=[{**item, "size": 1 << 20}])
    with pytest.raises(Invalid):  # no writes
        await c.call(1, "chunk.write_many", b"", writes=[])
    with pytest.raises(ProtocolError):  # an item that is no map
        await c.call(1, "chunk.write_many", b"", writes=[[1, 2]])
    # A dead next hop: every write gets the connection's error, named by who saw it.
    (dead_port,) = free_loopback_ports(1)
    dead = f"127.0.0.1:{dead_port}"
    reply = await c.call(1, "chunk.write_many", b"ab", writes=[write_item(0x79, 1, 0, b"a"),
                         write_item(0x7A, 1, 0, b"b")], chain=[dead])  # fmt: skip
    assert [e["code"] for e in reply["errors"]] == [Unavailable.CODE] * 2
    assert all(e["details"]["address"] == dead for e in reply["errors"])
    assert await c.read(1, 0x7A, 1, 0, 10) == b"b"  # written here, as a chain's first does


@pytest.mark.timeout(60)
async def test_expect_length_refuses_a_replica_that_lost_acknowledged_bytes(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    meta = metaservers()
    c = clusters([meta.address])
    await c.start_all()
    # cs1 and cs2 hold the 200 bytes the writer saw acknowledged; cs3 kept only 100 (as
    # after a crash that lost its unsynced tail).
    await c.write(1, 77, 1, 0, b"a" * 200, chain=[2])
    await c.write(3, 77, 1, 0, b"a" * 100)
    with pytest.raises(Stale, match="acknowledged") as e:
        await c.write(1, 77, 1, 250, b"gap", chain=[2, 3], expect_length=200)
    assert e.value.details["address"] == c.addresses[3]
    sync = {"chunk_id": 77, "version": 1, **token_fields(77, 1, WRITE)}
    with pytest.raises(Stale, match="acknowledged") as e:
        await c.call(1, "chunk.sync", chain=[c.addresses[2], c.addresses[3]],
                     expect_length=200, **sync)  # fmt: skip
    assert e.value.details["address"] == c.addresses[3]
    with pytest.raises(ProtocolError):
        await c.call(1, "chunk.sync", chain=[], expect_length=-1, **sync)
    # Where nothing acknowledged is missing, both go through, and the gap reads as zeros.
    await c.call(1, "chunk.sync", chain=[c.addresses[2]], expect_length=200, **sync)
    await c.write(1, 77, 1, 250, b"gap", chain=[2], expect_length=200)
    assert await c.read(2, 77, 1, 0, 1000) == b"a" * 200 + bytes(50) + b"gap"
    # Without expect_length (an older writer) the gap is still allowed, as before.
    await c.write(3, 77, 1, 250, b"gap")
    assert await c.read(3, 77, 1, 0, 1000) == b"a" * 100 + bytes(150) + b"gap"


# ---------------------------------------------------------------------- metaserver


@pytest.mark.timeout(90)
async def test_registration_heartbeats_and_a_stable_id_across_restarts(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    meta = metaservers()
    c = clusters([meta.address])
    await c.start_all()
    await c.write(1, 77, 1, 0, b"kept", chain=[2, 3], sync=True)

    async def registered() -> dict[int, int] | None:
        ids = {}
        for i in c.ids:
            regs = meta.registrations_of(c.addresses[i])
            if not regs:
                return None
            ids[i] = regs[-1]["cs_id"]
        return ids

    ids: dict[int, int] = await eventually(registered, "three registrations")
    assert sorted(ids.values()) == [1, 2, 3]
    await eventually(
        lambda: _true(all(len(meta.heartbeats_of(ids[i])) >= 3 for i in c.ids)), "heartbeats"
    )
    beat = meta.heartbeats_of(ids[1])[-1]
    assert set(beat) >= {"cs_id", "address", "capacity_bytes", "used_bytes", "chunks", "load",
                         "pid", "timeout_ms"}  # fmt: skip
    assert beat["pid"] == c.procs[1].pid and beat["address"] == c.addresses[1]
    assert beat["chunks"] == 1 and beat["capacity_bytes"] > 0 and beat["used_bytes"] > 0
    reg = meta.registrations_of(c.addresses[1])[0]
    assert set(reg) >= {"uuid", "address", "capacity_bytes", "used_bytes", "pid"}
    first_uuid = reg["uuid"]
    status = await c.call(1, "cs.status")
    assert status["cs_id"] == ids[1] and status["uuid"] == first_uuid

    # SIGTERM to the last server of the chain: a prompt, clean exit, with a client
    # connection and cs2's pooled forwarding connection still open to it.
    await c.call(3, "cs.status")
    code, took_s = await c.terminate(3)
    assert code == 0, c.log(3)
    assert took_s < 5.0, f"SIGTERM took {took_s:.1f} s"
    assert "event=stopped" in c.log(3)
    assert (c.data_dir(3) / "cs_id").read_text().strip() == str(ids[3])
    uuid3 = meta.registrations_of(c.addresses[3])[0]["uuid"]

    c.start(3)
    await c.wait_serving(3)
    await eventually(
        lambda: _true(len(meta.registrations_of(c.addresses[3])) >= 2), "re-registration"
    )
    again = meta.registrations_of(c.addresses[3])[-1]
    assert again["uuid"] == uuid3 and again["cs_id"] == ids[3]
    assert again["pid"] == c.procs[3].pid
    assert await c.read(3, 77, 1, 0, 10) == b"kept"  # found by the start-up scan
    await eventually(
        lambda: _true(any(h["pid"] == c.procs[3].pid for h in meta.heartbeats_of(ids[3]))),
        "heartbeats from the restarted server",
    )
    # cs2 reconnects to the new cs3 by itself: the chain works again at once.
    await c.write(1, 77, 1, 4, b" again", chain=[2, 3])
    for i in c.ids:
        assert await c.read(i, 77, 1, 0, 100) == b"kept again"


@pytest.mark.timeout(60)
async def test_sigterm_with_writes_in_flight_loses_no_acknowledged_write(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    meta = metaservers()
    c = clusters([meta.address], n=1)
    await c.start_all()
    rng = random.Random(3)
    # 3 MiB in all: under dfs.rpc's 4 MiB write high-water mark, so no call waits to send
    # (a call waiting to send when its connection dies leaves an unretrieved future behind,
    # a dfs.rpc issue outside what this test is about).
    pieces = {k: rng.randbytes(384 << 10) for k in range(1, 9)}
    writes = [
        asyncio.create_task(c.write(1, k, 1, 0, piece, sync=True)) for k, piece in pieces.items()
    ]
    await asyncio.sleep(0)  # the requests are on their way
    code, took_s = await c.terminate(1)
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert code == 0 and took_s < 5.0, (code, took_s)
    for result in results:
        # Finished before the connection closed, or refused/cut off: never anything else.
        assert not isinstance(result, BaseException) or isinstance(result, Unavailable), result
    c.start(1)
    await c.wait_serving(1)
    acknowledged = [
        k for k, r in zip(pieces, results, strict=True) if not isinstance(r, BaseException)
    ]
    for k in acknowledged:
        assert await c.read(1, k, 1, 0, 1 << 20) == pieces[k]


@pytest.mark.timeout(60)
async def test_not_leader_hint_is_followed_and_data_is_served_meanwhile(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    leader_port, follower_port = free_loopback_ports(2)
    leader_address = f"127.0.0.1:{leader_port}"
    follower = metaservers(follower_port, leader_hint=leader_address)
    c = clusters([follower.address], n=1)  # only the follower is configured
    await c.start_all()
    # The hinted leader is down: the server keeps serving, keeps trying, logs it once.
    await c.write(1, 3, 1, 0, b"served")
    assert await c.read(1, 3, 1, 0, 10) == b"served"
    await eventually(lambda: _true(follower.refused >= 5), "several registration attempts")
    assert c.log(1).count("event=metaserver_unreachable") == 1, c.log(1)
    leader = metaservers(leader_port)
    await eventually(lambda: _true(bool(leader.registrations)), "registration at the leader")
    await eventually(lambda: _true(len(leader.heartbeats) >= 2), "heartbeats at the leader")
    await eventually(
        lambda: _true("event=metaserver_reachable" in c.log(1)), "the reachable log line"
    )
    assert leader.registrations[0]["address"] == c.addresses[1]


# ---------------------------------------------------------------------- robustness


@pytest.mark.timeout(60)
async def test_garbage_and_a_wrong_secret_do_not_bring_it_down(
    metaservers: Callable[..., FakeMetaserver], clusters: Callable[..., Chunkservers]
) -> None:
    meta = metaservers()
    c = clusters([meta.address], n=1)
    await c.start_all()
    host, port = c.addresses[1].rsplit(":", 1)
    # A bad version byte, a stranger's protocol, a frame claiming a huge header.
    for garbage in (b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", b"\x01" + b"\xff" * 4096):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(garbage)
            s.settimeout(5)
            try:
                while s.recv(4096):  # read until the server hangs up on us
                    pass
            except ConnectionResetError:
                pass
    # The intruder usually learns AuthError; when the server's abort resets the socket
    # before the intruder read the server's proof, it sees the connection close instead.
    with pytest.raises((AuthError, Unavailable)):
        await rpc.connect(host, int(port), b"w" * 32, name="intruder", timeout_s=5)
    # Authenticated, but nonsense: unknown op, wrong field types.
    with pytest.raises(DfsError):
        await c.call(1, "chunk.explode")
    with pytest.raises(ProtocolError):
        await c.call(1, "chunk.read", chunk_id="1", version=1, offset=0, size=1,
                     token=b"", expiry_ms=0)  # fmt: skip
    assert c.procs[1].poll() is None
    assert (await c.call(1, "cs.status"))["pid"] == c.procs[1].pid
    # Logged, once: drops repeat per event and host at most every 10 s (dfs/ratelog.py).
    await eventually(
        lambda: _true("dropping connection event=auth_failed" in c.log(1)),
        "the refusals to be logged",
    )


@pytest.mark.timeout(60)
def test_bad_configs_exit_2_and_a_shared_data_dir_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    write_secret(secret, SECRET)
    base = (
        f'listen = "127.0.0.1:0"\ndata_dir = "{tmp_path / "d"}"\n'
        f'secret_file = "{secret}"\nmetaservers = ["127.0.0.1:1"]\n'
    )
    cases = {
        "unknown": (base + "colour = 3\n", "unknown keys ['colour']"),
        "type": (base + 'heartbeat_ms = "1s"\n', "heartbeat_ms must be a int"),
        "missing": (base.replace("data_dir", "# data_dir"), "missing key 'data_dir'"),
        "address": (base.replace('["127.0.0.1:1"]', '["nowhere"]'), "metaservers must be"),
        "toml": ("listen = \n", "not valid TOML"),
        "wildcard": (base.replace("127.0.0.1:0", "0.0.0.0:7101"), "needs an 'address'"),
        "secret": (base.replace(str(secret), str(tmp_path / "none")), "cannot open"),
        "period": (base + "scrub_period_ms = -1\n", "scrub_period_ms must be between 0 and"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "chunkserver", "--config", str(path)],
            cwd=ROOT, capture_output=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 2, (name, result.stderr)
        assert message in result.stderr.decode(), (name, result.stderr)

    # Two servers, one data directory: the second one is refused and exits 1.
    good = tmp_path / "good.toml"
    good.write_text(base + "heartbeat_ms = 1000\n")
    first = subprocess.Popen(
        [sys.executable, "-m", "chunkserver", "--config", str(good)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not (tmp_path / "d" / "uuid").exists():  # polling: the first one holds the lock
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        second = subprocess.run(
            [sys.executable, "-m", "chunkserver", "--config", str(good)],
            cwd=ROOT, capture_output=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert b"in use by another chunkserver" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGTERM)
        assert first.wait(timeout=10) == 0
