"""Authenticated, pipelined RPC connections on anyio: the client's driver of the core.

The connection core (``dfs/wire/conn.py``: what a frame is, request ids and the table of
waiters, the handshake's steps as the initiator, the outgoing queue) under the same rules as
``dfs/rpc.py``, the servers' asyncio driver, driven here on anyio so that it runs under trio
(the FUSE mount, pyfuse3) and under asyncio (the CLI, the tests). It interoperates byte for
byte with ``dfs.rpc.serve`` servers. What it owns: the socket, the reader, writer and
watchdog tasks, deadlines. What it must not do: know any op, import asyncio, import server
code, or decide what the core decides.

Lifetime. A connection has two tasks, a reader and a writer, started in a task group that
its owner provides: ``await connect(address, secret, name=..., task_group=tg)``. The
connection lives until ``aclose()``, until the peer goes away, or until ``tg`` is cancelled,
whichever comes first; its tasks never raise into ``tg`` (every failure becomes the
connection's close reason). ``open_connection(...)`` is the same as an async context manager
with a task group of its own, for callers without one.

How a call works:
1. ``call()`` takes one of ``in_flight_max`` slots, picks the next request id, registers a
   waiter under it and queues the frame's buffers (``codec.encode`` keeps a large payload as
   its own buffer: chunk data is never copied into msgpack or joined with the header here).
2. The writer task sends what is queued, joining consecutive small frames into one send (so
   many small pipelined calls cost few syscalls) and passing large payloads through
   unjoined. Under trio a frame without payload, with nothing queued or being sent before
   it, is sent by the caller itself (``_send_or_enqueue``): one task switch less per call. Callers wait while more than ``SEND_BACKLOG_BYTES_MAX`` is queued (backpressure).
   Only the writer touches the socket for sending, so a caller that times out or is
   cancelled never leaves half a frame on the wire.
3. The reader task feeds received bytes to a ``FrameDecoder`` and hands each response to
   the waiter with its id; responses come back in any order. A large payload (chunk data)
   is received in place, straight from the socket into the buffer the response carries
   (``FrameDecoder.payload_target``): one copy, the kernel's.
4. Every call has a deadline (``timeout_s``): past it the caller gets ``Timeout`` (the
   request may still have been carried out; the late answer is dropped). When the
   connection ends, every pending call fails with its close reason: ``Unavailable`` for a
   closed or lost connection, ``ProtocolError`` when the peer broke the wire rules.

TRIO FAST PATH. Under trio (the FUSE mount) a call costs no cancel scope, event, semaphore
or anyio wrapper: a 4 KiB read's round trip is mostly such bookkeeping (measured: an anyio
``fail_after`` alone was a sixth of a small read's client CPU). The caller parks itself
(``wait_task_rescheduled``) and the reader task reschedules it with its answer; deadlines
are kept by one watchdog task per connection, which sleeps until the earliest pending
deadline and fails the calls past theirs with ``Timeout``, exactly as a per-call scope
would; the in-flight limit is the count of pending calls. The reader receives on the raw
socket (``recv``, then ``wait_readable`` only when nothing is there). Cancelling a caller
works as before (the abort hook forgets it; its late answer is dropped). Under asyncio
the calls go through anyio as described above.
"""

from __future__ import annotations

import copy
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from types import ModuleType
from typing import Any

import anyio
import anyio.lowlevel
import sniffio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.streams.tls import TLSAttribute

from dfs.credentials import Credential, Credentials
from dfs.payloads import take_payload
from dfs.wire import codec, messages, ops
from dfs.wire.auth import PeerInfo, Side
from dfs.wire.conn import (
    CALL_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    IN_FLIGHT_MAX,
    PREAUTH_HEADER_BYTES_MAX,
    SEND_TIMEOUT_S,
    Calls,
    HandshakeSteps,
    Kind,
    SendQueue,
    classify,
)
from dfs.wire.conn import result as call_result
from dfs.wire.errors import (
    AuthError,
    DfsError,
    InternalError,
    Invalid,
    ProtocolError,
    Timeout,
    Unavailable,
    Unsupported,
)

log = logging.getLogger(__name__)

Payload = bytes | bytearray | memoryview
OnewayHandler = Callable[[str, dict[str, Any]], None]

