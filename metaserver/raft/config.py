"""The Raft part of a server's config file: the keys every Raft daemon of this project
takes (the metaserver, and the key-value server the Raft benchmark runs), parsed and
checked in one place.

Keys (TOML)::

    id = 1                              # this node's id, >= 1
    listen = "127.0.0.1:7001"           # peers and clients, one port
    data_dir = "/var/lib/dfs/meta1"     # the Raft directory (log segments, snapshots)
    secret_file = "/etc/dfs/secret"     # the cluster secret (mode 0600)
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
from typing import Any

from dfs.types import NodeId
from metaserver.raft.node import NodeConfig

NODE_KEYS = frozenset(
    {"id", "listen", "data_dir", "secret_file", "tick_ms", "election_ticks",
     "heartbeat_ticks", "snapshot_entries", "fsync", "join", "read_lease", "peers"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class NodeSection:
    node: NodeConfig
    listen_host: str
    listen_port: int
    secret_file: Path


def parse_node(raw: dict[str, Any], path: Path, known: frozenset[str]) -> NodeSection:
    """The Raft keys of config file ``path`` (``raw``, as read), after refusing any key
    neither Raft's nor in the daemon's ``known``; ``ValueError`` says what is wrong."""
    unknown = set(raw) - NODE_KEYS - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    try:
        node_id = NodeId(int(raw["id"]))
        host, port = _address(raw["listen"], "listen")
        peers = {
            NodeId(int(k)): _join(_address(v, f"peer {k}")) for k, v in raw.get("peers", {}).items()
        }
        node = NodeConfig(
            id=node_id,
            data_dir=Path(raw["data_dir"]),
            peers=peers,
            tick_ms=int(raw.get("tick_ms", 100)),
            election_ticks=int(raw.get("election_ticks", 10)),
            heartbeat_ticks=int(raw.get("heartbeat_ticks", 1)),
            snapshot_entries=int(raw.get("snapshot_entries", 10_000)),
            fsync=bool(raw.get("fsync", True)),
            join=bool(raw.get("join", False)),
            read_lease=bool(raw.get("read_lease", True)),
        )
        section = NodeSection(node, host, port, Path(raw["secret_file"]))
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    if node_id < 1 or any(n < 1 for n in peers):
        raise ValueError(f"{path}: node ids start at 1")
    if not node.join and node_id not in peers:
        raise ValueError(f"{path}: an initial member must be in [peers]")
    if node.tick_ms < 1 or node.snapshot_entries < 1:
        raise ValueError(f"{path}: tick_ms and snapshot_entries must be >= 1")
    return section


def _address(value: Any, what: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); ``ValueError`` naming ``what`` otherwise."""
    host, _, port_text = str(value).rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{what}: {value!r} is not HOST:PORT")
    return host, int(port_text)


def _join(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


__all__ = ["NODE_KEYS", "NodeSection", "parse_node"]
