"""The connection core: everything a dfs connection decides, with no I/O. Pure.

What it owns, once for both drivers (``dfs/rpc.py`` on asyncio for the servers and their
calls to each other, ``dfs/client/conn.py`` on anyio for the mount and the CLI):

- what an inbound frame is (``classify``): a response, a request or a one-way message,
  with the header checks of ``messages.py`` (a violation is the peer's: ``ProtocolError``);
- request ids and the table of waiters (``Calls``): ids allocated in order, each call's
  waiter found again by the id its response carries, a response for an id nobody waits
  for (a call that timed out, or a peer's invention) dropped, every waiter handed back
  once when the connection ends;
- the handshake's steps (``HandshakeSteps``): the order of ``auth.py``'s frames as a state
  machine that refuses a step out of order, the small frame limits until the peer has
  proven itself, and what a hang-up in the middle means;
- the outgoing queue (``SendQueue``): consecutive small frames joined into one write, large
  payloads passed through uncopied, and the bytes queued, which backpressure is decided on;
- when a served connection stops reading (``reading_paused``).

What it must not do: touch a socket, a clock, a task or randomness (the driver brings the
nonce). The byte format itself is ``codec.py``'s (``encode``/``FrameDecoder``, bounded by
``limits.py``); the handshake's cryptography is ``auth.py``'s. The constants below are the
figures both drivers use: one home each.

TLS (later) sits under the drivers, between the socket and these bytes: nothing here
changes with it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from dfs.wire import codec, messages
from dfs.wire.auth import Handshake, PeerInfo, Side
from dfs.wire.errors import AuthError, DfsError, ProtocolError, Unavailable, error_from_wire
from dfs.wire.limits import FRAME_HEADER_BYTES_MAX, FRAME_PAYLOAD_BYTES_MAX

Payload = bytes | bytearray | memoryview

# ------------------------------------------------------------------ figures of both drivers
# How long connect() may take, TCP and handshake together. A healthy server answers the
# handshake in well under a millisecond; this covers a loaded machine.
CONNECT_TIMEOUT_S = 10.0
# A healthy peer answers the handshake in well under a millisecond on a LAN; 5 s covers a
# loaded machine and still frees a server's slot held by a silent or hostile peer quickly.
HANDSHAKE_TIMEOUT_S = 5.0
# Default deadline of one call. Metadata calls take milliseconds; a 64 MiB chunk transfer
# through a replication chain takes around a second. Callers with better knowledge pass
# their own.
CALL_TIMEOUT_S = 30.0
# A writer blocked on a peer that does not read for this long gives up.
SEND_TIMEOUT_S = 30.0
# Calls in flight per connection (and request handlers running per served connection).
# Enough to keep a link busy with pipelined metadata calls; small enough to bound memory.
IN_FLIGHT_MAX = 1024
# Consecutive small frames are joined into one write up to this many bytes.
COALESCE_BYTES_MAX = 256 * 1024
# Before authentication: handshake frames are tiny and carry no payload, and nothing else
# may arrive in bulk (a served connection stops reading past PREAUTH_BUFFER_BYTES_MAX).
PREAUTH_HEADER_BYTES_MAX = 4096
PREAUTH_BUFFER_BYTES_MAX = 64 * 1024
# One-way frames waiting for their handler before a served connection stops reading.
ONEWAY_QUEUE_MAX = 4096


# ------------------------------------------------------------------ inbound frames


class Kind(enum.Enum):
    RESPONSE = "response"
    REQUEST = "request"
    ONEWAY = "oneway"


def classify(header: dict[str, Any]) -> Kind:
    """What an inbound frame is (``messages.py``); ``ProtocolError`` when it is none of
    them. A response's own fields are checked by ``Calls.resolve``, a request's id here."""
    if messages.OK in header:
        return Kind.RESPONSE
    if type(header.get(messages.OP)) is not str:
        raise ProtocolError("frame is neither a response nor has an 'op'")
    request_id = header.get(messages.ID)
    if request_id is None or header.get(messages.ONEWAY) is True:
        return Kind.ONEWAY
    if type(request_id) is not int or request_id < 0:
        raise ProtocolError("request 'id' must be an int >= 0")
    return Kind.REQUEST


# ------------------------------------------------------------------ calls

W = TypeVar("W")


class Calls(Generic[W]):
    """Our calls in flight on one connection: request id -> the driver's waiter (a future,
    a parked task, whatever it wakes its caller with).

    Ids start at 1 and only grow, so a late response can never be taken for a newer call's.
    The driver keeps its own slot count (``full``) because how a caller waits for a slot is
    the driver's business.
    """

    __slots__ = ("_last_id", "_waiters", "in_flight_max")

    def __init__(self, in_flight_max: int = IN_FLIGHT_MAX) -> None:
        self.in_flight_max = in_flight_max
        self._waiters: dict[int, W] = {}
        self._last_id = 0

    def __len__(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        return len(self._waiters) >= self.in_flight_max

    def start(self, waiter: W) -> int:
        """Register ``waiter`` under a new request id (put it in the request's header)."""
        self._last_id += 1
        request_id = self._last_id
        self._waiters[request_id] = waiter
        return request_id

    def finish(self, request_id: int) -> None:
        """The call is over (answered, timed out or cancelled): forget its id."""
        del self._waiters[request_id]

    def resolve(self, header: dict[str, Any]) -> W | None:
        """The waiter a response is for; ``None`` for an id nobody waits for (a call that
        gave up, or one never made), which the driver drops. ``ProtocolError`` for a
        malformed response."""
        request_id = header.get(messages.ID)
        if type(request_id) is not int or type(header.get(messages.OK)) is not bool:
            raise ProtocolError("response needs an int 'id' and a bool 'ok'")
        return self._waiters.get(request_id)

    def waiters(self) -> Iterator[W]:
        """The waiters in flight (to fail them when the connection ends, or to time them
        out); a snapshot, so the caller may ``finish`` as it goes."""
        return iter(list(self._waiters.values()))


def result(header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
    """A response as the call's outcome: (header, payload), or its ``DfsError`` raised."""
    if header.get(messages.OK) is True:
        return header, payload
    raise error_from_wire(header.get(messages.ERR))


# ------------------------------------------------------------------ handshake


class Step(enum.Enum):
    START = "start"  # nothing sent yet
    HELLO_SENT = "hello_sent"  # our hello is out; the peer's is awaited
    PROOF_SENT = "proof_sent"  # (initiator) our proof is out; the acceptor's is awaited
    AWAIT_PROOF = "await_proof"  # (acceptor) hellos exchanged; the initiator's proof awaited
    DONE = "done"  # both proven: frames of every size flow
    FAILED = "failed"  # a step was refused: the connection is dropped


class HandshakeSteps:
    """``auth.py``'s handshake as a state machine over frames::

        send(*steps.begin())                   # our hello
        for every frame received until steps.done:
            send(*steps.receive(frame))        # what that step makes us say

    Initiator: START -hello-> HELLO_SENT -peer hello/our proof-> PROOF_SENT -peer proof->
    DONE. Acceptor: START -hello-> HELLO_SENT -peer hello-> AWAIT_PROOF -peer proof/our
    proof-> DONE. Any frame out of this order, a frame with a payload, a malformed or
    wrong proof raises ``AuthError`` and leaves the machine FAILED for good. The driver
    decodes with ``decoder()``'s small limits until DONE, then ``open_up(decoder)``.
    """

    __slots__ = ("_handshake", "peer", "step")

    def __init__(self, handshake: Handshake) -> None:
        self._handshake = handshake
        self.step = Step.START
        self.peer: PeerInfo | None = None

    @property
    def side(self) -> Side:
        return self._handshake.side

    @property
    def done(self) -> bool:
        return self.step is Step.DONE

    @staticmethod
    def decoder(alloc: Callable[[int], bytearray] = bytearray) -> codec.FrameDecoder:
        """A decoder with the limits of an unauthenticated peer; ``alloc`` gives the
        buffers of large payloads (the driver's pool, ``codec.FrameDecoder``)."""
        return codec.FrameDecoder(
            header_bytes_max=PREAUTH_HEADER_BYTES_MAX, payload_bytes_max=0, alloc=alloc
        )

    @staticmethod
    def open_up(decoder: codec.FrameDecoder) -> None:
        """The peer is authenticated: frames up to the protocol's limits from now on."""
        decoder.header_bytes_max = FRAME_HEADER_BYTES_MAX
        decoder.payload_bytes_max = FRAME_PAYLOAD_BYTES_MAX

    def begin(self) -> list[dict[str, Any]]:
        """Our first frame (the hello)."""
        self._expect(Step.START, "begin")
        self.step = Step.HELLO_SENT
        return [self._handshake.hello()]

    def receive(self, frame: codec.Frame) -> list[dict[str, Any]]:
        """Take the peer's next frame; returns the frames to send in answer."""
        try:
            if frame.payload:
                raise AuthError("handshake frame with a payload")
            step = self.step
            if step is Step.HELLO_SENT:
                own_proof = self._handshake.receive_hello(frame.header)
                if own_proof is None:  # the acceptor proves itself only after the initiator
                    self.step = Step.AWAIT_PROOF
                    return []
                self.step = Step.PROOF_SENT
                return [own_proof]
            if step is Step.PROOF_SENT:
                self.peer = self._handshake.receive_proof(frame.header)
                self.step = Step.DONE
                return []
            if step is Step.AWAIT_PROOF:
                self.peer = self._handshake.receive_proof(frame.header)
                self.step = Step.DONE
                return [self._handshake.proof()]
            raise AuthError(f"handshake frame in step {step.value}")
        except AuthError:
            self.step = Step.FAILED
            raise

    def closed_error(self) -> DfsError:
        """What a close by the peer before DONE means: after our proof a dfs acceptor hangs
        up only when it rejects it (it proves itself only to a peer that did)."""
        if self.step is Step.PROOF_SENT:
            return AuthError(
                "the peer hung up on our proof (wrong cluster secret? a role our certificate "
                "does not give us?)"
            )
        return Unavailable("connection closed during the handshake")

    def _expect(self, step: Step, what: str) -> None:
        if self.step is not step:
            failed, self.step = self.step, Step.FAILED
            raise AuthError(f"handshake {what} in step {failed.value}")


# ------------------------------------------------------------------ sending


def _size(buffer: Payload) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


class SendQueue:
    """Frames encoded and not yet written, in order. ``push`` the buffers of
    ``codec.encode``; ``take`` returns what to write, consecutive small buffers joined into
    one (one syscall for many pipelined frames) and large payloads as they were given (never
    copied). ``queued_bytes`` is what backpressure is decided on."""

    __slots__ = ("_out", "queued_bytes")

    def __init__(self) -> None:
        self._out: deque[Payload] = deque()
        self.queued_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._out)

    def push(self, buffers: list[Payload]) -> None:
        for buffer in buffers:
            self._out.append(buffer)
            self.queued_bytes += _size(buffer)

    def clear(self) -> None:
        self._out.clear()
        self.queued_bytes = 0

    def take(self) -> list[Payload]:
        """Everything queued, as the buffers to write in order."""
        batch: list[Payload] = []
        small: list[Payload] = []
        small_bytes = 0
        out = self._out
        while out:
            buffer = out.popleft()
            size = _size(buffer)
            if size <= COALESCE_BYTES_MAX and small_bytes + size <= COALESCE_BYTES_MAX:
                small.append(buffer)
                small_bytes += size
                continue
            if small:
                batch.append(small[0] if len(small) == 1 else b"".join(small))
                small, small_bytes = [], 0
            if size <= COALESCE_BYTES_MAX:
                small, small_bytes = [buffer], size
            else:
                batch.append(buffer)
        if small:
            batch.append(small[0] if len(small) == 1 else b"".join(small))
        self.queued_bytes = 0
        return batch


# ------------------------------------------------------------------ backpressure


def reading_paused(
    *,
    authenticated: bool,
    buffered_bytes: int,
    over_budget: bool,
    requests_running: int,
    in_flight_max: int,
    oneway_queued: int,
) -> bool:
    """Whether a served connection should stop reading (TCP backpressure): before the
    handshake, once ``PREAUTH_BUFFER_BYTES_MAX`` of the peer's bytes wait; after it, while
    a byte budget is used up, ``in_flight_max`` of its requests run, or
    ``ONEWAY_QUEUE_MAX`` one-way frames wait for their handler."""
    if not authenticated:
        return buffered_bytes > PREAUTH_BUFFER_BYTES_MAX
    return over_budget or requests_running >= in_flight_max or oneway_queued >= ONEWAY_QUEUE_MAX


__all__ = [
    "CALL_TIMEOUT_S",
    "COALESCE_BYTES_MAX",
    "CONNECT_TIMEOUT_S",
    "HANDSHAKE_TIMEOUT_S",
    "IN_FLIGHT_MAX",
    "ONEWAY_QUEUE_MAX",
    "PREAUTH_BUFFER_BYTES_MAX",
    "PREAUTH_HEADER_BYTES_MAX",
    "SEND_TIMEOUT_S",
    "Calls",
    "HandshakeSteps",
    "Kind",
    "SendQueue",
    "Step",
    "classify",
    "reading_paused",
    "result",
]