# The timeouts and the in-flight limit are the connection core's (dfs/wire/conn.py).
# Bytes asked of the socket per receive. Large enough that a 4 MiB chunk read is a handful
# of receives; trio allocates this much per receive, so not larger.
RECEIVE_BYTES_MAX = 256 * 1024
# Queued-but-unsent bytes above which callers wait for the writer: a few large chunk
# writes, so streaming never stalls per frame, and memory stays bounded.
SEND_BACKLOG_BYTES_MAX = 16 * 1024 * 1024
# After a failed handshake, how long we wait for the server to hang up first (it rejects
# our proof within milliseconds; this only bounds a server that does not).
AUTH_FAILURE_LINGER_S = 1.0
# TRIO FAST PATH: receives in a row that found bytes waiting before the reader yields to
# other tasks anyway (a receive that blocks yields by itself).
RECEIVES_BETWEEN_YIELDS = 8
# trio.lowlevel.Abort.SUCCEEDED, set by the first connection made under trio (trio is
# imported only there: the CLI and the tests run the client under asyncio without it).
_ABORT_SUCCEEDED: Any = None


def split_address(address: str) -> tuple[str, int]:
    """ "host:port" (IPv6 hosts in brackets or bare) -> (host, port); ``Invalid`` if malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Invalid(f"bad server address {address!r} (want host:port)")
    return host.strip("[]"), int(port_text)


class _Waiter:
    """One call's slot for its answer: an event to wait on (anyio), or, on the TRIO FAST
    PATH, the parked task to reschedule and the call's deadline for the watchdog."""

    __slots__ = ("deadline", "done", "error", "event", "header", "op", "payload", "task",
                 "timeout_s")  # fmt: skip

    def __init__(self, event: anyio.Event | None, op: str, timeout_s: float) -> None:
        self.event = event
        self.task: Any = None  # trio.lowlevel.Task while parked
        self.done = False  # answered, failed or timed out: wake no more
        self.header: dict[str, Any] | None = None
        self.payload = b""
        self.error: DfsError | None = None
        self.op = op
        self.timeout_s = timeout_s
        self.deadline = 0.0

    def abort(self, raise_cancel: Any) -> Any:
        """trio's abort hook: the parked caller was cancelled; nobody reschedules it."""
        self.task = None
        return _ABORT_SUCCEEDED


