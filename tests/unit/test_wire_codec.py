"""dfs.wire.codec: round trips, any split of the stream, and refusal of bad frames."""

from __future__ import annotations

import struct
import threading

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs import payloads
from dfs.types import FRAME_HEADER_BYTES_MAX, FRAME_PAYLOAD_BYTES_MAX
from dfs.wire import codec
from dfs.wire.codec import Frame, FrameDecoder, PayloadPool, encode, encode_bytes
from dfs.wire.errors import ProtocolError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def decode_all(data: bytes, **limits: int) -> list[Frame]:
    decoder = FrameDecoder(**limits)
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    assert decoder.buffered_bytes == 0
    return frames


def prefix(version: int, header_len: int, payload_len: int) -> bytes:
    return struct.pack(">BII", version, header_len, payload_len)


def test_round_trip_simple() -> None:
    header = {"op": "read", "id": 7, "chunk": 2**63, "name": "é", "raw": b"\x00\xff", "l": [1]}
    assert decode_all(encode_bytes(header, b"payload")) == [Frame(header, b"payload")]
    assert decode_all(encode_bytes({"a": None})) == [Frame({"a": None}, b"")]


def test_prefix_layout() -> None:
    data = encode_bytes({"op": "x"}, b"abc")
    packed = msgpack.packb({"op": "x"})
    assert data == prefix(1, len(packed), 3) + packed + b"abc"
    assert codec.PREFIX_BYTES == 9


def test_encode_fast_path_and_large_payload_uncopied() -> None:
    assert len(encode({"op": "x"})) == 1
    assert len(encode({"op": "x"}, b"y" * codec.COALESCE_PAYLOAD_BYTES_MAX)) == 1
    big = memoryview(bytearray(codec.COALESCE_PAYLOAD_BYTES_MAX + 1))
    buffers = encode({"op": "x"}, big)
    assert len(buffers) == 2 and buffers[1] is big
    assert decode_all(b"".join(buffers)) == [Frame({"op": "x"}, bytes(big))]


def test_encode_refuses_local_misuse() -> None:
    with pytest.raises(TypeError):
        encode([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        encode({"op": "x"}, memoryview(bytearray(FRAME_PAYLOAD_BYTES_MAX + 1)))


headers = st.dictionaries(
    st.text(max_size=20),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text(max_size=50)
        | st.binary(max_size=50),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=10), children, max_size=5)
        ),
        max_leaves=20,
    ),
    max_size=10,
)


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(st.tuples(headers, st.binary(max_size=300)), min_size=1, max_size=4))
def test_round_trip_any_frames_any_split(frames: list[tuple[dict, bytes]]) -> None:
    stream = b"".join(encode_bytes(h, p) for h, p in frames)
    expected = [Frame(h, p) for h, p in frames]
    assert decode_all(stream) == expected
    # The same stream in chunks of 1, 7 and 100 bytes.
    for step in (1, 7, 100):
        decoder = FrameDecoder()
        got = []
        for i in range(0, len(stream), step):
            decoder.feed(stream[i : i + step])
            while (frame := decoder.next_frame()) is not None:
                got.append(frame)
        assert got == expected


