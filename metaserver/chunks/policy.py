"""The cluster's chunk policy: what the operator decided about where replicas may live.

Hard state: the namespace keeps it (through Raft, so a new leader acts on it at once) and
hands it out as one frozen value (``Namespace.policy()``); the chunk core reads it at every
step and never changes it. What the operator decides:
- ``draining``: chunkservers being decommissioned (``dfs admin decommission``). Their
  replicas still serve reads but no longer count toward a chunk's goal, so the core copies
  each chunk elsewhere and then trims the draining replica; nothing new is placed there.
- ``labels``: each chunkserver's host and rack (its config's ``host`` and ``rack``; by
  default the host of its address and no rack). Replicas of one chunk go to distinct hosts,
  then distinct racks, when the cluster has enough of them.
- ``rebalance``: a rebalance the operator started (``dfs admin rebalance``): replicas move
  from fuller to emptier chunkservers until every live one's used fraction is within
  ``threshold_pct`` points of the cluster's, at most ``bandwidth_bps`` bytes a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Labels:
    host: str
    rack: str = ""


@dataclass(frozen=True, slots=True)
class Rebalance:
    threshold_pct: float  # points of used fraction (0-100) a server may differ from the mean
    bandwidth_bps: int  # bytes a second moved at most, cluster-wide; 0: no limit
    # Which start this is (each rebalance_start that changes the parameters counts one): a
    # stop the core decided under an earlier run names it, and does not end a newer one.
    run: int = 0


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    draining: frozenset[int] = frozenset()
    labels: Mapping[int, Labels] = field(default_factory=lambda: MappingProxyType({}))
    rebalance: Rebalance | None = None

    def labels_of(self, cs_id: int, address: str = "") -> Labels:
        """``cs_id``'s labels; one without any is its own host (the address's, else its id)."""
        found = self.labels.get(cs_id)
        if found is not None:
            return found
        host = address.rpartition(":")[0] if address else ""
        return Labels(host or f"cs{cs_id}")