class Connection:
    """One authenticated connection to a dfs server. Made by ``connect``/``open_connection``.

    Public: ``call``, ``aclose``, ``closed``, ``address``, ``peer`` (who the server proved
    to be), ``in_flight`` (calls waiting for an answer).
    """

    def __init__(
        self,
        stream: ByteStream,
        decoder: codec.FrameDecoder,
        *,
        address: str,
        name: str,
        peer: PeerInfo,
        in_flight_max: int = IN_FLIGHT_MAX,
    ) -> None:
        self.address = address
        self.name = name
        self.peer = peer
        self._stream = stream
        self._decoder = decoder
        self._calls: Calls[_Waiter] = Calls(in_flight_max)
        self._slots = anyio.Semaphore(in_flight_max)
        self._out = SendQueue()
        self._out_ready = anyio.Event()  # set while something is queued
        self._drained = anyio.Event()  # set when the backlog falls below its limit
        self._close_error: DfsError | None = None
        self._sending = False  # the writer task is sending a batch
        # The socket itself, where the caller's task may receive and send directly: under
        # trio only. Under asyncio a transport reads and writes the socket on its own, and
        # anyio hands out only a wrapper (no ``recv_into``): everything goes through it.
        # Over TLS the socket carries ciphertext: everything goes through the stream.
        raw = stream.extra(SocketAttribute.raw_socket, None)
        if stream.extra(TLSAttribute.ssl_object, None) is not None:
            raw = None
        self._raw: socket.socket | None = raw if isinstance(raw, socket.socket) else None
        self._scope: anyio.CancelScope | None = None
        self._finished = anyio.Event()
        # TRIO FAST PATH: trio itself (None under asyncio), the watchdog's scope and the
        # deadline it sleeps until, and the event callers wait on when the slots are full.
        self._trio: ModuleType | None = None
        if self._raw is not None and sniffio.current_async_library() == "trio":
            global _ABORT_SUCCEEDED
            import trio

            self._trio = trio
            _ABORT_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED
        self._watch_scope: Any = None
        self._watch_deadline = float("inf")
        self._room: anyio.Event | None = None
        # One-way frames from the server (``op``, header), e.g. a directory lease's recall;
        # called on the reader task: it must not block (start a task for any I/O).
        self.on_oneway: OnewayHandler | None = None

    # ------------------------------------------------------------------ public API

    @property
    def closed(self) -> bool:
        return self._close_error is not None

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def call(
        self,
        op: str,
        payload: Payload = b"",
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        **fields: Any,
    ) -> tuple[dict[str, Any], bytes]:
        """Send request ``op`` with ``fields`` and ``payload``; return the response's
        (header, payload). Raises the ``DfsError`` the server answered with, ``Timeout``
        after ``timeout_s`` (the request may still have been carried out), ``Unavailable``
        if the connection is or becomes closed, ``ProtocolError`` if the server broke the
        protocol. The payload buffer must not change until the call returns. ``AuthError``
        before sending if the peer is not the server ``op`` goes to.
        """
        ops.check_server(op, self.peer)
        if self._trio is not None:
            return await self._call_trio(op, payload, timeout_s, fields)
        event = anyio.Event()
        waiter = _Waiter(event, op, timeout_s)
        try:
            with anyio.fail_after(timeout_s):
                async with self._slots:
                    self._check_open()
                    request_id = self._calls.start(waiter)
                    try:
                        self._send_or_enqueue(
                            codec.encode(messages.request(op, request_id, **fields), payload)
                        )
                        while self._out.queued_bytes > SEND_BACKLOG_BYTES_MAX and not self.closed:
                            await self._drained.wait()
                        await event.wait()
                    finally:
                        self._calls.finish(request_id)
        except TimeoutError:
            raise Timeout(f"{op} to {self.address} got no answer in {timeout_s} s", op=op) from None
        return _answer(waiter)

    async def _call_trio(
        self, op: str, payload: Payload, timeout_s: float, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], bytes]:
        """``call`` on the TRIO FAST PATH (module docstring)."""
        trio = self._trio
        assert trio is not None
        waiter = _Waiter(None, op, timeout_s)
        deadline = waiter.deadline = trio.current_time() + timeout_s
        if self._calls.full:
            await self._wait_room(waiter)
        self._check_open()
        request_id = self._calls.start(waiter)
        try:
            self._send_or_enqueue(codec.encode(messages.request(op, request_id, **fields), payload))
            if self._out.queued_bytes > SEND_BACKLOG_BYTES_MAX:
                try:
                    with trio.fail_at(deadline):
                        while self._out.queued_bytes > SEND_BACKLOG_BYTES_MAX and not self.closed:
                            await self._drained.wait()
                except trio.TooSlowError:
                    raise _timeout(waiter, self.address) from None
            if waiter.done:
                await trio.lowlevel.checkpoint()
            else:
                if deadline < self._watch_deadline:
                    self._watch_deadline = deadline
                    if self._watch_scope is not None:
                        self._watch_scope.deadline = deadline
                waiter.task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(waiter.abort)
        finally:
            self._calls.finish(request_id)
            if self._room is not None:
                self._room.set()
                self._room = None
        return _answer(waiter)

    async def _wait_room(self, waiter: _Waiter) -> None:
        """Until fewer than ``in_flight_max`` calls are pending (or ``Timeout``)."""
        trio = self._trio
        assert trio is not None
        try:
            with trio.fail_at(waiter.deadline):
                while self._calls.full:
                    self._check_open()
                    if self._room is None:
                        self._room = anyio.Event()
                    await self._room.wait()
        except trio.TooSlowError:
            raise _timeout(waiter, self.address) from None

    async def _run_watchdog(self) -> None:
        """TRIO FAST PATH: fail every pending call past its deadline with ``Timeout``;
        sleep until the earliest deadline (callers move it earlier when theirs is)."""
        trio = self._trio
        assert trio is not None
        while True:
            with trio.CancelScope(deadline=self._watch_deadline) as scope:
                self._watch_scope = scope
                await trio.sleep_forever()
            self._watch_scope = None
            now = trio.current_time()
            earliest = float("inf")
            for waiter in self._calls.waiters():
                if waiter.done:
                    continue
                if waiter.deadline <= now:
                    waiter.error = _timeout(waiter, self.address)
                    self._wake(waiter)
                elif waiter.deadline < earliest:
                    earliest = waiter.deadline
            self._watch_deadline = earliest

    async def aclose(self) -> None:
        """Close now. Pending calls fail with ``Unavailable``; unsent frames are dropped."""
        self._fail(Unavailable("connection closed", peer=self.address))
        if self._scope is None:
            # The tasks never started (the task group is gone): close the socket here.
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)
            return
        with anyio.move_on_after(5, shield=True):
            await self._finished.wait()

    # ------------------------------------------------------------------ tasks

    async def _run(self) -> None:
        """Reader and writer, until the connection ends; never raises but for cancellation."""
        try:
            if self._close_error is None:
                async with anyio.create_task_group() as tg:
                    self._scope = tg.cancel_scope
                    if self._close_error is not None:  # closed before we got here
                        tg.cancel_scope.cancel()
                    tg.start_soon(self._run_reader)
                    tg.start_soon(self._run_writer)
                    if self._trio is not None:
                        tg.start_soon(self._run_watchdog)
        finally:
            # Whatever ended us (close, peer, owner's cancellation), callers must not hang.
            self._fail(Unavailable("connection closed", peer=self.address))
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)
            self._finished.set()

    async def _run_reader(self) -> None:
        decoder = self._decoder
        raw = self._raw
        trio = self._trio
        closed_errors: tuple[type[BaseException], ...] = (
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            OSError,
        )
        if trio is not None:
            closed_errors += (trio.ClosedResourceError, trio.BrokenResourceError)
        in_a_row = 0
        # TRIO FAST PATH: received into one buffer, reused (the decoder copies what it
        # keeps), not a fresh RECEIVE_BYTES_MAX allocation per receive.
        into = bytearray(RECEIVE_BYTES_MAX if trio is not None else 0)
        view = memoryview(into)
        try:
            while True:
                while (frame := decoder.next_frame()) is not None:
                    self._dispatch(frame)
                target = decoder.payload_target() if raw is not None else None
                if target is not None and raw is not None:
                    # A large payload (chunk data): straight into the buffer the frame
                    # hands out, in as few receives as the socket allows.
                    decoder.payload_filled(await _receive_into(raw, target))
                elif trio is None or raw is None:
                    decoder.feed(await self._stream.receive(RECEIVE_BYTES_MAX))
                else:
                    # TRIO FAST PATH: the socket itself; wait only when it has nothing.
                    try:
                        n = raw.recv_into(into)
                    except (BlockingIOError, InterruptedError):
                        in_a_row = 0
                        await trio.lowlevel.wait_readable(raw)
                        continue
                    if not n:
                        raise anyio.EndOfStream
                    decoder.feed(view[:n])
                    in_a_row += 1
                    if in_a_row >= RECEIVES_BETWEEN_YIELDS:
                        in_a_row = 0
                        await trio.lowlevel.checkpoint()
        except anyio.EndOfStream:
            self._fail(Unavailable("connection closed by the server", peer=self.address))
        except ProtocolError as e:
            log.info("client rpc: dropping connection to %s: %s", self.address, e)
            self._fail(e)
        except closed_errors as e:
            self._fail(Unavailable(f"connection lost: {e!r}", peer=self.address))
        except Exception:
            # A bug here must not take the owner's task group (the whole client) down.
            log.exception("client rpc: reader for %s failed", self.address)
            self._fail(InternalError("connection reader failed", peer=self.address))

    async def _run_writer(self) -> None:
        try:
            while True:
                await self._out_ready.wait()
                self._sending = True
                for buffer in self._take_batch():
                    with anyio.move_on_after(SEND_TIMEOUT_S) as scope:
                        await self._stream.send(buffer)  # type: ignore[arg-type]
                    if scope.cancelled_caught:
                        # Half a frame may be out: this connection cannot carry another one.
                        self._fail(Timeout(f"{self.address} took no data for {SEND_TIMEOUT_S} s"))
                        return
                self._sending = False
                if self._out.queued_bytes <= SEND_BACKLOG_BYTES_MAX:
                    self._drained.set()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            self._fail(Unavailable(f"connection lost: {e!r}", peer=self.address))
        except Exception:
            log.exception("client rpc: writer for %s failed", self.address)
            self._fail(InternalError("connection writer failed", peer=self.address))

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._close_error is not None:
            raise copy.copy(self._close_error)

    def _send_or_enqueue(self, buffers: list[Payload]) -> None:
        """Send a one-buffer frame (a request without chunk data) from the caller's task
        when nothing is queued or being sent before it, sparing a switch to the writer
        task per call (a small read's round trip is mostly such switches); queue it, or
        what the socket did not take of it, for the writer otherwise."""
        raw = self._raw
        if raw is None or len(buffers) != 1 or self._out or self._sending:
            self._enqueue(buffers)
            return
        frame = buffers[0]
        try:
            sent = raw.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the writer meets the same error and closes the connection
        if sent < len(frame):
            self._enqueue([memoryview(frame)[sent:]])

    def _enqueue(self, buffers: list[Payload]) -> None:
        self._out.push(buffers)
        if self._out.queued_bytes > SEND_BACKLOG_BYTES_MAX and self._drained.is_set():
            self._drained = anyio.Event()
        self._out_ready.set()

    def _take_batch(self) -> list[Payload]:
        """Everything queued, consecutive small buffers joined (one send each)."""
        self._out_ready = anyio.Event()
        return self._out.take()

    def _dispatch(self, frame: codec.Frame) -> None:
        header = frame.header
        kind = classify(header)
        if kind is Kind.RESPONSE:
            waiter = self._calls.resolve(header)
            if waiter is None or waiter.done:
                # The call timed out or was cancelled (or never was): its answer is dropped.
                log.debug(
                    "client rpc: late response id=%r from %s", header[messages.ID], self.address
                )
                return
            waiter.header = header
            waiter.payload = frame.payload
            self._wake(waiter)
            return
        op: str = header[messages.OP]
        if kind is Kind.ONEWAY:
            if self.on_oneway is None:
                log.debug("client rpc: one-way %r from %s ignored", op, self.address)
                return
            try:
                self.on_oneway(op, header)
            except Exception:  # the owner's bug must not end the connection
                log.exception("client rpc: one-way %r from %s: handler failed", op, self.address)
            return
        request_id: int = header[messages.ID]
        # A client serves no requests; answer rather than leave the server waiting.
        error = Unsupported(f"{self.name} takes no requests", op=op)
        self._enqueue(codec.encode(messages.response_err(request_id, error)))

    def _wake(self, waiter: _Waiter) -> None:
        """The call's outcome is set: let its caller go on."""
        waiter.done = True
        if waiter.event is not None:
            waiter.event.set()
        elif waiter.task is not None:
            task, waiter.task = waiter.task, None
            assert self._trio is not None
            self._trio.lowlevel.reschedule(task)

    def _fail(self, error: DfsError) -> None:
        """End the connection with ``error`` (the first reason wins); wake everyone."""
        if self._close_error is not None:
            return
        self._close_error = error
        for waiter in self._calls.waiters():
            if not waiter.done:
                waiter.error = copy.copy(error)  # one instance per raiser
                self._wake(waiter)
        if self._room is not None:
            self._room.set()
            self._room = None
        self._out.clear()
        self._drained.set()
        self._out_ready.set()
        if self._scope is not None:
            self._scope.cancel()


