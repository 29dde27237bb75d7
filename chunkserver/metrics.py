"""What a chunkserver shows Prometheus (``metrics_port``; dfs/metrics.py serves it).

What it owns: the chunkserver's readings, taken on its event loop at each scrape: its
space, replicas and requests in flight. Bytes read and written are the request payload
counters every server has (``dfs_payload_bytes_total{op="chunk.read",direction="out"}``
and ``{op="chunk.write",direction="in"}``). What it must not do: change anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dfs.metrics import Reading, gauge

if TYPE_CHECKING:
    from chunkserver.server import ChunkServer


def readings(server: ChunkServer) -> dict[str, Reading]:
    if server.store is None:
        return {}
    store = server.store.store
    return {
        "dfs_chunkserver_used_bytes": gauge("Bytes its replicas take", store.used_bytes),
        "dfs_chunkserver_capacity_bytes": gauge("Bytes it may use", store.capacity_bytes),
        "dfs_chunkserver_replicas": gauge("Replicas it holds", store.chunk_count),
        "dfs_chunkserver_requests_in_flight": gauge("Requests being handled", server.load),
    }


__all__ = ["readings"]
