"""dfs.client.conn (anyio) against real dfs.rpc servers (asyncio), under asyncio and trio.

The server runs on its own asyncio loop in a background thread (``LoopThread``), so the
same test drives a trio client and an asyncio client alike. Waits are on events and
closed connections under deadlines; nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from dfs import rpc
from dfs.client.conn import connect, open_connection
from dfs.wire import codec
from dfs.wire.auth import NONCE_BYTES, Handshake, Side
from dfs.wire.errors import (
    AuthError,
    ErrorCode,
    InternalError,
    NotFound,
    NotLeader,
    ProtocolError,
    Timeout,
    Unavailable,
)
from tools.testing.fakecluster import LoopThread

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SECRET = b"s" * 32
HOST = "127.0.0.1"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Server:
    """A dfs.rpc server on a LoopThread, with a handler for these tests."""

    def __init__(self, thread: LoopThread) -> None:
        self.thread = thread
        self.gate: list[tuple[int, asyncio.Future[None]]] = []
        self.gate_size = 0
        self.answered: list[int] = []
        self.server = thread.run(rpc.serve(HOST, 0, SECRET, self.handle, name="srv"))
        self.address = f"{HOST}:{self.server.port}"

    async def handle(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes] | None:
        op = header["op"]
        if op == "echo":
            return {"x": header.get("x"), "peer": conn.peer.name if conn.peer else None}, payload
        if op == "gate":
            # Hold requests until gate_size have arrived, then answer them newest first:
            # responses leave in the reverse of the order the requests came in.
            future = asyncio.get_running_loop().create_future()
            self.gate.append((header["n"], future))
            if len(self.gate) == self.gate_size:
                for n, waiting in reversed(self.gate):
                    self.answered.append(n)
                    waiting.set_result(None)
                    await asyncio.sleep(0)
            await future
            return {"n": header["n"]}, b""
        if op == "hang":
            await asyncio.Event().wait()
        if op == "missing":
            raise NotFound("no such inode", inode=header["ino"])
        if op == "redirect":
            raise NotLeader("127.0.0.1:9")
        if op == "bug":
            raise RuntimeError("handler bug")
        raise AssertionError(f"unexpected op {op}")

    def close(self) -> None:
        self.thread.call(self.server.close)  # asyncio objects only on their loop's thread
        self.thread.run(self.server.wait_closed())

    def connections(self) -> int:
        return self.thread.call(lambda: len(self.server.connections))


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def server(loop_thread: LoopThread) -> Iterator[Server]:
    srv = Server(loop_thread)
    yield srv
    loop_thread.call(srv.server.close)
    loop_thread.run(srv.server.wait_closed())


async def test_call_round_trip(server: Server) -> None:
    async with open_connection(server.address, SECRET, name="cli", timeout_s=5) as conn:
        assert conn.peer.name == "srv"
        header, payload = await conn.call("echo", b"hello", x=[1, "two", b"3"], timeout_s=5)
        assert header["ok"] is True and header["x"] == [1, "two", b"3"]
        assert header["peer"] == "cli" and payload == b"hello"
        big = os.urandom(8 * 1024 * 1024)  # a separate buffer, never joined or copied
        _, payload = await conn.call("echo", memoryview(big), timeout_s=20)
        assert payload == big
    assert conn.closed
    with pytest.raises(Unavailable):
        await conn.call("echo", timeout_s=1)


async def test_pipelined_calls_answered_out_of_order(server: Server) -> None:
    count = 200
    server.gate_size = count
    results: dict[int, int] = {}
    async with open_connection(server.address, SECRET, name="cli", timeout_s=5) as conn:

        async def one(n: int) -> None:
            header, _ = await conn.call("gate", n=n, timeout_s=20)
            results[n] = header["n"]

        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(one, n)
        # The server saw all the requests before answering any, and answered them in the
        # reverse of their order on the wire; every caller still got its own answer.
        assert results == {n: n for n in range(count)}
        arrived = [n for n, _ in server.gate]
        assert len(arrived) == count and server.answered == arrived[::-1]
        assert conn.in_flight == 0


async def test_in_flight_limit_queues_calls(server: Server) -> None:
    async with anyio.create_task_group() as tg:
        conn = await connect(
            server.address, SECRET, name="cli", task_group=tg, timeout_s=5, in_flight_max=3
        )
        seen = []

        async def one(n: int) -> None:
            header, _ = await conn.call("echo", x=n, timeout_s=10)
            seen.append(header["x"])

        async with anyio.create_task_group() as calls:
            for n in range(50):
                calls.start_soon(one, n)
        assert sorted(seen) == list(range(50))
        await conn.aclose()


async def test_errors_round_trip(server: Server, expect_log: Callable[..., None]) -> None:
    expect_log(r"handler for op 'bug' .* failed", logging.ERROR)
    async with open_connection(server.address, SECRET, name="cli", timeout_s=5) as conn:
        with pytest.raises(NotFound) as caught:
            await conn.call("missing", ino=42, timeout_s=5)
        assert caught.value.details == {"inode": 42}
        assert caught.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(NotLeader) as redirected:
            await conn.call("redirect", timeout_s=5)
        assert redirected.value.leader_hint == "127.0.0.1:9"
        with pytest.raises(InternalError):
            await conn.call("bug", timeout_s=5)
        # The connection survives errors.
        assert (await conn.call("echo", x=2, timeout_s=5))[0]["x"] == 2


async def test_timeout_then_connection_still_usable(server: Server) -> None:
    async with open_connection(server.address, SECRET, name="cli", timeout_s=5) as conn:
        started = anyio.current_time()
        with pytest.raises(Timeout):
            await conn.call("hang", timeout_s=0.1)
        assert anyio.current_time() - started < 5
        assert (await conn.call("echo", x=3, timeout_s=5))[0]["x"] == 3
        assert not conn.closed


async def test_a_short_deadline_behind_a_long_one_still_times_out(server: Server) -> None:
    # Under trio, one watchdog per connection keeps the deadlines: a call whose deadline
    # comes before every pending one's must still get its Timeout on time.
    async with open_connection(server.address, SECRET, name="cli", timeout_s=5) as conn:
        long_failed: list[BaseException] = []

        async def long_call() -> None:
            try:
                await conn.call("hang", timeout_s=30)
            except Timeout as e:  # pragma: no cover - would mean the deadlines mixed up
                long_failed.append(e)

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            await conn.call("echo", timeout_s=5)  # the long call is on its way
            started = anyio.current_time()
            with pytest.raises(Timeout):
                await conn.call("hang", timeout_s=0.2)
            assert 0.15 < anyio.current_time() - started < 5
            assert conn.in_flight == 1  # the long one, still waiting
            tg.cancel_scope.cancel()
        assert long_failed == []
        assert conn.in_flight == 0 and not conn.closed
        assert (await conn.call("echo", x=4, timeout_s=5))[0]["x"] == 4


async def test_a_cancelled_call_leaves_the_connection_usable(server: Server) -> None:
    async with open_connection(server.address, SECRET, name="cli", timeout_s=5) as conn:
        with anyio.move_on_after(0.1) as scope:
            await conn.call("hang", timeout_s=30)
        assert scope.cancelled_caught
        assert conn.in_flight == 0 and not conn.closed
        assert (await conn.call("echo", x=5, timeout_s=5))[0]["x"] == 5


async def test_wrong_secret_is_auth_error(server: Server, expect_log: Callable[..., None]) -> None:
    expect_log(r"dropping connection event=auth_failed .*secret")
    with pytest.raises(AuthError):
        async with open_connection(server.address, b"w" * 32, name="intruder", timeout_s=5):
            pass
    # The client waited for the server to hang up, which it does after logging why (the
    # log check at teardown verifies it). Its bookkeeping follows a moment later:
    with anyio.fail_after(5):
        while server.connections():
            await anyio.sleep(0.01)
    with pytest.raises(AuthError):  # no usable secret: a local error, no connection tried
        async with open_connection(server.address, b"", name="cli", timeout_s=5):
            pass


async def test_server_closing_fails_pending_calls(server: Server) -> None:
    async with open_connection(server.address, SECRET, name="cli", timeout_s=5) as conn:
        failures: list[BaseException] = []

        async def pending() -> None:
            try:
                await conn.call("hang", timeout_s=20)
            except Unavailable as e:
                failures.append(e)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(pending)
            await conn.call("echo", timeout_s=5)  # the hangs have reached the server
            server.close()
        assert len(failures) == 5
        assert conn.closed
        with pytest.raises(Unavailable):
            await conn.call("echo", timeout_s=1)


async def test_connection_refused_is_unavailable(loop_thread: LoopThread) -> None:
    srv = loop_thread.run(rpc.serve(HOST, 0, SECRET, Server.handle, name="gone"))  # type: ignore[arg-type]
    port = srv.port
    loop_thread.call(srv.close)
    loop_thread.run(srv.wait_closed())
    with pytest.raises(Unavailable):
        async with open_connection(f"{HOST}:{port}", SECRET, name="cli", timeout_s=5):
            pass


async def test_garbage_from_server_is_protocol_error(loop_thread: LoopThread) -> None:
    """A peer that authenticates, then breaks the framing: pending calls fail with
    ProtocolError and the connection is dropped."""

    async def serve_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshake = Handshake(
            SECRET, os.urandom(NONCE_BYTES), side=Side.ACCEPTOR, role="srv", name="bad"
        )
        decoder = codec.FrameDecoder()

        async def next_frame() -> codec.Frame:
            while (frame := decoder.next_frame()) is None:
                decoder.feed(await reader.read(65536))
            return frame

        writer.write(codec.encode_bytes(handshake.hello()))
        assert handshake.receive_hello((await next_frame()).header) is None  # the acceptor
        handshake.receive_proof((await next_frame()).header)
        writer.write(codec.encode_bytes(handshake.proof()))
        await next_frame()  # the first request
        writer.write(b"\x07not a dfs frame at all")
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()

    listener = loop_thread.run(asyncio.start_server(serve_garbage, HOST, 0))
    port = listener.sockets[0].getsockname()[1]
    try:
        async with open_connection(f"{HOST}:{port}", SECRET, name="cli", timeout_s=5) as conn:
            with pytest.raises(ProtocolError):
                await conn.call("echo", timeout_s=5)
            assert conn.closed
    finally:
        loop_thread.call(listener.close)
        loop_thread.run(listener.wait_closed())