def test_byte_at_a_time_returns_none_until_complete() -> None:
    data = encode_bytes({"op": "write", "id": 1}, b"x" * 100)
    decoder = FrameDecoder()
    for byte in data[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_frame() is None
    decoder.feed(data[-1:])
    assert decoder.next_frame() == Frame({"op": "write", "id": 1}, b"x" * 100)
    assert decoder.next_frame() is None


def test_truncated_input_is_none_not_error() -> None:
    data = encode_bytes({"op": "x"}, b"12345")
    for cut in range(len(data)):
        decoder = FrameDecoder()
        decoder.feed(data[:cut])
        assert decoder.next_frame() is None
        assert decoder.buffered_bytes == cut


def test_oversize_header_rejected_from_prefix_alone() -> None:
    decoder = FrameDecoder()
    decoder.feed(prefix(1, FRAME_HEADER_BYTES_MAX + 1, 0))
    with pytest.raises(ProtocolError, match="header"):
        decoder.next_frame()


def test_oversize_payload_rejected_from_prefix_alone() -> None:
    decoder = FrameDecoder()
    decoder.feed(prefix(1, 10, FRAME_PAYLOAD_BYTES_MAX + 1))
    with pytest.raises(ProtocolError, match="payload"):
        decoder.next_frame()


def test_limits_overridable_per_decoder() -> None:
    data = encode_bytes({"op": "x"}, b"12345")
    with pytest.raises(ProtocolError):
        decode_all(data, payload_bytes_max=4)
    with pytest.raises(ProtocolError):
        decode_all(data, header_bytes_max=2)
    assert decode_all(data, payload_bytes_max=5) == [Frame({"op": "x"}, b"12345")]


def test_bad_version_rejected() -> None:
    data = bytearray(encode_bytes({"op": "x"}))
    data[0] = 2
    with pytest.raises(ProtocolError, match="version"):
        decode_all(bytes(data))


def test_broken_decoder_stays_broken_and_accepts_feed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\xff" * 9)
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    decoder.feed(encode_bytes({"op": "x"}))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize(
    "packed",
    [
        msgpack.packb([1, 2]),  # not a map
        msgpack.packb("op"),
        msgpack.packb({1: 2}),  # int key
        msgpack.packb({b"op": 1}),  # bytes key at top level
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        b"\xc1",  # never-used msgpack byte
        b"\x81\xa2op",  # map cut short
        msgpack.packb({"t": msgpack.ExtType(5, b"x")}),  # ext types are refused
        msgpack.packb({"t": msgpack.Timestamp(1, 0)}),  # ... including timestamps
        b"\x81\xa1a\xa2\xff\xfe",  # invalid UTF-8 in a str
    ],
)
def test_bad_header_rejected(packed: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_all(prefix(1, len(packed), 0) + packed)


def test_empty_header_rejected() -> None:
    with pytest.raises(ProtocolError):
        decode_all(prefix(1, 0, 0))


def test_many_small_frames_in_one_feed_is_linear() -> None:
    # 20k frames in one buffer: decoding must not copy the rest of the buffer per frame.
    one = encode_bytes({"op": "raft", "m": [1, 2, 3]}, b"p" * 32)
    decoder = FrameDecoder()
    decoder.feed(one * 20_000)
    count = 0
    while decoder.next_frame() is not None:
        count += 1
    assert count == 20_000 and decoder.buffered_bytes == 0


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(
        st.sampled_from(
            [
                0,
                10,
                codec.DIRECT_PAYLOAD_BYTES_MIN - 1,
                codec.DIRECT_PAYLOAD_BYTES_MIN,
                3 * codec.DIRECT_PAYLOAD_BYTES_MIN + 5,
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    steps=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=20),
    fill=st.lists(st.booleans(), min_size=1, max_size=20),
)
def test_large_payloads_are_received_in_place(
    sizes: list[int], steps: list[int], fill: list[bool]
) -> None:
    """A reader that receives into ``payload_target()`` whenever there is one (and feeds
    otherwise, or when it chooses to) gets the same frames as one that only feeds; a large
    payload is the very buffer it received into, and nothing is copied out of it."""
    frames = [({"id": i}, bytes([i + 1]) * size) for i, size in enumerate(sizes)]
    stream = memoryview(b"".join(encode_bytes(h, p) for h, p in frames))
    decoder = FrameDecoder()
    got: list[Frame] = []
    targets: list[memoryview] = []
    pos = 0
    turn = 0
    while pos < len(stream):
        step = steps[turn % len(steps)]
        target = decoder.payload_target()
        if target is not None and fill[turn % len(fill)]:
            n = min(step, len(target), len(stream) - pos)
            target[:n] = stream[pos : pos + n]
            targets.append(target)
            decoder.payload_filled(n)
        else:
            n = min(step, len(stream) - pos)
            decoder.feed(stream[pos : pos + n])
        pos += n
        turn += 1
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == [Frame(h, p) for h, p in frames]
    assert decoder.buffered_bytes == 0 and decoder.payload_target() is None
    # A large payload that came whole with its header in one feed is sliced out of it
    # (one copy, bytes); any other large payload is the buffer it was received into.
    for frame in got:
        if len(frame.payload) >= codec.DIRECT_PAYLOAD_BYTES_MIN:
            assert isinstance(frame.payload, bytearray) or (
                isinstance(frame.payload, bytes)
                and not any(t.obj is frame.payload for t in targets)
            )
    for target in targets:
        assert any(target.obj is frame.payload for frame in got)


def test_in_place_payload_needs_the_whole_header_first() -> None:
    """Until the header is complete, bytes are fed; then the payload's buffer appears,
    already holding the payload bytes that came with the header."""
    payload = bytes(range(256)) * 1024
    data = encode_bytes({"op": "read", "id": 7}, payload)
    header_end = len(data) - len(payload)
    decoder = FrameDecoder()
    decoder.feed(data[: header_end - 1])
    assert decoder.next_frame() is None and decoder.payload_target() is None
    decoder.feed(data[header_end - 1 : header_end + 100])
    assert decoder.next_frame() is None
    target = decoder.payload_target()
    assert target is not None and len(target) == len(payload) - 100
    target[:] = payload[100:]
    decoder.payload_filled(len(target))
    assert decoder.next_frame() == Frame({"op": "read", "id": 7}, payload)


def test_the_payload_pool_gives_a_buffer_again_only_once_nothing_refers_to_it() -> None:
    """A payload received in place is a buffer handed over for good: the pool hands it out
    again only when it holds the last reference (not while a frame, the buffer itself or a
    view of it is kept anywhere), and keeps at most ``keep`` buffers."""
    pool = PayloadPool(keep=2, size_max=4000)
    first = pool.take(1000)
    assert pool.take(1000) is not first  # still referred to (``first``)
    view = memoryview(first)[10:]
    first_id = id(first)
    del first
    second = pool.take(1000)
    assert id(second) != first_id  # a view of it is kept
    view.release()
    del view
    again = pool.take(1000)
    assert id(again) == first_id
    assert len(pool._bufs) == 2 and any(b is second for b in pool._bufs)
    other = pool.take(2000)  # full, and both taken: a buffer of its own, not kept
    assert all(b is not other for b in pool._bufs)
    del again
    third = pool.take(3000)  # full: a free buffer of another size makes room
    assert any(b is third for b in pool._bufs)
    big = pool.take(5000)  # larger than pooled: never kept
    assert all(b is not big for b in pool._bufs)


def test_each_thread_has_a_payload_pool_of_its_own() -> None:
    """Two threads never share a pool (its check and hand-out are not atomic)."""
    seen: list[PayloadPool] = []
    thread = threading.Thread(target=lambda: seen.append(payloads.payload_pool()))
    thread.start()
    thread.join()
    assert seen[0] is not payloads.payload_pool()
    assert payloads.payload_pool() is payloads.payload_pool()


def test_frames_received_in_place_keep_their_bytes_while_held() -> None:
    """Two large frames decoded one after the other: the first one's payload, still held,
    is not overwritten by the second (the pool does not hand it out again)."""
    dec = FrameDecoder(alloc=payloads.take_payload)
    a, b = bytes([1]) * 100_000, bytes([2]) * 100_000
    wire = b"".join(bytes(x) for x in encode({"n": 1}, a) + encode({"n": 2}, b))
    frames = []
    for i in range(0, len(wire), 4096):
        dec.feed(wire[i : i + 4096])
        while (f := dec.next_frame()) is not None:
            frames.append(f)
    assert [bytes(f.payload) for f in frames] == [a, b]