def _answer(waiter: _Waiter) -> tuple[dict[str, Any], bytes]:
    """The call's result from its settled waiter: (header, payload), or its error."""
    if waiter.error is not None:
        raise waiter.error
    header = waiter.header
    assert header is not None
    return call_result(header, waiter.payload)


def _timeout(waiter: _Waiter, address: str) -> Timeout:
    return Timeout(f"{waiter.op} to {address} got no answer in {waiter.timeout_s} s", op=waiter.op)


async def _receive_into(raw: socket.socket, target: memoryview) -> int:
    """Receive into ``target`` (at least one byte) from the connection's socket, beside
    anyio's stream: only the reader task receives, so the two never interleave."""
    while True:
        try:
            n = raw.recv_into(target)
        except BlockingIOError:
            await anyio.wait_readable(raw)
            continue
        if n == 0:
            raise anyio.EndOfStream
        # A receive that never blocks must still let other tasks run (and be cancellable).
        await anyio.lowlevel.checkpoint()
        return n


async def _handshake(
    stream: ByteStream, creds: Credentials, *, role: str, name: str
) -> tuple[PeerInfo, codec.FrameDecoder]:
    """The initiator's side of the core's ``HandshakeSteps``; returns the peer and the
    decoder (which may hold bytes that followed the proof)."""
    steps = HandshakeSteps(
        creds.handshake(
            side=Side.INITIATOR, role=role, name=name,
            peercert=stream.extra(TLSAttribute.peer_certificate, None),
            der=stream.extra(TLSAttribute.peer_certificate_binary, None) or b"",
        )
    )  # fmt: skip
    decoder = HandshakeSteps.decoder(alloc=take_payload)

    async def next_frame() -> codec.Frame:
        while (frame := decoder.next_frame()) is None:
            try:
                decoder.feed(await stream.receive(PREAUTH_HEADER_BYTES_MAX))
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                error = steps.closed_error()
                if isinstance(error, AuthError):  # the server refused our proof
                    raise error from None
                raise
        return frame

    for header in steps.begin():
        await stream.send(codec.encode_bytes(header))
    try:
        while not steps.done:
            for header in steps.receive(await next_frame()):
                await stream.send(codec.encode_bytes(header))
    except AuthError:
        # The server is about to reject our proof too. Let it (until it hangs up, briefly):
        # were we to hang up first, it might see the close before our proof and log a
        # vague "closed during the handshake" instead of the wrong secret.
        with anyio.move_on_after(AUTH_FAILURE_LINGER_S):
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while True:
                    await stream.receive(PREAUTH_HEADER_BYTES_MAX)
        raise
    HandshakeSteps.open_up(decoder)
    assert steps.peer is not None
    return steps.peer, decoder


