"""What a metaserver shows Prometheus (``metrics_port``; dfs/metrics.py serves it).

What it owns: the metaserver's readings, taken on its event loop at each scrape: Raft
(term, commit and applied index, leadership, leader changes seen), the namespace's sizes,
and, on the leader, the chunks by health (the last repair step's survey), the chunkservers by state, open-file holds and
the rebalance's progress. What it must not do: change anything, or read a follower's soft
state as if it were the cluster's (those readings come from the leader only).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dfs.metrics import Reading, counter, gauge
from metaserver.raft.types import Role

if TYPE_CHECKING:
    from metaserver.server import MetaServer


def readings(server: MetaServer) -> dict[str, Reading]:
    node = server.node
    st = node.status()
    stats = server.ns.stats()
    out: dict[str, Reading] = {
        "dfs_raft_term": gauge("This node's current Raft term", int(st.term)),
        "dfs_raft_commit_index": gauge("The highest log index known committed", int(st.commit)),
        "dfs_raft_applied_index": gauge(
            "The highest log index applied to the namespace", int(node.applied_index)
        ),
        "dfs_raft_leader": gauge("1 on the leader, 0 elsewhere", int(st.role == Role.LEADER)),
        "dfs_raft_leader_changes_total": counter(
            "New leaders this node has seen since it started", node.leader_changes
        ),
        "dfs_namespace_files": gauge("Regular files in the namespace", stats["files"]),
        "dfs_namespace_directories": gauge("Directories in the namespace", stats["dirs"]),
        "dfs_namespace_chunks": gauge("Chunks in the chunk table", stats["chunks"]),
        "dfs_namespace_bytes": gauge("Logical bytes of every file", stats["bytes"]),
        "dfs_orphans": gauge(
            "Unlinked files kept while a client holds them open", len(server.ns.orphans)
        ),
    }
    if st.role != Role.LEADER:
        return out
    server._leader_view()  # a new term of leadership resets the soft state first
    now_s = time.monotonic()
    # The last repair step's survey (each step makes one): a scrape never walks the chunk
    # table itself.
    health = server.repair.health.as_dict()
    out["dfs_chunks"] = gauge(
        "Chunks by health (leader only): total, missing, under goal, ...",
        {(state,): float(count) for state, count in health.items()},
        "state",
    )  # fmt: skip
    states: dict[tuple[str, ...], float] = {
        (state,): float(n) for state, n in server.admin.states(now_s).items()
    }
    out["dfs_chunkservers"] = gauge("Chunkservers by state (leader only)", states, "state")
    out["dfs_holds"] = gauge("Open files clients hold (leader only)", server.holds.count())
    progress = server.admin.progress()
    out["dfs_rebalance_running"] = gauge("1 while a rebalance runs", int(bool(progress["running"])))
    out["dfs_rebalance_moved_bytes_total"] = counter(
        "Bytes a rebalance moved under this leader", progress["moved_bytes"]
    )
    out["dfs_rebalance_left_bytes"] = gauge(
        "Bytes a rebalance must still move", progress["left_bytes"]
    )
    out["dfs_replication_in_flight"] = gauge(
        "Chunk copies in progress (repair, drain, rebalance)", health.get("replicating", 0)
    )
    return out


__all__ = ["readings"]
