"""The outgoing connection of a Raft node to one peer (``node.py`` sends its frames here).

What it owns: one ``dfs.rpc`` connection to the peer, made at once and remade with backoff
while the peer is down. What it must not do: queue frames while the peer is down, or wait
for a full write buffer: frames are dropped then (counted, logged when the peer comes back),
since Raft retransmits what matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from dfs import rpc
from dfs.credentials import Credential
from dfs.types import NodeId
from dfs.wire.errors import AuthError, DfsError

log = logging.getLogger(__name__)

# Reconnecting to a peer that is down: start fast (a restarted peer should catch up at
# once), back off to at most a second so that a long outage costs nothing.
RECONNECT_DELAY_MIN_S = 0.05
RECONNECT_DELAY_MAX_S = 1.0
# A connection attempt to a peer on the same LAN either completes in milliseconds or the
# peer is down; two seconds also covers a loaded test machine.
PEER_CONNECT_TIMEOUT_S = 2.0


class Peer:
    """The outgoing connection to one peer: connects, reconnects with backoff, drops frames
    while it is down."""

    def __init__(
        self, node_id: NodeId, peer_id: NodeId, address: str, credentials: Credential
    ) -> None:
        self._node_id = node_id
        self._credentials = credentials
        self.id = peer_id
        self.address = address
        self._conn: rpc.Connection | None = None
        self._dropped = 0
        self._task = asyncio.get_running_loop().create_task(
            self._connect_loop(), name=f"raft-peer-{node_id}-{peer_id}"
        )

    def send(self, header: dict[str, Any], payload: bytes) -> None:
        conn = self._conn
        if conn is None or not conn.send_oneway_nowait(header, payload):
            self._dropped += 1

    def flush(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.flush()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _connect_loop(self) -> None:
        host, _, port_text = self.address.rpartition(":")
        port = int(port_text)
        node_id = self._node_id
        delay_s = RECONNECT_DELAY_MIN_S
        reported_down = False
        while True:
            try:
                conn = await rpc.connect(
                    host,
                    port,
                    self._credentials,
                    name=f"raft-{node_id}",
                    role="metaserver",
                    timeout_s=PEER_CONNECT_TIMEOUT_S,
                )
            except AuthError as e:
                # A configuration error (another cluster's secret), not a passing failure.
                log.error(
                    "raft node=%d event=peer_auth_failed peer=%d error=%s", node_id, self.id, e
                )
                await asyncio.sleep(RECONNECT_DELAY_MAX_S)
                continue
            except DfsError as e:
                if not reported_down:
                    log.info(
                        "raft node=%d event=peer_down peer=%d address=%s error=%s",
                        node_id, self.id, self.address, e,
                    )  # fmt: skip
                    reported_down = True
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_DELAY_MAX_S)
                continue
            delay_s = RECONNECT_DELAY_MIN_S
            reported_down = False
            self._conn = conn
            log.info(
                "raft node=%d event=peer_up peer=%d address=%s dropped=%d",
                node_id, self.id, self.address, self._dropped,
            )  # fmt: skip
            try:
                while not conn.closed:
                    with contextlib.suppress(TimeoutError):
                        await conn.wait_closed(timeout_s=3600.0)
            finally:
                self._conn = None
                conn.close()
            log.info("raft node=%d event=peer_lost peer=%d", node_id, self.id)


__all__ = ["Peer"]
