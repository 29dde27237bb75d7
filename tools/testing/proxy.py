"""A small TCP proxy that delays, stalls, cuts and resets connections: the faults the kernel
of the machines dfs is tested on cannot make (it has no ``netem`` qdisc).

    python -m tools.testing.proxy --listen 127.0.0.1:19000 --upstream 10.77.0.101:9100 \\
        --control /tmp/p.sock [--delay-ms 50 --jitter-ms 20 --seed 1 --mark 0x6466]

What it owns: one listening socket, and per accepted connection one connection to the
upstream address, with the bytes of each direction passed through a bounded queue. What it
must not do: look into the bytes (it knows nothing of the dfs protocol), reorder the bytes
of a stream (TCP never does; jitter only changes the gaps between pieces), or hold more
than ``QUEUE_PIECES_MAX`` pieces of ``PIECE_BYTES`` per direction (past that it stops
reading and TCP's own flow control pushes back on the sender).

Faults, changed at any time (``Proxy`` methods, or the control socket below):
- delay: each piece read is released ``delay_s`` plus a uniform ``[-jitter_s, +jitter_s]``
  later (never earlier than the piece before it), drawn from a seeded ``random.Random``;
- stall: nothing is forwarded in either direction (and new upstream connections wait)
  until ``unstall``: a peer that hangs without closing, as a paused process or a dead
  link looks from the other end;
- cut: every connection is closed on both sides (FIN), the listener stays;
- reset: every connection is aborted on both sides with an RST (``SO_LINGER`` 0).

``mark``: the upstream sockets carry this firewall mark (``SO_MARK``, needs
CAP_NET_ADMIN), so that an ``iptables ... -j REDIRECT`` rule that sends a host's
connections to the proxy can exempt the proxy's own connections with
``-m mark ! --mark M`` (``tools.testing.netns`` does this).

Control socket (a UNIX socket path: not tied to a network namespace, so the process that
started the proxy in a namespace reaches it from outside): one JSON object a line each
way. Requests: ``{"op": "delay", "delay_ms": 50, "jitter_ms": 20}``, ``{"op": "stall"}``,
``{"op": "unstall"}``, ``{"op": "cut"}``, ``{"op": "reset"}``, ``{"op": "stats"}``;
answers ``{"ok": true, <stats>}`` or ``{"ok": false, "error": "..."}``. ``ProxyControl``
is the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# One read from a socket. Small enough that a delayed stream still trickles, large enough
# that a chunk read (MiBs) is not thousands of pieces.
PIECE_BYTES = 64 * 1024
# Pieces waiting per direction of a connection: at most 1 MiB held, then the proxy stops
# reading that side (backpressure through TCP).
QUEUE_PIECES_MAX = 16
# Connections at once; one more is closed at accept.
CONNECTIONS_MAX = 256
# Connecting to the upstream: a peer that does not answer SYN in this long is down.
UPSTREAM_CONNECT_TIMEOUT_S = 5.0
# Control requests are tiny; a line longer than this is refused.
CONTROL_LINE_BYTES_MAX = 4096
# How long a control client waits for an answer.
CONTROL_TIMEOUT_S = 5.0


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not host:port: {text!r}")
    return host, int(port)


@dataclass(eq=False)  # identity: connections are kept in a set
class _Conn:
    """One proxied connection: the accepted client side and its upstream."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


