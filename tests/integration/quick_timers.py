"""The timers most clusters of the integration tests run with: a Raft tick of 50 ms
(elections and leases in a fraction of a second) and a chunkserver heartbeat every 200 ms
(the leader hears of a new or returning chunkserver at once).

``QUICK_TIMERS`` are keywords of ``dfs.cli.cluster.init_layout`` (and so of
``tools.testing.localcluster.running``): ``running(directory, **QUICK_TIMERS)``.
"""

from __future__ import annotations

from typing import Any

QUICK_TIMERS: dict[str, Any] = {
    "meta_options": {"tick_ms": 50},
    "cs_options": {"heartbeat_ms": 200},
}
