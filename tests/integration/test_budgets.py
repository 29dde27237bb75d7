"""Budgets under attack: a real ``python -m chunkserver`` process, attacked from this one.

- 40 pipelined 16 MiB ``chunk.read``s on one connection whose answers are never read: the
  server's peak RSS (``VmHWM``) stays within its byte budgets, another client's reads are
  served meanwhile, and the attacker's answers all arrive once it reads.
- 500 connections that never send a byte, from one host, against a server started with a
  128-descriptor limit (on uvloop and on asyncio's loop): a client from another host is
  served at once, the stalled connections are dropped at the handshake deadline, and the
  server's log stays a few lines.

No metaserver: the chunkserver serves data without one (its heartbeats fail, which it logs
once). Every process is ended by PID in the fixture; waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dfs import rpc
from dfs.budget import CONN_INFLIGHT_BYTES_MAX
from dfs.ports import free_loopback_ports
from dfs.secret import write_secret
from dfs.wire.errors import Unavailable
from dfs.wire.token import READ, WRITE, make_token, token_key

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = bytes(range(32))
KEY = token_key(SECRET)
MiB = 1024 * 1024
READ_BYTES = 16 * MiB
DEADLINE_S = 20.0


async def poll(probe: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = probe()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling interval, not a wait for the condition


def token(chunk_id: int, mode: bytes) -> dict[str, Any]:
    expiry_ms = int((time.time() + 120) * 1000)
    return {"token": make_token(KEY, chunk_id, 1, mode, expiry_ms), "expiry_ms": expiry_ms}


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    address: tuple[str, int]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def connect(self) -> rpc.Connection:
        return await rpc.connect(*self.address, SECRET, name="test", timeout_s=2.0)


@pytest.fixture
async def chunkserver(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    procs: list[subprocess.Popen[bytes]] = []

    async def start(
        fd_limit: int | None = None, event_loop: str = "uvloop", **options: Any
    ) -> Server:
        write_secret(tmp_path / "secret", SECRET)
        port, dead_meta = free_loopback_ports(2)
        lines = [
            f'listen = "127.0.0.1:{port}"',
            f'data_dir = "{tmp_path / "cs"}"',
            f'secret_file = "{tmp_path / "secret"}"',
            f'metaservers = ["127.0.0.1:{dead_meta}"]',
            "fsync = false",
            "scrub_bytes_per_s = 0",
            *(f"{k} = {v}" for k, v in options.items()),
        ]
        config = tmp_path / "cs.toml"
        config.write_text("\n".join(lines) + "\n")

        def low_fd_limit() -> None:  # soft and hard: the server cannot raise it
            if fd_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        log_path = tmp_path / "cs.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chunkserver", "--config", str(config)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                preexec_fn=low_fd_limit, env={**os.environ, "DFS_EVENT_LOOP": event_loop},
            )  # fmt: skip
        procs.append(proc)
        server = Server(proc, ("127.0.0.1", port), log_path)

        async def serving() -> bool:
            assert proc.poll() is None, f"chunkserver exited:\n{server.log()}"
            with contextlib.suppress(Exception):
                conn = await server.connect()
                try:
                    await conn.call("cs.status", timeout_s=2.0)
                finally:
                    conn.close()
                return True
            return False

        await poll(serving, "the chunkserver to serve")
        return server

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def write_chunk(conn: rpc.Connection, chunk_id: int, data: bytes) -> None:
    piece = 4 * MiB
    for offset in range(0, len(data), piece):
        await conn.call(
            "chunk.write", data[offset : offset + piece], chunk_id=chunk_id, version=1,
            length=offset, offset=offset, chain=[], sync=False, **token(chunk_id, WRITE),
        )  # fmt: skip


async def read_chunk(conn: rpc.Connection, chunk_id: int) -> bytes:
    _, payload = await conn.call(
        "chunk.read", timeout_s=30.0, chunk_id=chunk_id, version=1, offset=0,
        size=READ_BYTES, **token(chunk_id, READ),
    )  # fmt: skip
    return bytes(payload)


async def test_pipelined_reads_never_read_stay_within_the_budget(
    chunkserver: Callable[..., Awaitable[Server]],
) -> None:
    server = await chunkserver()
    data = os.urandom(READ_BYTES)
    client = await server.connect()
    attacker = await server.connect()
    pending: list[asyncio.Task[bytes]] = []
    try:
        await write_chunk(client, 1, data)
        assert await read_chunk(client, 1) == data  # and the chunk is in the page cache
        baseline_kib = status_kib(server.proc.pid, "VmRSS")

        # The attack: stop reading, then pipeline 40 reads of 16 MiB (a few KB sent).
        transport = attacker._transport
        assert transport is not None
        transport.pause_reading()
        pending = [asyncio.ensure_future(read_chunk(attacker, 1)) for _ in range(40)]
        # The server takes on what one connection may hold, then stops reading from it.
        await poll(
            lambda: (
                status_kib(server.proc.pid, "VmRSS") - baseline_kib
                > CONN_INFLIGHT_BYTES_MAX // 2 // 1024
            ),
            "the server to hold the attacker's first answers",
        )
        # Another client is served meanwhile, more than once.
        for _ in range(3):
            assert await asyncio.wait_for(read_chunk(client, 1), 10.0) == data
        peak_mib = (status_kib(server.proc.pid, "VmHWM") - baseline_kib) / 1024
        # One connection: its budget (32 MiB) plus one 16 MiB read admitted at its edge,
        # the other client's 16 MiB, and room for the allocator (1.3 GiB without budgets).
        assert peak_mib < 128, f"chunkserver grew by {peak_mib:.0f} MiB over its baseline"
        assert not any(task.done() for task in pending)

        # The attacker reads again: every answer arrives, each whole.
        transport.resume_reading()
        answers = await asyncio.wait_for(asyncio.gather(*pending), 60.0)
        assert all(answer == data for answer in answers)
    finally:
        for task in pending:
            task.cancel()
        client.close()
        attacker.close()


# asyncio's loop logged a traceback per refused accept once the fd table was full; uvloop
# closes what it cannot accept, silently.
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_stalled_connections_and_few_fds_leave_a_client_served(
    chunkserver: Callable[..., Awaitable[Server]], event_loop: str
) -> None:
    # 128 descriptors: 64 for connections (the rest kept for files and the process), 32
    # from one host; a burst of accepts before the refused ones are closed runs out of them.
    server = await chunkserver(fd_limit=128, event_loop=event_loop, host_conns_max=32)

    def server_fds() -> int:
        return len(os.listdir(f"/proc/{server.proc.pid}/fd"))

    idle_fds = server_fds()
    stalled: list[socket.socket] = []
    try:
        # The attack, from another loopback address: 500 connections that say nothing
        # (opened without waiting: those the server's backlog cannot take yet keep trying).
        for _ in range(500):
            sock = socket.socket()
            stalled.append(sock)
            sock.setblocking(False)
            sock.bind(("127.0.0.2", 0))
            sock.connect_ex(server.address)
        # The server holds about as many as one host may have open (32; the count of its
        # idle descriptors may have included the fixture's last connection).
        await poll(lambda: server_fds() >= idle_fds + 24, "the attack to land")
        # A client from elsewhere is served before the handshake deadline (5 s) frees
        # anything; a SYN the full backlog dropped is sent again after 1 s.
        started = time.monotonic()
        client = await rpc.connect(*server.address, SECRET, name="test", timeout_s=4.0)
        try:
            # While the burst holds the last descriptors, a replica's file may not open
            # (Unavailable, "too many open files"): a client tries again, as dfs's do.
            for attempt in range(20):
                try:
                    await write_chunk(client, 2, b"x" * 65536)
                    break
                except Unavailable:
                    assert attempt < 19 and time.monotonic() - started < 4.0
                    await asyncio.sleep(0.1)  # a client's retry pause, not a wait for a state
            _, payload = await client.call(
                "chunk.read", chunk_id=2, version=1, offset=0, size=65536, **token(2, READ)
            )
            assert bytes(payload) == b"x" * 65536
        finally:
            client.close()
        assert time.monotonic() - started < 4.5
        # The stalled connections do not pin the server: over the per-host limit they are
        # closed at accept, the others at the handshake deadline. (Connections the full
        # accept queue left half-open on the server reach it later, and go the same way.)
        await poll(lambda: server_fds() <= idle_fds + 2, "the stalled connections to go")
        # And it still serves, with a log of a few lines, not one per connection.
        conn = await server.connect()
        try:
            await conn.call("cs.status", timeout_s=2.0)
        finally:
            conn.close()
        log = server.log()
        assert len(log.splitlines()) < 30, log
        assert len(log) < 20_000
        assert "refusing connection" in log and "host_conns_max=32" in log, log
        assert "dropping connection event=auth_failed" in log
        assert server.proc.poll() is None
    finally:
        for sock in stalled:
            sock.close()
