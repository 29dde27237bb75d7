"""Framing: the one byte format of every dfs connection. Pure: bytes in, frames out.

Frame, version 1 (all integers big-endian)::

    offset  size         field
    0       1            version        = 1 (FRAME_VERSION)
    1       4            header_len     bytes of the msgpack header, 1 .. header_bytes_max
    5       4            payload_len    bytes of raw payload, 0 .. payload_bytes_max
    9       header_len   header         msgpack map with str keys (the message, see messages.py)
    9+hl    payload_len  payload        raw bytes (chunk data), never inside msgpack

Rules of this module:
1. ``encode`` is the only writer and ``FrameDecoder`` the only reader of this format.
2. The decoder checks version and both lengths from the 9-byte prefix alone, *before* it
   waits for (and so before the caller buffers) the body: a peer cannot make us hold more
   than one frame's limit of its bytes.
3. Anything a peer may have gotten wrong raises ``ProtocolError`` (a *remote* error: drop the
   connection); after that the decoder stays broken. Misuse by our own code (an oversize
   frame to send, a header that is not a str-keyed dict) raises ``ValueError``/``TypeError``
   (a *local* error: a bug here).
4. msgpack is unpacked with ``raw=False`` (str is UTF-8), ``strict_map_key=True``, per-type
   length limits, and no ext types at all (ext, including timestamps, is refused).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from dfs.wire.errors import ProtocolError
from dfs.wire.limits import FRAME_HEADER_BYTES_MAX, FRAME_PAYLOAD_BYTES_MAX

FRAME_VERSION = 1
PREFIX = struct.Struct(">BII")
PREFIX_BYTES = PREFIX.size  # 9

# Payloads up to this size are copied into the same buffer as prefix and header, so that a
# small frame is one buffer (one write, one syscall). Larger payloads stay a separate buffer
# and are never copied by ``encode``.
COALESCE_PAYLOAD_BYTES_MAX = 16 * 1024

# Once this much of the decoder's buffer has been consumed, the consumed front is cut off.
# (CPython's ``del bytearray[:n]`` is cheap, but doing it per frame is still a memmove of the
# rest; doing it per batch keeps decoding linear in the bytes fed.)
_COMPACT_BYTES_MIN = 64 * 1024

# A payload at least this large, with fewer of its bytes buffered than it has, is received
# in place (``FrameDecoder.payload_target``): into its own buffer, by ``recv_into``, with no
# further copy. Smaller ones are not worth a buffer of their own.
DIRECT_PAYLOAD_BYTES_MIN = 64 * 1024


class PayloadPool:
    """Buffers of payloads received in place, used again once nothing refers to them.

    A new ``bytearray`` of 4 MiB is zero-filled, and on a virtual machine its pages are
    fresh ones the host faults in: ``bytearray(payload_len)`` was 10-14 % of a chunkserver's
    busy samples during a big file's stream. A buffer is handed out again only when its
    reference count says this pool holds the last reference (a frame's consumer may keep
    its payload, or a view of it, as long as it likes: the buffer is then simply not free).
    Only payloads of at most ``size_max`` bytes are pooled, at most ``keep`` of them: the
    pool holds at most ``keep * size_max`` bytes that nobody uses. The check and the
    hand-out are not atomic: one pool per thread (``dfs/payloads.py``), whose ``take`` a
    decoder is given."""

    __slots__ = ("_bufs", "keep", "size_max")

    def __init__(self, keep: int, size_max: int) -> None:
        self.keep = keep
        self.size_max = size_max
        self._bufs: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        if size > self.size_max:
            return bytearray(size)
        bufs = self._bufs
        for i in range(len(bufs)):
            # References while free: the list's and getrefcount's argument.
            if len(bufs[i]) == size and sys.getrefcount(bufs[i]) == 2:
                return bufs[i]
        buf = bytearray(size)
        if len(bufs) < self.keep:
            bufs.append(buf)
        else:
            for i in range(len(bufs)):
                if sys.getrefcount(bufs[i]) == 2:
                    bufs[i] = buf  # a free buffer of another size makes room
                    break
        return buf


@dataclass(frozen=True, slots=True)
class Frame:
    header: dict[str, Any]
    # A payload received in place (``FrameDecoder.payload_target``) is the ``bytearray`` it
    # was received into, handed over and never touched again by the decoder: treat it as
    # read-only bytes.
    payload: bytes = b""


Buffer = bytes | bytearray | memoryview


def encode(header: dict[str, Any], payload: Buffer = b"") -> list[Buffer]:
    """Encode one frame as a list of buffers to write in order (``transport.writelines``).

    Fast path: when the payload is empty or at most ``COALESCE_PAYLOAD_BYTES_MAX`` bytes the
    list has exactly one element, of type ``bytes``; otherwise it is ``[prefix + header, payload]``
    with the payload passed through uncopied (its type is then whatever the caller gave).
    Raises ``TypeError``/``ValueError`` for a header that is not a str-keyed dict, a value
    msgpack cannot pack, or a frame over the limits of ``dfs.types``.
    """
    if type(header) is not dict:
        raise TypeError(f"frame header must be a dict, not {type(header).__name__}")
    for key in header:
        if type(key) is not str:
            raise TypeError(f"frame header keys must be str, not {type(key).__name__}")
    packed = msgpack.packb(header, use_bin_type=True)
    payload_len = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
    if len(packed) > FRAME_HEADER_BYTES_MAX:
        raise ValueError(f"frame header of {len(packed)} bytes is over {FRAME_HEADER_BYTES_MAX}")
    if payload_len > FRAME_PAYLOAD_BYTES_MAX:
        raise ValueError(f"frame payload of {payload_len} bytes is over {FRAME_PAYLOAD_BYTES_MAX}")
    prefix = PREFIX.pack(FRAME_VERSION, len(packed), payload_len)
    if payload_len == 0:
        return [prefix + packed]
    if payload_len <= COALESCE_PAYLOAD_BYTES_MAX:
        return [b"".join((prefix, packed, payload))]
    return [prefix + packed, payload]


def encode_bytes(header: dict[str, Any], payload: Buffer = b"") -> bytes:
    """The frame as one ``bytes`` (copies the payload; for tests and small frames)."""
    return b"".join(encode(header, payload))


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def decode_header(packed: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Unpack one msgpack header with every limit on; ``ProtocolError`` on anything wrong."""
    size = len(packed)
    try:
        header = msgpack.unpackb(
            packed,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        # ValueError covers ExtraData, FormatError, StackError, bad UTF-8 and our ext refusal.
        raise ProtocolError(f"bad msgpack header: {e}") from None
    if type(header) is not dict:
        raise ProtocolError(f"frame header is a {type(header).__name__}, not a map")
    for key in header:
        if type(key) is not str:
            raise ProtocolError("frame header has a non-str key")
    return header


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` any split of the stream, then call ``next_frame()``
    until it returns ``None`` (not enough bytes yet). Raises ``ProtocolError`` on garbage.

    The buffer grows by at most what the caller feeds; a caller that calls ``next_frame()``
    after every ``feed`` holds at most one frame plus one read. ``header_bytes_max`` and
    ``payload_bytes_max`` may be changed between frames (``dfs.rpc`` keeps them tiny until
    the peer is authenticated).

    Large payloads in place: when ``next_frame()`` returns ``None`` and ``payload_target()``
    returns a view, the rest of the stream up to the end of the current frame's payload
    belongs in that view. The caller may fill a prefix of it (``socket.recv_into``) and
    report the bytes with ``payload_filled(n)`` instead of feeding them: the payload is
    then received straight into the buffer the frame hands out, with no copy. ``feed``
    stays correct at any time (it fills the view first). Such a buffer comes from
    ``alloc(size)`` (default: a new ``bytearray``; the drivers give their thread's
    ``PayloadPool.take``).
    """

    __slots__ = (
        "_alloc", "_body", "_broken", "_buf", "_large", "_large_got", "_large_header", "_pos",
        "header_bytes_max", "payload_bytes_max",
    )  # fmt: skip

    def __init__(
        self,
        *,
        header_bytes_max: int = FRAME_HEADER_BYTES_MAX,
        payload_bytes_max: int = FRAME_PAYLOAD_BYTES_MAX,
        alloc: Callable[[int], bytearray] = bytearray,
    ) -> None:
        self.header_bytes_max = header_bytes_max
        self.payload_bytes_max = payload_bytes_max
        self._alloc = alloc
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte in _buf
        self._body: tuple[int, int] | None = None  # (header_len, payload_len) once prefix read
        self._broken: ProtocolError | None = None
        # The payload being received in place, how much of it has come, and its header.
        self._large: bytearray | None = None
        self._large_got = 0
        self._large_header: dict[str, Any] = {}

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet returned as frames (a partial frame at end of stream)."""
        return len(self._buf) - self._pos + self._large_got

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken is not None:
            return  # the connection is being dropped; its bytes no longer matter
        if self._large is not None:
            view = memoryview(data).cast("B")
            n = min(len(view), len(self._large) - self._large_got)
            self._large[self._large_got : self._large_got + n] = view[:n]
            self._large_got += n
            data = view[n:]
            if not data:
                return
        if self._pos >= _COMPACT_BYTES_MIN or (self._pos and self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def payload_target(self) -> memoryview | None:
        """Where the next bytes of the stream go, if the frame being decoded has a large
        payload still to come (see the class docstring); else ``None`` (``feed`` them)."""
        if self._large is None:
            return None
        return memoryview(self._large)[self._large_got :]

    def payload_filled(self, n: int) -> None:
        """``n`` bytes were written at the start of the last ``payload_target()``."""
        assert self._large is not None and 0 <= n <= len(self._large) - self._large_got, n
        self._large_got += n

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until enough bytes are fed."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._next_frame()
        except ProtocolError as e:
            self._broken = e
            raise

    def _next_frame(self) -> Frame | None:
        large = self._large
        if large is not None:
            if self._large_got < len(large):
                return None
            self._large = None
            self._large_got = 0
            return Frame(self._large_header, large)  # type: ignore[arg-type]
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if self._body is None:
            if available < PREFIX_BYTES:
                return None
            version, header_len, payload_len = PREFIX.unpack_from(buf, pos)
            if version != FRAME_VERSION:
                raise ProtocolError(f"unknown frame version {version}")
            if header_len == 0 or header_len > self.header_bytes_max:
                raise ProtocolError(
                    f"frame header of {header_len} bytes (limit {self.header_bytes_max})"
                )
            if payload_len > self.payload_bytes_max:
                raise ProtocolError(
                    f"frame payload of {payload_len} bytes (limit {self.payload_bytes_max})"
                )
            self._body = (header_len, payload_len)
        header_len, payload_len = self._body
        end = pos + PREFIX_BYTES + header_len + payload_len
        header_end = pos + PREFIX_BYTES + header_len
        if len(buf) < end:
            if payload_len < DIRECT_PAYLOAD_BYTES_MIN or len(buf) < header_end:
                return None
            # The header is here and the payload is large: from now on it is received in
            # place. What came of it so far moves to its buffer; nothing follows it in buf.
            self._large_header = decode_header(buf[pos + PREFIX_BYTES : header_end])
            large = self._alloc(payload_len)
            got = len(buf) - header_end
            with memoryview(buf) as view:
                large[:got] = view[header_end:]
            self._large, self._large_got = large, got
            self._body = None
            self._pos = len(buf)
            return None
        # The header is copied out (it is small) so that no view of ``buf`` can outlive this
        # call, not even in a traceback: a live view would make the next ``feed`` fail.
        header = decode_header(buf[pos + PREFIX_BYTES : header_end])
        if payload_len:
            with memoryview(buf) as view:  # one copy of the payload, not two
                payload = bytes(view[header_end:end])
        else:
            payload = b""
        self._body = None
        self._pos = end
        return Frame(header, payload)
