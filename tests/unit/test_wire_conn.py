"""The pure connection core (dfs/wire/conn.py) and the framing it drives: no sockets."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dfs.wire import codec, messages
from dfs.wire.auth import NONCE_BYTES, Handshake, PeerInfo, Side
from dfs.wire.conn import (
    COALESCE_BYTES_MAX,
    ONEWAY_QUEUE_MAX,
    PREAUTH_BUFFER_BYTES_MAX,
    PREAUTH_HEADER_BYTES_MAX,
    Calls,
    HandshakeSteps,
    Kind,
    SendQueue,
    Step,
    classify,
    reading_paused,
    result,
)
from dfs.wire.errors import AuthError, NotFound, ProtocolError, Unavailable
from dfs.wire.limits import FRAME_HEADER_BYTES_MAX, FRAME_PAYLOAD_BYTES_MAX

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

SECRET = b"s" * 32


def _frames(rng: random.Random, count: int) -> list[tuple[dict[str, Any], bytes]]:
    """Requests, responses and one-way frames; payloads from none to past the size that is
    received in place (codec.DIRECT_PAYLOAD_BYTES_MIN)."""
    sizes = (0, 1, 100, codec.COALESCE_PAYLOAD_BYTES_MAX + 1, codec.DIRECT_PAYLOAD_BYTES_MIN * 2)
    out = []
    for i in range(count):
        payload = rng.randbytes(rng.choice(sizes))
        header = rng.choice(
            (
                messages.request("x.op", i, name="n" * rng.randrange(50)),
                messages.response_ok(i, n=i),
                messages.oneway("raft.x", term=i),
            )
        )
        out.append((header, payload))
    return out


def _stream(frames: list[tuple[dict[str, Any], bytes]]) -> bytes:
    return b"".join(codec.encode_bytes(h, p) for h, p in frames)


@pytest.mark.parametrize("seed", range(4))
def test_any_split_of_the_stream_gives_the_same_frames(seed: int) -> None:
    rng = random.Random(seed)
    frames = _frames(rng, 40)
    data = _stream(frames)
    decoder = codec.FrameDecoder()
    got: list[tuple[dict[str, Any], bytes]] = []
    pos = 0
    while pos < len(data):
        n = rng.choice((1, 2, 9, 10, rng.randrange(1, 70_000)))
        target = decoder.payload_target()
        if target is not None and rng.random() < 0.5:
            # As a driver does: the payload's bytes straight into the frame's buffer.
            n = min(n, len(target), len(data) - pos)
            target[:n] = data[pos : pos + n]
            decoder.payload_filled(n)
        else:
            decoder.feed(data[pos : pos + n])
        pos += n
        while (frame := decoder.next_frame()) is not None:
            got.append((frame.header, bytes(frame.payload)))
    assert got == frames
    assert decoder.buffered_bytes == 0


def test_oversize_frames_are_refused_with_their_size_and_limit() -> None:
    with pytest.raises(ValueError, match=f"over {FRAME_PAYLOAD_BYTES_MAX}"):
        codec.encode({"op": "x"}, memoryview(bytearray(FRAME_PAYLOAD_BYTES_MAX + 1)))
    with pytest.raises(ValueError, match=f"over {FRAME_HEADER_BYTES_MAX}"):
        codec.encode({"op": "x", "v": b"x" * FRAME_HEADER_BYTES_MAX})
    # A peer's frame is refused from its 9-byte prefix, before its body is buffered.
    prefix = codec.PREFIX.pack(codec.FRAME_VERSION, 10, FRAME_PAYLOAD_BYTES_MAX + 1)
    decoder = codec.FrameDecoder()
    decoder.feed(prefix)
    with pytest.raises(ProtocolError, match=f"limit {FRAME_PAYLOAD_BYTES_MAX}"):
        decoder.next_frame()
    with pytest.raises(ProtocolError):  # and stays broken
        decoder.next_frame()
    # Before the handshake the limits are tiny: no payload, a small header.
    decoder = HandshakeSteps.decoder()
    decoder.feed(codec.PREFIX.pack(codec.FRAME_VERSION, PREAUTH_HEADER_BYTES_MAX + 1, 0))
    with pytest.raises(ProtocolError, match=f"limit {PREAUTH_HEADER_BYTES_MAX}"):
        decoder.next_frame()
    decoder = HandshakeSteps.decoder()
    decoder.feed(codec.encode_bytes({"op": "auth.hello"}, b"x"))
    with pytest.raises(ProtocolError, match="limit 0"):
        decoder.next_frame()
    HandshakeSteps.open_up(decoder := HandshakeSteps.decoder())
    decoder.feed(codec.encode_bytes({"op": "x"}, b"x"))
    assert decoder.next_frame() == codec.Frame({"op": "x"}, b"x")


def test_classify() -> None:
    assert classify(messages.request("a", 1)) is Kind.REQUEST
    assert classify(messages.oneway("a")) is Kind.ONEWAY
    assert classify({"op": "a", "id": 3, "oneway": True}) is Kind.ONEWAY
    assert classify(messages.response_ok(1)) is Kind.RESPONSE
    for bad in ({}, {"op": 1}, {"op": "a", "id": -1}, {"op": "a", "id": "1"}):
        with pytest.raises(ProtocolError):
            classify(bad)


def test_calls_ids_and_an_unknown_reply_dropped() -> None:
    calls: Calls[str] = Calls(in_flight_max=2)
    first, second = calls.start("w1"), calls.start("w2")
    assert (first, second) == (1, 2) and calls.full and len(calls) == 2
    assert calls.resolve(messages.response_ok(second)) == "w2"
    assert calls.resolve(messages.response_ok(99)) is None  # nobody waits: dropped
    calls.finish(first)
    assert calls.resolve(messages.response_ok(first)) is None  # a late answer: dropped
    assert calls.start("w3") == 3  # ids never reused
    assert sorted(calls.waiters()) == ["w2", "w3"]
    for bad in ({"ok": True}, {"id": "1", "ok": True}, {"id": 1, "ok": 1}):
        with pytest.raises(ProtocolError):
            calls.resolve(bad)
    assert result(messages.response_ok(1, n=2), b"p") == ({"id": 1, "ok": True, "n": 2}, b"p")
    with pytest.raises(NotFound):
        result(messages.response_err(1, NotFound("gone")), b"")


def _pair() -> tuple[HandshakeSteps, HandshakeSteps]:
    def steps(side: Side, role: str) -> HandshakeSteps:
        nonce = random.Random(side.value).randbytes(NONCE_BYTES)
        return HandshakeSteps(Handshake(SECRET, nonce, side=side, role=role, name=role))

    return steps(Side.INITIATOR, "client"), steps(Side.ACCEPTOR, "metaserver")


def _frame(header: dict[str, Any]) -> codec.Frame:
    return codec.Frame(header)


def test_handshake_steps_in_order() -> None:
    initiator, acceptor = _pair()
    [i_hello], [a_hello] = initiator.begin(), acceptor.begin()
    assert acceptor.receive(_frame(i_hello)) == []
    assert acceptor.step is Step.AWAIT_PROOF
    [i_proof] = initiator.receive(_frame(a_hello))
    assert initiator.step is Step.PROOF_SENT
    [a_proof] = acceptor.receive(_frame(i_proof))
    assert acceptor.done and acceptor.peer == PeerInfo("client", "client")
    assert initiator.receive(_frame(a_proof)) == []
    assert initiator.done and initiator.peer == PeerInfo("metaserver", "metaserver")


def test_handshake_steps_refuse_out_of_order() -> None:
    initiator, acceptor = _pair()
    with pytest.raises(AuthError, match="in step start"):
        acceptor.receive(_frame({"op": "auth.hello"}))  # before our own hello
    assert acceptor.step is Step.FAILED
    with pytest.raises(AuthError):
        acceptor.begin()  # failed for good

    initiator, acceptor = _pair()
    [i_hello], [a_hello] = initiator.begin(), acceptor.begin()
    with pytest.raises(AuthError, match="begin in step hello_sent"):
        initiator.begin()

    initiator, acceptor = _pair()
    [i_hello], [a_hello] = initiator.begin(), acceptor.begin()
    [i_proof] = initiator.receive(_frame(a_hello))
    with pytest.raises(AuthError, match=r"expected auth\.hello"):
        acceptor.receive(_frame(i_proof))  # a proof before the hello

    initiator, acceptor = _pair()
    [i_hello], [a_hello] = initiator.begin(), acceptor.begin()
    acceptor.receive(_frame(i_hello))
    [i_proof] = initiator.receive(_frame(a_hello))
    [a_proof] = acceptor.receive(_frame(i_proof))
    with pytest.raises(AuthError, match="in step done"):
        acceptor.receive(_frame(i_proof))  # a second proof
    with pytest.raises(AuthError, match="payload"):
        initiator.receive(codec.Frame(a_proof, b"x"))


def test_handshake_close_means_what_step_it_came_in() -> None:
    initiator, acceptor = _pair()
    assert isinstance(initiator.closed_error(), Unavailable)
    [_], [a_hello] = initiator.begin(), acceptor.begin()
    initiator.receive(_frame(a_hello))
    assert isinstance(initiator.closed_error(), AuthError)  # the acceptor refused our proof


@pytest.mark.parametrize("seed", range(3))
def test_send_queue_joins_small_frames_and_passes_large_payloads(seed: int) -> None:
    rng = random.Random(seed)
    queue = SendQueue()
    pushed: list[bytes | bytearray | memoryview] = []
    big = bytearray(COALESCE_BYTES_MAX + 1)
    for i in range(200):
        payload = big if rng.random() < 0.05 else rng.randbytes(rng.randrange(0, 20_000))
        buffers = codec.encode(messages.oneway("x", i=i), payload)
        queue.push(buffers)
        pushed += buffers
    assert queue.queued_bytes == sum(len(b) for b in pushed)
    batch = queue.take()
    assert b"".join(batch) == b"".join(pushed)
    assert any(b is big for b in batch)  # never copied
    assert all(len(b) <= COALESCE_BYTES_MAX for b in batch if b is not big)
    assert len(batch) < len(pushed)
    assert queue.queued_bytes == 0 and not queue


def test_reading_paused() -> None:
    def paused(**kw: Any) -> bool:
        args = dict(authenticated=True, buffered_bytes=0, over_budget=False,
                    requests_running=0, in_flight_max=4, oneway_queued=0)  # fmt: skip
        return reading_paused(**(args | kw))

    assert not paused()
    assert paused(authenticated=False, buffered_bytes=PREAUTH_BUFFER_BYTES_MAX + 1)
    assert not paused(authenticated=False, buffered_bytes=PREAUTH_BUFFER_BYTES_MAX)
    assert paused(over_budget=True)
    assert paused(requests_running=4)
    assert paused(oneway_queued=ONEWAY_QUEUE_MAX)