async def connect(
    address: str,
    credentials: Credential,
    *,
    name: str,
    task_group: TaskGroup,
    timeout_s: float = CONNECT_TIMEOUT_S,
    role: str = "client",
    in_flight_max: int = IN_FLIGHT_MAX,
    ssl_context: ssl.SSLContext | None = None,
) -> Connection:
    """Open a connection to ``address`` ("host:port") and authenticate both ways; its
    reader and writer run in ``task_group`` (see the module docstring for the lifetime).
    ``credentials`` (or a bare secret, ``Credentials.of``): TLS when they hold a TLS
    credential (the TRIO FAST PATH's direct socket use is then off), the handshake on the
    secret otherwise (``dfs/credentials.py``); ``ssl_context``: this TLS context instead of
    the credential's (tests).

    Raises ``AuthError`` (no usable secret here, or a wrong one on either side),
    ``Unavailable`` (refused, unreachable, closed during the handshake), ``Timeout`` (over
    ``timeout_s``), ``ProtocolError`` (the server is not speaking dfs), ``Invalid`` (a
    malformed address).
    """
    host, port = split_address(address)
    creds = Credentials.of(credentials)
    ssl_context = creds.context(ssl_context, server=False)
    role = creds.claim(role)
    try:
        with anyio.fail_after(timeout_s):
            stream: ByteStream
            if ssl_context is None:
                stream = await anyio.connect_tcp(host, port)
            else:
                stream = await anyio.connect_tcp(
                    host, port, ssl_context=ssl_context, tls_standard_compatible=False
                )
            try:
                raw = stream.extra(SocketAttribute.raw_socket)
                with suppress(OSError):  # small calls must not wait for Nagle
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer, decoder = await _handshake(stream, creds, role=role, name=name)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(stream)
                raise
    except TimeoutError:
        raise Timeout(f"connect to {address} took over {timeout_s} s") from None
    except anyio.EndOfStream:
        raise Unavailable(f"{address} closed the connection during the handshake") from None
    except (OSError, anyio.BrokenResourceError) as e:
        raise Unavailable(f"cannot connect to {address}: {e}") from e
    connection = Connection(
        stream, decoder, address=address, name=name, peer=peer, in_flight_max=in_flight_max
    )
    task_group.start_soon(connection._run, name=f"dfs connection to {address}")
    return connection


