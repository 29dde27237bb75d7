"""The listening end of ``dfs.rpc``: the server that ``rpc.serve`` returns, which holds the
connections it accepted and their budgets (``dfs/budget.py``).

What it owns: the ``asyncio.Server``, the set of accepted connections, the byte budget they
share and the count of connections per host and in total (refusals at accept), and, in a
TLS cluster, closing those whose certificate was revoked (``dfs/revocations.py``). What it
must not do: read or write frames (``dfs/rpc.py``'s ``Connection`` does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dfs.budget import ByteBudget, ConnectionCount, Limits
from dfs.ratelog import RateLimitedLog
from dfs.revocations import RELOAD_S
from dfs.wire.errors import Unavailable

if TYPE_CHECKING:
    from dfs.credentials import Credentials
    from dfs.rpc import Connection

log = logging.getLogger("dfs.rpc")  # its lines are the connections' (one logger to filter)
_drop_log = RateLimitedLog(log)

# Bytes a request will hold while it is handled (its payload and the answer it asks for).
RequestBytes = Callable[[dict[str, Any], bytes], int]


class RpcServer:
    """A listening ``serve`` endpoint and the connections it accepted, with their budgets
    (``dfs/budget.py``): bytes in flight of them all, connections per host and in total.

    ``asyncio.Server.close`` on Python 3.11 leaves accepted connections open, so this wrapper
    tracks them and ``close`` closes them too.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        request_bytes: RequestBytes | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.connections: set[Connection] = set()
        self.limits = limits or Limits()
        self.request_bytes = request_bytes
        self.budget = ByteBudget(self.limits.inflight_bytes_max)
        self.conns = ConnectionCount(self.limits)
        self._sweep: asyncio.TimerHandle | None = None
        self._revocations = credentials.tls.revocations if credentials and credentials.tls else None
        self._server: asyncio.Server | None = None

    @property
    def server(self) -> asyncio.Server | None:
        return self._server

    @server.setter
    def server(self, server: asyncio.Server) -> None:
        """Set once listening (``rpc.serve``): the revocation sweep starts then, so a
        bind that fails leaves no timer behind."""
        self._server = server
        if self._revocations is not None and self._sweep is None:
            self._sweep_revoked()

    def _sweep_revoked(self) -> None:
        """Every ``RELOAD_S`` until ``close``: close the connections of this process,
        accepted or dialled, whose peer's certificate was revoked since they connected
        (new ones are refused in their handshake: ``Credentials.handshake``)."""
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(RELOAD_S, self._sweep_revoked)  # first: always again
        assert self._revocations is not None
        self._revocations.sweep()

    def admit(self, connection: Connection, address: object) -> bool:
        """Track and count a connection just accepted, or close it (over a limit) and say
        so in a rate-limited line. Called from ``connection_made``: under TLS only once
        the TLS handshake succeeded (one that failed never comes here nor to
        ``connection_lost``, so it must not be tracked before)."""
        self.connections.add(connection)
        connection.when_closed(lambda: self.connections.discard(connection))
        host = address[0] if isinstance(address, tuple) and address else str(address)
        refused = self.conns.admit(host)
        if refused is None:
            connection.when_closed(lambda: self.conns.release(host))
            return True
        _drop_log.log(
            logging.WARNING,
            ("refused", host),
            "rpc: refusing connection event=conn_limit peer=%s local=%s limit=%s",
            connection.peername,
            connection.name,
            refused,
        )
        connection.refuse(Unavailable(f"connection limit reached ({refused})"))
        return False

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self.server is not None and self.server.sockets
        port = self.server.sockets[0].getsockname()[1]
        assert isinstance(port, int)
        return port

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.close()

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            if self.server is not None:
                await self.server.wait_closed()
            for connection in list(self.connections):
                await connection.wait_closed(timeout_s)

    async def __aenter__(self) -> RpcServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


__all__ = ["RequestBytes", "RpcServer"]
