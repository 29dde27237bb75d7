"""The metaserver's config file: its format, defaults and checks. Pure (reads one file).

Config file (TOML, version 1)::

    id = 1                              # this node's id, >= 1
    listen = "127.0.0.1:7001"           # peers, clients and chunkservers, one port
    data_dir = "/var/lib/dfs/meta1"     # the Raft directory (log segments, snapshots)
    secret_file = "/etc/dfs/secret"     # the cluster secret (mode 0600)
    chunk_size = 67108864               # optional; bytes, fixed when the cluster is formatted
    dead_timeout_ms = 10000             # optional; a chunkserver silent this long is dead
    placement = "weighted"              # optional; weighted | random | round_robin
    token_ttl_ms = 600000               # optional; lifetime of chunk access tokens
    repair_interval_ms = 1000           # optional; chunk survey and repair period
    repair_quiet_ms = 10000             # optional; a chunk touched this recently waits
    gc_grace_ms = 30000                 # optional; deleted chunks are kept this long
    trash_time_s = 86400                # optional; a removed file is kept this long
                                        #   (the fresh root's trash time; 0: none)
    replication_jobs = 4                # optional; chunk copies in flight, cluster-wide
    hold_grace_ms = 15000               # optional; a new leader keeps every unlinked file
                                        #   this long, while clients announce open files
    metrics_port = 9101                 # optional; Prometheus metrics on the listen host
                                        #   (0: any free port; absent: off)
    tick_ms = 100                       # optional; and the other Raft keys:
                                        #   metaserver/raft/config.py
    inflight_bytes_max = 100663296      # optional; budgets, as the chunkserver's (also
                                        #   conn_inflight_bytes_max, host_conns_max,
                                        #   conns_max): ARCHITECTURE.md, "Budgets"
    [peers]                             # the initial members, this node included
    1 = "127.0.0.1:7001"
    2 = "127.0.0.1:7002"
    3 = "127.0.0.1:7003"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dfs.budget import LIMIT_KEYS, Limits, limits_from
from dfs.config import ConfigFile
from dfs.wire.limits import BLOCK_BYTES, CHUNK_SIZE_BYTES_DEFAULT, CHUNK_SIZE_BYTES_MAX
from metaserver.chunks.placement import PLACEMENT_POLICIES
from metaserver.holds import HOLD_GRACE_S
from metaserver.namespace.commands import TRASH_S_DEFAULT, TRASH_S_MAX
from metaserver.raft.config import NODE_KEYS, parse_node
from metaserver.raft.node import NodeConfig

CONFIG_VERSION = 1
CHUNK_SIZE_DEFAULT = CHUNK_SIZE_BYTES_DEFAULT
# A cluster's chunk size is whole checksum blocks (a replica's checksums cover blocks).
CHUNK_SIZE_MIN = BLOCK_BYTES
CHUNK_SIZE_MAX = CHUNK_SIZE_BYTES_MAX


# The metaserver's own keys (the Raft ones: metaserver/raft/config.py).
_KEYS = frozenset(
    {"chunk_size", "dead_timeout_ms", "placement", "token_ttl_ms", "repair_interval_ms",
     "repair_quiet_ms", "gc_grace_ms", "replication_jobs", "hold_grace_ms", "metrics_port",
     "trash_time_s"}
) | LIMIT_KEYS  # fmt: skip


@dataclass(slots=True)
class MetaConfig:
    node: NodeConfig
    listen_host: str
    listen_port: int
    secret_file: Path
    credential_file: Path | None = None  # TLS (dfs/credentials.py); None: the secret only
    chunk_size_bytes: int = CHUNK_SIZE_DEFAULT
    dead_timeout_s: float = 10.0
    placement: str = "weighted"
    token_ttl_ms: int = 600_000
    repair_interval_s: float = 1.0
    repair_quiet_s: float = 10.0
    gc_grace_s: float = 30.0
    replication_jobs: int = 4
    hold_grace_s: float = HOLD_GRACE_S
    limits: Limits = field(default_factory=Limits)
    metrics_port: int | None = None  # dfs/metrics.py; None: off
    trash_time_s: int = TRASH_S_DEFAULT  # the fresh root's (namespace/trash.py)


def load_config(path: Path) -> MetaConfig:
    """Parse and check a config file (``dfs/config.py``); ``ValueError`` says what is wrong."""
    file = ConfigFile.load(path, NODE_KEYS | _KEYS)
    section = parse_node(file)
    config = MetaConfig(
        node=section.node,
        listen_host=section.listen_host,
        listen_port=section.listen_port,
        secret_file=section.secret_file,
        credential_file=section.credential_file,
        chunk_size_bytes=file.get("chunk_size", int, CHUNK_SIZE_DEFAULT),
        dead_timeout_s=file.get("dead_timeout_ms", int, 10_000) / 1000,
        placement=file.get("placement", str, "weighted"),
        token_ttl_ms=file.get("token_ttl_ms", int, 600_000),
        repair_interval_s=file.get("repair_interval_ms", int, 1000) / 1000,
        repair_quiet_s=file.get("repair_quiet_ms", int, 10_000) / 1000,
        gc_grace_s=file.get("gc_grace_ms", int, 30_000) / 1000,
        replication_jobs=file.get("replication_jobs", int, 4),
        hold_grace_s=file.get("hold_grace_ms", int, int(HOLD_GRACE_S * 1000)) / 1000,
        limits=limits_from(file.raw, path),
        metrics_port=file.port("metrics_port"),
        trash_time_s=file.get("trash_time_s", int, TRASH_S_DEFAULT),
    )
    cs = config.chunk_size_bytes
    if not (CHUNK_SIZE_MIN <= cs <= CHUNK_SIZE_MAX) or cs % CHUNK_SIZE_MIN:
        raise ValueError(
            f"{path}: chunk_size must be a multiple of {CHUNK_SIZE_MIN} "
            f"between {CHUNK_SIZE_MIN} and {CHUNK_SIZE_MAX}"
        )
    if config.placement not in PLACEMENT_POLICIES:
        raise ValueError(f"{path}: placement must be one of {PLACEMENT_POLICIES}")
    if not 0 <= config.trash_time_s <= TRASH_S_MAX:
        raise ValueError(f"{path}: trash_time_s must be 0..{TRASH_S_MAX}")
    if config.dead_timeout_s <= 0 or config.token_ttl_ms < 1000:
        raise ValueError(f"{path}: dead_timeout_ms > 0 and token_ttl_ms >= 1000")
    if (
        config.repair_interval_s <= 0
        or config.repair_quiet_s < 0
        or config.gc_grace_s < 0
        or config.replication_jobs < 1
    ):
        raise ValueError(
            f"{path}: repair_interval_ms > 0, repair_quiet_ms >= 0, gc_grace_ms >= 0, "
            "replication_jobs >= 1"
        )
    return config


__all__ = ["CHUNK_SIZE_DEFAULT", "MetaConfig", "load_config"]
