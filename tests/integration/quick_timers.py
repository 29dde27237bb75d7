"""The timers most clusters of the integration tests run with: a Raft tick of 50 ms
(elections and leases in a fraction of a second) and a chunkserver heartbeat every 200 ms
(the leader hears of a new or returning chunkserver at once).

``QUICK_TIMERS`` are keywords of ``dfs.cli.cluster.init_layout`` (and so of
``tools.testing.localcluster.running``): ``running(directory, **QUICK_TIMERS)``.
``quick_cluster`` is such a cluster with 1 MiB chunks, for a module's fixture (the
directory leases' tests and close behind's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from dfs.cli import cluster as local
from tools.testing.localcluster import running

QUICK_TIMERS: dict[str, Any] = {
    "meta_options": {"tick_ms": 50},
    "cs_options": {"heartbeat_ms": 200},
}


@contextlib.contextmanager
def quick_cluster(factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    """A cluster with ``QUICK_TIMERS`` and 1 MiB chunks, running for the block."""
    with running(factory.mktemp("cluster"), chunk_size=1 << 20, **QUICK_TIMERS) as layout:
        yield layout
