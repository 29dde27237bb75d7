"""dfs.rpc's budgets over loopback sockets: bytes in flight per connection and per process,
connections per host and in total, and the rate-limited lines they log (dfs/budget.py,
dfs/ratelog.py). Waits poll with a deadline; nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from dfs import rpc
from dfs.budget import ByteBudget, ConnectionCount, Limits, MiB, limits_from
from dfs.ratelog import RateLimitedLog
from dfs.wire.errors import AuthError, Timeout, Unavailable

pytestmark = [pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(60)]

SECRET = b"k" * 32
HOST = "127.0.0.1"
ANSWER = 256 * 1024
LIMITS = Limits(conn_inflight_bytes_max=1 * MiB, inflight_bytes_max=2 * MiB)


async def poll(probe: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := probe()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval, not a wait for the condition
    return value


class BigAnswers:
    """A handler whose every answer is ANSWER bytes; counts the requests it was given."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> rpc.HandlerResult:
        self.calls += 1
        return {}, bytes(ANSWER)


def request_bytes(header: dict[str, Any], payload: bytes) -> int:
    return len(payload) + ANSWER


async def serve(handler: rpc.Handler, limits: Limits = LIMITS) -> rpc.RpcServer:
    return await rpc.serve(
        HOST, 0, SECRET, handler, name="srv", limits=limits, request_bytes=request_bytes
    )


def transport(conn: rpc.Connection) -> asyncio.Transport:
    assert conn._transport is not None
    return conn._transport


async def stalled_client(
    port: int, calls: int, role: str = "client"
) -> tuple[rpc.Connection, list[asyncio.Future[Any]]]:
    """A client that stops reading, then pipelines ``calls`` requests."""
    conn = await rpc.connect(HOST, port, SECRET, name="cli", role=role)
    transport(conn).pause_reading()
    pending: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(conn.call("big", timeout_s=30)) for _ in range(calls)
    ]
    return conn, pending


async def test_a_connection_that_does_not_read_stops_being_read() -> None:
    handler = BigAnswers()
    async with await serve(handler) as server:
        conn, pending = await stalled_client(server.port, 200)
        (served,) = await poll(lambda: list(server.connections), "the connection")
        await poll(lambda: served._account.stalled, "the connection to stall")
        # What the process holds: 1 MiB, plus the one answer admitted at the edge. (The
        # kernel's socket buffers took some answers too: the handler ran more than 5 times.)
        assert server.budget.used <= LIMITS.conn_inflight_bytes_max + ANSWER
        assert handler.calls < 100
        # Reading again: every answer arrives, in full, and the budget is given back.
        transport(conn).resume_reading()
        answers = await asyncio.wait_for(asyncio.gather(*pending), 30)
        assert all(len(payload) == ANSWER for _, payload in answers)
        assert handler.calls == 200
        await poll(lambda: server.budget.used == 0, "the budget to be given back")
        conn.close()


async def test_the_process_budget_is_shared_and_others_go_on_when_it_frees() -> None:
    handler = BigAnswers()
    async with await serve(handler) as server:
        stalled = [await stalled_client(server.port, 50) for _ in range(3)]
        await poll(lambda: server.budget.exhausted, "the process budget to be used up")
        # 2 MiB for the process, whatever the number of connections.
        assert server.budget.used <= LIMITS.inflight_bytes_max + 2 * ANSWER
        # A fresh client waits too (the process is out of budget) ...
        fresh = await rpc.connect(HOST, server.port, SECRET, name="fresh")
        with pytest.raises(Timeout):
            await fresh.call("big", timeout_s=0.3)
        # ... until the stalled ones read their answers.
        for conn, _ in stalled:
            transport(conn).resume_reading()
        _, payload = await fresh.call("big", timeout_s=10)
        assert len(payload) == ANSWER
        for conn, pending in stalled:
            await asyncio.wait_for(asyncio.gather(*pending), 30)
            conn.close()
        fresh.close()


