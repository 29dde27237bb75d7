"""dfs.rpc over real loopback sockets: calls, pipelining, errors, and hostile peers.

Waits are on events and closed connections, each under a deadline; nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest

from dfs import rpc
from dfs.types import FRAME_PAYLOAD_BYTES_MAX
from dfs.wire.auth import NONCE_BYTES, Handshake, Side
from dfs.wire.codec import Frame, FrameDecoder, encode_bytes
from dfs.wire.errors import (
    AuthError,
    ErrorCode,
    InternalError,
    NotFound,
    NotLeader,
    Timeout,
    Unavailable,
)

pytestmark = [pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(60)]

SECRET = b"k" * 32
HOST = "127.0.0.1"


async def echo_handler(
    conn: rpc.Connection, header: dict[str, Any], payload: bytes
) -> tuple[dict[str, Any], bytes] | None:
    op = header["op"]
    if op == "echo":
        return {"x": header.get("x"), "peer": conn.peer.name if conn.peer else None}, payload
    if op == "delay":
        # Yield a varying number of times so that responses come back out of order.
        for _ in range(header["n"] % 7):
            await asyncio.sleep(0)
        return {"n": header["n"]}, b""
    if op == "hang":
        await asyncio.Event().wait()
    if op == "missing":
        raise NotFound("no such inode", inode=header["ino"])
    if op == "redirect":
        raise NotLeader("127.0.0.1:9")
    if op == "bug":
        raise RuntimeError("handler bug")
    if op == "empty":
        return None
    raise AssertionError(f"unexpected op {op}")


async def start(handler: rpc.Handler = echo_handler, **kwargs: Any) -> rpc.RpcServer:
    return await rpc.serve(HOST, 0, SECRET, handler, name="srv", **kwargs)


async def raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port)


async def raw_authenticated(
    port: int, secret: bytes = SECRET
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-driven client: the pure handshake over plain streams."""
    reader, writer = await raw_connect(port)
    handshake = Handshake(
        secret, os.urandom(NONCE_BYTES), side=Side.INITIATOR, role="test", name="raw"
    )
    decoder = FrameDecoder()

    async def next_frame() -> Frame:
        while (frame := decoder.next_frame()) is None:
            data = await reader.read(65536)
            assert data, "server closed during the handshake"
            decoder.feed(data)
        return frame

    async with asyncio.timeout(5):
        writer.write(encode_bytes(handshake.hello()))
        proof = handshake.receive_hello((await next_frame()).header)
        assert proof is not None
        writer.write(encode_bytes(proof))
        handshake.receive_proof((await next_frame()).header)
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset), within 5 s."""
    async with asyncio.timeout(5):
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass
    return True


async def check_still_serving(server: rpc.RpcServer) -> None:
    conn = await rpc.connect(HOST, server.port, SECRET, name="probe", timeout_s=5)
    header, _ = await conn.call("echo", x=1, timeout_s=5)
    assert header["x"] == 1
    conn.close()
    await conn.wait_closed()


async def test_call_round_trip() -> None:
    async with await start() as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="cli", timeout_s=5)
        assert conn.peer is not None and conn.peer.name == "srv"
        header, payload = await conn.call("echo", b"hello", x=[1, "two", b"3"], timeout_s=5)
        assert header["ok"] is True and header["x"] == [1, "two", b"3"]
        assert header["peer"] == "cli" and payload == b"hello"
        header, payload = await conn.call("empty", timeout_s=5)
        assert header["ok"] is True and payload == b""
        big = os.urandom(8 * 1024 * 1024)  # beyond the coalescing path, a separate buffer
        _, payload = await conn.call("echo", memoryview(big), timeout_s=10)
        assert payload == big
        conn.close()
        await conn.wait_closed()
        with pytest.raises(Unavailable):
            await conn.call("echo", timeout_s=1)


async def test_pipelining_1000_concurrent_calls() -> None:
    async with await start() as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="cli", timeout_s=5)
        results = await asyncio.gather(
            *(conn.call("delay", n=i, timeout_s=20) for i in range(1000))
        )
        assert [header["n"] for header, _ in results] == list(range(1000))
        conn.close()
        await conn.wait_closed()


async def test_error_propagation(expect_log: Callable[..., None]) -> None:
    expect_log(r"handler for op 'bug' .* failed", logging.ERROR)
    async with await start() as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="cli", timeout_s=5)
        with pytest.raises(NotFound) as caught:
            await conn.call("missing", ino=42, timeout_s=5)
        assert caught.value.details == {"inode": 42} and caught.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(NotLeader) as redirected:
            await conn.call("redirect", timeout_s=5)
        assert redirected.value.leader_hint == "127.0.0.1:9"
        with pytest.raises(InternalError):
            await conn.call("bug", timeout_s=5)
        # The connection survives errors.
        assert (await conn.call("echo", x=2, timeout_s=5))[0]["x"] == 2
        conn.close()
        await conn.wait_closed()


async def test_call_timeout_then_connection_still_usable() -> None:
    async with await start() as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="cli", timeout_s=5)
        with pytest.raises(Timeout):
            await conn.call("hang", timeout_s=0.05)
        assert (await conn.call("echo", x=3, timeout_s=5))[0]["x"] == 3
        conn.close()
        await conn.wait_closed()


async def test_pending_calls_fail_when_server_goes_away() -> None:
    server = await start()
    conn = await rpc.connect(HOST, server.port, SECRET, name="cli", timeout_s=5)
    call = asyncio.ensure_future(conn.call("hang", timeout_s=10))
    await conn.call("echo", timeout_s=5)  # the hang request has reached the server
    server.close()
    await server.wait_closed()
    with pytest.raises(Unavailable):
        await call
    await conn.wait_closed()


async def test_oneway_frames_arrive_in_order() -> None:
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> None:
        seen.append(header["seq"])
        if len(seen) == 2000:
            done.set()

    async with await start(handler) as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="peer", timeout_s=5)
        for seq in range(1000):
            assert conn.send_oneway_nowait({"op": "raft", "seq": seq}, b"m")
        for seq in range(1000, 2000):
            await conn.send_oneway({"op": "raft", "seq": seq}, timeout_s=5)
        async with asyncio.timeout(10):
            await done.wait()
        assert seen == list(range(2000))
        conn.close()
        await conn.wait_closed()
        assert not conn.send_oneway_nowait({"op": "raft", "seq": 0})


async def test_inline_handler_answers_in_the_read_callback(
    expect_log: Callable[..., None],
) -> None:
    """An ``inline_handler`` answers the requests it takes at once (a result, or its error
    for the caller), with no task; those it leaves (``LATER``) go to the async handler."""
    expect_log(r"inline handler for op 'now' .* failed", logging.ERROR)
    inline: list[int] = []
    queued: list[int] = []

    def now(conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> Any:
        if header["op"] != "now":
            return rpc.LATER
        if header["n"] == 3:
            raise NotFound("no such thing", n=3)
        if header["n"] == 4:
            raise RuntimeError("inline bug")
        inline.append(header["n"])
        return {"n": header["n"], "inline": True}, payload

    async def handler(
        conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> rpc.HandlerResult:
        queued.append(header["n"])
        return {"n": header["n"], "inline": False}, payload

    async with await start(handler, inline_handler=now) as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="peer", timeout_s=5)
        header, payload = await conn.call("now", b"data", n=1, timeout_s=5)
        assert header["inline"] is True and payload == b"data"
        header, _ = await conn.call("later", n=2, timeout_s=5)
        assert header["inline"] is False
        with pytest.raises(NotFound):
            await conn.call("now", n=3, timeout_s=5)
        with pytest.raises(InternalError):
            await conn.call("now", n=4, timeout_s=5)
        # Pipelined: answered in one go, each caller its own answer.
        results = await asyncio.gather(
            *(conn.call("now" if n % 2 else "later", n=n, timeout_s=5) for n in range(10, 30))
        )
        assert [h["n"] for h, _ in results] == list(range(10, 30))
        assert [h["inline"] for h, _ in results] == [n % 2 == 1 for n in range(10, 30)]
        assert inline == [1, *range(11, 30, 2)]
        assert queued == [2, *range(10, 30, 2)]
        conn.close()
        await conn.wait_closed()


async def test_reply_later_answers_from_a_callback_without_a_task() -> None:
    """An inline handler may take a request and answer it later through its ``Reply``,
    from any callback: a result or an error, once (a second answer is ignored); until then
    the request counts as running, and no handler task is made for it."""
    replies: list[tuple[int, rpc.Reply]] = []
    server_conns: list[rpc.Connection] = []

    def now(conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> Any:
        server_conns.append(conn)
        reply = conn.reply_later(header)
        replies.append((header["n"], reply))
        return reply

    async def handler(
        conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> rpc.HandlerResult:
        raise AssertionError("every request is taken inline")

    async with await start(handler, inline_handler=now) as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="peer", timeout_s=5)
        calls = [asyncio.ensure_future(conn.call("later", n=n, timeout_s=5)) for n in range(5)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(replies) < 5:
            assert loop.time() < deadline, "the requests did not arrive"
            await asyncio.sleep(0.001)  # polling interval
        served = server_conns[0]
        assert served.requests_running == 5
        assert not any(call.done() for call in calls)
        # Answered out of order, from plain callbacks (no task), one with an error.
        for n, reply in reversed(replies):
            if n == 2:
                loop.call_soon(reply.fail, NotFound("no such thing", n=n))
            else:
                loop.call_soon(reply.send, ({"n": n}, b"x" * n))
            loop.call_soon(reply.send, ({"n": -1}, b""))  # a second answer: ignored
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[2], NotFound)
        assert [(h["n"], p) for h, p in (d for d in done if not isinstance(d, BaseException))] == [
            (n, b"x" * n) for n in (0, 1, 3, 4)
        ]
        assert served.requests_running == 0
        # The connection goes on: a reply answered after its peer left does nothing.
        late = asyncio.ensure_future(conn.call("later", n=9, timeout_s=5))
        while len(replies) < 6:
            assert loop.time() < deadline, "the request did not arrive"
            await asyncio.sleep(0.001)  # polling interval
        conn.close()
        await conn.wait_closed()
        with pytest.raises(Unavailable):
            await late
        await served.wait_closed()
        replies[-1][1].send(({"n": 9}, b""))
        assert served.closed


async def test_oneway_handler_takes_frames_in_the_read_callback(
    expect_log: Callable[..., None],
) -> None:
    """A plain ``oneway_handler`` sees one-way frames at once and in order; those it leaves
    (returns False) go to the queued async handler; an exception is logged, not fatal."""
    expect_log(r"one-way op 'raft' .* failed: .*a bad frame")
    taken: list[int] = []
    queued: list[int] = []
    done = asyncio.Event()

    def take(conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> bool:
        if header["op"] != "raft":
            return False
        if header["seq"] == 5:
            raise Unavailable("a bad frame")  # logged at WARNING, the next frames go on
        taken.append(header["seq"])
        return True

    async def handler(conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> None:
        queued.append(header["seq"])
        if header["seq"] == 999:
            done.set()

    async with await start(handler, oneway_handler=take) as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="peer", timeout_s=5)
        for seq in range(1000):
            op = "raft" if seq % 2 == 0 or seq == 5 else "other"
            assert conn.send_oneway_nowait({"op": op, "seq": seq})
        conn.flush()  # written now, not at the end of this loop iteration
        assert conn._out == []
        async with asyncio.timeout(10):
            await done.wait()
        assert taken == list(range(0, 1000, 2))  # 5 was offered, raised, and is gone
        assert queued == [seq for seq in range(1, 1000, 2) if seq != 5]
        conn.close()
        await conn.wait_closed()


async def test_after_read_runs_once_per_read_after_its_frames(
    expect_log: Callable[..., None],
) -> None:
    """``after_read`` from a ``oneway_handler`` runs once the read's frames are all
    dispatched, in the read callback, once however often it was asked for; outside a read
    it runs at the end of the loop iteration; its exception is logged, not fatal."""
    expect_log(r"after-read function .* failed", logging.ERROR)
    taken: list[int] = []
    seen_at_end: list[int] = []
    done = asyncio.Event()

    def at_end() -> None:
        seen_at_end.append(len(taken))
        if len(taken) == 200:
            done.set()

    def failing() -> None:
        raise RuntimeError("after-read bug")

    def take(conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> bool:
        taken.append(header["seq"])
        conn.after_read(at_end)
        if header["seq"] == 0:
            conn.after_read(failing)
        return True

    async with await start(echo_handler, oneway_handler=take) as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="peer", timeout_s=5)
        for seq in range(200):
            assert conn.send_oneway_nowait({"op": "raft", "seq": seq})
        conn.flush()
        async with asyncio.timeout(10):
            await done.wait()
        assert taken == list(range(200))
        # Each run saw every frame of its read; fewer runs than frames (reads carry many).
        assert seen_at_end == sorted(set(seen_at_end)) and seen_at_end[-1] == 200
        assert len(seen_at_end) < 200
        await check_still_serving(server)
        ran: list[str] = []
        conn.after_read(lambda: ran.append("later"))  # not in a read of this connection
        assert ran == []
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert ran == ["later"]
        conn.close()
        await conn.wait_closed()


async def test_a_lone_call_is_written_at_once() -> None:
    """A call made while no other is waiting leaves at once; calls made together in one
    loop iteration are coalesced into one write at its end."""
    async with await start() as server:
        conn = await rpc.connect(HOST, server.port, SECRET, name="cli", timeout_s=5)
        lone = asyncio.ensure_future(conn.call("echo", x=1, timeout_s=5))
        await asyncio.sleep(0)  # the call runs up to its wait for the answer
        assert conn._out == []
        assert (await lone)[0]["x"] == 1
        calls = [asyncio.ensure_future(conn.call("echo", x=i, timeout_s=5)) for i in range(3)]
        await asyncio.sleep(0)
        assert len(conn._out) == 2  # the first left alone, the next two wait for the turn
        assert [h["x"] for h, _ in await asyncio.gather(*calls)] == [0, 1, 2]
        conn.close()
        await conn.wait_closed()


async def test_wrong_secret_disconnects_and_server_keeps_serving(
    expect_log: Callable[..., None],
) -> None:
    expect_log(r"dropping connection event=auth_failed peer=127\.0\.0\.1:\d+ .*secret")
    async with await start() as server:
        with pytest.raises(AuthError):
            await rpc.connect(HOST, server.port, b"w" * 32, name="intruder", timeout_s=5)
        await check_still_serving(server)


def test_missing_secret_is_a_local_error() -> None:
    async def body() -> None:
        with pytest.raises(AuthError):
            await rpc.serve(HOST, 0, None, echo_handler, name="srv")
        with pytest.raises(AuthError):
            await rpc.connect(HOST, 1, b"", name="cli")

    asyncio.run(body())


async def test_connection_refused_is_unavailable() -> None:
    server = await start()
    port = server.port
    server.close()
    await server.wait_closed()
    with pytest.raises(Unavailable):
        await rpc.connect(HOST, port, SECRET, name="cli", timeout_s=5)


async def test_garbage_before_handshake_disconnects(expect_log: Callable[..., None]) -> None:
    expect_log(r"event=auth_failed .*unknown frame version 71")
    async with await start() as server:
        reader, writer = await raw_connect(server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await closed_by_server(reader)
        writer.close()
        await check_still_serving(server)


async def test_garbage_after_handshake_disconnects(expect_log: Callable[..., None]) -> None:
    expect_log(r"event=protocol_error .*bad msgpack header")
    async with await start() as server:
        reader, writer = await raw_authenticated(server.port)
        writer.write(struct.pack(">BII", 1, 3, 0) + b"\xc1\xc1\xc1")
        assert await closed_by_server(reader)
        writer.close()
        await check_still_serving(server)


async def test_oversize_frame_disconnects_from_prefix_alone(
    expect_log: Callable[..., None],
) -> None:
    expect_log(r"event=protocol_error .*payload of \d+ bytes")
    async with await start() as server:
        reader, writer = await raw_authenticated(server.port)
        # Only the 9-byte prefix is sent: the server must not wait for the body.
        writer.write(struct.pack(">BII", 1, 10, FRAME_PAYLOAD_BYTES_MAX + 1))
        assert await closed_by_server(reader)
        writer.close()
        await check_still_serving(server)


async def test_oversize_frame_before_handshake_disconnects(
    expect_log: Callable[..., None],
) -> None:
    # Before authentication even a moderate header is refused.
    expect_log(r"event=auth_failed .*header of 100000 bytes")
    async with await start() as server:
        reader, writer = await raw_connect(server.port)
        writer.write(struct.pack(">BII", 1, 100_000, 0))
        assert await closed_by_server(reader)
        writer.close()


async def test_silent_peer_dropped_after_handshake_timeout(
    expect_log: Callable[..., None],
) -> None:
    expect_log(r"event=auth_failed .*handshake took over")
    async with await start(handshake_timeout_s=0.2) as server:
        reader, writer = await raw_connect(server.port)
        assert await closed_by_server(reader)
        writer.close()
        await check_still_serving(server)
