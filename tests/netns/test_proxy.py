"""The fault proxy (``tools.testing.proxy``) on loopback, in this process and as a process:
bytes pass intact and in order under delay and jitter, a stall holds them, cut closes and
reset aborts every connection, and the control socket drives a running proxy. Needs no
namespace and no root."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from netns_helpers import wait_for

from tools import pythonpath_env
from tools.testing.proxy import Proxy, ProxyControl

pytestmark = [pytest.mark.netns, pytest.mark.anyio, pytest.mark.timeout(60)]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def echo_through_proxy(**kw: float) -> AsyncIterator[Proxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = Proxy(
        ("127.0.0.1", port),
        delay_s=kw.get("delay_s", 0.0),
        jitter_s=kw.get("jitter_s", 0.0),
        rng=random.Random(1),
    )
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


async def test_delay_and_jitter_keep_the_stream_intact() -> None:
    async with echo_through_proxy(delay_s=0.05, jitter_s=0.02) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        # Both directions are delayed: at least twice (delay - jitter).
        assert time.monotonic() - started >= 2 * 0.03
        data = random.Random(2).randbytes(3 << 20)
        writer.write(data)
        assert await asyncio.wait_for(reader.readexactly(len(data)), 30) == data
        writer.close()
        assert proxy.stats()["bytes_forwarded"] >= 2 * (len(data) + 4)


async def test_stall_holds_bytes_until_unstalled() -> None:
    async with echo_through_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"a")
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"a"
        proxy.stall()
        writer.write(b"b")
        with pytest.raises(TimeoutError):
            # Nothing may come while stalled; a bounded look for it.
            await asyncio.wait_for(reader.readexactly(1), 0.3)
        proxy.unstall()
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"b"
        writer.close()


async def test_cut_closes_and_reset_aborts() -> None:
    async with echo_through_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), 10)
        assert proxy.cut() == 1
        assert await asyncio.wait_for(reader.read(10), 10) == b""  # EOF
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"y")
        await asyncio.wait_for(reader.readexactly(1), 10)
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 10)
        writer.close()
        assert proxy.stats()["connections"] == 0


def test_control_socket_of_a_proxy_process(tmp_path: Path) -> None:
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True)
    control = tmp_path / "p.sock"
    proc = None
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline())
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.testing.proxy", "--upstream", f"127.0.0.1:{port}",
             "--control", str(control), "--delay-ms", "20", "--seed", "3"],
            stdout=subprocess.PIPE, text=True, env=pythonpath_env(),
        )  # fmt: skip
        assert proc.stdout is not None
        listening = proc.stdout.readline().split()
        assert listening[0] == "listening"
        ctl = ProxyControl(control)
        wait_for(control.exists, 10, "the control socket")
        assert ctl.stats()["delay_ms"] == 20
        assert ctl.set_delay(5, 1)["jitter_ms"] == 1
        assert ctl.stall()["stalled"] is True
        assert ctl.unstall()["stalled"] is False
        assert ctl.cut()["closed"] == 0
        with pytest.raises(ValueError, match="unknown op"):
            ctl.request("nonsense")
    finally:
        for p in (proc, upstream):
            if p is not None:
                p.terminate()
                p.wait(10)
    assert not control.exists()  # removed by the proxy on SIGTERM


# An upstream that accepts and closes: the control test sends no data through.
UPSTREAM = """
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""
