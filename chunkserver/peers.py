"""Persistent connections to other servers (the next chunkserver in a chain, the metaservers).

What it owns: one authenticated ``dfs.rpc`` connection per "host:port", made on first use,
made again after it closes, shared by every request to that address (``dfs.rpc`` pipelines
calls on it), at most ``peers_max`` of them (the least recently used is closed past that).
Also the parsing of "host:port" strings that peers send.

What it must not do: retry on its own. A ``chunk.write`` is idempotent, but whether to try
again, and where, is the caller's decision (the client's, for a chain).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import Any

from dfs import rpc
from dfs.credentials import Credential
from dfs.wire.errors import Invalid, Timeout

# Connecting includes the handshake: milliseconds on a LAN. A peer that takes longer is
# treated as down for this call; the next call tries again.
CONNECT_TIMEOUT_S = 3.0
# Distinct chunkservers and metaservers one server talks to. A cluster has a handful of
# metaservers and at most a few thousand chunkservers; a server forwards to those that
# follow it in chains, so a few hundred covers a big cluster, and the LRU bound keeps a
# hostile stream of chains from holding sockets open.
PEERS_MAX = 256
ADDRESS_BYTES_MAX = 261  # a 255-byte host name, ":" and a port


def parse_address(address: Any) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) into (host, port); ``Invalid`` if malformed."""
    if not isinstance(address, str) or not 0 < len(address) <= ADDRESS_BYTES_MAX:
        raise Invalid("address must be a 'host:port' string", address=str(address)[:64])
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Invalid("address must be 'host:port'", address=address)
    return host, int(port_text)


class PeerPool:
    def __init__(
        self,
        credentials: Credential,
        *,
        name: str,
        role: str = "chunkserver",
        peers_max: int = PEERS_MAX,
    ) -> None:
        self.credentials = credentials
        self.name = name
        self.role = role
        self.peers_max = peers_max
        self._conns: OrderedDict[str, rpc.Connection] = OrderedDict()
        self._connecting: dict[str, asyncio.Future[rpc.Connection]] = {}
        self._closed = False

    async def connection(
        self, address: str, timeout_s: float = CONNECT_TIMEOUT_S
    ) -> rpc.Connection:
        """The open connection to ``address``, connecting (once, for all callers) if needed.
        Raises ``Unavailable``, ``Timeout``, ``AuthError`` or ``Invalid`` (bad address)."""
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            self._conns.move_to_end(address)
            return conn
        pending = self._connecting.get(address)
        if pending is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    return await asyncio.shield(pending)
            except TimeoutError:
                raise Timeout(f"connect to {address} took over {timeout_s} s") from None
        host, port = parse_address(address)
        pending = asyncio.get_running_loop().create_future()
        self._connecting[address] = pending
        try:
            conn = await rpc.connect(
                host, port, self.credentials, name=self.name, role=self.role, timeout_s=timeout_s
            )
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                pending.cancel()
            else:
                pending.set_exception(e)
                pending.exception()  # retrieved: there may be no other waiter
            raise
        finally:
            self._connecting.pop(address, None)
        if self._closed:
            conn.close()
        else:
            self._conns[address] = conn
            self._conns.move_to_end(address)
            while len(self._conns) > self.peers_max:
                _, oldest = self._conns.popitem(last=False)
                oldest.close()
        pending.set_result(conn)
        return conn

    async def call(
        self,
        address: str,
        op: str,
        payload: rpc.Payload = b"",
        /,
        *,
        timeout_s: float,
        **fields: Any,
    ) -> tuple[dict[str, Any], bytes]:
        """One call of ``op`` at ``address``; the whole of it (connecting included) within
        ``timeout_s``. (Positional-only parameters: ``address`` is also a request field.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = await self.connection(address, min(timeout_s, CONNECT_TIMEOUT_S))
        remaining_s = max(deadline - loop.time(), 0.001)
        return await conn.call(op, payload, timeout_s=remaining_s, **fields)

    async def close(self) -> None:
        self._closed = True
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(TimeoutError):
                await conn.wait_closed(1.0)


__all__ = ["CONNECT_TIMEOUT_S", "PEERS_MAX", "PeerPool", "parse_address"]
