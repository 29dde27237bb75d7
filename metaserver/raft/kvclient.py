"""Client of the replicated key-value server (``kvserver.py``): leader discovery and retries.

What it owns: connections to the servers (shared by the sessions of one ``KvPool``), the
guess of who leads, and each session's (client id, sequence number).

Retry rules (exactly once, design.md §3 invariant 6): a mutation gets its sequence number
once and keeps it through every retry: after a timeout, a lost connection, ``Unavailable``
or a leader change, the same (client id, seq) is sent again until the deadline. The state
machine's sessions apply it at most once and answer a duplicate with the first result. A
session has at most one mutation in flight (``SessionTable`` remembers only the last one per
client), so concurrent callers of one ``KvClient`` queue on its lock; use one ``KvClient``
per concurrent writer.

Leader discovery and retries: the one leader-following loop, ``dfs/leader.py`` (its guess
of who leads is the pool's, shared by its sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Any

from dfs import rpc
from dfs.credentials import Credential
from dfs.leader import LeaderFollower

# One attempt: long enough for a commit on a loaded machine, short enough that a dead
# leader is given up on quickly (an election takes 1-2 s with the default ticks anyway).
ATTEMPT_TIMEOUT_S = 2.0
DEADLINE_S = 30.0
# Backoff between attempts when nobody is known to lead (an election is going on): a
# benchmark wants the new leader found soon after it is elected.
BACKOFF_MAX_S = 0.25
CONNECT_TIMEOUT_S = 2.0


class KvPool:
    """Connections to the servers and the current leader guess, shared by sessions."""

    def __init__(
        self,
        addresses: Sequence[str],
        credentials: Credential,
        *,
        name: str = "kvclient",
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> None:
        assert addresses, "at least one server address"
        self.follower = LeaderFollower(
            addresses, attempt_timeout_s=attempt_timeout_s, backoff_max_s=BACKOFF_MAX_S, name=name
        )
        self.credentials = credentials
        self.name = name
        self._conns: dict[str, rpc.Connection] = {}
        self._connecting: dict[str, asyncio.Future[rpc.Connection]] = {}

    @property
    def leader(self) -> str | None:
        return self.follower.leader

    async def connection(self, address: str, timeout_s: float) -> rpc.Connection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(address)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._connecting[address] = pending
            try:
                host, _, port = address.rpartition(":")
                conn = await rpc.connect(
                    host, int(port), self.credentials, name=self.name, timeout_s=timeout_s
                )
            except BaseException as e:
                if isinstance(e, asyncio.CancelledError):
                    pending.cancel()
                else:
                    pending.set_exception(e)
                    pending.exception()  # marks it retrieved: there may be no other waiter
                raise
            finally:
                self._connecting.pop(address, None)
            self._conns[address] = conn
            pending.set_result(conn)
            return conn
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(pending)

    async def call(
        self, address: str, op: str, timeout_s: float, /, **fields: Any
    ) -> tuple[dict[str, Any], bytes]:
        """One attempt of ``op`` at ``address`` (fields may be named like the parameters)."""
        conn = await self.connection(address, min(timeout_s, CONNECT_TIMEOUT_S))
        return await conn.call(op, timeout_s=timeout_s, **fields)

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()
        for conn in conns.values():
            with contextlib.suppress(TimeoutError):
                await conn.wait_closed()


class KvClient:
    """One session: ``put``, ``append`` (exactly once) and ``get`` (linearizable)."""

    def __init__(
        self,
        addresses: Sequence[str] = (),
        credentials: Credential = None,
        *,
        pool: KvPool | None = None,
        client_id: int | None = None,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        name: str = "kvclient",
    ) -> None:
        if pool is None:
            assert credentials is not None, "credentials or a pool"
            pool = KvPool(addresses, credentials, name=name)
            self._owns_pool = True
        else:
            self._owns_pool = False
        self.pool = pool
        # 63 random bits: unique among clients without coordination; 0 means "no session".
        self.client_id = client_id or (int.from_bytes(os.urandom(8), "big") >> 1) or 1
        self.seq = 0
        self.attempt_timeout_s = attempt_timeout_s
        self._lock = asyncio.Lock()

    async def put(self, key: str, value: str, *, deadline_s: float = DEADLINE_S) -> str:
        """Set ``key``; returns the value after the command. Retries until ``deadline_s``."""
        return await self._mutate("put", key, value, deadline_s)

    async def append(self, key: str, value: str, *, deadline_s: float = DEADLINE_S) -> str:
        """Append to ``key``'s value; returns the value after the command."""
        return await self._mutate("append", key, value, deadline_s)

    async def get(self, key: str, *, deadline_s: float = DEADLINE_S) -> str | None:
        header = await self._call_leader("get", deadline_s, key=key)
        value = header.get("value")
        assert value is None or isinstance(value, str)
        return value

    async def close(self) -> None:
        if self._owns_pool:
            await self.pool.close()

    async def _mutate(self, op: str, key: str, value: str, deadline_s: float) -> str:
        async with self._lock:
            self.seq += 1
            header = await self._call_leader(
                op, deadline_s, client=self.client_id, seq=self.seq, key=key, value=value
            )
        result = header.get("value")
        assert isinstance(result, str)
        return result

    async def _call_leader(self, op: str, deadline_s: float, **fields: Any) -> dict[str, Any]:
        """Send ``op`` to the leader, following hints and retrying the same fields."""
        pool = self.pool

        async def attempt(address: str, attempt_s: float) -> tuple[dict[str, Any], bytes]:
            # The server gives up a little before us, so that its answer (Timeout) arrives.
            return await pool.call(
                address, op, attempt_s, timeout_ms=max(1, int(attempt_s * 900)), **fields
            )

        header, _ = await pool.follower.call(
            op, attempt, timeout_s=deadline_s, attempt_timeout_s=self.attempt_timeout_s
        )
        return header


__all__ = ["KvClient", "KvPool"]