class Proxy:
    """Forwards TCP connections from ``listen`` to ``upstream`` with the faults above.
    All methods run on the event loop's thread."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        rng: random.Random | None = None,
        mark: int | None = None,
    ) -> None:
        self.upstream = upstream
        self.listen = listen
        self.mark = mark
        self.rng = rng or random.Random(0)
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.set_delay(delay_s, jitter_s)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self.accepted = 0
        self.refused = 0
        self.bytes_forwarded = 0

    # ------------------------------------------------------------------ faults

    def set_delay(self, delay_s: float, jitter_s: float = 0.0) -> None:
        if delay_s < 0 or jitter_s < 0:
            raise ValueError("delay and jitter must be >= 0")
        self.delay_s, self.jitter_s = delay_s, jitter_s

    def stall(self) -> None:
        self._flowing.clear()

    def unstall(self) -> None:
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def cut(self) -> int:
        """Close every connection (FIN on both sides); returns how many."""
        conns = list(self._conns)
        for conn in conns:
            self._close(conn, rst=False)
        return len(conns)

    def reset(self) -> int:
        """Abort every connection with an RST on both sides; returns how many."""
        conns = list(self._conns)
        for conn in conns:
            self._close(conn, rst=True)
        return len(conns)

    def stats(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "upstream": f"{self.upstream[0]}:{self.upstream[1]}",
            "delay_ms": round(self.delay_s * 1000, 3),
            "jitter_ms": round(self.jitter_s * 1000, 3),
            "stalled": self.stalled,
            "connections": len(self._conns),
            "accepted": self.accepted,
            "refused": self.refused,
            "bytes_forwarded": self.bytes_forwarded,
        }

    # ------------------------------------------------------------------ life cycle

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        host, port = self.listen
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=PIECE_BYTES, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.unstall()  # let writers waiting on the stall see the closed connections
        tasks = [t for c in list(self._conns) for t in c.tasks]
        for conn in list(self._conns):
            self._close(conn, rst=False)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= CONNECTIONS_MAX:
            self.refused += 1
            writer.close()
            return
        self.accepted += 1
        conn = _Conn(client=writer)
        self._conns.add(conn)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await self._connect_upstream()
        except (OSError, TimeoutError) as e:
            log.info("proxy event=upstream_unreachable upstream=%s:%d error=%s",
                     *self.upstream, e)  # fmt: skip
            self._close(conn, rst=True)
            return
        if conn not in self._conns:  # cut while connecting
            up_writer.close()
            return
        conn.upstream = up_writer
        conn.tasks = [
            asyncio.create_task(self._pump(conn, reader, up_writer)),
            asyncio.create_task(self._pump(conn, up_reader, writer)),
        ]
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        self._close(conn, rst=False)

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
                await loop.sock_connect(sock, self.upstream)
            return await asyncio.open_connection(sock=sock, limit=PIECE_BYTES)
        except BaseException:
            sock.close()
            raise

    async def _pump(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One direction: a reader fills a bounded queue stamped with release times, this
        task's writer empties it in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_PIECES_MAX)
        reading = asyncio.create_task(self._read_into(reader, queue))
        try:
            while True:
                release_at, data = await queue.get()
                wait_s = release_at - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)  # the injected delay itself
                await self._flowing.wait()
                if not data:  # EOF from the other side: pass the half-close on
                    if writer.can_write_eof():
                        writer.write_eof()
                    break
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)
        except (OSError, ConnectionError):
            self._close(conn, rst=False)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _read_into(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        last_release = 0.0
        while True:
            try:
                data = await reader.read(PIECE_BYTES)
            except (OSError, ConnectionError):
                data = b""
            jitter = self.rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0
            release_at = time.monotonic() + max(0.0, self.delay_s + jitter)
            # Never before the piece ahead of it: a TCP stream's bytes stay in order.
            last_release = max(last_release, release_at)
            await queue.put((last_release, data))
            if not data:
                return

    def _close(self, conn: _Conn, *, rst: bool) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        for writer in conn.writers():
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                writer.transport.abort()
            else:
                writer.close()
        for task in conn.tasks:
            if task is not asyncio.current_task():
                task.cancel()


# ---------------------------------------------------------------------- control


async def _serve_control(proxy: Proxy, path: Path) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = {"ok": True, **_control(proxy, json.loads(line))}
                except (ValueError, KeyError, TypeError) as e:
                    answer = {"ok": False, "error": str(e)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError):  # a line over the limit, or the client went away
            pass
        finally:
            writer.close()

    path.unlink(missing_ok=True)
    return await asyncio.start_unix_server(handle, str(path), limit=CONTROL_LINE_BYTES_MAX)


def _control(proxy: Proxy, request: dict[str, Any]) -> dict[str, Any]:
    op = request["op"]
    extra: dict[str, Any] = {}
    if op == "delay":
        proxy.set_delay(
            float(request.get("delay_ms", 0)) / 1000, float(request.get("jitter_ms", 0)) / 1000
        )
    elif op == "stall":
        proxy.stall()
    elif op == "unstall":
        proxy.unstall()
    elif op == "cut":
        extra["closed"] = proxy.cut()
    elif op == "reset":
        extra["closed"] = proxy.reset()
    elif op != "stats":
        raise ValueError(f"unknown op {op!r}")
    return {**proxy.stats(), **extra}


class ProxyControl:
    """A client of a proxy's control socket (blocking, for tests and the CLI)."""

    def __init__(self, path: Path, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            s.connect(str(self.path))
            s.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                piece = s.recv(CONTROL_LINE_BYTES_MAX)
                if not piece:
                    raise ConnectionError(f"proxy at {self.path} closed the control socket")
                buf += piece
        answer: dict[str, Any] = json.loads(buf)
        if not answer.pop("ok", False):
            raise ValueError(f"proxy refused {op}: {answer.get('error')}")
        return answer

    def set_delay(self, delay_ms: float, jitter_ms: float = 0.0) -> dict[str, Any]:
        return self.request("delay", delay_ms=delay_ms, jitter_ms=jitter_ms)

    def stall(self) -> dict[str, Any]:
        return self.request("stall")

    def unstall(self) -> dict[str, Any]:
        return self.request("unstall")

    def cut(self) -> dict[str, Any]:
        return self.request("cut")

    def reset(self) -> dict[str, Any]:
        return self.request("reset")

    def stats(self) -> dict[str, Any]:
        return self.request("stats")


# ---------------------------------------------------------------------- main


async def _main(args: argparse.Namespace) -> int:
    proxy = Proxy(
        parse_address(args.upstream),
        listen=parse_address(args.listen),
        delay_s=args.delay_ms / 1000,
        jitter_s=args.jitter_ms / 1000,
        rng=random.Random(args.seed),
        mark=args.mark,
    )
    await proxy.start()
    control = await _serve_control(proxy, args.control) if args.control else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening {proxy.listen[0]}:{proxy.port}", flush=True)
    log.info("proxy event=listening port=%d upstream=%s", proxy.port, args.upstream)
    await stop.wait()
    if control is not None:
        control.close()
        args.control.unlink(missing_ok=True)
    await proxy.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.testing.proxy")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port to accept on")
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--control", type=Path, help="UNIX socket path for control requests")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter's random.Random")
    parser.add_argument("--mark", type=lambda s: int(s, 0), help="SO_MARK of upstream sockets")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