@contextmanager
def single_errors() -> Iterator[None]:
    """Let the one error of an exception group through as itself.

    anyio task groups wrap whatever leaves them in an ``ExceptionGroup``, even a single
    error from the body of ``async with``. Our task groups' background tasks never raise
    (their failures are stored, see the module docstring), so what leaves is the body's
    own error, which callers of ``open_connection``/``FsClient.open_cluster`` expect to
    catch as it was raised (``except NotFound``).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if inner is group:
            raise
        raise inner from None


@asynccontextmanager
async def open_connection(
    address: str,
    credentials: Credential,
    *,
    name: str,
    timeout_s: float = CONNECT_TIMEOUT_S,
    role: str = "client",
    in_flight_max: int = IN_FLIGHT_MAX,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Connection]:
    """``async with open_connection(...) as conn:``: ``connect`` with its own task group;
    the connection is closed when the block ends."""
    with single_errors():
        async with anyio.create_task_group() as tg:
            conn = await connect(
                address,
                credentials,
                name=name,
                task_group=tg,
                timeout_s=timeout_s,
                role=role,
                in_flight_max=in_flight_max,
                ssl_context=ssl_context,
            )
            try:
                yield conn
            finally:
                await conn.aclose()


__all__ = [
    "CALL_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "Connection",
    "connect",
    "open_connection",
    "single_errors",
    "split_address",
]
