"""The Raft part of a server's config file: the keys every Raft daemon of this project
takes (the metaserver, and the key-value server the Raft benchmark runs), parsed and
checked in one place.

Keys (TOML)::

    id = 1                              # this node's id, >= 1
    listen = "127.0.0.1:7001"           # peers and clients, one port
    data_dir = "/var/lib/dfs/meta1"     # the Raft directory (log segments, snapshots)
    secret_file = "/etc/dfs/secret"     # the cluster secret (mode 0600)
    credential_file = "/etc/dfs/m1.pem" # optional; this server's TLS credential (dfs/pki.py):
                                        #   TLS with peers and clients; absent: none
    tick_ms = 100                       # optional; Raft tick (elections after 10-20 ticks)
    election_ticks = 10                 # optional
    heartbeat_ticks = 1                 # optional
    snapshot_entries = 10000            # optional; snapshot every N applied entries
    fsync = true                        # optional; false only for tests
    join = false                        # optional; true: an empty node added by add_member
    read_lease = true                   # optional; reads on the leader's lease (same on all)
    [peers]                             # the initial members, this node included
    1 = "127.0.0.1:7001"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfs.config import ConfigFile
from dfs.types import NodeId
from metaserver.raft.node import NodeConfig

NODE_KEYS = frozenset(
    {"id", "listen", "data_dir", "secret_file", "credential_file", "tick_ms", "election_ticks",
     "heartbeat_ticks", "snapshot_entries", "fsync", "join", "read_lease", "peers"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class NodeSection:
    node: NodeConfig
    listen_host: str
    listen_port: int
    secret_file: Path
    credential_file: Path | None


def parse_node(config: ConfigFile) -> NodeSection:
    """The Raft keys of a daemon's config file (read by ``dfs/config.py``, which refused
    the keys neither Raft's nor the daemon's); ``ValueError`` says what is wrong."""
    node_id = NodeId(config.get("id", int))
    host, port = config.address("listen", config.get("listen", str))
    peers_table = config.get("peers", dict, {})
    peers: dict[NodeId, str] = {}
    for key, value in peers_table.items():
        if not key.isdigit():
            raise config.error(f"peers: {key!r} is not a node id")
        config.address(f"peer {key}", value)
        peers[NodeId(int(key))] = value
    node = NodeConfig(
        id=node_id,
        data_dir=Path(config.get("data_dir", str)),
        peers=peers,
        tick_ms=config.get("tick_ms", int, 100),
        election_ticks=config.get("election_ticks", int, 10),
        heartbeat_ticks=config.get("heartbeat_ticks", int, 1),
        snapshot_entries=config.get("snapshot_entries", int, 10_000),
        fsync=config.get("fsync", bool, True),
        join=config.get("join", bool, False),
        read_lease=config.get("read_lease", bool, True),
    )
    section = NodeSection(
        node,
        host,
        port,
        Path(config.get("secret_file", str)),
        config.optional_path("credential_file"),
    )
    if node_id < 1 or any(n < 1 for n in peers):
        raise config.error("node ids start at 1")
    if not node.join and node_id not in peers:
        raise config.error("an initial member must be in [peers]")
    if node.tick_ms < 1 or node.snapshot_entries < 1:
        raise config.error("tick_ms and snapshot_entries must be >= 1")
    return section


__all__ = ["NODE_KEYS", "NodeSection", "parse_node"]
