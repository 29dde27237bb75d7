"""The cluster of the operator's tests (``dfs admin`` and its kin: ``test_admin_cluster``,
``test_backup_restore``, ``test_fsck_goals``, ``test_salvage``): made by
``dfs.cli.cluster.init_layout`` with fast repair and small chunkservers, started as an
operator starts one (``dfs up --detach --no-mount``), and stopped by PID after the block,
its logs printed (``tools.testing.localcluster.stop``).

Each module's differences are ``running``'s parameters: how many servers, the chunk size,
chunkserver options added to ``CS_OPTIONS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dfs.cli import cluster as local
from tools.testing.localcluster import dfs_cli, stop

CHUNK = 256 << 10
# A chunkserver silent for 1.5 s is dead, and repair surveys every 0.2 s the chunks
# untouched for 0.5 s: a lost replica is copied again within seconds.
META_OPTIONS = {"dead_timeout_ms": 1500, "repair_interval_ms": 200, "repair_quiet_ms": 500}
CS_OPTIONS = {"capacity_bytes": 64 << 20, "heartbeat_ms": 200}
# Block reports every second: each one that finds a replica lost drops it from its set,
# and the next report judges the chunk once it is quiet again.
REPORT_OPTIONS = {"report_interval_ms": 1000}


@contextlib.contextmanager
def running(
    directory: Path,
    *,
    metaservers: int = 1,
    chunkservers: int = 3,
    chunk_size: int = CHUNK,
    cs_options: dict[str, Any] | None = None,
) -> Iterator[str]:
    """A cluster in ``directory`` (``cs_options`` added to ``CS_OPTIONS``) for the block;
    yields what ``dfs up`` printed."""
    local.init_layout(
        directory,
        metaservers=metaservers,
        chunkservers=chunkservers,
        chunk_size=chunk_size,
        meta_options=META_OPTIONS,
        cs_options={**CS_OPTIONS, **(cs_options or {})},
    )
    try:
        yield dfs_cli("up", "--dir", str(directory), "--detach", "--no-mount").stdout
    finally:
        stop(directory)