async def test_a_server_peers_requests_are_not_charged() -> None:
    handler = BigAnswers()
    async with await serve(handler) as server:
        conn, pending = await stalled_client(server.port, 200, role="chunkserver")
        try:
            (served,) = await poll(lambda: list(server.connections), "the connection")
            await poll(lambda: handler.calls == 200, "its requests to be handled")
            # Its unwritten answers stop it (per connection) from its next request on, but
            # charge the process nothing.
            pending.append(asyncio.ensure_future(conn.call("big", timeout_s=30)))
            await poll(lambda: served._account.stalled, "the connection to stall")
            assert handler.calls == 200
            assert server.budget.used == 0
            transport(conn).resume_reading()
            await asyncio.wait_for(asyncio.gather(*pending), 30)
        finally:
            conn.close()


async def test_connections_over_the_host_limit_are_refused_with_one_line(
    expect_log: Callable[..., None],
) -> None:
    expect_log(r"refusing connection event=conn_limit .*host_conns_max=2")
    limits = Limits(host_conns_max=2, conns_max=10)
    async with await serve(BigAnswers(), limits) as server:
        conns = [await rpc.connect(HOST, server.port, SECRET, name=f"c{i}") for i in range(2)]
        for _ in range(5):
            with pytest.raises((Unavailable, AuthError)):
                await rpc.connect(HOST, server.port, SECRET, name="over", timeout_s=2)
        assert server.conns.total == 2
        conns[0].close()
        await poll(lambda: server.conns.total == 1, "the closed connection to be counted out")
        conns[0] = await rpc.connect(HOST, server.port, SECRET, name="again")
        await conns[0].call("big")
        for conn in conns:
            conn.close()


def test_connection_count_per_host_and_total() -> None:
    count = ConnectionCount(Limits(host_conns_max=2, conns_max=3))
    assert count.admit("a") is None and count.admit("a") is None
    assert count.admit("a") == "host_conns_max=2"
    assert count.admit("b") is None
    assert count.admit("c") == "conns_max=3"
    count.release("a")
    assert count.admit("c") is None
    count.release("never-admitted")
    assert count.total == 3


def test_limits_from_config() -> None:
    assert limits_from({}, "x.toml") == Limits()
    assert limits_from({"host_conns_max": 8}, "x.toml").host_conns_max == 8
    for bad in (
        {"conns_max": 0},
        {"conns_max": "9"},
        {"conn_inflight_bytes_max": 1024},
        {"inflight_bytes_max": 2 * MiB, "conn_inflight_bytes_max": 4 * MiB},
        {"conns_max": 4, "host_conns_max": 8},
    ):
        with pytest.raises(ValueError, match=r"x\.toml"):
            limits_from(bad, "x.toml")


async def test_byte_budget_counts_charges() -> None:
    class Member:
        def refresh(self) -> None: ...
        def retry(self) -> None: ...

    budget = ByteBudget(100)
    a, b = Member(), Member()
    budget.charge(a, 60)  # type: ignore[arg-type]
    budget.charge(b, 30)  # type: ignore[arg-type]
    assert budget.used == 90 and not budget.exhausted
    budget.charge(b, 50)  # type: ignore[arg-type]
    assert budget.exhausted
    budget.forget(a)
    assert budget.used == 50


def test_rate_limited_log_says_how_many_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rate = RateLimitedLog(logging.getLogger("test.ratelog"), 10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, "test.ratelog")
    logged = [rate.log(logging.INFO, "k", "event=x n=%d", n) for n in range(100)]
    assert logged.count(True) == 1
    assert rate.log(logging.INFO, "other", "event=y")  # another key is its own
    now[0] = 10.5
    assert rate.log(logging.INFO, "k", "event=x n=%d", 100)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["event=x n=0", "event=y", "event=x n=100 suppressed=99"]
