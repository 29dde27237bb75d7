"""One persistent connection per server, shared by everything in one client.

What it owns: the map address -> ``Connection``, connecting on first use and again after a
connection ended (the next call reconnects; nothing reconnects in the background), and the
count of calls in flight per address (the load signal the chunk reader uses to pick the
least loaded replica). What it must not do: retry. A call is one attempt on one address;
retries, leader discovery and failover belong to the callers (``meta.py``, ``chunkio.py``),
which know what is safe to repeat.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dfs.client.conn import Connection, OnewayHandler, Payload, connect
from dfs.client.stats import OpStats
from dfs.credentials import Credential
from dfs.wire.errors import Timeout, Unavailable


class ConnectionPool:
    """Connections to every server this client talks to. Connections run in ``task_group``."""

    def __init__(
        self,
        task_group: TaskGroup,
        credentials: Credential,
        *,
        name: str,
        connect_timeout_s: float,
    ) -> None:
        self._task_group = task_group
        self._credentials = credentials
        self._name = name
        self._connect_timeout_s = connect_timeout_s
        self._conns: dict[str, Connection] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._in_flight: dict[str, int] = {}
        self._closed = False
        self.stats = OpStats()  # every call by op: count and time (answered or not)
        # Given to every connection: one-way frames from servers (``Connection.on_oneway``).
        self.on_oneway: OnewayHandler | None = None

    @property
    def in_flight(self) -> Mapping[str, int]:
        """Calls in flight per address (through this pool)."""
        return self._in_flight

    async def get(self, address: str, timeout_s: float) -> Connection:
        """The live connection to ``address``, connecting first when there is none.
        Concurrent callers share one connection attempt. ``Unavailable``/``Timeout``/
        ``AuthError`` as ``connect``."""
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise Unavailable("client is closed")
        lock = self._locks.setdefault(address, anyio.Lock())
        try:
            with anyio.fail_after(timeout_s):
                async with lock:
                    conn = self._conns.get(address)
                    if conn is not None and not conn.closed:
                        return conn
                    conn = await connect(
                        address,
                        self._credentials,
                        name=self._name,
                        task_group=self._task_group,
                        timeout_s=min(timeout_s, self._connect_timeout_s),
                    )
                    if self._closed:
                        await conn.aclose()
                        raise Unavailable("client is closed")
                    conn.on_oneway = self.on_oneway
                    self._conns[address] = conn
                    return conn
        except TimeoutError:
            raise Timeout(f"no connection to {address} in {timeout_s} s") from None

    async def call(
        self,
        address: str,
        op: str,
        payload: Payload = b"",
        /,
        *,
        timeout_s: float,
        **fields: Any,
    ) -> tuple[dict[str, Any], bytes]:
        """One attempt of ``op`` at ``address`` within ``timeout_s`` (connecting included).
        Positional-only, so that a request may have fields named ``address`` or ``op``."""
        # The pool's own clock (time.monotonic: anyio's asks which event loop runs first,
        # a good part of a small call's cost); the connection keeps the deadline.
        start = time.monotonic()
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        try:
            conn = self._conns.get(address)
            if conn is None or conn.closed:
                conn = await self.get(address, timeout_s)
                timeout_s = max(start + timeout_s - time.monotonic(), 0.001)
            return await conn.call(op, payload, timeout_s=timeout_s, **fields)
        finally:
            self._in_flight[address] -= 1
            self.stats.record(op, time.monotonic() - start)

    def current(self, address: str) -> Connection | None:
        """The open connection to ``address``, if there is one (no connecting)."""
        conn = self._conns.get(address)
        return conn if conn is not None and not conn.closed else None

    async def aclose(self) -> None:
        self._closed = True
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            await conn.aclose()


def server_timeout_ms(timeout_s: float) -> int:
    """The ``timeout_ms`` a request carries when the client waits ``timeout_s`` for it: a
    tenth inside, so that the server's own ``Timeout`` answer arrives before the client
    gives up."""
    return max(1, int(timeout_s * 900))


__all__ = ["ConnectionPool", "server_timeout_ms"]
